"""cfsboot: composefs backend for bootable containers."""

__version__ = "0.1.0"

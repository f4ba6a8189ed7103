"""cfsboot.cli"""

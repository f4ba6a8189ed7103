"""cfsboot.fsverity"""

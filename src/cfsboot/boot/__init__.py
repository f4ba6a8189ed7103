"""cfsboot.boot"""

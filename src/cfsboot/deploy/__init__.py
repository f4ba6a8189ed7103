"""cfsboot.deploy"""

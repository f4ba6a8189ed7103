"""cfsboot.tree"""

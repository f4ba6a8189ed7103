"""cfsboot.repository"""

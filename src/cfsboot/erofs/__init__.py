"""cfsboot.erofs"""

"""cfsboot.oci"""

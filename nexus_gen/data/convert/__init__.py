"""nexus_gen/data/convert"""

"""nexus_gen/scenes"""

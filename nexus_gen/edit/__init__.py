"""nexus_gen/edit"""

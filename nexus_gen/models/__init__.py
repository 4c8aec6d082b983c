"""nexus_gen/models"""

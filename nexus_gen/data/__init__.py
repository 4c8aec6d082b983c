"""nexus_gen/data"""

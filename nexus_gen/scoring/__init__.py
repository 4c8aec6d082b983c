"""nexus_gen/scoring"""

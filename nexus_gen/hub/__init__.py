"""nexus_gen/hub"""

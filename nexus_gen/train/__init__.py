"""nexus_gen/train"""

"""eval/geneval"""

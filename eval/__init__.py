"""Benchmarks built on the nexus_gen library: GenEval (+ scenes variant), editing, understanding, reports."""

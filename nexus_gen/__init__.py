"""nexus-gen: the library. Plain Python, no Prefect import; everything testable by calling it."""
__version__ = "0.1.0"

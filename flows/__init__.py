"""Prefect flows and the `nexus-gen` command line: thin layers over `nexus_gen` and `eval`."""

"""`nexus-gen convert | export | validate`: the data commands."""
import typer


def register(root: typer.Typer) -> None:
    """Add the data commands to the root app."""

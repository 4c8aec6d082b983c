"""`nexus-gen score`: CLIP / DINO / pixel metrics for editing shards."""
import typer


def register(root: typer.Typer) -> None:
    """Add `nexus-gen score` to the root app."""

"""`nexus-gen eval ...` and `nexus-gen report`: benchmarks and reports."""
import typer

app = typer.Typer(help="Benchmarks: GenEval, GenEval-scenes, re-scoring.", no_args_is_help=True)


def register_report(root: typer.Typer) -> None:
    """Add `nexus-gen report RUN_DIR` to the root app."""

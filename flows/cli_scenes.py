"""`nexus-gen scenes ...`: look at the procedural scenes world."""
import typer

app = typer.Typer(help="The procedural scenes world: sample, inspect.", no_args_is_help=True)

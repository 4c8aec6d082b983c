"""The `nexus-gen` command line. Each concern registers its commands from its own module;
heavy imports (torch, diffusers, prefect) happen inside the commands, so `--help` is instant."""
from __future__ import annotations

import logging

import typer

from flows import cli_build, cli_data, cli_eval, cli_scenes, cli_scoring

app = typer.Typer(
    name="nexus-gen",
    help="Build, convert, score and benchmark data for unified image understanding / "
    "generation / editing models (Nexus-Gen style).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

cli_data.register(app)
cli_build.register(app)
cli_scoring.register(app)
app.add_typer(cli_scenes.app, name="scenes")
app.add_typer(cli_eval.app, name="eval")
from flows import cli_understanding; cli_understanding.register(cli_eval.app)  # noqa: E402,E702
cli_eval.register_report(app)
from flows import cli_select; cli_select.register(app)  # noqa: E402,E702  (one line: cli.py is shared)
from flows import cli_editing; cli_editing.register(cli_eval.app)  # noqa: E402,E702  (eval editing)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()

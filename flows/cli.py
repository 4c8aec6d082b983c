"""The `nexus-gen` command line. Each concern registers its commands from its own module;
heavy imports (torch, diffusers, prefect) happen inside the commands, so `--help` is instant."""
from __future__ import annotations

from flows import runtime

runtime.set_env_defaults()  # before anything imports prefect

from typing import Optional  # noqa: E402

import typer  # noqa: E402

from flows import cli_train  # noqa: E402
from flows import (cli_build, cli_data, cli_demo, cli_editing, cli_eval, cli_scenes,  # noqa: E402
                   cli_scoring, cli_select, cli_understanding)
from flows import cli_precompute  # noqa: E402
from flows import cli_publish  # noqa: E402
from flows import cli_runs  # noqa: E402
from flows import cli_serve  # noqa: E402
from flows import cli_showcase  # noqa: E402

app = typer.Typer(
    name="nexus-gen",
    help="Build, convert, score and benchmark data for unified image understanding / "
    "generation / editing models (Nexus-Gen style).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"nexus-gen {version('nexus-gen')}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Also show Prefect's run logs and libraries' INFO lines."),
    _show_version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                                 help="Print the installed version and exit."),
) -> None:
    """Build, convert, score and benchmark data for unified image understanding / generation /
    editing models (Nexus-Gen style)."""
    runtime.configure_logging(verbose)


cli_data.register(app)
cli_build.register(app)
cli_train.register(app)
cli_select.register(app)
cli_publish.register(app)
cli_scoring.register(app)
app.add_typer(cli_scenes.app, name="scenes")
cli_understanding.register(cli_eval.app)
cli_editing.register(cli_eval.app)
app.add_typer(cli_eval.app, name="eval")
cli_eval.register_report(app)
cli_demo.register(app)
cli_precompute.register(app)
cli_runs.register(app)
cli_serve.register(app)
cli_showcase.register(app)


def main() -> None:
    app()  # logging is set up by the root callback, which knows --verbose


if __name__ == "__main__":
    main()

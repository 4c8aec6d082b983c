"""The `nexus-gen` command line as a user meets it: help, version, option names, quiet output."""
from __future__ import annotations

import re

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def _help(*args: str) -> str:
    res = runner.invoke(app, [*args, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def test_help_shows_no_value_type_for_flags():
    """typer 0.29 (its vendored click) prints `<bool>` beside every flag, `--help` included, as
    if a flag took a value; flags take none."""
    for args in ((), ("scenes",), ("eval", "geneval-score"), ("export",)):
        text = _help(*args)
        assert "--help" in text
        assert "<bool>" not in text, f"nexus-gen {' '.join(args)} --help:\n{text}"
    assert re.search(r"--absolute-paths\s+nexus-gen-jsonl", _help("export"))


def test_version_comes_from_the_installed_package():
    from importlib.metadata import version

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output == f"nexus-gen {version('nexus-gen')}\n"

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


def _commands(group, prefix=()):
    """(path, click command) for every command under a click group."""
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_output_options_are_spelled_the_same_everywhere():
    """Every command writing to a path takes it as `-o/--out`; the dtype choices are checked by
    the command line parser, before any work."""
    import typer.main

    root = typer.main.get_command(app)
    commands = dict(_commands(root))
    for path in [("demo",), ("scenes", "sample"), ("scenes", "prompts"), ("eval", "geneval"),
                 ("eval", "geneval-scenes"), ("eval", "geneval-score"), ("convert",), ("export",)]:
        out = next(p for p in commands[path].params if p.name == "out")
        assert sorted(out.opts) == ["--out", "-o"], path
    res = runner.invoke(app, ["eval", "geneval-scenes", "--generator", "noise", "-o", "x", "--dtype", "float8"])
    assert res.exit_code == 2 and "float8" in res.output and "float32" in res.output

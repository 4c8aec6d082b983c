"""`nexus-gen select`: a filter policy applied to a build run's stored scores, the kept samples
written as new shards (nexus_gen.edit.select)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer


def _say(text: str, err: bool = False) -> None:
    typer.echo(text.encode("utf-8", "replace").decode("utf-8"), err=err)


def _table(report: dict[str, Any]) -> list[str]:
    """Per edit type: triplets in -> out under which policy, then what each rule removed."""
    lines = []
    for et, r in report["edit_types"].items():
        lines.append(f"{et}: {r['rows_in']} -> {r['rows_out']} triplets (policy {r['policy']})")
        width = max((len(x["name"]) for x in r["rules"]), default=0)
        for x in r["rules"]:
            what = "SKIPPED for every row (the run stored no such score)" if x["skipped"] \
                else f"removed {x['removed']:>5}  (fails alone: {x['failed']})"
            lines.append(f"  {x['name']:<{width}}  {x['column']:<14} {what}")
    return lines


def select(
    run: Path = typer.Argument(..., metavar="RUN", help="Folder of a finished `nexus-gen build`."),
    policy: Optional[str] = typer.Option(None, "--policy", "-p", help="Filter policy for every edit type: a "
                                         "name in datasets_spec/filters or a YAML file (default: the "
                                         "recipe's filter_policy; auto = each edit type's own policy)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the selected shards, manifest.json "
                             "and selection.json."),
) -> None:
    """Select triplets of a build run by their stored scores (nothing is recomputed) and write
    their samples, with every generation/understanding sample, as new per-split shards. Prints
    what each rule removed per edit type; the last line is JSON
    {"triplets_in": N, "triplets_out": K, "samples": S}."""
    from nexus_gen.edit.select import select_run

    try:
        report = select_run(run, policy, out)
    except ValueError as exc:  # SelectError, PolicyError: a user error, one line, no traceback
        _say(f"error: {exc}", err=True)
        raise typer.Exit(2)
    for line in _table(report):
        _say(line)
    for et, names in report["skipped_rules"].items():
        _say(f"warning: {et}: rule(s) {', '.join(names)} skipped for every row")
    _say(f"passed through unchanged: {json.dumps(report['passthrough'])}")
    if report["removed_everything"]:
        _say(f"the policy removed every triplet ({report['triplets_in']} in, 0 out)")
    if not report["shards"]:
        _say("no shard written: nothing was selected or passed through")
    _say(f"selection: {out} (see {out / 'selection.json'})")
    _say(json.dumps({"triplets_in": report["triplets_in"], "triplets_out": report["triplets_out"],
                     "samples": report["samples"]["out"]}))


def register(root: typer.Typer) -> None:
    """Add `nexus-gen select` to the root app."""
    root.command("select")(select)

"""What a publish publishes: a finished build run as built (unfiltered), the run filtered by a
policy (`--policy NAME|FILE|auto`: selected with `nexus-gen select`'s code into the publish's
work folder), or a `nexus-gen select` output folder (its `selection.json` names the source run,
whose records, triplet table and publish folder are used).

    src = resolve_source(PATH, policy)            # checks only, before any work
    kept = kept_triplet_ids(src.data)             # the triplets of the selected editing samples
    check_counts(loaded, selection, ...)          # staged rows == selection.json's counts

The published editing config holds the selected shards' editing samples, generation and
understanding pass through as `select` writes them, and the `triplets` config holds the triplet
table rows of the kept triplet ids only."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pyarrow.parquet as pq

from nexus_gen.data.shards import MANIFEST, read_manifest
from nexus_gen.hub.hub_layout import TRIPLETS_CONFIG
from nexus_gen.hub.hub_targets import PublishError

log = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"  # nexus_gen.edit.select.SELECTION_FILE (not imported: select pulls pandas)
UNTYPED = "unknown"  # select's edit type of editing samples that name none (no triplet table row)


@dataclass
class PublishSource:
    run: Path  # the build run: its records, triplet table and RUN/publish/ folder
    selection_dir: Optional[Path] = None  # a `nexus-gen select` output given as the publish's input
    policy: Optional[str] = None  # --policy: select from the run first (into the work folder)

    @property
    def filtered(self) -> bool:
        return self.selection_dir is not None or self.policy is not None


def is_selection(path: Path) -> bool:
    """A `nexus-gen select` output folder (it holds selection.json)."""
    return (path / SELECTION_FILE).is_file()


def read_selection(sel_dir: Path) -> dict[str, Any]:
    """selection.json of a finished selection; PublishError naming the file otherwise."""
    p = sel_dir / SELECTION_FILE
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PublishError(f"{p} cannot be read ({exc}); rerun `nexus-gen select`") from None
    if not isinstance(doc, dict) or not doc.get("run") or "edit_types" not in doc:
        raise PublishError(f"{p} is not a selection record (no source run); rerun `nexus-gen select`")
    if not (sel_dir / MANIFEST).is_file():
        raise PublishError(f"{sel_dir} is an unfinished selection ({MANIFEST} missing); rerun `nexus-gen select`")
    return doc


def check_selection_run(sel_dir: Path, selection: dict[str, Any], run_record: dict[str, Any]) -> None:
    """The source run still is the one the selection was made from (same recipe hash, same
    number of samples); PublishError otherwise."""
    run = Path(selection["run"])
    if run_record.get("recipe_hash") != selection.get("recipe_hash"):
        raise PublishError(f"{sel_dir} was selected from {run} with recipe hash {selection.get('recipe_hash')!r}, "
                           f"but that run now has recipe hash {run_record.get('recipe_hash')!r}: it was rebuilt "
                           "from another recipe; rerun `nexus-gen select` on it")
    want = (selection.get("samples") or {}).get("in")
    have = (run_record.get("counts") or {}).get("samples")
    if want != have:
        raise PublishError(f"{sel_dir} was selected from {want} samples of {run}, which now holds {have}; "
                           "rerun `nexus-gen select` on it")


def resolve_policy(policy: str, stored: dict[str, Any]) -> Any:
    """The FilterPolicy `--policy` names (None for `auto` with the recipe's `auto`: each edit
    type's own); PublishError naming --policy for an unknown name or a bad file."""
    from nexus_gen.edit.select import _recipe_policy
    from nexus_gen.scoring.policy import PolicyError, load_policy

    try:
        return _recipe_policy(stored) if policy == "auto" else load_policy(policy)
    except PolicyError as exc:
        raise PublishError(f"--policy {policy!r}: {exc}") from None


def resolve_source(path: Path, policy: Optional[str], check_run: Any) -> tuple[PublishSource, dict[str, Any]]:
    """The source of a publish and its run record, after every check (`check_run`: the
    publisher's check of a finished run). A select folder with --policy is refused (it is
    already filtered)."""
    if path.is_dir() and is_selection(path):
        if policy is not None:
            raise PublishError(f"{path} is a `nexus-gen select` output, already filtered (policy "
                               f"{read_selection(path).get('policy')!r}); drop --policy, or publish its run "
                               "with --policy")
        selection = read_selection(path)
        run = Path(selection["run"])
        if not run.is_dir():
            raise PublishError(f"{path} was selected from {run}, which no longer exists; the source run is "
                               "needed (records, triplet table): rebuild it or select again")
        record, _ = check_run(run)
        check_selection_run(path, selection, record)
        return PublishSource(run, selection_dir=path), record
    record, stored = check_run(path)
    if policy is not None:
        resolve_policy(policy, stored)
    return PublishSource(path, policy=policy), record


def kept_triplet_ids(data_dir: Path) -> set[str]:
    """The triplet ids of the editing samples of a selection's shards (reads id, task, meta)."""
    from nexus_gen.edit.select import _triplet_id

    ids: set[str] = set()
    for s in read_manifest(data_dir)["shards"]:
        t = pq.read_table(data_dir / s["file"], columns=["id", "task", "meta"])
        for i, task, meta in zip(*(t.column(c).to_pylist() for c in ("id", "task", "meta"))):
            if task == "editing":
                ids.add(_triplet_id(i, meta))
    return ids


def check_counts(loaded: dict[str, dict[str, int]], selection: dict[str, Any], kept: set[str]) -> None:
    """The staged rows equal selection.json's counts: editing samples out, each passed-through
    task, samples per split, and triplet rows = kept triplets of a built edit type (mixed-in
    editing samples have no triplet row). PublishError naming the config otherwise."""
    total = {c: sum(v.values()) for c, v in loaded.items()}
    samples = selection.get("samples") or {}
    want = {"editing": samples.get("editing_out", 0), **(selection.get("passthrough") or {})}
    problems = [f"{c}: {total.get(c, 0)} rows staged, selection.json says {n}" for c, n in sorted(want.items())
                if total.get(c, 0) != n]
    by_split: dict[str, int] = {}
    for c, v in loaded.items():
        if c != TRIPLETS_CONFIG:
            for s, n in v.items():
                by_split[s] = by_split.get(s, 0) + n
    if by_split != {s: n for s, n in (selection.get("by_split") or {}).items() if n}:
        problems.append(f"samples per split {by_split}, selection.json says {selection.get('by_split')}")
    if len(kept) != selection.get("triplets_out"):
        problems.append(f"{len(kept)} triplets in the selected samples, selection.json says {selection.get('triplets_out')}")
    built = sum(r["rows_out"] for et, r in selection["edit_types"].items() if et != UNTYPED)
    if total.get(TRIPLETS_CONFIG, 0) != built:
        problems.append(f"{TRIPLETS_CONFIG}: {total.get(TRIPLETS_CONFIG, 0)} rows staged, selection.json keeps "
                        f"{built} built triplets")
    if problems:
        raise PublishError("the staged data does not match the selection, nothing was uploaded: "
                           + "; ".join(problems))

"""Selection from a finished build run: a filter policy applied to the scores the build stored,
without recomputing any, and the samples of the kept triplets written as new shards.

    report = select_run(RUN, "add", OUT)      # or policy=None / "auto": the recipe's filter_policy

The decision reads only the `id`, `task` and `meta` columns of the run's data shards (no image is
read or decoded): one row per triplet (`meta.triplet_id`) with its edit type, source key and
scores, and the policy is applied per edit type (`auto`: the built-in policy of each type). Then
the samples of kept triplets (both directions, every language) and every non-editing sample
(generation, understanding: passed through unchanged) are streamed into `OUT/<split>-NNNNN.parquet`,
each split in its own shards so `datasets.load_dataset(OUT)` gives the run's splits, with
`manifest.json` and, last, `selection.json` (policy per edit type, triplets in and out, how many
each rule removed, rules skipped for every row, passthrough counts, the source run and its recipe
hash).

A score column the run stored for no triplet of an edit type (null in every row: a metric not
computed, no detector, no captions) counts as missing for that type: rules that say
`if_missing: skip` are skipped (and reported as skipped for every row); any other rule on it fails
every row, as a missing score never passes."""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Optional, Union

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nexus_gen.data.schema import hf_features
from nexus_gen.data.shards import (DEFAULT_SHARD_BYTES, MANIFEST, SPLIT_NAMES, ShardWriter, is_build_shard,
                                   read_manifest, row_to_sample, write_json_atomic)
from nexus_gen.edit.build import RECIPE_FILE, RUN_FILE, _manifest
from nexus_gen.edit.execute import DATA_DIR
from nexus_gen.scoring.policy import FilterPolicy, PolicyError, load_policy, policy_for_edit_type, select

log = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"
STAGING_DIR = ".staging"
UNTYPED = "unknown"  # edit type of an editing sample whose meta names none (mixed-in datasets)
_BATCH = 64


class SelectError(ValueError):
    """The run, the output folder or the policy cannot be used; the message says what to do."""


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SelectError(f"{path.parent} is not a build run ({path.name} missing); give the --out "
                          f"folder of a finished `nexus-gen build`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SelectError(f"{path} is damaged ({exc}); rebuild the run") from None
    if not isinstance(data, dict):
        raise SelectError(f"{path} is not a {what}; rebuild the run")
    return data


def check_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run record and the stored recipe of a finished build; `SelectError` otherwise."""
    if not run_dir.exists():
        raise SelectError(f"run folder {run_dir} does not exist; give the --out folder of a `nexus-gen build`")
    if not run_dir.is_dir():
        raise SelectError(f"run {run_dir} is a file; give the --out folder of a `nexus-gen build`")
    record = _read_json(run_dir / RUN_FILE, "run record")
    recipe = _read_json(run_dir / RECIPE_FILE, "stored recipe")
    if record.get("status") != "complete":
        shards = record.get("shards") or {}
        raise SelectError(f"{run_dir} is not a finished build (status {record.get('status')!r}, "
                          f"{shards.get('done')} of {shards.get('selected')} shards done); rerun the same "
                          f"`nexus-gen build` to finish it, then select")
    if not (run_dir / DATA_DIR / MANIFEST).is_file():
        raise SelectError(f"{run_dir} has no {DATA_DIR}/{MANIFEST}; rerun the same `nexus-gen build` to finish it")
    return record, recipe


def check_out(out_dir: Path, run_dir: Path) -> None:
    """Refuse an output that would overwrite the run or a folder that is not a selection."""
    out, run = out_dir.resolve(), run_dir.resolve()
    if out == run or run in out.parents or out in run.parents:
        raise SelectError(f"--out {out_dir} is the run {run_dir}, inside it or holds it; give a "
                          "separate folder for the selection")
    if out.exists() and not out.is_dir():
        raise SelectError(f"--out {out_dir} is a file; give a folder for the selection")
    if out.exists() and any(out.iterdir()) and not (out / SELECTION_FILE).is_file():
        raise SelectError(f"--out {out_dir} is not empty and holds no selection ({SELECTION_FILE} "
                          "missing); give an empty or new folder")


def _recipe_policy(stored: dict[str, Any]) -> Optional[FilterPolicy]:
    """The recipe's `filter_policy`: None for `auto`, else the policy it names (a name, or a
    file relative to the recipe's folder)."""
    name = (stored.get("recipe") or {}).get("filter_policy") or "auto"
    if name == "auto":
        return None
    rel = Path(stored.get("recipe_file") or ".").parent / name
    return load_policy(rel if Path(name).suffix and rel.is_file() else name)


def triplet_rows(run_dir: Path) -> tuple[pd.DataFrame, dict[str, int], int]:
    """One row per editing triplet of the run (`id`, `edit_type`, `source_key`, one column per
    stored score), the count of non-editing samples per task, and the number of samples.
    Reads the `id`, `task` and `meta` columns only. A triplet's scores are those of its forward
    sample (built triplets store the same scores on all their samples)."""
    rows: dict[str, dict[str, Any]] = {}
    forward: set[str] = set()
    passthrough: dict[str, int] = {}
    total = 0
    for f in _data_files(run_dir):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=1024, columns=["id", "task", "meta"]):
            for r in batch.to_pylist():
                total += 1
                if r["task"] != "editing":
                    passthrough[r["task"]] = passthrough.get(r["task"], 0) + 1
                    continue
                meta = row_to_sample(r)["meta"]
                tid = _triplet_id(r["id"], meta)
                fwd = meta.get("direction", "forward") == "forward"
                if tid in rows and (tid in forward or not fwd):
                    continue
                scores = meta.get("scores") if isinstance(meta.get("scores"), dict) else {}
                rows[tid] = {"id": tid, "edit_type": meta.get("edit_type") or UNTYPED,
                             "source_key": meta.get("source_key"), **scores}
                if fwd:
                    forward.add(tid)
    table = pd.DataFrame(list(rows.values()), columns=None if rows else ["id", "edit_type", "source_key"])
    return table, dict(sorted(passthrough.items())), total


def _data_files(run_dir: Path) -> list[Path]:
    return [run_dir / DATA_DIR / s["file"] for s in read_manifest(run_dir / DATA_DIR)["shards"]]


def decide(table: pd.DataFrame, policies: dict[str, FilterPolicy]) -> tuple[set[str], dict[str, Any]]:
    """Apply each edit type's policy to its rows. Returns the kept triplet ids and the report per
    edit type (`select`'s own: a score null for every row of a type leaves its `if_missing: skip`
    rules skipped, loudly, and fails rules that may not skip)."""
    kept: set[str] = set()
    report: dict[str, Any] = {}
    for et, pol in policies.items():
        try:
            out, rep = select(table[table["edit_type"] == et], pol)
        except PolicyError as exc:
            raise SelectError(f"edit type {et!r}: {exc}; pick a policy whose rules use the run's "
                              "scores, or mark such rules `if_missing: skip`") from None
        kept |= set(out["id"])
        report[et] = rep.to_dict()
    return kept, report


def select_run(run_dir: Union[str, Path], policy: Optional[Union[str, Path]] = None,
               out_dir: Optional[Union[str, Path]] = None,
               shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict[str, Any]:
    """Select from the finished build `run_dir` into `out_dir` (see module doc). `policy`: None
    or "auto" (the recipe's filter_policy), a built-in policy name or a policy file, used for
    every edit type. Returns the report (also `out_dir/selection.json`)."""
    if out_dir is None or str(out_dir) == "":
        raise SelectError("give --out, the folder for the selection")
    run, out = Path(run_dir), Path(out_dir)
    record, stored = check_run(run)
    check_out(out, run)
    return write_selection(run, record, stored, policy, out, shard_bytes)


def write_selection(run: Path, record: dict[str, Any], stored: dict[str, Any],
                    policy: Optional[Union[str, Path]], out: Path,
                    shard_bytes: int = DEFAULT_SHARD_BYTES) -> dict[str, Any]:
    """`select_run` after its checks of the run and the output folder (the publisher selects
    into its own work folder inside the run)."""
    try:
        chosen = _recipe_policy(stored) if policy in (None, "auto") else load_policy(policy)
    except PolicyError as exc:
        raise SelectError(str(exc)) from None
    table, passthrough, total = triplet_rows(run)
    types = sorted(set(table["edit_type"]))
    try:
        policies = {et: chosen or policy_for_edit_type(et) for et in types}
    except PolicyError as exc:
        raise SelectError(str(exc)) from None
    kept, per_type = decide(table, policies)
    written = _write(run, out, kept, shard_bytes, record.get("recipe_hash"))
    report = {
        "run": str(run.resolve()), "recipe": record.get("recipe"), "recipe_hash": record.get("recipe_hash"),
        "policy": str(policy) if policy not in (None, "auto") else
        f"auto (recipe filter_policy: {(stored.get('recipe') or {}).get('filter_policy', 'auto')})",
        "policies": {et: p.name for et, p in policies.items()},
        "edit_types": per_type,
        "skipped_rules": {et: r["skipped_rules"] for et, r in per_type.items() if r["skipped_rules"]},
        "triplets_in": len(table), "triplets_out": len(kept),
        "removed_everything": len(table) > 0 and not kept,
        "samples": {"in": total, "editing_in": total - sum(passthrough.values()), **written["samples"]},
        "passthrough": passthrough, "by_split": written["by_split"], "shards": written["shards"],
    }
    if report["removed_everything"]:
        log.warning("the policy removed every triplet of %s (%d in, 0 out)", run, len(table))
    write_json_atomic(out / SELECTION_FILE, report, sort_keys=True)
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)
    return report


def _write(run: Path, out: Path, kept: set[str], shard_bytes: int, rhash: Optional[str]) -> dict[str, Any]:
    """Stream kept editing samples and every other sample into per-split shards: staged under
    `out/.staging/<split>/`, then moved in place of the previous selection's shards; the
    manifest is written after the shards."""
    staging = out / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    writers: dict[str, ShardWriter] = {}
    counts = {"out": 0, "editing_out": 0}
    by_split: dict[str, int] = {}
    with ExitStack() as stack:  # an error leaves no half shard (ShardWriter.__exit__)
        for entry in read_manifest(run / DATA_DIR)["shards"]:
            split = entry.get("split") or entry["file"].split("-")[0]
            if split not in SPLIT_NAMES:
                raise SelectError(f"{run / DATA_DIR / entry['file']}: unknown split {split!r}; rebuild the run")
            for batch in pq.ParquetFile(run / DATA_DIR / entry["file"]).iter_batches(batch_size=_BATCH):
                keep = [t != "editing" or _triplet_id(i, m) in kept for i, t, m in
                        zip(batch.column("id").to_pylist(), batch.column("task").to_pylist(),
                            batch.column("meta").to_pylist())]
                if not any(keep):
                    continue
                if split not in writers:
                    writers[split] = stack.enter_context(
                        ShardWriter(staging / split, shard_bytes=shard_bytes, prefix=split))
                for row in batch.filter(pa.array(keep)).to_pylist():
                    writers[split].write(row_to_sample(row))
                    counts["out"] += 1
                    counts["editing_out"] += row["task"] == "editing"
                    by_split[split] = by_split.get(split, 0) + 1
    entries = [{**s, "split": split} for split, w in writers.items() for s in w.close()["shards"]]
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the folder is not a finished selection until it is back
    for p in out.iterdir():
        if is_build_shard(p.name, temporary=True):
            p.unlink()
    for e in entries:
        os.replace(staging / e["split"] / e["file"], out / e["file"])
    write_json_atomic(out / MANIFEST, _manifest(entries, hf_features(), rhash))
    return {"samples": counts, "by_split": by_split, "shards": len(entries)}


def _triplet_id(sample_id: str, meta: Union[str, dict[str, Any], None]) -> str:
    """The triplet a sample belongs to (meta as stored JSON text or decoded): its own id if
    the meta names none."""
    if not isinstance(meta, dict):
        meta = row_to_sample({"meta": meta})["meta"]
    return str(meta.get("triplet_id") or sample_id)

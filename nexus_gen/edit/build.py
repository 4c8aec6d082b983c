"""One build run from a recipe, as plain library calls (the flow in `flows/build.py` runs the same
calls with one Prefect task per shard):

    run = prepare_run(recipe, out)           # validate, plan, refuse a folder of another recipe
    markers = [run_shard(s, run.ctx) for s in run.todo]
    summary = finish_run(run, markers)       # manifests, rejects.jsonl, run.json

Run folder: `recipe.json` (the validated recipe and its hash, written first), `data/` (unified
shards + manifest.json), `triplets/` (triplet table + manifest.json), `rejects.jsonl`, `run.json`
(status, counts, durations, last error), and the per-shard `.done/` markers."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

from nexus_gen.data.schema import hf_features
from nexus_gen.data.shards import MANIFEST, MANIFEST_FORMAT, write_json_atomic
from nexus_gen.edit.execute import (DATA_DIR, STAGING_DIR, TRIPLETS_DIR, BuildContext, package_versions,
                                    read_marker, run_shard, shard_paths)
from nexus_gen.edit.plan import Plan, ShardPlan, make_plan
from nexus_gen.edit.recipe import Recipe, RecipeError, load_recipe, recipe_dump, recipe_hash

log = logging.getLogger(__name__)
RECIPE_FILE, RUN_FILE, REJECTS_FILE = "recipe.json", "run.json", "rejects.jsonl"


class RunError(ValueError):
    """The run folder cannot take this build (another recipe built it, it is a file, ...)."""


@dataclass
class PreparedRun:
    recipe: Recipe
    recipe_file: Path
    plan: Plan
    ctx: BuildContext
    todo: list[ShardPlan]  # shards without a completion marker, in plan order
    selected: list[ShardPlan]  # the shards this run covers (all, or the first `limit`)
    limit: Optional[int] = None
    finished: Optional[dict[str, Any]] = None  # run.json of an already complete run
    started: float = field(default_factory=time.time)


def prepare_run(recipe: Union[str, Path], out: Union[str, Path], limit: Optional[int] = None,
                device: str = "cpu") -> PreparedRun:
    """Everything before the first shard: the recipe validated, the plan made, the folder
    checked. Raises RecipeError / RunError before any work."""
    rec, rfile = load_recipe(recipe)
    from nexus_gen.edit.backends import BACKENDS, PLANNED_BACKENDS

    if rec.models.editor in PLANNED_BACKENDS:
        raise RunError(f"{rfile}: models.editor {rec.models.editor!r}: "
                       f"{PLANNED_BACKENDS[rec.models.editor][1]}; build a recipe with editor 'scenes'")
    from nexus_gen.edit.sources import check_source_models

    problems = BACKENDS[rec.models.editor].from_recipe(rec, rfile.parent, device).check_models() \
        + check_source_models(rec)
    if problems:  # an id that cannot be loaded stops the run before any work, naming it
        raise RunError(f"{rfile}: " + f"\n{rfile}: ".join(problems))
    if limit is not None and limit < 1:
        raise RunError(f"--limit must be a positive number of shards, got {limit}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file; give a folder for the run")
    rhash = recipe_hash(rec)
    lock = out / RECIPE_FILE
    if lock.exists():
        try:
            prev = json.loads(lock.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RunError(f"{lock} is damaged ({exc}); remove the folder {out} to build anew") from None
        if prev.get("recipe_hash") != rhash:
            raise RunError(
                f"{out} holds a run of another recipe (hash {prev.get('recipe_hash')}, recipe "
                f"{prev.get('recipe', {}).get('name')!r}); this recipe ({rec.name!r}) hashes to {rhash}. "
                f"Build into another --out folder, or delete {out} to rebuild it from this recipe.")
    elif out.exists() and any(out.iterdir()):
        raise RunError(f"{out} is not empty and holds no build run ({RECIPE_FILE} missing); "
                       "give an empty or new --out folder")
    plan = make_plan(rec, rfile.parent)
    ctx = BuildContext(rec, rhash, out, rfile.parent, dict(plan.splits), device=device,
                       versions=package_versions())
    selected = list(plan.shards[:limit] if limit else plan.shards)
    todo = [s for s in selected if read_marker(out, s.shard_id) is None]
    run = PreparedRun(rec, rfile, plan, ctx, todo, selected, limit)
    prev_run = _read_json(out / RUN_FILE)
    if not todo and prev_run and prev_run.get("status") == "complete" and prev_run.get("limit") == limit:
        run.finished = prev_run  # nothing to do, nothing to write
        return run
    out.mkdir(parents=True, exist_ok=True)
    if not lock.exists():
        write_json_atomic(lock, {"recipe_hash": rhash, "recipe_file": str(rfile),
                                 "recipe": recipe_dump(rec)}, sort_keys=True)
    return run


def _read_json(path: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _manifest(entries: list[dict[str, Any]], features: dict[str, Any], rhash: str) -> dict[str, Any]:
    shards = [{k: e[k] for k in ("file", "rows", "bytes", "sha256", "split") if k in e}
              | ({"tasks": e["tasks"]} if "tasks" in e else {}) for e in entries]
    splits: dict[str, int] = {}
    for s in shards:
        splits[s["split"]] = splits.get(s["split"], 0) + s["rows"]
    return {"format": MANIFEST_FORMAT, "features": features, "shards": shards,
            "total_rows": sum(s["rows"] for s in shards), "total_bytes": sum(s["bytes"] for s in shards),
            "splits": splits, "recipe_hash": rhash}


def _add(into: dict[str, int], other: dict[str, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


def finish_run(run: PreparedRun, error: Optional[BaseException] = None) -> dict[str, Any]:
    """Merge the finished shards into the run's manifests, `rejects.jsonl` and `run.json`.
    Only the shards' markers are read: the result is the same however the shards were run,
    resumed or distributed. Returns the run record (also written to `run.json`)."""
    if run.finished is not None:
        return run.finished
    out = run.ctx.out
    done = [(s, m) for s in run.selected if (m := read_marker(out, s.shard_id)) is not None]
    markers = [m for _, m in done]
    from nexus_gen.edit.triplet_table import features as triplet_features

    (out / DATA_DIR).mkdir(exist_ok=True)
    data = [m["data"] for m in markers if m.get("data")]
    write_json_atomic(out / DATA_DIR / MANIFEST, _manifest(data, hf_features(), run.plan.recipe_hash))
    trips = [m["triplets"] for m in markers if m.get("triplets")]
    if trips:
        (out / TRIPLETS_DIR).mkdir(exist_ok=True)
        write_json_atomic(out / TRIPLETS_DIR / MANIFEST,
                          _manifest(trips, triplet_features().to_dict(), run.plan.recipe_hash))
    tmp = out / f".{REJECTS_FILE}.tmp"
    with open(tmp, "wb") as f:
        for m in markers:
            f.write(shard_paths(out, m["shard_id"])["rejects"].read_bytes())
    tmp.replace(out / REJECTS_FILE)
    counts = {"planned": 0, "triplets": 0, "rejected": 0, "samples": 0}
    by_type: dict[str, dict[str, int]] = {}
    by_task: dict[str, int] = {}
    reasons: dict[str, int] = {}
    by_split: dict[str, int] = {}
    datasets: dict[str, dict[str, int]] = {}
    instruction_by: dict[str, int] = {}  # captioner: vlm, or template:<why the VLM text was refused>
    texts_by: dict[str, dict[str, int]] = {}  # the same for its reverse instructions and captions
    for plan, m in done:
        c = m["counts"]
        for k in counts:
            counts[k] += c[k]
        for t, v in c["by_edit_type"].items():
            _add(by_type.setdefault(t, {}), v)
        _add(by_task, c["by_task"])
        _add(reasons, c["reasons"])
        by_split[m["split"]] = by_split.get(m["split"], 0) + c["samples"]
        _add(instruction_by, c.get("instruction_by", {}))
        for kind, v in c.get("texts_by", {}).items():
            _add(texts_by.setdefault(kind, {}), v)
        if c.get("dataset") and plan.dataset is not None:
            _add(datasets.setdefault(plan.dataset.source, {}), c["dataset"])
    complete = len(markers) == len(run.selected) and error is None
    record = {
        "status": "complete" if complete else "failed" if error is not None else "partial",
        "recipe": run.recipe.name, "recipe_hash": run.plan.recipe_hash, "limit": run.limit,
        "shards": {"done": len(markers), "selected": len(run.selected), "planned": len(run.plan.shards)},
        "counts": counts, "by_edit_type": by_type, "by_task": by_task, "by_split": by_split,
        "rejects_by_reason": reasons, "datasets": datasets,
        "duplicate_sources": run.plan.duplicates,
        "reconciled": counts["planned"] == counts["triplets"] + counts["rejected"],
        "seconds": {"run": round(time.time() - run.started, 3),
                    "shards": {m["shard_id"]: m.get("seconds", {}) for m in markers}},
        "last_error": None if error is None else f"{type(error).__name__}: {error}",
        "versions": run.ctx.versions,
    }
    if instruction_by:
        record["instruction_by"] = instruction_by
    if texts_by:
        record["texts_by"] = texts_by
    write_json_atomic(out / RUN_FILE, record, sort_keys=True)
    try:
        (out / STAGING_DIR).rmdir()  # gone once no shard is in flight
    except OSError:
        pass
    return record


def summary_line(record: dict[str, Any]) -> dict[str, int]:
    """The build's last output line."""
    c = record["counts"]
    return {"triplets": c["triplets"], "samples": c["samples"], "rejected": c["rejected"],
            "shards": record["shards"]["done"]}


def build(recipe: Union[str, Path], out: Union[str, Path], limit: Optional[int] = None,
          on_shard: Optional[Callable[[dict[str, Any]], None]] = None) -> dict[str, Any]:
    """The whole run in this process, one shard after another (no orchestrator)."""
    run = prepare_run(recipe, out, limit)
    if run.finished is not None:
        return run.finished
    try:
        for s in run.todo:
            m = run_shard(s, run.ctx)
            if on_shard:
                on_shard(m)
    except BaseException as exc:
        finish_run(run, exc)
        raise
    return finish_run(run)


def dry_run(recipe: Union[str, Path]) -> dict[str, Any]:
    """What a build of this recipe would do, without loading any weights or writing anything:
    the plan (sources, shards, triplets per edit type and split) and every model id resolved
    with its status (`ok`, tiny, or why it cannot be loaded). Raises RecipeError on a bad recipe."""
    from nexus_gen.edit.backends import BACKENDS
    from nexus_gen.edit.backends import imagepulse_models as im
    from nexus_gen.scoring.clip_profiles import expand_profile

    rec, rfile = load_recipe(recipe)
    backend = BACKENDS[rec.models.editor].from_recipe(rec, rfile.parent, verify=True)
    models = {"editor": {"spec": rec.models.editor, "id": rec.models.editor, "status": "ok"},
              **backend.model_report()}
    dino_ids = {"paper": "facebook/dino-vits16"}
    for role, spec, to_id in (("clip", rec.models.clip, expand_profile),
                              ("dino", rec.models.dino, lambda s: dino_ids.get(s, s))):
        if spec:
            models[role] = {"spec": spec, "id": "tiny (built locally)" if spec == "tiny" else to_id(spec),
                            "status": "loaded by the scorer at the first shard"}
    for i, s in enumerate(rec.sources):
        if s.kind == "text2image":
            why = None if s.model == "tiny" else im.check(im.resolve("generator", s.model))
            models[f"sources.{i}.generator"] = {
                "spec": s.model, "id": im.model_id_of("generator", s.model),
                "status": "tiny: random-init, built locally on first use" if s.model == "tiny"
                else "ok" if why is None else f"cannot be loaded: {why}"}
    plan = make_plan(rec, rfile.parent)
    per_type: dict[str, int] = {}
    per_split: dict[str, int] = {}
    sources: dict[str, int] = {}
    for sh in plan.shards:
        per_split[sh.split] = per_split.get(sh.split, 0) + len(sh.items)
        for it in sh.items:
            per_type[it.spec.type] = per_type.get(it.spec.type, 0) + 1
        for src in sh.sources:
            sources[src.source] = sources.get(src.source, 0) + 1
    problems = [f"{role}: {m['status']}" for role, m in models.items() if m["status"].startswith("cannot")]
    problems += getattr(backend, "config_problems", list)()
    return {"recipe": rec.name, "recipe_file": str(rfile), "recipe_hash": plan.recipe_hash,
            "sources": sources, "duplicate_sources": plan.duplicates, "shards": len(plan.shards),
            "planned": plan.planned, "by_edit_type": per_type, "by_split": per_split,
            "models": models, "problems": problems}

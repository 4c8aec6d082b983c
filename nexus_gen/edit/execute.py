"""Execution of one shard plan: edit every work item with the backend, verify and score the
triplets, turn them into unified samples (both directions, every language) plus generation and
understanding samples of the same sources, and write the shard's files, its rejects and, last,
its completion marker. A plain function: the flow runs it as one task per shard.

Files of shard S under the run folder: `data/S.parquet` (unified samples), `triplets/S.parquet`
(the triplet table), `rejects/S.jsonl`, and `.done/S.json` (the marker, written last). A shard
killed mid-way leaves only `.staging/S/`, which the next attempt clears."""
from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from nexus_gen.data.convert.base import reason_kind
from nexus_gen.data.images import encode_png
from nexus_gen.data.shards import ShardWriter, write_json_atomic
from nexus_gen.data.templates import editing_messages, generation_messages, understanding_messages
from nexus_gen.data.validate import sample_problems
from nexus_gen.edit.backends import BACKENDS
from nexus_gen.edit.backends.base import EditError, EditOutput, SourceRef
from nexus_gen.edit.plan import DatasetPart, ShardPlan, WorkItem, derive_seed
from nexus_gen.edit.recipe import Recipe
from nexus_gen.edit.triplet_table import DETECTOR_COLUMNS, TripletTable, VERDICT_COLUMNS
from nexus_gen.hashing import file_sha256

log = logging.getLogger(__name__)

DONE_DIR, STAGING_DIR = ".done", ".staging"
DATA_DIR, TRIPLETS_DIR, REJECTS_DIR = "data", "triplets", "rejects"
HUGE = 1 << 62  # one parquet file per shard plan, whatever its size


@dataclass
class BuildContext:
    """What every shard of a run shares: the recipe, its hash, the run folder, and lineage."""

    recipe: Recipe
    recipe_hash: str
    out: Path
    base: Path  # the recipe's folder (relative paths)
    splits_of: dict[str, str] = field(default_factory=dict)  # built source key -> split
    device: str = "cpu"
    torch_threads: int = 1  # fixed, so threads, Dask and Ray workers compute the same bytes
    versions: dict[str, str] = field(default_factory=dict)


def package_versions() -> dict[str, str]:
    """Versions that decide the bytes of a build (lineage)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("nexus-gen", "torch", "open_clip_torch", "transformers", "pillow", "numpy", "pyarrow"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def shard_paths(out: Path, shard_id: str) -> dict[str, Path]:
    return {"data": out / DATA_DIR / f"{shard_id}.parquet",
            "triplets": out / TRIPLETS_DIR / f"{shard_id}.parquet",
            "rejects": out / REJECTS_DIR / f"{shard_id}.jsonl",
            "done": out / DONE_DIR / f"{shard_id}.json",
            "staging": out / STAGING_DIR / shard_id}


def read_marker(out: Path, shard_id: str) -> Optional[dict[str, Any]]:
    """The shard's completion record, or None if the shard is not finished (or its files are
    gone: a marker only counts while what it lists is there)."""
    p = shard_paths(out, shard_id)
    try:
        marker = json.loads(p["done"].read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    for kind in ("data", "triplets"):
        entry = marker.get(kind)
        if entry and not (out / entry["path"]).is_file():
            return None
    return marker


# -- models (once per process)
def _scorer(ctx: BuildContext):
    from nexus_gen.models.loaded import cached_model
    from nexus_gen.scoring.clip import load_clip
    from nexus_gen.scoring.dino import load_dino
    from nexus_gen.scoring.edit_scorer import EditScorer
    from nexus_gen.scoring.embedding_cache import EmbeddingCache

    r = ctx.recipe
    want = set(r.scoring.metrics)
    # no embedding cache across shards: a shard's scores never depend on which shards the same
    # process ran before (threads, Dask and Ray runs give the same bytes)
    clip = cached_model("clip", r.models.clip, ctx.device, "auto",
                        lambda: load_clip(r.models.clip, device=ctx.device, cache=EmbeddingCache(0))) \
        if r.models.clip and want & {"clip_t", "clipscore", "clip_i", "clip_dir"} else None
    dino = cached_model("dino", r.models.dino, ctx.device, "auto",
                        lambda: load_dino(r.models.dino, device=ctx.device, cache=EmbeddingCache(0))) \
        if r.models.dino and "dino" in want else None
    return EditScorer(clip, dino, metrics=r.scoring.metrics, batch_size=r.scoring.batch_size, workers=1)


def model_ids(ctx: BuildContext) -> dict[str, Optional[str]]:
    """Role -> the id of the model actually loaded (lineage)."""
    s = _scorer(ctx)
    return {"editor": ctx.recipe.models.editor, "detector": ctx.recipe.models.detector,
            "clip": s.clip.model_id if s.clip else None, "dino": s.dino.model_id if s.dino else None}


# -- samples
def _image(img) -> dict[str, Any]:
    return {"bytes": encode_png(img), "path": None}


def _sample(sid: str, source: str, task: str, lang: str, messages, images, meta) -> dict[str, Any]:
    return {"id": sid, "source": source, "task": task, "language": lang, "messages": messages,
            "images": images,
            "meta": {**meta, "image_xxh3_128": [xxhash.xxh3_128_hexdigest(i["bytes"]) for i in images]}}


def edit_samples(item: WorkItem, out: EditOutput, images: tuple[dict, dict], scores: dict[str, Any],
                 split: str, languages: list[str], lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """Both directions of one triplet in every language (Chinese ids prefixed `zh_`, as the
    reference does); every sample carries the triplet's scores and lineage in `meta`."""
    samples = []
    for direction in ("forward", "reverse"):
        fwd = direction == "forward"
        texts = out.instruction if fwd else out.reverse_instruction
        pair = images if fwd else images[::-1]
        caps = (out.source_caption, out.target_caption) if fwd else (out.target_caption, out.source_caption)
        for lang in languages:
            sid = ("zh_" if lang == "zh" else "") + item.id + ("" if fwd else "_rev")
            meta = {"triplet_id": item.id, "edit_type": out.edit_type, "direction": direction,
                    "instruction": texts[lang], "reverse_instruction": (out.reverse_instruction if fwd
                                                                        else out.instruction)[lang],
                    "captions": [caps[0].get(lang), caps[1].get(lang)], "source_key": item.source.key,
                    "split": split, "scores": scores, "lineage": lineage}
            samples.append(_sample(sid, item.source.source, "editing", lang,
                                   editing_messages(texts[lang], lang), list(pair), meta))
    return samples


def _source_image(src: SourceRef, device: str = "cpu"):
    from nexus_gen.edit.sources import fit_source, read_source_image
    from nexus_gen.scenes.render import render
    from nexus_gen.scenes.scene import Scene

    if src.kind == "scene":
        return render(Scene.from_dict(src.scene), src.size).image
    return fit_source(read_source_image(src, device), src.size, src.aspect)


def source_samples(src: SourceRef, ctx: BuildContext, split: str) -> list[dict[str, Any]]:
    """Generation samples (caption -> image, reference templates) and understanding samples
    (scenes QA with exact answers) of one source, as the recipe asks."""
    from nexus_gen.scenes.qa import scene_qa
    from nexus_gen.scenes.scene import Scene
    from nexus_gen.scenes.text import caption, caption_zh

    o = ctx.recipe.outputs
    if src.error or not (o.generation or o.understanding):
        return []
    try:
        image = _image(_source_image(src, ctx.device))
    except EditError:
        return []  # the unreadable source is already a reject through its edits
    base = {"source_key": src.key, "split": split,
            "lineage": {"recipe": ctx.recipe.name, "recipe_hash": ctx.recipe_hash}}
    scene = Scene.from_dict(src.scene) if src.kind == "scene" else None
    out = []
    if o.generation:
        caps = {"en": caption(scene), "zh": caption_zh(scene)} if scene else {"en": src.caption, "zh": None}
        for lang in ctx.recipe.languages:
            if caps.get(lang):
                sid = ("zh_" if lang == "zh" else "") + "gen_" + xxhash.xxh3_64_hexdigest(
                    f"{ctx.recipe_hash}:{src.key}".encode())
                out.append(_sample(sid, src.source, "generation", lang,
                                   generation_messages(caps[lang], lang), [image],
                                   {**base, "caption": caps[lang]}))
    if o.understanding and scene is not None:
        seed = derive_seed(ctx.recipe.seed, "qa", src.key)
        qa = scene_qa(scene, src.size, seed=seed)
        turns = o.understanding_turns
        picked = random.Random(seed).sample(qa, min(o.understanding_per_source * turns, len(qa)))
        for k in range(0, len(picked), turns):
            group = picked[k:k + turns]
            q = group[0]
            key = q.question if turns == 1 else "\0".join(g.question for g in group)
            sid = "und_" + xxhash.xxh3_64_hexdigest(f"{ctx.recipe_hash}:{src.key}:{key}".encode())
            meta = {**base, "qa": _qa_meta(q)}  # meta.qa: the first (image) turn's question
            if turns > 1:
                meta["qa_turns"] = [_qa_meta(g) for g in group]
            out.append(_sample(sid, src.source, "understanding", "en",
                               understanding_messages(q.question, q.answer,
                                                      *[(g.question, g.answer) for g in group[1:]]),
                               [image], meta))
    return out


def _qa_meta(q: Any) -> dict[str, Any]:
    return {"kind": q.kind, "format": q.format, "answer_text": q.answer_text}


# -- one shard
@dataclass
class ShardResult:
    shard_id: str
    split: str
    planned: int = 0
    triplets: int = 0
    rejected: int = 0
    samples: int = 0
    by_edit_type: dict[str, dict[str, int]] = field(default_factory=dict)
    by_task: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    dataset: Optional[dict[str, int]] = None
    instruction_by: dict[str, int] = field(default_factory=dict)  # vlm / template:<reason> (captioner)
    # the captioner's other texts: reverse_instruction, source_caption, target_caption -> the same
    texts_by: dict[str, dict[str, int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


class _Rejects:
    def __init__(self, path: Path, res: ShardResult) -> None:
        self.f = open(path, "w", encoding="utf-8")
        self.res = res

    def add(self, row: dict[str, Any], edit_type: Optional[str] = None) -> None:
        self.f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        k = reason_kind(row["reason"])
        self.res.reasons[k] = self.res.reasons.get(k, 0) + 1
        if edit_type:
            self.res.by_edit_type[edit_type]["rejected"] += 1
            self.res.rejected += 1


def run_shard(plan: ShardPlan, ctx: BuildContext) -> dict[str, Any]:
    """Build one shard (see module doc) and return its marker. Idempotent: a finished shard
    (marker present) is returned as it is, without work."""
    done = read_marker(ctx.out, plan.shard_id)
    if done is not None:
        return done
    import torch

    torch.set_num_threads(ctx.torch_threads)
    p = shard_paths(ctx.out, plan.shard_id)
    shutil.rmtree(p["staging"], ignore_errors=True)
    p["staging"].mkdir(parents=True)
    t0 = time.perf_counter()
    res = ShardResult(plan.shard_id, plan.split)
    rejects = _Rejects(p["staging"] / "rejects.jsonl", res)
    table = TripletTable(p["staging"] / "triplets.parquet") \
        if ctx.recipe.outputs.triplets and plan.dataset is None else None
    writer = ShardWriter(p["staging"] / "data", shard_bytes=HUGE)
    try:
        if plan.dataset is not None:
            _run_dataset(plan, plan.dataset, ctx, writer, rejects, res)
        else:
            _run_edits(plan, ctx, writer, table, rejects, res)
        manifest = writer.close()
    finally:
        rejects.f.close()
    res.seconds["total"] = round(time.perf_counter() - t0, 3)
    return _publish(plan, ctx, p, manifest, table, res)


def _count_texts(res: ShardResult, lineage: dict[str, Any], languages: list[str]) -> None:
    """Count, per text and language the recipe keeps, whether the captioner's text or the
    template (and why) was used."""
    def add(into: dict[str, int], by_lang: Optional[dict[str, str]]) -> None:
        for lang, by in (by_lang or {}).items():
            if lang in languages:
                into[by] = into.get(by, 0) + 1

    add(res.instruction_by, lineage.get("instruction_by"))
    if "reverse_instruction_by" in lineage:
        add(res.texts_by.setdefault("reverse_instruction", {}), lineage["reverse_instruction_by"])
    for side, by_lang in (lineage.get("caption_by") or {}).items():
        add(res.texts_by.setdefault(f"{side}_caption", {}), by_lang)


def _run_edits(plan: ShardPlan, ctx: BuildContext, writer: ShardWriter, table, rejects: _Rejects,
               res: ShardResult) -> None:
    from nexus_gen.scoring.edit_scorer import EditTriplet

    r = ctx.recipe
    backend = BACKENDS[r.models.editor].from_recipe(r, ctx.base, ctx.device)
    ids = model_ids(ctx)
    ids.update(backend.describe_models())  # the backend's roles as resolved (same as given for scenes)
    lineage = {"recipe": r.name, "recipe_hash": ctx.recipe_hash, "models": ids}
    t0 = time.perf_counter()
    made: list[tuple[WorkItem, EditOutput, tuple[dict, dict], dict]] = []
    # a backend that batches its pipeline calls edits the whole shard at once (same order)
    batched = backend.edit_batch([(it.source, it.spec, it.seed) for it in plan.items]) \
        if hasattr(backend, "edit_batch") else None
    for n, item in enumerate(plan.items):
        et = item.spec.type
        res.planned += 1
        res.by_edit_type.setdefault(et, {"planned": 0, "triplets": 0, "rejected": 0})["planned"] += 1
        try:
            if batched is None:
                out = backend.edit(item.source, item.spec, item.seed)
            elif isinstance(batched[n], Exception):
                raise batched[n]
            else:
                out = batched[n]
            verdict = backend.verify(out)
        except EditError as exc:
            rejects.add(_reject_row(plan, item, str(exc)), et)
            continue
        except Exception as exc:  # a backend error on one item never stops the shard
            rejects.add(_reject_row(plan, item, f"backend error ({type(exc).__name__}: {exc})"), et)
            continue
        made.append((item, out, (_image(out.source), _image(out.target)), verdict))
        _count_texts(res, out.lineage, r.languages)
    res.seconds["edit"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    scorer = _scorer(ctx)
    triplets = [EditTriplet(item.id, imgs[0]["bytes"], imgs[1]["bytes"], out.instruction["en"],
                            out.source_caption.get("en"), out.target_caption.get("en"), out.mask)
                for item, out, imgs, _ in made]
    rows = scorer.score_all(triplets) if triplets else []
    res.seconds["score"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    for (item, out, imgs, verdict), row in zip(made, rows):
        et = item.spec.type
        if row["error"] is not None:
            rejects.add(_reject_row(plan, item, f"scoring failed: {row['error']}"), et)
            continue
        scores = {c: row[c] for c in scorer.columns} | {k: verdict.get(k) for k in VERDICT_COLUMNS} \
            | {k: verdict[k] for k in DETECTOR_COLUMNS if verdict.get(k) is not None}
        item_lineage = {**lineage, "seed": item.seed, "edit": item.spec.to_json(),
                        "source": item.source.source}
        samples = edit_samples(item, out, imgs, scores, plan.split, r.languages, item_lineage)
        bad = [f"{s['id']}: {'; '.join(pr)}" for s in samples if (pr := sample_problems(s))]
        if bad:
            rejects.add(_reject_row(plan, item, f"invalid sample ({bad[0]})"), et)
            continue
        for s in samples:
            _write(writer, s, res)
        if table is not None:
            table.add(item, out, imgs, scores, plan.split,
                      {**item_lineage, "versions": ctx.versions, "backend": out.lineage})
        res.triplets += 1
        res.by_edit_type[et]["triplets"] += 1
    for src in plan.sources:
        for s in source_samples(src, ctx, plan.split):
            _write(writer, s, res)
    res.seconds["write"] = round(time.perf_counter() - t0, 3)


def _write(writer: ShardWriter, sample: dict[str, Any], res: ShardResult) -> None:
    writer.write(sample)
    res.samples += 1
    res.by_task[sample["task"]] = res.by_task.get(sample["task"], 0) + 1


def _reject_row(plan: ShardPlan, item: WorkItem, reason: str) -> dict[str, Any]:
    return {"id": item.id, "shard": plan.shard_id, "source": item.source.source,
            "source_key": item.source.key, "path": item.source.path, "edit": item.spec.to_json(),
            "seed": item.seed, "reason": reason}


def _run_dataset(plan: ShardPlan, part: DatasetPart, ctx: BuildContext, writer: ShardWriter,
                 rejects: _Rejects, res: ShardResult) -> None:
    """Existing data through its converter: this split's samples, editing ones scored."""
    from nexus_gen.data.convert import FORMATS
    from nexus_gen.data.convert.base import BuildOptions, DraftError, Reject, build_sample
    from nexus_gen.scoring.shard_scores import SampleError, triplet_from_sample

    counts = {"input": 0, "accepted": 0, "rejected": 0}  # input and rejected: first split's plan only
    res.dataset = counts
    mod = FORMATS[part.format]
    scorer = _scorer(ctx)
    pending: list[dict[str, Any]] = []

    def flush() -> None:
        trips = []
        for s in pending:
            try:
                trips.append(triplet_from_sample(s) if s["task"] == "editing" else None)
            except SampleError:
                trips.append(None)
        todo = [t for t in trips if t is not None]
        scored = {row["id"]: row for row in scorer.score_all(todo)} if todo else {}
        for s in pending:
            row = scored.get(s["id"])
            if row is not None:
                s["meta"]["scores"] = {c: row[c] for c in scorer.columns}
            _write(writer, s, res)
        pending.clear()

    from nexus_gen.data.records import input_names

    kwargs: dict[str, Any] = {"source": part.source}
    if part.language and part.format in ("captions", "edit-pairs", "imagepulse"):
        kwargs["language"] = part.language
    opts = BuildOptions(Path(part.images_root))
    paths = [Path(p) for p in part.inputs]
    seen: set[str] = set()  # every split's plan reads every record: the same decisions in each
    for path, name in zip(paths, input_names(paths)):
        for item in mod.read(path, name=name, **kwargs):
            counts["input"] += part.emit_rejects
            try:
                if isinstance(item, Reject):
                    raise DraftError(item.reason)
                sample = build_sample(item, opts)
                if sample["id"] in seen:
                    raise DraftError(f"duplicate id {sample['id']!r}: an earlier sample of this source has it")
                seen.add(sample["id"])
            except Exception as exc:
                counts["rejected"] += part.emit_rejects
                if part.emit_rejects:
                    loc = item.location
                    rejects.add({"id": None if isinstance(item, Reject) else str(item.id),
                                 "shard": plan.shard_id, "source": part.source, "file": loc.file,
                                 "line": loc.line, "reason": str(exc)})
                continue
            split = _dataset_split(sample, ctx)
            if split != plan.split:
                continue
            counts["accepted"] += 1
            sample["meta"].update(split=split, source_key=_dataset_key(sample),
                                  triplet_id=sample["meta"].get("pair_id") or sample["id"])
            pending.append(sample)
            if len(pending) >= 256:
                flush()
    flush()


def _dataset_key(sample: dict[str, Any]) -> str:
    """The fingerprint that decides a dataset sample's split: the original source image of an
    edit (images[1] of a reverse direction), else the first image, else the id."""
    h = sample["meta"].get("image_xxh3_128") or []
    if sample["task"] == "editing" and len(h) >= 2:
        return h[1] if sample["meta"].get("direction") == "reverse" else h[0]
    return h[0] if h else "id:" + str(sample["id"])


def _dataset_split(sample: dict[str, Any], ctx: BuildContext) -> str:
    from nexus_gen.edit.plan import assign_split_by_hash

    key = _dataset_key(sample)
    return ctx.splits_of.get(key) or assign_split_by_hash(key, ctx.recipe.splits, ctx.recipe.seed)


def _publish(plan: ShardPlan, ctx: BuildContext, p: dict[str, Path], manifest: dict[str, Any],
             table, res: ShardResult) -> dict[str, Any]:
    """Move the staged files to their final names, then write the marker (last)."""
    marker: dict[str, Any] = {"shard_id": plan.shard_id, "split": plan.split, "recipe_hash": ctx.recipe_hash}
    staged_data = [p["staging"] / "data" / s["file"] for s in manifest["shards"]]
    if staged_data:
        s = manifest["shards"][0]
        p["data"].parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged_data[0], p["data"])
        marker["data"] = {"path": f"{DATA_DIR}/{p['data'].name}", "file": p["data"].name,
                          "rows": s["rows"], "bytes": s["bytes"], "sha256": s["sha256"],
                          "tasks": s.get("tasks", {}), "split": plan.split}
    if table is not None:
        rows = table.close()
        if rows:
            p["triplets"].parent.mkdir(parents=True, exist_ok=True)
            os.replace(table.path, p["triplets"])
            marker["triplets"] = {"path": f"{TRIPLETS_DIR}/{p['triplets'].name}",
                                  "file": p["triplets"].name, "rows": rows,
                                  "bytes": p["triplets"].stat().st_size,
                                  "sha256": file_sha256(p["triplets"]), "split": plan.split}
    p["rejects"].parent.mkdir(parents=True, exist_ok=True)
    os.replace(p["staging"] / "rejects.jsonl", p["rejects"])
    marker["counts"] = {k: getattr(res, k) for k in ("planned", "triplets", "rejected", "samples",
                                                     "by_edit_type", "by_task", "reasons", "dataset")}
    if res.instruction_by:
        marker["counts"]["instruction_by"] = res.instruction_by
    if res.texts_by:
        marker["counts"]["texts_by"] = res.texts_by
    marker["seconds"] = res.seconds
    p["done"].parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(p["done"], marker, sort_keys=True)
    shutil.rmtree(p["staging"], ignore_errors=True)
    log.info("shard %s: %d triplets, %d samples, %d rejected", plan.shard_id, res.triplets,
             res.samples, res.rejected)
    return marker

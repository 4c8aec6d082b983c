"""Score shards: unified samples -> a scores parquet keyed by sample id (join it back to the
shards by `id`), plus rejects (samples that could not be scored, with why).

- Editing samples (images[0] = source, images[1] = target, the instruction in the user turn,
  optional `meta["captions"]` aligned with the images) get the edit metrics (`EditScorer`).
- Generation samples (images[0] = the generated image, the prompt parsed from the user turn with
  the reference templates) get `clip_t` and `clipscore` of image vs prompt.
- Understanding samples are skipped and counted.

Every row carries what filter policies need: `task`, `edit_type`, `direction` (from `meta`),
`source_key` (the group key of `top_k`: `meta["source_key"]` if present, else the source image's
fingerprint `meta["image_xxh3_128"][0]`, else the xxh3-128 of the source image bytes) and
`prompt_id` (`meta["prompt_id"]`, when there is one). A caption-less edit has null `clip_t`,
`clip_t_source`, `clip_dir`: the policies' `if_missing` decides what a null means.

Text with Chinese characters (a caption, a prompt) is scored with Chinese-CLIP (`chinese_clip`):
OpenAI's CLIP cannot read it. Without a Chinese-CLIP its text scores stay null and the run
counts them (`ScoreRun.chinese_unscored`); they are never scored with the English model."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from nexus_gen.data.shards import iter_samples
from nexus_gen.data.templates import generation_prompt
from nexus_gen.scoring.chinese_clip import is_chinese
from nexus_gen.scoring.edit_scorer import EditScorer, EditTriplet, metric_columns
from nexus_gen.scoring.generation import GENERATION_METRICS, GenerationItem, score_generations
from nexus_gen.scoring.image_inputs import HASH_FIELD

log = logging.getLogger(__name__)

SCHEMA_KEY = b"nexus_gen.scores"
IMAGE_HASHES = "image_xxh3_128"  # meta key of the per-image fingerprints a build writes
KEY_COLUMNS = ("id", "task", "edit_type", "direction", "source_key", "prompt_id")
TEXT_METRICS = ("clip_t", "clipscore", "clip_dir")  # metrics that read a caption or prompt


class SampleError(ValueError):
    """A sample cannot be scored; the message says why."""


def _meta(sample: dict[str, Any]) -> dict[str, Any]:
    meta = sample.get("meta")
    return meta if isinstance(meta, dict) else {}


def _image_ref(sample: dict[str, Any], i: int, which: str) -> Union[bytes, str, dict]:
    """Image `i` of a sample for the scorers: its stored bytes (else its path), as a struct
    carrying the build's fingerprint when `meta.image_xxh3_128` has it (not hashed again)."""
    im = (sample.get("images") or [None] * (i + 1))[i]
    if not isinstance(im, dict):
        raise SampleError(f"{which} image is not a {{bytes, path}} struct")
    ref = im.get("bytes") or im.get("path")
    if not ref:
        raise SampleError(f"{which} image has neither bytes nor path")
    hashes = _meta(sample).get(IMAGE_HASHES)
    known = hashes[i] if isinstance(hashes, list) and len(hashes) > i else None
    if isinstance(known, str) and known and im.get("bytes"):
        return {"bytes": im["bytes"], "path": im.get("path"), HASH_FIELD: known}
    return ref


def _user_text(sample: dict[str, Any]) -> str:
    user = [m.get("content") or "" for m in (sample.get("messages") or []) if m.get("role") == "user"]
    return user[0] if user else ""


def source_key(sample: dict[str, Any]) -> Optional[str]:
    """The group key of a sample's source image: `meta["source_key"]`, else the build's
    fingerprint `meta["image_xxh3_128"][0]`, else the xxh3-128 hex of the image bytes (None if
    the image cannot be read: the sample is then rejected anyway)."""
    meta = _meta(sample)
    if isinstance(meta.get("source_key"), str) and meta["source_key"]:
        return meta["source_key"]
    hashes = meta.get(IMAGE_HASHES)
    if isinstance(hashes, list) and hashes and isinstance(hashes[0], str) and hashes[0]:
        return hashes[0]
    images = sample.get("images") or []
    im = images[0] if images and isinstance(images[0], dict) else {}
    if im.get("bytes"):
        return xxhash.xxh3_128_hexdigest(im["bytes"])
    if im.get("path"):
        try:
            return xxhash.xxh3_128_hexdigest(Path(im["path"]).read_bytes())
        except OSError:
            return None
    return None


def triplet_from_sample(sample: dict[str, Any]) -> EditTriplet:
    """An editing sample as an `EditTriplet`; raises `SampleError` naming the problem."""
    sid = str(sample.get("id"))
    if sample.get("task") != "editing":
        raise SampleError(f"task is {sample.get('task')!r}, not 'editing'")
    images = sample.get("images") or []
    if len(images) < 2:
        raise SampleError(f"an editing sample needs 2 images (source, target), has {len(images)}")
    instruction = " ".join(_user_text(sample).replace("<image>", " ").split())
    caps = _meta(sample).get("captions")
    caps = list(caps) if isinstance(caps, (list, tuple)) else []
    caps += [None] * (2 - len(caps))
    cap = [c if isinstance(c, str) and c.strip() else None for c in caps[:2]]
    return EditTriplet(sid, _image_ref(sample, 0, "source"), _image_ref(sample, 1, "target"),
                       instruction, cap[0], cap[1])


def generation_from_sample(sample: dict[str, Any]) -> GenerationItem:
    """A generation sample as a `GenerationItem` (prompt parsed with the reference templates)."""
    if not sample.get("images"):
        raise SampleError("a generation sample needs its generated image, has none")
    prompt = generation_prompt(_user_text(sample))
    if not prompt:
        raise SampleError("no prompt in the user turn")
    return GenerationItem(str(sample.get("id")), _image_ref(sample, 0, "generated"), prompt)


def _sample_texts(sample: dict[str, Any]) -> list[str]:
    """The texts a sample's text metrics would encode (captions of an edit, a generation prompt)."""
    if sample.get("task") == "editing":
        caps = _meta(sample).get("captions")
        return [c for c in (caps if isinstance(caps, (list, tuple)) else []) if isinstance(c, str)]
    if sample.get("task") == "generation":
        return [generation_prompt(_user_text(sample))]
    return []


def first_chinese_sample(paths: Iterable[Union[str, Path]]) -> Optional[str]:
    """The id of the first sample whose captions or prompt hold Chinese text, else None (reads
    only the text columns: cheap, so a run can load Chinese-CLIP, or refuse, before any work)."""
    for s in iter_samples(paths, columns=["id", "task", "messages", "meta"]):
        if any(is_chinese(t) for t in _sample_texts(s)):
            return str(s.get("id"))
    return None


@dataclass
class ScoreRun:
    """Counts of one scoring run: in = scored + rejected + sum(skipped)."""

    rows_in: int = 0
    scored: int = 0
    rejected: int = 0
    by_task: dict[str, int] = field(default_factory=dict)  # scored rows per task
    skipped: dict[str, int] = field(default_factory=dict)  # not scored, by reason
    chinese: int = 0  # samples whose text was scored with Chinese-CLIP
    chinese_unscored: int = 0  # samples with Chinese text left without text scores (no Chinese-CLIP)
    out: str = ""
    rejects: str = ""
    models: dict[str, str] = field(default_factory=dict)

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def _schema(columns: list[str], metrics: tuple[str, ...], models: dict[str, Optional[str]]) -> pa.Schema:
    return pa.schema([(c, pa.string()) for c in KEY_COLUMNS] + [(c, pa.float64()) for c in columns],
                     metadata={SCHEMA_KEY: json.dumps({"metrics": list(metrics), "models": models}).encode()})


def check_outputs(out: Union[str, Path], rejects: Optional[Union[str, Path]] = None) -> tuple[Path, Path]:
    """The scores and rejects paths, checked before any work: each must be a file path (not an
    existing folder) whose parent is, or can be, a folder. Raises `ValueError` naming the path."""
    out = Path(out)
    rej = Path(rejects) if rejects else out.with_name(out.stem + ".rejects.jsonl")
    for what, p in (("scores file", out), ("rejects file", rej)):
        if p.is_dir():
            raise ValueError(f"{what} {p} is an existing folder; give a file path, e.g. {p / 'scores.parquet'}"
                             if what == "scores file" else f"{what} {p} is an existing folder; give a file path")
        parent = next((q for q in [p.parent, *p.parent.parents] if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise ValueError(f"{what} {p}: {parent} is a file, not a folder")
    return out, rej


def score_shards(paths: Iterable[Union[str, Path]], out: Union[str, Path], *,
                 scorer: EditScorer, rejects: Optional[Union[str, Path]] = None,
                 chinese_clip=None, chunk_size: int = 512) -> ScoreRun:
    """Score every editing and generation sample of the shards into `out` (parquet, written to
    a temporary name and renamed) and write unscorable ones to `rejects` (jsonl: id, reason).
    `chinese_clip` (a `ChineseClipEncoder`) scores Chinese captions and prompts."""
    out, rejects = check_outputs(out, rejects)
    out.parent.mkdir(parents=True, exist_ok=True)
    rejects.parent.mkdir(parents=True, exist_ok=True)
    gen_metrics = tuple(m for m in GENERATION_METRICS if m in scorer.metrics) if scorer.clip else ()
    text_metrics = [m for m in scorer.metrics if m in TEXT_METRICS]
    zh_scorer = EditScorer(chinese_clip, None, metrics=text_metrics, batch_size=scorer.batch_size,
                           workers=scorer.workers) if chinese_clip is not None and text_metrics else None
    zh_columns = metric_columns(text_metrics)
    models = {"clip": scorer.clip.model_id if scorer.clip else None,
              "dino": scorer.dino.model_id if scorer.dino else None,
              "chinese_clip": chinese_clip.model_id if chinese_clip is not None else None}
    columns = list(scorer.columns) + [c for c in gen_metrics if c not in scorer.columns]
    schema = _schema(columns, tuple(dict.fromkeys(scorer.metrics)), models)
    run = ScoreRun(out=str(out), rejects=str(rejects), models={k: v for k, v in models.items() if v})
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_rej = rejects.with_name(f".{rejects.name}.tmp")

    def skip(reason: str) -> None:
        run.skipped[reason] = run.skipped.get(reason, 0) + 1

    def chunks() -> Iterator[list[dict]]:
        buf: list[dict] = []
        for s in iter_samples(paths):
            buf.append(s)
            if len(buf) >= chunk_size:
                yield buf
                buf = []
        if buf:
            yield buf

    def score_chunk(samples: list[dict], rej_f) -> list[dict]:
        """Rows of one chunk in input order; rejects written as they are found."""
        rows: dict[int, dict] = {}
        edits: list[tuple[int, EditTriplet]] = []
        gens: list[tuple[int, GenerationItem]] = []
        for i, s in enumerate(samples):
            run.rows_in += 1
            task = s.get("task")
            if task == "generation" and not gen_metrics:
                skip("generation (no clip_t or clipscore metric asked)")
                continue
            if task not in ("editing", "generation"):
                skip(str(task or "no task"))
                continue
            try:
                item = triplet_from_sample(s) if task == "editing" else generation_from_sample(s)
            except SampleError as exc:
                run.rejected += 1
                rej_f.write(json.dumps({"id": s.get("id"), "reason": str(exc)}, ensure_ascii=False) + "\n")
                continue
            meta = _meta(s)
            rows[i] = {"id": str(s.get("id")), "task": task,
                       **{k: meta[k] if isinstance(meta.get(k), str) else None
                          for k in ("edit_type", "direction", "prompt_id")},
                       "source_key": source_key(s)}
            (edits if task == "editing" else gens).append((i, item))  # type: ignore[arg-type]
        results: dict[int, dict] = {}
        # edits: Chinese captions leave the English scorer and go to Chinese-CLIP
        zh = [(i, t) for i, t in edits if is_chinese(t.source_caption) or is_chinese(t.target_caption)]
        zh_ids = {i for i, _ in zh}
        plain = [t if i not in zh_ids else replace(t, source_caption=None, target_caption=None)
                 for i, t in edits]
        for (i, _), r in zip(edits, scorer.score_all(plain, chunk_size=max(1, len(plain)))):
            results[i] = r
        if zh and zh_scorer is not None:
            for (i, _), r in zip(zh, zh_scorer.score_all([t for _, t in zh], chunk_size=len(zh))):
                if results[i]["error"] is None:
                    results[i].update({c: r[c] for c in zh_columns})
            run.chinese += len(zh)
        elif zh and text_metrics:
            run.chinese_unscored += len(zh)
        # generations: each prompt with the CLIP that reads its language
        for zh_prompt in (False, True):
            part = [(i, g) for i, g in gens if is_chinese(g.prompt) == zh_prompt]
            if not part:
                continue
            enc = chinese_clip if zh_prompt else scorer.clip
            if enc is None:
                run.chinese_unscored += len(part)
                for i, g in part:
                    results[i] = {"id": g.id, "error": None}
                continue
            run.chinese += len(part) if zh_prompt else 0
            got = score_generations(enc, [g for _, g in part], gen_metrics,
                                    batch_size=scorer.batch_size, workers=scorer.workers)
            for (i, _), r in zip(part, got):
                results[i] = r
        kept = []
        for i in sorted(rows):
            r = results[i]
            if r["error"] is not None:
                run.rejected += 1
                rej_f.write(json.dumps({"id": rows[i]["id"], "reason": r["error"]}, ensure_ascii=False) + "\n")
                continue
            run.scored += 1
            run.by_task[rows[i]["task"]] = run.by_task.get(rows[i]["task"], 0) + 1
            kept.append({**rows[i], **{c: r.get(c) for c in columns}})
        return kept

    try:
        with pq.ParquetWriter(tmp_out, schema) as writer, open(tmp_rej, "w", encoding="utf-8") as rej_f:
            for samples in chunks():
                kept = score_chunk(samples, rej_f)
                if kept:
                    writer.write_table(pa.Table.from_pylist(kept, schema=schema))
    except BaseException:
        tmp_out.unlink(missing_ok=True)
        tmp_rej.unlink(missing_ok=True)
        raise
    os.replace(tmp_out, out)
    os.replace(tmp_rej, rejects)
    if run.chinese_unscored:
        log.warning("%d samples with Chinese text have no text scores: no Chinese-CLIP was given "
                    "(English CLIP cannot read Chinese)", run.chinese_unscored)
    log.info("scored %d of %d samples (%s; %d rejected, skipped %s) -> %s", run.scored, run.rows_in,
             run.by_task, run.rejected, run.skipped, out)
    return run


def read_scores_metadata(path: Union[str, Path]) -> dict[str, Any]:
    """The metrics and model ids recorded in a scores parquet."""
    md = pq.read_schema(path).metadata or {}
    if SCHEMA_KEY not in md:
        raise ValueError(f"{path}: not a nexus-gen scores file (no {SCHEMA_KEY.decode()} metadata)")
    return json.loads(md[SCHEMA_KEY])

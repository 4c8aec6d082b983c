"""Score editing shards: unified samples -> edit triplets -> a scores parquet keyed by sample id
(join it back to the shards by `id`), plus rejects (samples that could not be scored, with why).

An editing sample has images[0] = source, images[1] = target, the instruction in the user turn
(`<image>` tags removed) and optional `meta["captions"]` aligned with the images."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import pyarrow as pa
import pyarrow.parquet as pq

from nexus_gen.data.shards import iter_samples
from nexus_gen.scoring.edit_scorer import EditScorer, EditTriplet

log = logging.getLogger(__name__)

SCHEMA_KEY = b"nexus_gen.scores"


class SampleError(ValueError):
    """A sample cannot become an edit triplet; the message says why."""


def _image_ref(im: Any, which: str) -> Union[bytes, str]:
    """The stored bytes of an HF Image struct, else its path (the scorers read either)."""
    if not isinstance(im, dict):
        raise SampleError(f"{which} image is not a {{bytes, path}} struct")
    ref = im.get("bytes") or im.get("path")
    if not ref:
        raise SampleError(f"{which} image has neither bytes nor path")
    return ref


def triplet_from_sample(sample: dict[str, Any]) -> EditTriplet:
    """An editing sample as an `EditTriplet`; raises `SampleError` naming the problem."""
    sid = str(sample.get("id"))
    if sample.get("task") != "editing":
        raise SampleError(f"task is {sample.get('task')!r}, not 'editing'")
    images = sample.get("images") or []
    if len(images) < 2:
        raise SampleError(f"an editing sample needs 2 images (source, target), has {len(images)}")
    user = [m.get("content") or "" for m in (sample.get("messages") or []) if m.get("role") == "user"]
    instruction = " ".join(user[0].replace("<image>", " ").split()) if user else ""
    meta = sample.get("meta") or {}
    caps = meta.get("captions") if isinstance(meta, dict) else None
    caps = list(caps) if isinstance(caps, (list, tuple)) else []
    caps += [None] * (2 - len(caps))
    cap = [c if isinstance(c, str) and c.strip() else None for c in caps[:2]]
    return EditTriplet(sid, _image_ref(images[0], "source"), _image_ref(images[1], "target"),
                       instruction, cap[0], cap[1])


@dataclass
class ScoreRun:
    """Counts of one scoring run: in = scored + rejected + skipped (not editing)."""

    rows_in: int = 0
    scored: int = 0
    rejected: int = 0
    skipped_not_editing: int = 0
    out: str = ""
    rejects: str = ""
    models: dict[str, str] = field(default_factory=dict)


def score_shards(paths: Iterable[Union[str, Path]], out: Union[str, Path], *,
                 scorer: EditScorer, rejects: Optional[Union[str, Path]] = None,
                 chunk_size: int = 512) -> ScoreRun:
    """Score every editing sample of the shards into `out` (parquet, written to a temporary name
    and renamed) and write unscorable ones to `rejects` (jsonl: id, reason)."""
    out = Path(out)
    rejects = Path(rejects) if rejects else out.with_name(out.stem + ".rejects.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    models = {"clip": scorer.clip.model_id if scorer.clip else None,
              "dino": scorer.dino.model_id if scorer.dino else None}
    schema = pa.schema([("id", pa.string()), ("edit_type", pa.string()), ("direction", pa.string())]
                       + [(c, pa.float64()) for c in scorer.columns],
                       metadata={SCHEMA_KEY: json.dumps({"metrics": list(scorer.metrics),
                                                         "models": models}).encode()})
    run = ScoreRun(out=str(out), rejects=str(rejects), models={k: v for k, v in models.items() if v})
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_rej = rejects.with_name(f".{rejects.name}.tmp")
    extra: dict[str, tuple[Optional[str], Optional[str]]] = {}

    def triplets(rej_f) -> Iterator[EditTriplet]:
        for s in iter_samples(paths):
            run.rows_in += 1
            if s.get("task") != "editing":
                run.skipped_not_editing += 1
                continue
            try:
                t = triplet_from_sample(s)
            except SampleError as exc:
                run.rejected += 1
                rej_f.write(json.dumps({"id": s.get("id"), "reason": str(exc)}) + "\n")
                continue
            meta = s.get("meta") if isinstance(s.get("meta"), dict) else {}
            et, dr = meta.get("edit_type"), meta.get("direction")
            extra[t.id] = (et if isinstance(et, str) else None, dr if isinstance(dr, str) else None)
            yield t

    with pq.ParquetWriter(tmp_out, schema) as writer, open(tmp_rej, "w", encoding="utf-8") as rej_f:
        buf: list[dict] = []

        def flush() -> None:
            if buf:
                writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                buf.clear()

        for row in scorer.score(triplets(rej_f), chunk_size=chunk_size):
            et, dr = extra.pop(row["id"], (None, None))
            if row["error"] is not None:
                run.rejected += 1
                rej_f.write(json.dumps({"id": row["id"], "reason": row["error"]}) + "\n")
                continue
            run.scored += 1
            buf.append({"id": row["id"], "edit_type": et, "direction": dr,
                        **{c: row[c] for c in scorer.columns}})
            if len(buf) >= chunk_size:
                flush()
        flush()
    os.replace(tmp_out, out)
    os.replace(tmp_rej, rejects)
    log.info("scored %d of %d samples (%d rejected, %d not editing) -> %s", run.scored, run.rows_in,
             run.rejected, run.skipped_not_editing, out)
    return run


def read_scores_metadata(path: Union[str, Path]) -> dict[str, Any]:
    """The metrics and model ids recorded in a scores parquet."""
    md = pq.read_schema(path).metadata or {}
    if SCHEMA_KEY not in md:
        raise ValueError(f"{path}: not a nexus-gen scores file (no {SCHEMA_KEY.decode()} metadata)")
    return json.loads(md[SCHEMA_KEY])

"""Score many edit triplets (source, target, instruction, captions) with shared encodings.

Every distinct image and text of a chunk is encoded once (and cached across chunks and calls);
each distinct image is read, keyed and decoded once for CLIP, DINO and the pixel metrics
together, in workers, while the text forward passes run. Columns per metric:
  clip_t    -> clip_t (target image vs target caption), clip_t_source (source vs its caption)
  clipscore -> clipscore, clipscore_source ("A photo depicts " + caption, 2.5 * max(cos, 0))
  clip_i    -> clip_i (source vs target image)
  clip_dir  -> clip_dir (InstructPix2Pix directional similarity, source -> target)
  dino      -> dino (source vs target DINO CLS cosine)
  l1, l2    -> l1, l2 (target resized to the source size, [0, 1] pixels)
  l1_masked -> l1_inside, l1_outside (needs the triplet's edit mask)
A metric whose inputs are missing (no captions, no mask) is None. A triplet with an unreadable
image gets `error` set (naming the image) and None metrics; the rest of the chunk is unaffected."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from nexus_gen.scoring import metrics as M
from nexus_gen.scoring.clip import ClipEncoder  # or a ChineseClipEncoder: same API
from nexus_gen.scoring.dino import DinoEncoder
from nexus_gen.scoring.image_encoder import ImageEmbeddings, ImageJob
from nexus_gen.scoring.image_inputs import HASH_FIELD, ImageInput
from nexus_gen.scoring.pixels import PixelPairs
from nexus_gen.scoring.prefetch import default_workers

log = logging.getLogger(__name__)

METRIC_COLUMNS: dict[str, tuple[str, ...]] = {
    "clip_t": ("clip_t", "clip_t_source"),
    "clipscore": ("clipscore", "clipscore_source"),
    "clip_i": ("clip_i",),
    "clip_dir": ("clip_dir",),
    "dino": ("dino",),
    "l1": ("l1",),
    "l2": ("l2",),
    "l1_masked": ("l1_inside", "l1_outside"),
}
CLIP_METRICS = {"clip_t", "clipscore", "clip_i", "clip_dir"}
PIXEL_METRICS = {"l1", "l2", "l1_masked"}


@dataclass
class EditTriplet:
    """One edit: `source` -> `target` by `instruction`; captions describe each image."""

    id: str
    source: ImageInput
    target: ImageInput
    instruction: str = ""
    source_caption: Optional[str] = None
    target_caption: Optional[str] = None
    mask: Any = None  # edit region: bool [H, W] array, PIL image, path or bytes (non-zero = inside)


def parse_metrics(metrics: Iterable[str] | str) -> tuple[str, ...]:
    """Validate metric names (a list or a comma-separated string), keeping their order."""
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    names = [m for m in names if m]
    if not names:
        raise ValueError("no metrics given")
    bad = [m for m in names if m not in METRIC_COLUMNS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; choose from {sorted(METRIC_COLUMNS)}")
    return tuple(dict.fromkeys(names))


def metric_columns(metrics: Sequence[str]) -> list[str]:
    """Output column names for the given metrics, in order."""
    return [c for m in metrics for c in METRIC_COLUMNS[m]]


def _dedupe(images: list[ImageInput]) -> tuple[list[ImageInput], list[int]]:
    """Unique inputs (by value for paths/bytes, by content key for structs that carry one, by
    identity otherwise) and the index of each."""
    uniq: list[ImageInput] = []
    where: dict[Any, int] = {}
    idx = []
    for im in images:
        known = im.get(HASH_FIELD) if isinstance(im, dict) else None
        key = ("v", os.fspath(im)) if isinstance(im, (str, os.PathLike)) else \
            ("b", bytes(im)) if isinstance(im, (bytes, bytearray)) else \
            ("h", known) if isinstance(known, str) and known else ("o", id(im))
        if key not in where:
            where[key] = len(uniq)
            uniq.append(im)
        idx.append(where[key])
    return uniq, idx


class EditScorer:
    """Scores edit triplets with one CLIP and (optionally) one DINO encoder."""

    def __init__(self, clip: Optional[ClipEncoder] = None, dino: Optional[DinoEncoder] = None, *,
                 metrics: Iterable[str] | str = ("clip_t", "clip_i", "clip_dir"),
                 batch_size: int = 32, workers: Optional[int] = None) -> None:
        self.metrics = parse_metrics(metrics)
        if CLIP_METRICS & set(self.metrics) and clip is None:
            raise ValueError(f"metrics {sorted(CLIP_METRICS & set(self.metrics))} need a CLIP encoder")
        if "dino" in self.metrics and dino is None:
            raise ValueError("metric 'dino' needs a DINO encoder")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.clip, self.dino = clip, dino
        self.batch_size = batch_size
        self.workers = workers or default_workers()
        self.columns = metric_columns(self.metrics)

    @property
    def clipscore_prefix(self) -> str:
        """CLIPScore's caption prefix (English); an encoder may name its own (Chinese-CLIP: none)."""
        return getattr(self.clip, "clipscore_prefix", M.CLIPSCORE_PREFIX)

    def score(self, triplets: Iterable[EditTriplet], chunk_size: int = 512) -> Iterator[dict]:
        """One row per triplet, in order: `id`, the metric columns, `error`."""
        chunk: list[EditTriplet] = []
        for t in triplets:
            chunk.append(t)
            if len(chunk) >= chunk_size:
                yield from self._score_chunk(chunk)
                chunk = []
        if chunk:
            yield from self._score_chunk(chunk)

    def score_all(self, triplets: Iterable[EditTriplet], chunk_size: int = 512) -> list[dict]:
        """`score` as a list."""
        return list(self.score(triplets, chunk_size))

    # -- one chunk
    def _score_chunk(self, chunk: list[EditTriplet]) -> list[dict]:
        want = set(self.metrics)
        uniq, idx = _dedupe([im for t in chunk for im in (t.source, t.target)])
        src_i, tgt_i = idx[0::2], idx[1::2]
        use_clip, use_dino = bool(want & CLIP_METRICS), "dino" in want
        encoders = [self.clip] * use_clip + [self.dino] * use_dino
        pixels = PixelPairs(uniq, edited=tgt_i, reference=src_i,
                            masks=[t.mask for t in chunk] if "l1_masked" in want else None,
                            which=tuple(m for m in ("l1", "l2") if m in want)) \
            if want & PIXEL_METRICS else None
        # one job: each distinct image is read, keyed and decoded once for every consumer
        job = ImageJob(encoders, uniq, self.batch_size, self.workers, None, sink=pixels)
        job.wait_ready()  # on CPU: decode with every core first, then texts
        texts: dict[str, torch.Tensor] = {}
        if want & {"clip_t", "clip_dir", "clipscore"}:
            caps = [c for t in chunk for c in (t.source_caption, t.target_caption) if c]
            if "clipscore" in want:
                caps += [self.clipscore_prefix + c for c in list(caps)]
            caps = list(dict.fromkeys(caps))
            if caps:
                texts = dict(zip(caps, self.clip.encode_texts(caps, batch_size=64)))
        results = iter(job.results())
        clip_res = next(results) if use_clip else None
        dino_res = next(results) if use_dino else None
        pix = pixels.results() if pixels else []

        rows = [{"id": t.id, **{c: None for c in self.columns}, "error": None} for t in chunk]
        for res, label in ((clip_res, "clip"), (dino_res, "dino")):
            if res is None:
                continue
            for r, (a, b) in enumerate(zip(src_i, tgt_i)):
                errs = [f"source: {res.errors[a]}" if res.errors[a] else None,
                        f"target: {res.errors[b]}" if res.errors[b] else None]
                errs = [e for e in errs if e]
                if errs and rows[r]["error"] is None:
                    rows[r]["error"] = "; ".join(errs)
        for r, p in enumerate(pix):
            if isinstance(p, str) and rows[r]["error"] is None:
                rows[r]["error"] = p
        if clip_res is not None:
            self._clip_columns(chunk, rows, clip_res, src_i, tgt_i, texts)
        if dino_res is not None:
            v = M.dino(dino_res.vectors[src_i], dino_res.vectors[tgt_i])
            self._put(rows, "dino", v)
        for r, p in enumerate(pix):
            if isinstance(p, dict) and rows[r]["error"] is None:
                for k, val in p.items():
                    if k in rows[r]:
                        rows[r][k] = None if val is None or np.isnan(val) else float(val)
        for row in rows:  # an errored triplet carries no partial scores
            if row["error"] is not None:
                for c in self.columns:
                    row[c] = None
        return rows

    @staticmethod
    def _put(rows: list[dict], col: str, values: np.ndarray, valid: Optional[np.ndarray] = None) -> None:
        for r, v in enumerate(values):
            ok = (valid is None or valid[r]) and np.isfinite(v)
            rows[r][col] = float(v) if ok else None

    def _clip_columns(self, chunk, rows, res: ImageEmbeddings, src_i, tgt_i, texts) -> None:
        want = set(self.metrics)
        D = res.vectors.shape[1]
        src, tgt = res.vectors[src_i], res.vectors[tgt_i]
        nan = torch.full((D,), float("nan"))

        def cap_emb(attr: str, prefix: str = "") -> tuple[torch.Tensor, np.ndarray]:
            caps = [getattr(t, attr) for t in chunk]
            vecs = torch.stack([texts[prefix + c] if c else nan for c in caps]) if chunk else \
                torch.empty(0, D)
            return vecs, np.array([bool(c) for c in caps])

        if "clip_i" in want:
            self._put(rows, "clip_i", M.clip_i(src, tgt))
        if want & {"clip_t", "clip_dir"}:
            sc, s_ok = cap_emb("source_caption")
            tc, t_ok = cap_emb("target_caption")
            if "clip_t" in want:
                self._put(rows, "clip_t", M.clip_t(tgt, tc), t_ok)
                self._put(rows, "clip_t_source", M.clip_t(src, sc), s_ok)
            if "clip_dir" in want:
                self._put(rows, "clip_dir", M.clip_dir(src, tgt, sc, tc), s_ok & t_ok)
        if "clipscore" in want:
            sp, s_ok = cap_emb("source_caption", self.clipscore_prefix)
            tp, t_ok = cap_emb("target_caption", self.clipscore_prefix)
            self._put(rows, "clipscore", M.clipscore(tgt, tp), t_ok)
            self._put(rows, "clipscore_source", M.clipscore(src, sp), s_ok)

"""Score generation samples: the generated image against its prompt with CLIP.

Columns: `clip_t` (cosine of image and prompt embeddings) and `clipscore` (`2.5 * max(cos, 0)`,
the prompt prefixed as the encoder's CLIPScore prefix says: "A photo depicts " for OpenAI CLIP,
none for Chinese-CLIP). An unreadable image gives the row an `error` and no scores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np

from nexus_gen.scoring import metrics as M
from nexus_gen.scoring.image_inputs import ImageInput

GENERATION_METRICS = ("clip_t", "clipscore")


@dataclass
class GenerationItem:
    """One generated image and the prompt it was generated from."""

    id: str
    image: ImageInput
    prompt: str


def score_generations(clip, items: Sequence[GenerationItem], metrics: Iterable[str], *,
                      batch_size: int = 32, workers: Optional[int] = None) -> list[dict]:
    """One row per item, in order: `id`, the asked `GENERATION_METRICS` columns, `error`."""
    want = [m for m in GENERATION_METRICS if m in set(metrics)]
    rows = [{"id": it.id, **{m: None for m in want}, "error": None} for it in items]
    if not items or not want:
        return rows
    res = clip.embed_images([it.image for it in items], batch_size, workers=workers)
    prompts = [it.prompt for it in items]
    values = {}
    if "clip_t" in want:
        values["clip_t"] = np.atleast_1d(M.clip_t(res.vectors, clip.encode_texts(prompts)))
    if "clipscore" in want:
        prefix = getattr(clip, "clipscore_prefix", M.CLIPSCORE_PREFIX)
        texts = clip.encode_texts([prefix + p for p in prompts])
        values["clipscore"] = np.atleast_1d(M.clipscore(res.vectors, texts))
    for i, row in enumerate(rows):
        if res.errors[i] is not None:
            row["error"] = res.errors[i]
            continue
        for m, v in values.items():
            row[m] = float(v[i]) if np.isfinite(v[i]) else None
    return rows

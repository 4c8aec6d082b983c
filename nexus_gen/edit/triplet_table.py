"""The triplet table: one row per built triplet (source, target and mask images, instructions
both ways, captions, edit type, every score, detector verdicts and score, lineage), a parquet file per shard
with Hugging Face features in its schema, so `datasets.load_dataset("parquet", ...)` decodes
the three images to PIL."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from nexus_gen.data.images import encode_png

SCORE_COLUMNS = ("clip_t", "clip_t_source", "clipscore", "clipscore_source", "clip_i", "clip_dir",
                 "dino", "l1", "l2", "l1_inside", "l1_outside")
VERDICT_COLUMNS = ("object_in_mask", "object_present")
DETECTOR_COLUMNS = ("detector_score",)  # the verifier's best score for the object in the mask
TEXT_COLUMNS = ("instruction", "reverse_instruction", "instruction_zh", "reverse_instruction_zh",
                "source_caption", "target_caption", "source_caption_zh", "target_caption_zh")
ROWS_PER_GROUP = 64


def features() -> "datasets.Features":
    import datasets

    f: dict[str, Any] = {"id": datasets.Value("string"), "split": datasets.Value("string"),
                         "edit_type": datasets.Value("string"), "style": datasets.Value("string"),
                         "source": datasets.Value("string"), "source_key": datasets.Value("string"),
                         "source_image": datasets.Image(), "target_image": datasets.Image(),
                         "mask": datasets.Image()}
    f.update({c: datasets.Value("string") for c in TEXT_COLUMNS})
    f.update({c: datasets.Value("float64") for c in SCORE_COLUMNS})
    f.update({c: datasets.Value("bool") for c in VERDICT_COLUMNS})
    f.update({c: datasets.Value("float64") for c in DETECTOR_COLUMNS})
    f.update({"seed": datasets.Value("int64"), "lineage": datasets.Value("string")})
    return datasets.Features(f)


def mask_png(mask: np.ndarray) -> bytes:
    """An edit mask as a 1-channel PNG (255 inside)."""
    return encode_png(Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L"))


class TripletTable:
    """Streams rows into one parquet file in small row groups (bounded memory)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.schema = features().arrow_schema
        self._writer: Optional[pq.ParquetWriter] = None
        self._buf: list[dict[str, Any]] = []
        self.rows = 0

    def add(self, item, out, images: tuple[dict, dict], scores: dict[str, Any], split: str,
            lineage: dict[str, Any]) -> None:
        row = {"id": item.id, "split": split, "edit_type": out.edit_type, "style": item.spec.style,
               "source": item.source.source, "source_key": item.source.key,
               "source_image": images[0], "target_image": images[1],
               "mask": {"bytes": mask_png(out.mask), "path": None},
               "instruction": out.instruction["en"], "reverse_instruction": out.reverse_instruction["en"],
               "instruction_zh": out.instruction.get("zh"),
               "reverse_instruction_zh": out.reverse_instruction.get("zh"),
               "source_caption": out.source_caption.get("en"), "target_caption": out.target_caption.get("en"),
               "source_caption_zh": out.source_caption.get("zh"),
               "target_caption_zh": out.target_caption.get("zh"),
               "seed": item.seed, "lineage": json.dumps(lineage, sort_keys=True, ensure_ascii=False)}
        row.update({c: scores.get(c) for c in SCORE_COLUMNS + VERDICT_COLUMNS + DETECTOR_COLUMNS})
        self._buf.append(row)
        if len(self._buf) >= ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema)
        self._writer.write_table(pa.Table.from_pylist(self._buf, schema=self.schema))
        self.rows += len(self._buf)
        self._buf = []

    def close(self) -> int:
        """Finish the file; returns its row count (0: no file was written)."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.rows

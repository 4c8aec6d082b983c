"""A contact sheet of built triplets (source | target | mask, instruction below) as PNG bytes,
for the build's Prefect artifact and the demo report."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Union

import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from nexus_gen.data.shards import read_manifest
from nexus_gen.edit.recipe import EDIT_TYPES

TILE, TEXT_H, PAD = 128, 30, 4


def triplet_grid(triplets_dir: Union[str, Path], n: int = 8) -> bytes:
    """PNG of the first `max(1, n // 3)` triplets of each edit type (in table order, at most
    `n`), one per row. Reads shards only until every edit type has its rows, not the whole
    table (a large run's table holds every image)."""
    d = Path(triplets_dir)
    per = max(1, n // 3)
    rows, seen = [], {}
    for s in read_manifest(d)["shards"]:
        t = pq.read_table(d / s["file"], columns=["edit_type", "instruction", "source_image",
                                                 "target_image", "mask"])
        for r in t.to_pylist():
            if seen.get(r["edit_type"], 0) < per:
                seen[r["edit_type"]] = seen.get(r["edit_type"], 0) + 1
                rows.append(r)
        if len(rows) >= n or all(seen.get(et, 0) >= per for et in EDIT_TYPES):
            break
    rows = rows[:n]
    font = ImageFont.load_default()
    w = 3 * TILE + 4 * PAD
    sheet = Image.new("RGB", (w, max(1, len(rows)) * (TILE + TEXT_H + PAD) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(rows):
        y = PAD + i * (TILE + TEXT_H + PAD)
        for j, key in enumerate(("source_image", "target_image", "mask")):
            im = Image.open(io.BytesIO(r[key]["bytes"])).convert("RGB").resize((TILE, TILE))
            x = PAD + j * (TILE + PAD)
            sheet.paste(im, (x, y))
            # a frame, so a mask's white parts do not melt into the white page
            draw.rectangle((x - 1, y - 1, x + TILE, y + TILE), outline="grey")
        text = "\n".join(textwrap.wrap(f"[{r['edit_type']}] {r['instruction']}", 64)[:2])
        draw.text((PAD, y + TILE + 2), text, fill="black", font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()

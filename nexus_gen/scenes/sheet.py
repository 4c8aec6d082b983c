"""Contact sheet of the scenes world: random scenes with their edits and instructions, so a
person can see what the world looks like. Deterministic for a seed."""
from __future__ import annotations

import math
import textwrap
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from nexus_gen.scenes.edits import EditResult, random_edit

TEXT_LINES = 7
LINE_HEIGHT = 14
PAD = 6


def sample_edits(n: int, seed: int = 0, size: int = 192) -> list[EditResult]:
    """`n` random edits (add / remove / style) of random scenes, the same for the same seed."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return [random_edit(seed * 100_003 + i, size) for i in range(n)]


def record(edit: EditResult) -> dict[str, Any]:
    """A JSON-ready description of one edit (scenes, captions, instructions in EN and ZH)."""
    return {
        "edit_type": edit.edit_type, "style": edit.style,
        "source_caption": edit.source_caption, "target_caption": edit.target_caption,
        "source_caption_zh": edit.source_caption_zh, "target_caption_zh": edit.target_caption_zh,
        "instruction": edit.instruction, "reverse_instruction": edit.reverse_instruction,
        "instruction_zh": edit.instruction_zh, "reverse_instruction_zh": edit.reverse_instruction_zh,
        "source_scene": edit.source_scene.to_dict(), "target_scene": edit.target_scene.to_dict(),
    }


def contact_sheet(edits: list[EditResult]) -> Image.Image:
    """A grid of cells: source | target, then the source caption, the edit type, the
    instruction and the reverse instruction (English; the default font has no CJK glyphs)."""
    if not edits:
        raise ValueError("contact_sheet needs at least one edit")
    w, h = edits[0].source.size
    font = ImageFont.load_default(size=11)
    cell_w, cell_h = 2 * w + 3 * PAD, h + 2 * PAD + TEXT_LINES * LINE_HEIGHT
    cols = math.ceil(math.sqrt(len(edits)))
    rows = math.ceil(len(edits) / cols)
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    chars = max(20, int(cell_w / 6.2))
    for i, e in enumerate(edits):
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        sheet.paste(e.source.resize((w, h)), (x + PAD, y + PAD))
        sheet.paste(e.target.resize((w, h)), (x + 2 * PAD + w, y + PAD))
        kind = e.edit_type + (f" ({e.style})" if e.style else "")
        lines = (textwrap.wrap(e.source_caption, chars)[:2] + [f"[{kind}] " + e.instruction]
                 + textwrap.wrap("reverse: " + e.reverse_instruction, chars)[:2])
        lines = [l for chunk in lines for l in textwrap.wrap(chunk, chars)][:TEXT_LINES]
        for j, line in enumerate(lines):
            draw.text((x + PAD, y + h + 2 * PAD + j * LINE_HEIGHT), line, fill=(0, 0, 0), font=font)
        draw.rectangle([x, y, x + cell_w - 1, y + cell_h - 1], outline=(200, 200, 200))
    return sheet

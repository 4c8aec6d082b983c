"""GenEval's official on-disk layout, so the official scorer can read what we write and we can
read what others generated: `<out>/<idx:05d>/metadata.jsonl` (the prompt's line, one JSON object)
and `<out>/<idx:05d>/samples/<n:04d>.png`."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


@dataclass(frozen=True)
class LayoutImage:
    index: int  # prompt index (line number in the prompt file, from 0)
    sample: int  # image number within the prompt
    metadata: dict[str, Any]  # the prompt's line
    path: Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed to `path` when the block ends, removed
    when it fails or is interrupted (Ctrl-C), so a run never leaves a half-written file behind."""
    tmp = Path(path).with_name(f".{Path(path).name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def prompt_dir(out: Path, index: int) -> Path:
    return Path(out) / f"{index:05d}"


def sample_path(out: Path, index: int, sample: int) -> Path:
    return prompt_dir(out, index) / "samples" / f"{sample:04d}.png"


def write_metadata(out: Path, index: int, metadata: dict[str, Any]) -> Path:
    """Write the prompt line as the official generator does (one JSON object, one line)."""
    d = prompt_dir(out, index)
    (d / "samples").mkdir(parents=True, exist_ok=True)
    p = d / "metadata.jsonl"
    tmp = p.with_name(p.name + ".tmp")  # an interrupt never leaves a half-written record to resume on
    try:
        tmp.write_text(json.dumps(metadata) + "\n", encoding="utf-8")
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return p


def read_metadata(out: Path, index: int) -> dict[str, Any]:
    p = prompt_dir(out, index) / "metadata.jsonl"
    text = p.read_text(encoding="utf-8").strip()
    try:
        return json.loads(text.splitlines()[0])
    except (json.JSONDecodeError, IndexError) as e:
        raise ValueError(f"{p}: not a one-line JSON prompt record ({e})") from e


def iter_images(out: Path) -> Iterator[LayoutImage]:
    """Every image of a GenEval output folder, in prompt then sample order."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"GenEval output folder {out} does not exist")
    for d in sorted(p for p in out.iterdir() if p.is_dir() and p.name.isdigit()):
        index = int(d.name)
        meta = read_metadata(out, index)
        for img in sorted((d / "samples").glob("*.png")):
            if img.stem.isdigit():
                yield LayoutImage(index=index, sample=int(img.stem), metadata=meta, path=img)

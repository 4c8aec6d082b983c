"""Exports from shards to the formats people train with, written so those trainers read them as
intended: the reference's / ms-swift's jsonl, and DiffSynth-Studio `metadata.csv` (generation and
editing in separate folders, since an empty cell reads as NaN there and fails the loader)."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

from PIL import Image

from nexus_gen.data.image_header import sniff
from nexus_gen.data.shards import iter_samples, write_json_atomic
from nexus_gen.data.templates import generation_prompt, strip_tags

log = logging.getLogger(__name__)
EXPORT_FORMATS = ("nexus-gen-jsonl", "diffsynth-csv")
_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
# pandas.read_csv's default missing-value strings: DiffSynth reads such a cell as NaN and fails
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                       "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


@dataclass
class ExportSummary:
    format: str
    samples: int = 0
    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    images: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "samples": self.samples, "written": self.written,
                "skipped": self.skipped, "images": self.images}


class ImageStore:
    """Writes each distinct image once, content-addressed: `images/<sha256[:2]>/<sha256>.<ext>`,
    where the name is the hash of the stored bytes. An image seen before costs one dict lookup."""

    def __init__(self, root: Path):
        self.root = root
        self.written: dict[str, str] = {}  # sha256 of the shard's bytes -> relative path

    def put(self, data: bytes) -> str:
        """Store `data` once and return its path relative to the root."""
        sha = hashlib.sha256(data).hexdigest()
        rel = self.written.get(sha)
        if rel is not None:
            return rel
        head = sniff(data)
        fmt = head[0] if head else Image.open(io.BytesIO(data)).format
        ext = _EXT.get(fmt or "")
        if ext is None:  # an unusual format from a foreign shard: store a PNG of it
            buf = io.BytesIO()
            Image.open(io.BytesIO(data)).convert("RGB").save(buf, "PNG")
            data, ext = buf.getvalue(), "png"
        stored_sha = hashlib.sha256(data).hexdigest() if ext == "png" and fmt != "PNG" else sha
        rel = f"images/{stored_sha[:2]}/{stored_sha}.{ext}"
        p = self.root / rel
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp = p.with_name(f".{p.name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(p)
        self.written[sha] = rel
        return rel


def export_nexus_gen_jsonl(shards: Union[str, Path, Iterable], out_dir: Union[str, Path],
                           absolute_paths: bool = False, filename: str = "data.jsonl") -> ExportSummary:
    """`{id, source, images, messages}` a line, images as files under `out_dir/images/`, paths
    relative to `out_dir` (or absolute: ms-swift resolves relative paths against the working
    directory first, so absolute paths are the safe choice when training from elsewhere)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ImageStore(out_dir)
    summary = ExportSummary("nexus-gen-jsonl")
    tmp = out_dir / f".{filename}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for s in iter_samples(shards):
            paths = [store.put(im["bytes"]) for im in s["images"]]
            if absolute_paths:
                paths = [str((out_dir / p).resolve()) for p in paths]
            row = {"id": s["id"], "source": s["source"], "images": paths, "messages": s["messages"]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            summary.samples += 1
            summary.written[s["task"]] = summary.written.get(s["task"], 0) + 1
    tmp.replace(out_dir / filename)
    summary.images = len(store.written)
    return summary


def _user_text(sample: dict[str, Any]) -> str:
    return next(m["content"] for m in sample["messages"] if m["role"] == "user")


def export_diffsynth_csv(shards: Union[str, Path, Iterable], out_dir: Union[str, Path]) -> ExportSummary:
    """DiffSynth-Studio `metadata.csv` files: `generation/metadata.csv` (`image, prompt`) and
    `editing/metadata.csv` (`image, prompt, nexus_gen_reference_image`: target, instruction,
    source). Image paths are relative to each csv's folder (DiffSynth's base path). Understanding
    samples have no image to generate and are skipped (counted)."""
    out_dir = Path(out_dir)
    summary = ExportSummary("diffsynth-csv")
    writers: dict[str, tuple[Any, Any, Path, Path]] = {}
    stores: dict[str, ImageStore] = {}
    header = {"generation": ["image", "prompt"], "editing": ["image", "prompt", "nexus_gen_reference_image"]}
    try:
        for s in iter_samples(shards):
            summary.samples += 1
            task = s["task"]
            if task not in header:
                summary.skipped[task] = summary.skipped.get(task, 0) + 1
                continue
            if task not in writers:
                d = out_dir / task
                d.mkdir(parents=True, exist_ok=True)
                tmp = d / ".metadata.csv.tmp"
                fh = open(tmp, "w", encoding="utf-8", newline="")
                w = csv.writer(fh, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
                w.writerow(header[task])
                writers[task] = (fh, w, tmp, d / "metadata.csv")
                stores[task] = ImageStore(d)
            fh, w, _, _ = writers[task]
            store = stores[task]
            prompt = generation_prompt(_user_text(s)) if task == "generation" else strip_tags(_user_text(s))
            if prompt in PANDAS_NA:  # the row would read back as NaN and stop DiffSynth's loader
                key = f"{task} (prompt {prompt!r} reads as missing)"
                summary.skipped[key] = summary.skipped.get(key, 0) + 1
                continue
            if task == "generation":
                w.writerow([store.put(s["images"][-1]["bytes"]), prompt])
            else:
                w.writerow([store.put(s["images"][-1]["bytes"]), prompt, store.put(s["images"][0]["bytes"])])
            summary.written[task] = summary.written.get(task, 0) + 1
    except BaseException:  # a failed export leaves no partial metadata.csv under the final name
        for fh, _, tmp, _ in writers.values():
            fh.close()
            tmp.unlink(missing_ok=True)
        raise
    for fh, _, tmp, final in writers.values():
        fh.close()
        tmp.replace(final)
    summary.images = sum(len(st.written) for st in stores.values())
    return summary


def export(fmt: str, shards: Union[str, Path, Iterable], out_dir: Union[str, Path], **kwargs: Any) -> ExportSummary:
    if fmt == "nexus-gen-jsonl":
        summary = export_nexus_gen_jsonl(shards, out_dir, **kwargs)
    elif fmt == "diffsynth-csv":
        summary = export_diffsynth_csv(shards, out_dir, **kwargs)
    else:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)  # also when nothing was exportable
    write_json_atomic(Path(out_dir) / "export.json", summary.to_json())
    return summary

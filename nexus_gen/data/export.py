"""Exports from shards to the formats people train with, written so those trainers read them as
intended: the reference's / ms-swift's jsonl, and DiffSynth-Studio metadata (generation and
editing in separate folders). DiffSynth-Studio's `UnifiedDataset` reads `.json` and `.jsonl`
metadata with the `json` module, which keeps every prompt a string, and anything else with
`pandas.read_csv`, which turns a column of number- or boolean-like prompts (`1984`, `True`) into
numbers and `NA` into NaN: `metadata.jsonl` is always written, `metadata.csv` only when pandas
reads it back exactly. A failed export leaves no index file and none of the images it wrote."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from PIL import Image

from nexus_gen.data.image_header import sniff
from nexus_gen.data.records import open_parquet
from nexus_gen.data.shards import iter_samples, shard_files, write_json_atomic
from nexus_gen.data.templates import generation_prompt, strip_tags

log = logging.getLogger(__name__)
EXPORT_FORMATS = ("nexus-gen-jsonl", "diffsynth-csv")
_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
DIFFSYNTH_COLUMNS = {"generation": ["image", "prompt"], "editing": ["image", "prompt", "nexus_gen_reference_image"]}


@dataclass
class ExportSummary:
    format: str
    samples: int = 0
    written: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    images: int = 0
    files: list[str] = field(default_factory=list)  # index files written, relative to the out folder
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "samples": self.samples, "written": self.written,
                "skipped": self.skipped, "images": self.images, "files": self.files,
                "warnings": self.warnings}

    def skip(self, key: str) -> None:
        self.skipped[key] = self.skipped.get(key, 0) + 1


class ImageStore:
    """Writes each distinct image once, content-addressed: `images/<sha256[:2]>/<sha256>.<ext>`,
    where the name is the hash of the stored bytes. An image seen before costs one dict lookup."""

    def __init__(self, root: Path):
        self.root = root
        self.written: dict[str, str] = {}  # sha256 of the shard's bytes -> relative path
        self.created: list[Path] = []  # files this store wrote (an image already there is not one)

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
            try:
                tmp.write_bytes(data)
                tmp.replace(p)
            finally:
                tmp.unlink(missing_ok=True)
            self.created.append(p)
        self.written[sha] = rel
        return rel

    def remove_created(self) -> None:
        """Delete the files this store wrote, and the folders left empty: a failed export
        leaves no partial image set behind (images that were there before stay)."""
        for p in self.created:
            p.unlink(missing_ok=True)
        for d in sorted({p.parent for p in self.created} | {self.root / "images"}, reverse=True):
            try:
                d.rmdir()  # only when empty
            except OSError:
                pass
        self.created = []


class _IndexFile:
    """A text index written under `.NAME.tmp` and renamed into place by `commit`, or removed by
    `discard`: readers never see a half file under the final name."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.fh = open(self.tmp, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        self.fh.close()
        self.tmp.replace(self.path)

    def discard(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def check_shards(shards: Union[str, Path, Iterable]) -> list[Path]:
    """The shard files named by `shards`, each opened once so an unreadable or empty file fails
    before any work with a ValueError naming it; also when they hold no sample at all."""
    shards = [shards] if isinstance(shards, (str, Path)) else list(shards)
    try:
        files = shard_files(shards)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    names = ", ".join(str(p) for p in shards)
    if not files:
        raise ValueError(f"no parquet shards in {names}: nothing to export (point at a `nexus-gen "
                         "convert` output folder or its .parquet files)")
    rows = 0
    for f in files:
        if not f.is_file():
            raise ValueError(f"shard {f} listed in its manifest does not exist: rebuild that folder")
        rows += open_parquet(f).metadata.num_rows
    if rows == 0:
        raise ValueError(f"{names} holds no sample ({len(files)} shard(s), 0 rows): nothing to export")
    return files


def export_nexus_gen_jsonl(shards: Union[str, Path, Iterable], out_dir: Union[str, Path],
                           absolute_paths: bool = False, filename: str = "data.jsonl") -> ExportSummary:
    """`{id, source, images, messages}` a line, images as files under `out_dir/images/`, paths
    relative to `out_dir` (or absolute: ms-swift resolves relative paths against the working
    directory first, so absolute paths are the safe choice when training from elsewhere)."""
    files = check_shards(shards)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = ImageStore(out_dir)
    summary = ExportSummary("nexus-gen-jsonl")
    index = _IndexFile(out_dir / filename)
    try:
        for s in iter_samples(files):
            paths = [store.put(im["bytes"]) for im in s["images"]]
            if absolute_paths:
                paths = [str((out_dir / p).resolve()) for p in paths]
            row = {"id": s["id"], "source": s["source"], "images": paths, "messages": s["messages"]}
            index.fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            summary.samples += 1
            summary.written[s["task"]] = summary.written.get(s["task"], 0) + 1
    except BaseException:
        index.discard()
        store.remove_created()
        raise
    index.commit()
    summary.files.append(filename)
    summary.images = len(store.written)
    return summary


def _user_text(sample: dict[str, Any]) -> str:
    return next(m["content"] for m in sample["messages"] if m["role"] == "user")


def csv_misreads(csv_path: Path, rows_path: Path) -> Optional[str]:
    """Why `pandas.read_csv(csv_path)` (DiffSynth-Studio's reading of a csv) would not give back
    the strings of the jsonl at `rows_path`, or None when it gives them back exactly."""
    import pandas as pd

    try:
        df = pd.read_csv(csv_path)
    except Exception as e:  # whatever stops pandas stops DiffSynth too
        return f"pandas cannot read it ({type(e).__name__}: {e})"
    with open(rows_path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if len(df) != len(rows):
        return f"pandas reads {len(df)} rows, {len(rows)} were written"
    for col in (rows[0] if rows else {}):
        got = df[col].tolist() if col in df.columns else []
        for i, row in enumerate(rows):
            value = got[i] if i < len(got) else None
            if not isinstance(value, str) or value != row[col]:
                return (f"pandas reads {col} {row[col]!r} (row {i + 1}) as {type(value).__name__} {value!r}"
                        f" (column type {df[col].dtype if col in df.columns else 'missing'})")
    return None


def export_diffsynth_csv(shards: Union[str, Path, Iterable], out_dir: Union[str, Path]) -> ExportSummary:
    """DiffSynth-Studio metadata: `generation/` (`image, prompt`) and `editing/` (`image, prompt,
    nexus_gen_reference_image`: target, instruction, source), each with `metadata.jsonl` (every
    value a JSON string, ASCII-escaped so any locale's default encoding reads it) and
    `metadata.csv` when pandas reads it back exactly (else a warning says why and which file to
    use). Image paths are relative to each folder (DiffSynth's base path). Samples with an empty
    prompt and understanding samples (no image to generate) are skipped and counted."""
    files = check_shards(shards)
    out_dir = Path(out_dir)
    summary = ExportSummary("diffsynth-csv")
    folders: dict[str, tuple[_IndexFile, _IndexFile, Any, ImageStore]] = {}
    try:
        for s in iter_samples(files):
            summary.samples += 1
            task = s["task"]
            if task not in DIFFSYNTH_COLUMNS:
                summary.skip(task)
                continue
            prompt = generation_prompt(_user_text(s)) if task == "generation" else strip_tags(_user_text(s))
            if not prompt.strip():
                summary.skip(f"{task} (empty prompt)")
                continue
            if task not in folders:
                d = out_dir / task
                d.mkdir(parents=True, exist_ok=True)
                jl, cf = _IndexFile(d / "metadata.jsonl"), _IndexFile(d / "metadata.csv")
                w = csv.writer(cf.fh, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
                w.writerow(DIFFSYNTH_COLUMNS[task])
                folders[task] = (jl, cf, w, ImageStore(d))
            jl, _, w, store = folders[task]
            cells = [store.put(s["images"][-1]["bytes"]), prompt]
            if task == "editing":
                cells.append(store.put(s["images"][0]["bytes"]))
            w.writerow(cells)
            jl.fh.write(json.dumps(dict(zip(DIFFSYNTH_COLUMNS[task], cells)), ensure_ascii=True) + "\n")
            summary.written[task] = summary.written.get(task, 0) + 1
        for task, (jl, cf, _, _) in folders.items():
            jl.fh.flush()
            cf.fh.flush()
            why = csv_misreads(cf.tmp, jl.tmp)
            if why is not None:
                cf.discard()
                summary.warnings.append(f"{task}/metadata.csv not written: {why}; give DiffSynth-Studio "
                                        f"{task}/metadata.jsonl (its json reader keeps every prompt as text)")
                log.warning("%s", summary.warnings[-1])
    except BaseException:  # a failed export leaves no partial index and none of its images
        for jl, cf, _, store in folders.values():
            jl.discard()
            cf.discard()
            store.remove_created()
        raise
    for task, (jl, cf, _, _) in folders.items():
        jl.commit()
        summary.files.append(f"{task}/metadata.jsonl")
        if not cf.fh.closed:
            cf.commit()
            summary.files.append(f"{task}/metadata.csv")
    summary.images = sum(len(st.written) for _, _, _, st in folders.values())
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

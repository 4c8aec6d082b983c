"""Parquet shards of unified samples: streamed writing with a bounded buffer, images embedded as
HF Image structs, atomic rename, a manifest with each shard's rows, bytes and sha256; and a lazy
reader. The same samples in the same order give the same bytes."""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from nexus_gen.data.schema import FIELDS, arrow_schema, hf_features

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "nexus-gen-shards/1"
DEFAULT_SHARD_BYTES = 500 * 1024 * 1024  # 500 MiB
DEFAULT_ROW_GROUP_BYTES = 8 * 1024 * 1024  # ~75 samples of two 512-px JPEGs: small enough to overlap
# building and writing from the first groups, and to stream a shard in small reads
# Images are already compressed (JPEG/PNG/WebP): compressing them again costs time and saves nothing.
COLUMN_COMPRESSION = {"id": "snappy", "source": "snappy", "task": "snappy", "language": "snappy",
                      "messages.list.element.role": "snappy", "messages.list.element.content": "snappy",
                      "images.list.element.bytes": "none", "images.list.element.path": "snappy",
                      "meta": "snappy"}
# `train-NNNNN.parquet`: the split in the name is how `datasets` (and the Hub) pick the data files
# of a folder, so `load_dataset("parquet", data_dir=OUT)` reads the shards and skips
# manifest.json and rejects.jsonl beside them
SHARD_PREFIX = "train"
SPLIT_NAMES = ("train", "validation", "test")  # the split prefixes a writer may name its shards by
# exactly the names a build writes (and `shard-NNNNN` of builds before the split-named shards):
# a file downloaded as `train-00000-of-00001.parquet` is not ours to replace
_BUILD_SHARD = re.compile(r"(?:train|validation|test|shard)-\d{5}\.parquet")


def parse_byte_size(text: Union[str, int]) -> int:
    """A size such as `500MB` (500 * 10^6 bytes), `512MiB` (512 * 2^20), `1GB` or `1048576` in
    bytes, with `pydantic.ByteSize`'s units (decimal kB/MB/GB, binary KiB/MiB/GiB). Raises
    ValueError for text that is not a size or a size that is not positive."""
    from pydantic import ByteSize, TypeAdapter, ValidationError

    t = text.strip() if isinstance(text, str) else text
    if isinstance(t, str) and t.startswith("-"):
        raise ValueError(f"shard size must be positive, got {text!r}")
    try:
        n = int(TypeAdapter(ByteSize).validate_python(t))
    except (ValidationError, OverflowError, ValueError):
        raise ValueError(f"{text!r} is not a size (e.g. 500MB = 500*10^6 bytes, 512MiB = 512*2^20, "
                         "1GB, 1048576)") from None
    if n <= 0:
        raise ValueError(f"shard size must be positive, got {text!r}")
    return n


def is_build_shard(name: str, temporary: bool = False) -> bool:
    """True for the name of a shard a build writes (with `temporary`, also for the
    `.NAME.tmp` it is written under first)."""
    if _BUILD_SHARD.fullmatch(name):
        return True
    return temporary and name.startswith(".") and name.endswith(".tmp") \
        and _BUILD_SHARD.fullmatch(name[1:-4]) is not None


def build_shards(folder: Path) -> list[Path]:
    """The finished shard files of a build folder, by name (whether the manifest lists them or not)."""
    return sorted(p for p in Path(folder).iterdir() if is_build_shard(p.name))


class _ShardFile:
    """A shard being written natively by pyarrow, hashed by a second thread that reads back each
    finished row group (from the page cache) while the next one is encoded: the sha256 in the
    manifest costs no time on the writing thread."""

    CHUNK = 4 << 20

    def __init__(self, path: Path, fsync: bool = False):
        self.path = path
        self.sink = pa.OSFile(str(path), "wb")
        self.fsync = fsync
        self.sha = hashlib.sha256()
        self._reader = open(path, "rb", buffering=0)
        self._hashed = 0
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-hash")
        self._job: Optional[Future] = None
        self._final_size = 0
        self._chunk: Optional[memoryview] = None

    @property
    def size(self) -> int:
        return self._final_size if self.sink.closed else self.sink.tell()

    def _hash_to(self, end: int) -> None:
        if self._chunk is None:
            self._chunk = memoryview(bytearray(self.CHUNK))  # reused: no allocation per read
        while self._hashed < end:
            n = self._reader.readinto(self._chunk[: min(self.CHUNK, end - self._hashed)])
            if not n:
                raise IOError(f"{self.path}: file shorter than written ({self._hashed} < {end})")
            self.sha.update(self._chunk[:n])
            self._hashed += n

    def advance(self) -> None:
        """Hash what has been written so far, in the background (one job at a time, in order)."""
        if self._job is not None:
            self._job.result()
        self._job = self._hasher.submit(self._hash_to, self.sink.tell())

    def close(self) -> str:
        """Close the file, finish hashing; returns the hex sha256 of the whole file."""
        if not self.sink.closed:
            self.sink.close()
        self._final_size = os.path.getsize(self.path)
        if self.fsync:
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())
        if self._job is not None:
            self._job.result()
        self._hash_to(self._final_size)
        self._hasher.shutdown()
        self._reader.close()
        return self.sha.hexdigest()

    def abort(self) -> None:
        try:
            if not self.sink.closed:
                self.sink.close()
        finally:
            self._hasher.shutdown(wait=True)
            self._reader.close()
            self.path.unlink(missing_ok=True)


@dataclass
class ShardInfo:
    file: str
    rows: int
    bytes: int
    sha256: str
    tasks: dict[str, int] = field(default_factory=dict)


def _finite(obj: Any) -> Any:
    """`obj` with NaN and infinities as None: JSON has no such numbers, and strict readers
    (DuckDB, JavaScript, serde) refuse text that holds them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def meta_json(meta: Optional[dict[str, Any]]) -> str:
    """Meta as canonical JSON text (sorted keys; a NaN score, pandas' missing value, as null)."""
    try:
        return json.dumps(meta or {}, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(meta), ensure_ascii=False, sort_keys=True, allow_nan=False)


def sample_to_row(sample: dict[str, Any]) -> dict[str, Any]:
    """A sample dict as a parquet row: meta serialised as canonical JSON."""
    row = {k: sample[k] for k in FIELDS if k != "meta"}
    row["images"] = [{"bytes": im.get("bytes"), "path": im.get("path")} for im in sample["images"]]
    row["messages"] = [{"role": m["role"], "content": m["content"]} for m in sample["messages"]]
    row["meta"] = meta_json(sample.get("meta"))
    return row


class ShardWriter:
    """Streams samples into `out_dir/train-NNNNN.parquet` files of about `shard_bytes` each
    (`prefix` names them by another split, e.g. `test-NNNNN.parquet`, one of `SPLIT_NAMES`).

    Rows are buffered up to `row_group_bytes`, built into an arrow table on the caller's thread,
    then written as one row group by a background thread (native code, no GIL) while the next
    group fills, so memory is bounded by a few row groups, not the dataset size. Measured on
    2 cores, keeping the Python work on one thread and only native work on the others is
    fastest (bench/shards.py). Each shard is written as `.train-NNNNN.parquet.tmp`
    and renamed when complete; `close()` writes `manifest.json` last. A build of no rows has no
    shard and a manifest listing none (`datasets` loads neither an empty file list nor a 0-row
    parquet, so there is nothing to load)."""

    def __init__(self, out_dir: Union[str, Path], shard_bytes: int = DEFAULT_SHARD_BYTES,
                 row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES, extra_manifest: Optional[dict] = None,
                 fsync: bool = False, prefix: str = SHARD_PREFIX):
        if shard_bytes <= 0 or row_group_bytes <= 0:
            raise ValueError(f"shard size and row group size must be positive "
                             f"(got {shard_bytes}, {row_group_bytes})")
        if prefix not in SPLIT_NAMES:
            raise ValueError(f"shard prefix {prefix!r} is not a split name; use one of {', '.join(SPLIT_NAMES)}")
        self.prefix = prefix
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = shard_bytes
        self.row_group_bytes = min(row_group_bytes, shard_bytes)
        self.extra_manifest = extra_manifest or {}
        self.fsync = fsync  # durability against power loss; a killed process loses nothing either way
        self.shards: list[ShardInfo] = []
        self._schema = arrow_schema()
        self._buf: dict[str, list] = {k: [] for k in FIELDS}
        self._buf_bytes = 0
        self._buf_tasks: dict[str, int] = {}
        self._writer: Optional[pq.ParquetWriter] = None
        self._file: Optional[_ShardFile] = None
        self._rows = 0
        self._tasks: dict[str, int] = {}
        self._closed = False
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: Optional[Future] = None
        self._arenas = (BlobArena(), BlobArena())
        self._groups = 0
        for stale in [p for p in self.out_dir.iterdir() if is_build_shard(p.name, temporary=True)]:
            stale.unlink()  # a rebuild replaces the previous shards of this folder
        man = self.out_dir / MANIFEST
        if man.exists():
            man.unlink()

    def _open_shard(self) -> None:
        idx = len(self.shards)
        self._final = self.out_dir / f"{self.prefix}-{idx:05d}.parquet"
        self._tmp = self.out_dir / f".{self._final.name}.tmp"
        self._file = _ShardFile(self._tmp, fsync=self.fsync)
        self._writer = pq.ParquetWriter(
            self._file.sink, self._schema, compression=COLUMN_COMPRESSION,
            use_dictionary=["id", "source", "task", "language", "messages.list.element.role"],
            write_statistics=["id", "source", "task", "language"],
        )
        self._rows = 0
        self._tasks = {}

    def write(self, sample: dict[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        row = sample_to_row(sample)
        for k in FIELDS:
            self._buf[k].append(row[k])
        size = sum(len(im["bytes"] or b"") for im in row["images"]) + len(row["meta"]) + sum(
            len(m["content"]) for m in row["messages"]) + 64
        self._buf_bytes += size
        self._buf_tasks[row["task"]] = self._buf_tasks.get(row["task"], 0) + 1
        if self._buf_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        """Hand the buffered rows to the writer thread (after the previous group is written)."""
        if not self._buf["id"]:
            return
        buf, tasks = self._buf, self._buf_tasks
        self._buf = {k: [] for k in FIELDS}
        self._buf_bytes = 0
        self._buf_tasks = {}
        # built here, while the writer thread writes the previous group from the other arena (the
        # group before that one is written: `_wait` ran before it was handed over)
        arena = self._arenas[self._groups % 2]
        self._groups += 1
        table = build_table(buf, self._schema, arena)
        del buf
        self._wait()
        self._pending = self._io.submit(self._write_group, table, tasks)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a write error in the caller

    def _write_group(self, table: pa.Table, tasks: dict[str, int]) -> None:
        if self._writer is None:
            self._open_shard()
        n = table.num_rows
        self._writer.write_table(table, row_group_size=n)
        self._file.advance()
        self._rows += n
        for t, c in tasks.items():
            self._tasks[t] = self._tasks.get(t, 0) + c
        if self._file.size >= self.shard_bytes:
            self._finish_shard()

    def _finish_shard(self) -> None:
        self._writer.close()
        digest = self._file.close()
        os.replace(self._tmp, self._final)
        self.shards.append(ShardInfo(self._final.name, self._rows, self._file.size,
                                     digest, dict(sorted(self._tasks.items()))))
        log.info("wrote %s (%d rows, %.1f MB)", self._final, self._rows, self._file.size / 1e6)
        self._writer = None
        self._file = None

    def close(self) -> dict[str, Any]:
        """Flush, finish the last shard and write the manifest (last). Returns the manifest."""
        if self._closed:
            return read_manifest(self.out_dir)
        self._flush()
        self._wait()
        if self._writer is not None:
            self._finish_shard()
        self._io.shutdown()
        self._closed = True
        manifest = {
            "format": MANIFEST_FORMAT,
            "features": hf_features(),
            "shards": [s.__dict__ for s in self.shards],
            "total_rows": sum(s.rows for s in self.shards),
            "total_bytes": sum(s.bytes for s in self.shards),
            **self.extra_manifest,
        }
        write_json_atomic(self.out_dir / MANIFEST, manifest)
        return manifest

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self._wait()
        except Exception:
            pass
        self._io.shutdown()
        if self._writer is not None:  # leave no half shard behind under the final name
            try:
                self._writer.close()
            finally:
                self._file.abort()


def _offsets(lengths: list[int]) -> pa.Buffer:
    offs = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offs[1:])
    if offs[-1] > np.iinfo(np.int32).max:
        raise ValueError("a row group holds over 2 GiB of images; lower row_group_bytes")
    return pa.py_buffer(offs.astype(np.int32))


class BlobArena:
    """Reusable memory for one row group's image bytes, from arrow's allocator. A fresh
    buffer per row group costs a page fault per 4 KB on first touch (on a VM, a large share of
    the writer's time); filling the same memory again costs none. An arena must not be refilled
    while a table built on it is still being written."""

    def __init__(self) -> None:
        self._mem: Optional[pa.Buffer] = None

    def pack(self, blobs: list[bytes]) -> pa.Buffer:
        """The blobs copied end to end into the arena (grown when too small)."""
        total = sum(len(b) for b in blobs)
        if self._mem is None or self._mem.size < total:
            self._mem = pa.allocate_buffer(total + total // 4)  # headroom for the next groups
        view = memoryview(self._mem).cast("B")
        pos = 0
        for b in blobs:
            end = pos + len(b)
            view[pos:end] = b
            pos = end
        return self._mem.slice(0, total)


def images_array(images: list[list[dict[str, Any]]], type_: pa.DataType,
                 arena: Optional[BlobArena] = None) -> pa.Array:
    """list<struct<bytes, path>> built over one contiguous buffer: one copy per image instead of
    converting every image object on its own (4x faster for image-heavy row groups)."""
    flat = [im for row in images for im in row]
    blobs = [im["bytes"] or b"" for im in flat]
    joined = (arena or BlobArena()).pack(blobs)
    data = pa.BinaryArray.from_buffers(pa.binary(), len(blobs), [None, _offsets([len(b) for b in blobs]), joined])
    paths = pa.array([im["path"] for im in flat], pa.string())
    struct = pa.StructArray.from_arrays([data, paths], fields=list(type_.value_type),
                                        mask=pa.array([im["bytes"] is None and im["path"] is None for im in flat]))
    return pa.ListArray.from_arrays(pa.Array.from_buffers(pa.int32(), len(images) + 1,
                                                          [None, _offsets([len(r) for r in images])]),
                                    struct, type=type_)


def build_table(buf: dict[str, list], schema: pa.Schema, arena: Optional[BlobArena] = None) -> pa.Table:
    cols = [images_array(buf[f.name], f.type, arena) if f.name == "images" else pa.array(buf[f.name], f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def write_json_atomic(path: Path, obj: Any, sort_keys: bool = False) -> None:
    """Write JSON to a temporary name, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=sort_keys) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(out_dir: Union[str, Path]) -> dict[str, Any]:
    p = Path(out_dir) / MANIFEST
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} not found: {out_dir} is not a finished shard folder") from None


def shard_files(paths: Union[str, Path, Iterable[Union[str, Path]]]) -> list[Path]:
    """Parquet files named by a folder (its manifest's shards, else every `*.parquet`), a file, a
    glob, or a list of those; in a stable order."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            if (p / MANIFEST).exists():
                out += [p / s["file"] for s in read_manifest(p)["shards"]]
            else:
                out += sorted(p.glob("*.parquet"))
        elif p.is_file():
            out.append(p)
        else:
            matches = sorted(glob.glob(str(p)))
            if not matches:
                raise FileNotFoundError(f"no shards at {p}")
            out += [Path(m) for m in matches]
    return out


def row_to_sample(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    try:
        row["meta"] = json.loads(row.get("meta") or "{}")
    except json.JSONDecodeError:
        row["meta"] = {"_unparsed": row.get("meta")}
    return row


def iter_samples(paths: Union[str, Path, Iterable[Union[str, Path]]], batch_size: int = 64,
                 columns: Optional[list[str]] = None) -> Iterator[dict[str, Any]]:
    """Lazily yield sample dicts (meta decoded) from shards, one small record batch at a time."""
    for f in shard_files(paths):
        pf = pq.ParquetFile(f)
        for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
            for row in batch.to_pylist():
                yield row_to_sample(row)


def read_rows(path: Union[str, Path], rows: Iterable[int]) -> list[dict[str, Any]]:
    """The samples at row positions `rows` of one shard, in the order given, reading only the
    row groups that hold them (not the whole file)."""
    import bisect

    rows = list(rows)
    pf = pq.ParquetFile(path)
    starts, acc = [], 0
    for g in range(pf.num_row_groups):
        starts.append(acc)
        acc += pf.metadata.row_group(g).num_rows
    if any(not 0 <= r < acc for r in rows):
        raise IndexError(f"{path}: row positions out of range [0, {acc}): {[r for r in rows if not 0 <= r < acc][:5]}")
    groups = sorted({bisect.bisect_right(starts, r) - 1 for r in rows})
    table = pf.read_row_groups(groups)
    first = {g: sum(pf.metadata.row_group(h).num_rows for h in groups[:k]) for k, g in enumerate(groups)}
    at = [first[bisect.bisect_right(starts, r) - 1] + r - starts[bisect.bisect_right(starts, r) - 1] for r in rows]
    return [row_to_sample(row) for row in table.take(at).to_pylist()]


def count_rows(paths: Union[str, Path, Iterable[Union[str, Path]]]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in shard_files(paths))

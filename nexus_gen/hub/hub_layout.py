"""A finished build run laid out as a dataset hub repository, the way `datasets`' `push_to_hub`
writes one: a folder per config of `<split>-NNNNN-of-NNNNN.parquet` files.

    layout = stage_layout(RUN, STAGED)        # the parquet files only; the card comes after

Configs: one per task with rows (`understanding`, `generation`, `editing`: the unified samples of
`RUN/data`, filtered by their `task` column) and `triplets` (the triplet table of `RUN/triplets`).
Rows keep the run's order; each shard is at most about `max_shard_bytes` (it is closed after the
row group that crosses the bound) and keeps the Hugging Face features of its source in the schema
metadata, so images decode to PIL. The same run gives the same bytes."""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nexus_gen.data.schema import TASKS
from nexus_gen.data.shards import COLUMN_COMPRESSION, SPLIT_NAMES, read_manifest
from nexus_gen.hashing import file_sha256_once

log = logging.getLogger(__name__)

TRIPLETS_CONFIG = "triplets"
CONFIGS = (*TASKS, TRIPLETS_CONFIG)  # every config a publish may write, in card order
ASSETS_DIR = "assets"  # the card's figures
MANAGED_DIRS = (*CONFIGS, ASSETS_DIR)  # top-level folders a publish owns on the remote
CARD_FILE = "README.md"
DEFAULT_MAX_SHARD_BYTES = 500 * 1000 * 1000  # push_to_hub's default max_shard_size, "500MB"
ROW_GROUP_BYTES = 8 * 1024 * 1024
_READ_BATCH = 64


class LayoutError(ValueError):
    """The run's shards cannot be laid out (missing, changed since the build, unknown split)."""


@dataclass
class StagedConfig:
    name: str
    files: dict[str, list[str]] = field(default_factory=dict)  # split -> repo paths, in order
    rows: dict[str, int] = field(default_factory=dict)  # split -> rows
    bytes: dict[str, int] = field(default_factory=dict)  # split -> parquet bytes
    data_bytes: dict[str, int] = field(default_factory=dict)  # split -> uncompressed bytes (row groups)
    features: dict[str, Any] = field(default_factory=dict)  # the HF features of the files
    languages: dict[str, int] = field(default_factory=dict)  # `language` column values (unified configs)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def check_shards(folder: Path) -> dict[str, Any]:
    """The manifest of a run's shard folder, after checking every listed shard's size and
    sha256 (a shard changed or lost since the build is not published). Raises LayoutError."""
    try:
        man = read_manifest(folder)
    except (FileNotFoundError, ValueError) as exc:
        raise LayoutError(f"{folder}: {exc}; rerun the same `nexus-gen build` to finish the run") from None
    for s in man["shards"]:
        p = folder / s["file"]
        if not p.is_file():
            raise LayoutError(f"{p} is listed in {folder / 'manifest.json'} but missing; rebuild the run")
        if p.stat().st_size != s["bytes"] or file_sha256_once(p) != s["sha256"]:
            raise LayoutError(f"{p} differs from its manifest entry (size or sha256): it changed after "
                              "the build; rebuild the run")
        split = s.get("split") or s["file"].split("-")[0]
        if split not in SPLIT_NAMES:
            raise LayoutError(f"{p}: unknown split {split!r} (expected one of {', '.join(SPLIT_NAMES)})")
    return man


def _by_split(man: dict[str, Any], folder: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for s in man["shards"]:
        out.setdefault(s.get("split") or s["file"].split("-")[0], []).append(folder / s["file"])
    return {sp: out[sp] for sp in SPLIT_NAMES if sp in out}


class _ConfigWriter:
    """Writes one split of one config as numbered temporary shards, renamed to
    `<split>-NNNNN-of-NNNNN.parquet` once their count is known."""

    def __init__(self, folder: Path, split: str, schema: pa.Schema, compression: Any,
                 max_shard_bytes: int, row_group_bytes: int):
        self.folder, self.split, self.schema = folder, split, schema
        self.compression = compression
        self.max_shard_bytes, self.row_group_bytes = max_shard_bytes, min(row_group_bytes, max_shard_bytes)
        self.tmp: list[Path] = []
        self.rows = 0
        self._writer: Optional[pq.ParquetWriter] = None
        self._sink: Optional[pa.NativeFile] = None
        self._buf: list[pa.RecordBatch] = []
        self._buf_bytes = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self._buf.append(batch)
        self._buf_bytes += batch.nbytes
        self.rows += batch.num_rows
        if self._buf_bytes >= self.row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        table = pa.Table.from_batches(self._buf, schema=self.schema).combine_chunks()
        self._buf, self._buf_bytes = [], 0
        if self._writer is None:
            path = self.folder / f".{self.split}-{len(self.tmp):05d}.parquet.tmp"
            self.tmp.append(path)
            self._sink = pa.OSFile(str(path), "wb")
            self._writer = pq.ParquetWriter(self._sink, self.schema, compression=self.compression)
        self._writer.write_table(table, row_group_size=table.num_rows)
        if self._sink.tell() >= self.max_shard_bytes:
            self._close_file()

    def _close_file(self) -> None:
        self._writer.close()
        self._sink.close()
        self._writer = self._sink = None

    def finish(self) -> list[Path]:
        """Close the last shard and give every shard its final name; returns them in order."""
        self._flush()
        if self._writer is not None:
            self._close_file()
        n = len(self.tmp)
        final = [self.folder / f"{self.split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
        for t, f in zip(self.tmp, final):
            os.replace(t, f)
        return final

    def abort(self) -> None:
        if self._writer is not None:
            self._close_file()
        for t in self.tmp:
            t.unlink(missing_ok=True)


def _compression(unified: bool) -> Any:
    """The unified shards' per-column codecs (images stored as they are); snappy elsewhere."""
    return dict(COLUMN_COMPRESSION) if unified else "snappy"


def _features(schema: pa.Schema) -> dict[str, Any]:
    import json

    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta:
        raise LayoutError("a shard has no Hugging Face features in its schema metadata; rebuild the run")
    return json.loads(meta)["info"]["features"]


def _stage_split(sources: list[Path], out: Path, split: str, task: Optional[str], unified: bool,
                 max_shard_bytes: int, row_group_bytes: int, langs: dict[str, int],
                 keep_ids: Optional[pa.Array] = None) -> tuple[list[Path], int]:
    schema = pq.read_schema(sources[0])
    for s in sources[1:]:
        if not pq.read_schema(s).equals(schema, check_metadata=True):
            raise LayoutError(f"{s}: its schema differs from {sources[0]}'s; rebuild the run")
    w = _ConfigWriter(out, split, schema, _compression(unified), max_shard_bytes, row_group_bytes)
    try:
        for src in sources:
            for batch in pq.ParquetFile(src).iter_batches(batch_size=_READ_BATCH):
                if task is not None:
                    batch = batch.filter(pc.equal(batch.column("task"), task))
                    for lang, n in zip(*pc.value_counts(batch.column("language")).flatten()):
                        key = lang.as_py() or "unknown"
                        langs[key] = langs.get(key, 0) + n.as_py()
                if keep_ids is not None:
                    batch = batch.filter(pc.is_in(batch.column("id"), value_set=keep_ids))
                w.add(batch)
        return w.finish(), w.rows
    except BaseException:
        w.abort()
        raise


def stage_layout(run_dir: Union[str, Path], staged: Union[str, Path],
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 row_group_bytes: int = ROW_GROUP_BYTES, data_dir: Optional[Path] = None,
                 triplet_ids: Optional[set[str]] = None) -> dict[str, StagedConfig]:
    """Write the run's configs into `staged` (which must be empty or new); returns each config
    with at least one row: its files per split, rows, bytes and features. `data_dir`: the
    unified shards to publish instead of `RUN/data` (a `nexus-gen select` output); `triplet_ids`:
    the triplet table rows to keep (all when None)."""
    if max_shard_bytes <= 0 or row_group_bytes <= 0:
        raise LayoutError(f"shard and row group sizes must be positive (got {max_shard_bytes}, {row_group_bytes})")
    run, staged = Path(run_dir), Path(staged)
    data = Path(data_dir) if data_dir is not None else run / "data"
    data_man = check_shards(data)
    trip_dir = run / "triplets"
    trip_man = check_shards(trip_dir) if (trip_dir / "manifest.json").exists() else None
    keep = None if triplet_ids is None else pa.array(sorted(triplet_ids), type=pa.string())
    expected = expected_rows(data_man, trip_man)
    if trip_man is not None and keep is not None:
        expected[TRIPLETS_CONFIG] = kept_triplet_rows(trip_dir, trip_man, triplet_ids or set())
    configs: dict[str, StagedConfig] = {}
    sources = {name: (data, data_man, name) for name in TASKS}
    if trip_man is not None:
        sources[TRIPLETS_CONFIG] = (trip_dir, trip_man, None)
    for name in CONFIGS:
        if name not in sources or not sum(expected.get(name, {}).values()):
            continue
        folder, man, task = sources[name]
        cfg = StagedConfig(name)
        out = staged / name
        out.mkdir(parents=True, exist_ok=True)
        for split, files in _by_split(man, folder).items():
            if not expected[name].get(split):
                continue
            paths, rows = _stage_split(files, out, split, task, task is not None, max_shard_bytes,
                                       row_group_bytes, cfg.languages, keep if task is None else None)
            cfg.files[split] = [p.relative_to(staged).as_posix() for p in paths]
            cfg.rows[split] = rows
            cfg.bytes[split] = sum(p.stat().st_size for p in paths)
            cfg.data_bytes[split] = sum(_uncompressed(p) for p in paths)
            cfg.features = _features(pq.read_schema(paths[0]))
        if cfg.rows != expected[name]:
            raise LayoutError(f"config {name}: staged rows {cfg.rows} differ from the run's manifests "
                              f"{expected[name]}; rebuild the run")
        configs[name] = cfg
        log.info("staged config %s: %s", name, ", ".join(f"{s} {n}" for s, n in cfg.rows.items()))
    return configs


def _uncompressed(path: Path) -> int:
    md = pq.ParquetFile(path).metadata
    return sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))


def expected_rows(data_man: dict[str, Any], trip_man: Optional[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """config -> split -> rows, from the run's manifests (the per-shard task counts of the data,
    the split counts of the triplet table)."""
    out: dict[str, dict[str, int]] = {}
    for s in data_man["shards"]:
        split = s.get("split") or s["file"].split("-")[0]
        if "tasks" not in s:
            raise LayoutError(f"data shard {s['file']} has no per-task counts in its manifest (a run "
                              "older than this publisher); rebuild the run")
        for task, n in s["tasks"].items():
            d = out.setdefault(task, {})
            d[split] = d.get(split, 0) + n
    if trip_man is not None:
        for s in trip_man["shards"]:
            d = out.setdefault(TRIPLETS_CONFIG, {})
            split = s.get("split") or s["file"].split("-")[0]
            d[split] = d.get(split, 0) + s["rows"]
    return {c: {sp: v[sp] for sp in SPLIT_NAMES if v.get(sp)} for c, v in out.items()}


def kept_triplet_rows(trip_dir: Path, trip_man: dict[str, Any], ids: set[str]) -> dict[str, int]:
    """split -> rows of the triplet table whose `id` is in `ids` (reads the `id` column only)."""
    out: dict[str, int] = {}
    for split, files in _by_split(trip_man, trip_dir).items():
        n = sum(sum(1 for i in pq.read_table(f, columns=["id"]).column("id").to_pylist() if i in ids) for f in files)
        if n:
            out[split] = n
    return out


def reset_dir(path: Path) -> None:
    """Remove `path` (a staging folder of ours) and create it empty."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)

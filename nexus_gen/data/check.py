"""`validate` for finished shards: every sample re-checked (schema, rules, images, unique ids),
the manifest's row counts and sha256 compared with the files, counts per task/source/language."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

import pyarrow.parquet as pq

from nexus_gen.data.images import ImageError, decode_image, inspect_image
from nexus_gen.data.shards import MANIFEST, iter_samples, read_manifest, shard_files
from nexus_gen.data.validate import sample_problems


@dataclass
class ValidationReport:
    samples: int = 0
    by_task: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)
    by_language: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "by_task": dict(self.by_task), "by_source": dict(self.by_source),
                "by_language": dict(self.by_language), "problems": len(self.problems), "ok": self.ok}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _manifest_problems(folder: Path) -> list[str]:
    problems = []
    man = read_manifest(folder)
    for s in man.get("shards", []):
        p = folder / s["file"]
        if not p.exists():
            problems.append(f"{p}: listed in the manifest but missing")
            continue
        rows = pq.ParquetFile(p).metadata.num_rows
        if rows != s["rows"]:
            problems.append(f"{p}: {rows} rows, the manifest says {s['rows']}")
        if _sha256(p) != s["sha256"]:
            problems.append(f"{p}: sha256 differs from the manifest (file changed or corrupt)")
    return problems


def validate_shards(paths: Union[str, Path, Iterable], full: bool = False) -> ValidationReport:
    """Re-check shards; `full=True` decodes every image (else header and end-marker checks)."""
    report = ValidationReport()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    for p in paths:
        if p.is_dir() and (p / MANIFEST).exists():
            report.problems += _manifest_problems(p)
    seen: set[str] = set()
    for f in shard_files(paths):
        for i, s in enumerate(iter_samples(f)):
            where = f"{f.name}#{i} id={s.get('id')!r}"
            report.samples += 1
            report.by_task[s.get("task")] += 1
            report.by_source[s.get("source")] += 1
            report.by_language[s.get("language")] += 1
            for prob in sample_problems(s):
                report.problems.append(f"{where}: {prob}")
            if s.get("id") in seen:
                report.problems.append(f"{where}: duplicate id")
            seen.add(s.get("id"))
            for j, im in enumerate(s.get("images") or []):
                try:
                    if not im.get("bytes"):
                        raise ImageError(f"image {j} has no embedded bytes")
                    (decode_image if full else inspect_image)(im["bytes"], f"image {j}")
                except ImageError as e:
                    report.problems.append(f"{where}: {e}")
    return report

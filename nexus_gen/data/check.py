"""`validate` for finished shards: every sample re-checked (schema, rules, images, unique ids),
the manifest's row counts and sha256 compared with the files, counts per task/source/language."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Union

import pyarrow.parquet as pq

from nexus_gen.data.images import ImageError, decode_image, inspect_image
from nexus_gen.data.shards import MANIFEST, build_shards, is_build_shard, iter_samples, read_manifest, shard_files
from nexus_gen.data.validate import sample_problems
from nexus_gen.hashing import file_sha256


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


def _manifest_problems(folder: Path) -> tuple[list[str], list[Path]]:
    """Problems of a folder's manifest against its files, and the shard files to read."""
    problems: list[str] = []
    try:
        man = read_manifest(folder)
        entries = [(folder / s["file"], s) for s in man["shards"]]
    except Exception as e:  # unreadable or malformed manifest: check whatever parquet is there
        problems.append(f"{folder / MANIFEST}: unreadable manifest ({type(e).__name__}: {e})")
        return problems, sorted(folder.glob("*.parquet"))
    files = []
    for p, s in entries:
        if not p.exists():
            problems.append(f"{p}: listed in the manifest but missing")
            continue
        files.append(p)
        try:
            rows = pq.ParquetFile(p).metadata.num_rows
        except Exception as e:
            problems.append(f"{p}: not a readable parquet file ({type(e).__name__}: {e})")
            continue
        if rows != s.get("rows"):
            problems.append(f"{p}: {rows} rows, the manifest says {s.get('rows')}")
        if file_sha256(p) != s.get("sha256"):
            problems.append(f"{p}: sha256 differs from the manifest (file changed or corrupt)")
    listed = {p.name for p, _ in entries}
    for stray in build_shards(folder):
        if stray.name not in listed:
            problems.append(f"{stray}: a shard file the manifest does not list")
    return problems, files


def validate_shards(paths: Union[str, Path, Iterable], full: bool = False) -> ValidationReport:
    """Re-check shards; `full=True` decodes every image (else header and end-marker checks)."""
    report = ValidationReport()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    files: list[Path] = []
    for p in paths:
        if p.is_dir() and (p / MANIFEST).exists():
            problems, listed = _manifest_problems(p)
            report.problems += problems
            files += listed
        else:
            found = shard_files(p)
            if not found:
                report.problems.append(f"{p}: no parquet shards found")
            elif p.is_dir() and any(is_build_shard(f.name) for f in found):  # the manifest is written last
                report.problems.append(f"{p}: shard files but no {MANIFEST}: an unfinished build "
                                       "(its run stopped before the end); convert again")
            files += found
    seen: set[str] = set()
    for f in files:
        try:
            for i, s in enumerate(iter_samples(f)):
                _check_sample(report, f"{f.name}#{i} id={s.get('id')!r}", s, seen, full)
        except Exception as e:  # a corrupt or foreign file is a problem to report, not a crash
            report.problems.append(f"{f}: unreadable shard ({type(e).__name__}: {e})")
    return report


def _check_sample(report: ValidationReport, where: str, s: dict[str, Any], seen: set, full: bool) -> None:
    report.samples += 1
    report.by_task[s.get("task")] += 1
    report.by_source[s.get("source")] += 1
    report.by_language[s.get("language")] += 1
    if isinstance(s.get("meta"), dict) and "_unparsed" in s["meta"]:
        report.problems.append(f"{where}: meta is not valid JSON text")
        s = {**s, "meta": {}}
    for prob in sample_problems(s):
        report.problems.append(f"{where}: {prob}")
    if s.get("id") in seen:
        report.problems.append(f"{where}: duplicate id")
    seen.add(s.get("id"))
    for j, im in enumerate(s.get("images") or []):
        try:
            if not isinstance(im, dict) or not im.get("bytes"):
                raise ImageError(f"image {j} has no embedded bytes")
            (decode_image if full else inspect_image)(im["bytes"], f"image {j}")
        except ImageError as e:
            report.problems.append(f"{where}: {e}")

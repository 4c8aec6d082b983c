"""Reuse of a publish's staged folder when nothing it is made from changed.

Staging (layout, card, figures, the offline `datasets` load) is the slow part of a publish that
uploads nothing. `RUN/publish/<target>/staging.json`, written after a staging succeeded, holds a
fingerprint: the sha256 of every input file (the run's records, manifests and shards, a
selection's shards and selection.json), the options that shape the staged bytes (repo id,
licence, shard size, the resolved policy and the built-in policy files), and the code (every
`nexus_gen` source file and the versions of the libraries that write the bytes). A rerun reuses
`staged/` only when the fingerprint is the same AND every staged file still has the sha256 the
previous publish record lists; anything else stages afresh."""
from __future__ import annotations

import hashlib
import json
import logging
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from nexus_gen.data.shards import write_json_atomic
from nexus_gen.hashing import file_sha256, file_sha256_once

log = logging.getLogger(__name__)

FINGERPRINT_FILE = "staging.json"
_PACKAGES = ("pyarrow", "datasets", "huggingface_hub", "matplotlib", "pillow", "numpy", "pandas", "pyyaml")
_CODE_ROOT = Path(__file__).resolve().parents[1]  # the nexus_gen package


def code_fingerprint() -> str:
    """sha256 of every nexus_gen source file (path and bytes) and the writing libraries' versions."""
    h = hashlib.sha256()
    for p in sorted(_CODE_ROOT.rglob("*.py")):
        h.update(p.relative_to(_CODE_ROOT).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    for name in _PACKAGES:
        try:
            h.update(f"{name}={metadata.version(name)}\0".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{name}=none\0".encode())
    return h.hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every regular file directly in `folder` (none if absent)."""
    if not folder.is_dir():
        return {}
    return {p.name: file_sha256_once(p) for p in sorted(folder.iterdir()) if p.is_file()}


def fingerprint(inputs: dict[str, dict[str, str]], options: dict[str, Any]) -> str:
    """The staging fingerprint of input digests (name -> file -> sha256) and options."""
    doc = {"inputs": inputs, "options": options, "code": code_fingerprint()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def reusable(work: Path, fp: str, staged_digests: Optional[dict[str, str]]) -> Optional[dict[str, Any]]:
    """The stored staging info (loaded configs, ...) when `work/staged` may be reused: the same
    fingerprint, and the staged files' sha256 equal `staged_digests` (the previous record's)."""
    p = work / FINGERPRINT_FILE
    staged = work / "staged"
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("fingerprint") != fp or not staged_digests or not staged.is_dir():
        return None
    have = {q.relative_to(staged).as_posix(): q for q in staged.rglob("*")
            if q.is_file() and not q.name.startswith(".")}
    if set(have) != set(staged_digests):
        return None
    if any(file_sha256(q) != staged_digests[rel] for rel, q in have.items()):
        log.info("staged files differ from the last publish record: staging again")
        return None
    return doc


def save(work: Path, fp: str, info: dict[str, Any]) -> None:
    """Write staging.json after a successful staging."""
    write_json_atomic(work / FINGERPRINT_FILE, {"fingerprint": fp, **info}, sort_keys=True)


def forget(work: Path) -> None:
    """Drop staging.json (before staging: a staging that fails leaves nothing to reuse)."""
    (work / FINGERPRINT_FILE).unlink(missing_ok=True)

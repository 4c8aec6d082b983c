"""Where locally built (tiny, random-init) models live, and building each exactly once.

The `tiny` profile builds small models from configs with fixed seeds into a cache directory on
first use, then everything loads them through the ordinary `from_pretrained` path."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from filelock import FileLock


def cache_root() -> Path:
    """`$NEXUS_GEN_CACHE`, else `~/.cache/nexus-gen`."""
    root = os.environ.get("NEXUS_GEN_CACHE") or os.path.join(Path.home(), ".cache", "nexus-gen")
    return Path(root)


def _isolated_rng():
    """Builders seed torch themselves; this keeps their seeding from touching the caller's RNG."""
    try:
        import torch
    except ImportError:
        return contextlib.nullcontext()
    return torch.random.fork_rng(devices=[])


def build_once(name: str, builder: Callable[[Path], None]) -> Path:
    """Return `cache_root()/tiny/<name>`, calling `builder(tmp_dir)` to create it if absent.

    The builder writes into a temporary directory that is renamed into place, under a file lock
    (`filelock`: `flock` where the OS has it, a lock file elsewhere), so concurrent processes
    build it once and never see a half-built model."""
    target = cache_root() / "tiny" / name
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{name}.lock")):
        if (target / ".complete").exists():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            with _isolated_rng():
                builder(tmp)
            (tmp / ".complete").write_text("ok\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target

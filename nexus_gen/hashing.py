"""sha256 of files read in chunks (shard checks, model ids from weights files)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Union

CHUNK = 4 << 20


def update_from_file(h: "hashlib._Hash", path: Union[str, Path]) -> "hashlib._Hash":
    """Feed a file's bytes into `h` without holding the whole file in memory."""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h


def file_sha256(path: Union[str, Path]) -> str:
    return update_from_file(hashlib.sha256(), path).hexdigest()

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


_SEEN: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256_once(path: Union[str, Path]) -> str:
    """`file_sha256`, remembered for this process while the file's inode, size, mtime and ctime
    stay the same: one publish checks each shard against its manifest and fingerprints its inputs
    without reading the bytes twice. A rewritten file is read again (its ctime moves even when
    its mtime is set back)."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _SEEN:
        if len(_SEEN) > 100_000:
            _SEEN.clear()
        _SEEN[key] = file_sha256(p)
    return _SEEN[key]

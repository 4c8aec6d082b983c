"""Guards on shared state and the shard file's background hashing."""
from __future__ import annotations

import hashlib
import io

import pytest
from PIL import Image, ImageFile

from nexus_gen.data.images import ImageError, load_pixels
from nexus_gen.data.shards import ShardWriter, read_manifest


def _jpeg() -> bytes:
    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_full_check_refuses_when_pil_would_hide_truncation(monkeypatch):
    data = _jpeg()
    truncated = data[: len(data) // 2]
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_pixels(truncated, "half.jpg")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match="LOAD_TRUNCATED_IMAGES"):
        load_pixels(truncated, "half.jpg")


def test_manifest_sha256_is_the_files_hash_across_many_row_groups(tmp_path):
    """The shard hash is computed by a thread reading the file back while the writer goes on:
    it must equal a plain hash of the finished file, for several shards and row groups."""
    img = _jpeg()
    with ShardWriter(tmp_path, shard_bytes=400_000, row_group_bytes=50_000) as w:
        for i in range(60):
            w.write({"id": f"s{i}", "source": "t", "task": "understanding", "language": "en",
                     "messages": [{"role": "user", "content": "<image>\nq"}, {"role": "assistant", "content": "a"}],
                     "images": [{"bytes": img, "path": None}], "meta": {"i": i}})
    man = read_manifest(tmp_path)
    assert len(man["shards"]) > 1
    for s in man["shards"]:
        data = (tmp_path / s["file"]).read_bytes()
        assert s["bytes"] == len(data)
        assert s["sha256"] == hashlib.sha256(data).hexdigest()
    assert sum(s["rows"] for s in man["shards"]) == man["total_rows"] == 60

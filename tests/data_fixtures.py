"""Helpers for the data-layer tests: small real photos (skimage), hostile image files made cheaply,
input files in every format, and a CLI runner that returns the final JSON counts line."""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str = "astronaut", size: Optional[int] = 48) -> Image.Image:
    """A real photo from skimage.data, downsized to `size` px wide (None: full size)."""
    from skimage import data

    img = Image.fromarray(getattr(data, name)()).convert("RGB")
    if size is not None:
        h = max(1, round(img.height * size / img.width))
        img = img.resize((size, h), Image.BILINEAR)
    return img


def encode(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def write_photo(path: Path, name: str = "astronaut", fmt: str = "PNG", size: Optional[int] = 48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(photo(name, size), fmt))
    return path


def pixels(data: bytes) -> np.ndarray:
    """Decoded RGB pixels of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A few hundred bytes of PNG whose header claims width x height pixels (a decompression bomb)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def truncated_png(name: str = "coffee") -> bytes:
    data = encode(photo(name, 64), "PNG")
    return data[: len(data) // 2]


def truncated_jpeg(name: str = "chelsea") -> bytes:
    data = encode(photo(name, 64), "JPEG", quality=90)
    return data[: len(data) // 2]


def corrupt_middle_jpeg(name: str = "rocket") -> bytes:
    """A JPEG with intact header and end marker whose entropy-coded middle holds a bogus SOF
    marker: only a full decode notices."""
    data = encode(photo(name, 128), "JPEG", quality=90)
    sos = data.find(b"\xff\xda")
    mid = (sos + len(data)) // 2
    return data[:mid] + b"\xff\xc0\x00\x11" + data[mid + 4:]


def exif_rotated_jpeg(width: int = 40, height: int = 24, orientation: int = 6) -> bytes:
    img = photo("rocket", None).resize((width, height))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def write_jsonl(path: Path, rows: Iterable[Any]) -> Path:
    """One line per row: dicts are dumped as JSON, strings written verbatim (for bad lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            line = r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)
            try:
                line.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: written as the JSON escape \ud800
                line = json.dumps(r)
            f.write(line + "\n")
    return path


def und_row(sid: str, image: str, question: str = "What is in the picture?", answer: str = "A photo.") -> dict:
    return {"id": sid, "source": "test", "images": [image],
            "messages": [{"role": "user", "content": f"<image>\n{question}"},
                         {"role": "assistant", "content": answer}]}


def gen_row(sid: str, image: str, prompt: str = "a cat on a sofa") -> dict:
    return {"id": sid, "source": "test", "images": [image],
            "messages": [{"role": "user", "content": f"Generate an image according to the following description: {prompt}"},
                         {"role": "assistant", "content": "Here is an image based on the description: <image>"}]}


def edit_row(sid: str, src: str, tgt: str, instruction: str = "make the sky red") -> dict:
    return {"id": sid, "source": "test", "images": [src, tgt],
            "messages": [{"role": "user", "content": f"<image> {instruction}"},
                         {"role": "assistant", "content": "Here is the image: <image>"}]}


runner = CliRunner()


def cli(*args: Any) -> Any:
    """Run `nexus-gen ARGS` in-process; returns the click Result."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=True)


def flat(text: str) -> str:
    """CLI output with rich's box drawing and line wrapping removed, lower-cased, for matching."""
    import re

    return re.sub(r"\s+", " ", re.sub(r"[\u2500-\u257f]", " ", text)).strip().lower()


def last_json(result: Any) -> dict:
    lines = [ln for ln in result.stdout.strip().splitlines() if ln.strip()]
    assert lines, f"no output (exit {result.exit_code}): {result.output}"
    return json.loads(lines[-1])


def convert(fmt: str, input_path: Path, out: Path, *extra: Any) -> dict:
    """`nexus-gen convert` (default workers: images checked on the calling thread) that must
    succeed; returns the counts line."""
    res = cli("convert", fmt, input_path, "--out", out, *extra)
    assert res.exit_code == 0, f"convert failed ({res.exit_code}): {res.output}\n{res.exception!r}"
    counts = last_json(res)
    assert set(counts) == {"input", "accepted", "rejected"}
    assert counts["input"] == counts["accepted"] + counts["rejected"]
    return counts


def rejects(out: Path) -> list[dict]:
    text = (out / "rejects.jsonl").read_text(encoding="utf-8")
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


def samples(out: Path) -> list[dict]:
    from nexus_gen.data.shards import iter_samples

    return list(iter_samples(out))

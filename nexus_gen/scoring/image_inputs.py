"""Image inputs of the scorers: paths, bytes or PIL images -> (content key, RGB image).

The content key is the xxh3-128 hex of the encoded bytes: the fingerprint shards already store
per image (`meta.image_xxh3_128`), so a `{bytes, path, xxh3_128}` struct that carries it is not
hashed again. Decoding goes through the project's one safe decoder
(`nexus_gen.data.images.decode_image`), and a PIL image gets the same mode conversion: every
path gives the same RGB pixels, transparent pixels composited onto white."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import xxhash
from PIL import Image

from nexus_gen.data.images import ImageError, decode_image
# the decoder's own mode conversion (alpha onto white, 16-bit scaled), reused for PIL inputs
from nexus_gen.data.images import to_rgb as _decoder_rgb

HASH_FIELD = "xxh3_128"  # optional key of an image struct: its bytes' xxh3-128 hex, if known

ImageInput = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, dict]


class ImageLoadError(ValueError):
    """An image input could not be read or decoded; the message names the input."""


def describe(item: ImageInput) -> str:
    """A short human name for an image input, for error messages."""
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<{len(item)} bytes>"
    if isinstance(item, Image.Image):
        return f"<PIL {item.mode} {item.size[0]}x{item.size[1]}>"
    if isinstance(item, dict):
        return str(item.get("path") or f"<{len(item.get('bytes') or b'')} bytes>")
    return f"<{type(item).__name__}>"


def decode_bytes(data: bytes, *, name: str) -> Image.Image:
    """Decode encoded image bytes to an RGB PIL image, raising `ImageLoadError` naming `name`."""
    try:
        return decode_image(data, name=name)
    except ImageError as exc:
        raise ImageLoadError(str(exc)) from exc


def content_key(data: bytes) -> str:
    """The content key of encoded image bytes: xxh3-128 hex, as `meta.image_xxh3_128` stores it."""
    return xxhash.xxh3_128_hexdigest(data)


def read_input(item: ImageInput) -> tuple[str, Union[bytes, Image.Image]]:
    """Read an input without decoding it: returns (content key, encoded bytes or PIL image).

    The key of a file or bytes is `content_key` of the encoded bytes (taken from an image
    struct's `xxh3_128` field when it has one, not recomputed); of a PIL image, the xxh3-128 of
    its mode, size and pixels, prefixed `pil:`."""
    known = None
    if isinstance(item, dict):  # HF Image struct {bytes, path}, optionally with its hash
        known = item.get(HASH_FIELD) or None
        data = item.get("bytes")
        item = data if data else item.get("path")
        if item is None:
            raise ImageLoadError("image struct has neither 'bytes' nor 'path'")
    if isinstance(item, Image.Image):
        h = xxhash.xxh3_128(f"pil:{item.mode}:{item.size[0]}x{item.size[1]}:".encode())
        h.update(item.tobytes())
        return "pil:" + h.hexdigest(), item
    if isinstance(item, (bytes, bytearray, memoryview)):
        data = bytes(item)
    elif isinstance(item, (str, os.PathLike)):
        try:
            data = Path(item).read_bytes()
        except OSError as exc:
            raise ImageLoadError(f"{item}: cannot read image file ({exc.strerror or exc})") from exc
    else:
        raise ImageLoadError(f"unsupported image input of type {type(item).__name__}; "
                             "pass a path, bytes, a PIL image or a {bytes, path} dict")
    if not data:
        raise ImageLoadError(f"{describe(item)}: empty image data")
    return (known if isinstance(known, str) else content_key(data)), data


def to_rgb(content: Union[bytes, Image.Image], *, name: str) -> Image.Image:
    """Decode the result of `read_input` to an RGB image. Bytes and PIL images follow one rule:
    transparent pixels are composited onto white (as the decoder does), never dropped to black."""
    if isinstance(content, Image.Image):
        try:
            return _decoder_rgb(content)
        except Exception as exc:  # a mode PIL cannot convert
            raise ImageLoadError(f"{name}: cannot convert a {content.mode} image to RGB ({exc})") from exc
    return decode_bytes(content, name=name)


def load_rgb(item: ImageInput) -> Image.Image:
    """Read and decode one input to an RGB image (raises `ImageLoadError` naming it)."""
    _, content = read_input(item)
    return to_rgb(content, name=describe(item))

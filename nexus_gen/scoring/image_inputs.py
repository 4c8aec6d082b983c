"""Image inputs of the scorers: paths, bytes or PIL images -> (sha256 key, RGB image).

Decoding goes through the project's one safe decoder (`nexus_gen.data.images.decode_image`)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Union

from PIL import Image

from nexus_gen.data.images import ImageError, decode_image

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


def read_input(item: ImageInput) -> tuple[str, Union[bytes, Image.Image]]:
    """Read an input without decoding it: returns (sha256 hex key, encoded bytes or PIL image).

    The key of a file or bytes is the sha256 of the encoded bytes; of a PIL image, the sha256 of
    its mode, size and pixels."""
    if isinstance(item, dict):  # HF Image struct {bytes, path}
        data = item.get("bytes")
        item = data if data else item.get("path")
        if item is None:
            raise ImageLoadError("image struct has neither 'bytes' nor 'path'")
    if isinstance(item, Image.Image):
        h = hashlib.sha256(f"pil:{item.mode}:{item.size[0]}x{item.size[1]}:".encode())
        h.update(item.tobytes())
        return h.hexdigest(), item
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
    return hashlib.sha256(data).hexdigest(), data


def to_rgb(content: Union[bytes, Image.Image], *, name: str) -> Image.Image:
    """Decode the result of `read_input` to an RGB image."""
    if isinstance(content, Image.Image):
        return content.convert("RGB") if content.mode != "RGB" else content
    return decode_bytes(content, name=name)


def load_rgb(item: ImageInput) -> Image.Image:
    """Read and decode one input to an RGB image (raises `ImageLoadError` naming it)."""
    _, content = read_input(item)
    return to_rgb(content, name=describe(item))

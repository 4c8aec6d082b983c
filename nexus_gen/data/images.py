"""One safe way in for every image: path confinement, a pixel-count guard against decompression
bombs, truncation checks, EXIF orientation and conversion of any mode to RGB.

Two depths: `inspect_image` reads only the header and the file's end marker (cheap, every image
gets it); `decode_image` decodes all pixels (used by `--verify full` and by every consumer)."""
from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from nexus_gen.data.image_header import jpeg_scan_offset, sniff

DEFAULT_MAX_PIXELS = 100_000_000  # 10k x 10k; raise it explicitly for giant scans
KEEP_FORMATS = {"PNG", "JPEG", "WEBP"}  # stored as-is when already RGB and upright
_ORIENTATION = 0x0112
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_EOI = b"\xff\xd9"


class ImageError(ValueError):
    """An image that cannot be used, with a reason a person understands."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    mode: str
    orientation: int

    @property
    def canonical(self) -> bool:
        """True when the stored bytes already decode to an upright RGB image."""
        return self.format in KEEP_FORMATS and self.mode == "RGB" and self.orientation in (0, 1)


def _read_fd(fd: int, size: int) -> bytes:
    """The whole file behind `fd`: one read syscall for the common case (no file object)."""
    data = os.read(fd, max(size, 1) + 1)  # +1: notice a file that grew since fstat
    if len(data) == size:
        return data
    parts = [data]  # a short read, or a growing file: read on to the end
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


class ImagesRoot:
    """Reads image files named relative to a root, never outside it: refuses URLs, `..` escapes,
    absolute paths elsewhere and symlinks that point out. Directory checks are cached, so a file
    costs one open and one fstat."""

    def __init__(self, root: Union[str, Path]):
        self.root = os.path.realpath(root)
        if not os.path.isdir(self.root):
            raise ImageError(f"images root {root} is not a directory")
        self._dirs: dict[str, str] = {}

    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root.rstrip(os.sep) + os.sep)

    def resolve(self, ref: str) -> str:
        if not isinstance(ref, str) or not ref.strip():
            raise ImageError(f"image reference {ref!r} is not a non-empty path string")
        if "://" in ref:
            raise ImageError(f"image {ref!r} is a URL; only local files under the images root are read")
        if "\x00" in ref:
            raise ImageError(f"image path {ref!r} contains a NUL character")
        try:
            ref.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ImageError(f"image path {ref!r} is not valid UTF-8 ({e.reason})") from None
        cand = ref if os.path.isabs(ref) else os.path.join(self.root, ref)
        head, tail = os.path.split(cand)
        if tail in ("", ".", ".."):
            raise ImageError(f"image path {ref!r} names a directory, not a file")
        real_dir = self._dirs.get(head)
        if real_dir is None:
            real_dir = os.path.realpath(head)
            if len(self._dirs) < 65536:
                self._dirs[head] = real_dir
        path = os.path.join(real_dir, tail)
        if not self._inside(path):
            raise ImageError(f"image path {ref!r} escapes the images root {self.root}")
        return path

    def read(self, ref: str) -> bytes:
        path = self.resolve(ref)
        try:
            # O_NONBLOCK: a named pipe must not hang the run (it is refused below as not a file)
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise ImageError(f"image file {ref!r} not found under the images root {self.root}") from None
        except IsADirectoryError:
            raise ImageError(f"image path {ref!r} is not a regular file") from None
        except OSError as e:
            if os.path.islink(path):  # a symlink: follow it only if it stays inside the root
                try:
                    real = os.path.realpath(path, strict=True)
                except OSError:  # strict: a loop or a missing target raises instead of recursing
                    raise ImageError(f"image path {ref!r} is a broken or looping symlink") from None
                if not self._inside(real):
                    raise ImageError(f"image path {ref!r} is a symlink that escapes the images root "
                                     f"{self.root}") from None
                return self.read(os.path.relpath(real, self.root))
            raise ImageError(f"image file {ref!r} cannot be opened: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImageError(f"image path {ref!r} is not a regular file")
            data = _read_fd(fd, st.st_size)
        finally:
            os.close(fd)
        if not data:
            raise ImageError(f"image file {ref!r} is empty (0 bytes)")
        return data


def resolve_image_path(ref: str, root: Union[str, Path]) -> Path:
    """The file `ref` names inside `root` (see `ImagesRoot`)."""
    return Path(ImagesRoot(root).resolve(ref))


def read_image_file(ref: str, root: Union[str, Path, "ImagesRoot"]) -> bytes:
    return (root if isinstance(root, ImagesRoot) else ImagesRoot(root)).read(ref)


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError(f"image {name!r} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(f"image {name!r} is a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(f"image {name!r}: bytes are not a recognised image format "
                         f"(starts with {data[:8]!r})") from None
    except Exception as e:  # PIL raises many kinds on corrupt headers
        raise ImageError(f"image {name!r}: unreadable header ({type(e).__name__}: {e})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"image {name!r} has an empty size {w}x{h}")
    if w * h > max_pixels:
        raise ImageError(f"image {name!r} is {w}x{h} = {w * h:,} pixels, over the "
                         f"{max_pixels:,}-pixel guard (a decompression bomb or an oversized image)")
    return img


def _check_end(fmt: str, data: bytes, name: str) -> None:
    if fmt == "PNG" and data.rfind(_PNG_END) < 0:
        raise ImageError(f"image {name!r} is a truncated PNG (no IEND chunk)")
    if fmt == "JPEG" and _JPEG_EOI not in data[-1024:]:
        # data may follow the image (phones append a video to "motion photos"): the marker counts
        # anywhere after the first scan starts, where the bytes FF D9 can only be the end marker
        scan = jpeg_scan_offset(data)
        if scan is None or data.find(_JPEG_EOI, scan) < 0:
            raise ImageError(f"image {name!r} is a truncated JPEG (no end-of-image marker)")


def inspect_image(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Header-level check: a known format, a sane pixel count, and for PNG/JPEG an intact end
    marker (catches truncated files without decoding). Other formats are fully decoded."""
    if not data:
        raise ImageError(f"image {name!r} is empty (0 bytes)")
    fast = sniff(data)
    if fast is not None:  # plain PNG/JPEG: header read directly, no PIL object
        fmt, w, h, mode, orientation = fast
        if w * h > max_pixels:
            raise ImageError(f"image {name!r} is {w}x{h} = {w * h:,} pixels, over the "
                             f"{max_pixels:,}-pixel guard (a decompression bomb or an oversized image)")
        _check_end(fmt, data, name)
        return ImageInfo(fmt, w, h, mode, orientation)
    img = _open(data, name, max_pixels)
    fmt = img.format or "?"
    if fmt in ("PNG", "JPEG"):
        _check_end(fmt, data, name)
    else:
        load_pixels(data, name, max_pixels)
    try:
        orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:
        orientation = 1
    return ImageInfo(fmt, img.size[0], img.size[1], img.mode, orientation)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit greyscale: scale 0..65535 to 0..255
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        arr = np.clip(np.rint(arr / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def load_pixels(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode every pixel as stored (no orientation or mode change): proves the data is whole.
    Truncated or corrupt data raises `ImageError`. (PIL releases the GIL while decoding, so
    threads decode in parallel.)"""
    img = _open(data, name, max_pixels)
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # a process-wide PIL switch someone turned on
        raise ImageError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated "
                         "images would pass unnoticed; turn it off to check images")
    try:
        img.load()
    except Exception as e:
        raise ImageError(f"image {name!r} is truncated or corrupt ({type(e).__name__}: {e})") from None
    return img


def decode_image(data: bytes, name: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode every pixel: EXIF orientation applied, any mode (CMYK, 16-bit, palette, alpha
    composited on white) to RGB. Truncated or corrupt data raises `ImageError`."""
    img = load_pixels(data, name, max_pixels)
    try:
        orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
    except Exception:
        orientation = 1
    if orientation not in (0, 1):
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def encode_png(img: Image.Image) -> bytes:
    """Deterministic lossless PNG bytes of an image."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def canonical_image_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                          full: bool = False) -> tuple[bytes, ImageInfo]:
    """Bytes that any reader decodes to the upright RGB image: the original bytes when they
    already are (no re-encoding, no loss), else a lossless PNG of the normalised pixels.
    `full=True` decodes every image even when it is kept as-is."""
    info = inspect_image(data, name, max_pixels)
    if info.canonical:
        if full:
            load_pixels(data, name, max_pixels)
        return data, info
    img = decode_image(data, name, max_pixels)
    png = encode_png(img)
    return png, ImageInfo("PNG", img.size[0], img.size[1], "RGB", 1)


def image_to_bytes(obj: Union[bytes, Image.Image, dict], name: str,
                   root: Optional[Union[Path, ImagesRoot]]) -> tuple[bytes, Optional[str]]:
    """Raw bytes and original path of any image reference a converter meets: bytes, a PIL image,
    an HF Image struct `{bytes, path}`, or a path string (read under `root`)."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj), None
    if isinstance(obj, Image.Image):
        return encode_png(obj), None
    if isinstance(obj, dict):
        b, p = obj.get("bytes"), obj.get("path")
        if b:
            if not isinstance(b, (bytes, bytearray, memoryview)):
                raise ImageError(f"image struct {name!r}: 'bytes' should be binary, got {type(b).__name__}")
            if p is not None and not isinstance(p, str):
                raise ImageError(f"image struct {name!r}: 'path' should be a string, got {type(p).__name__}")
            return bytes(b), p
        if p:
            obj = p
        else:
            raise ImageError(f"image struct {name!r} has neither bytes nor path")
    if isinstance(obj, str):
        if root is None:
            raise ImageError(f"image {obj!r} is a path but no images root was given")
        return read_image_file(obj, root), obj
    raise ImageError(f"image {name!r} has unsupported type {type(obj).__name__}")

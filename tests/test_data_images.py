"""The safe image decoder: pixel guard, truncation, EXIF orientation, any mode to RGB, path
confinement, and the two verification depths."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_fixtures import (bomb_png, corrupt_middle_jpeg, encode, exif_rotated_jpeg, photo, pixels,
                           truncated_jpeg, truncated_png)

from nexus_gen.data.convert.base import BuildOptions, Draft, DraftError, build_sample
from nexus_gen.data.images import (ImageError, canonical_image_bytes, decode_image, image_to_bytes,
                                   inspect_image, read_image_file, resolve_image_path)
from nexus_gen.data.records import Location


def test_decompression_bomb_is_refused_without_decoding():
    data = bomb_png(30000, 30000)
    assert len(data) < 1000
    for fn in (inspect_image, decode_image):
        with pytest.raises(ImageError, match="decompression bomb"):
            fn(data, "bomb.png")


def test_pixel_guard_below_pillows_own_limit():
    data = bomb_png(12000, 9000)  # over our 100M default, under Pillow's hard error
    with pytest.raises(ImageError, match="pixel"):
        inspect_image(data, "big.png")
    small = encode(photo("coffee", 64), "PNG")
    with pytest.raises(ImageError, match="guard"):
        decode_image(small, "small.png", max_pixels=100)
    assert decode_image(small, "small.png").size == (64, 43)


def test_exif_orientation_is_applied():
    data = exif_rotated_jpeg(40, 24, orientation=6)
    assert Image.open(io.BytesIO(data)).size == (40, 24)
    info = inspect_image(data, "rot.jpg")
    assert info.orientation == 6 and not info.canonical
    assert decode_image(data, "rot.jpg").size == (24, 40)
    out, info2 = canonical_image_bytes(data, "rot.jpg")
    with Image.open(io.BytesIO(out)) as im:  # stored upright, no tag left to misread
        assert im.size == (24, 40) and im.mode == "RGB"
        assert im.getexif().get(0x0112, 1) == 1
    assert (info2.width, info2.height) == (24, 40)


def test_cmyk_jpeg_becomes_rgb():
    src = photo("chelsea", 32)
    data = encode(src.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = decode_image(data, "cmyk.jpg")
    assert img.mode == "RGB" and img.size == src.size
    out, _ = canonical_image_bytes(data, "cmyk.jpg")
    assert Image.open(io.BytesIO(out)).mode == "RGB"
    diff = np.abs(pixels(out).astype(int) - np.asarray(src).astype(int)).mean()
    assert diff < 20  # the same picture, not inverted or garbled


def test_16bit_png_scaled_to_8bit_rgb():
    arr = (np.arange(16 * 8, dtype=np.uint32).reshape(8, 16) * 500).astype(np.uint16)
    data = encode(Image.fromarray(arr), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    img = decode_image(data, "deep.png")
    assert img.mode == "RGB"
    got = np.asarray(img)[..., 0].astype(int)
    assert np.abs(got - np.rint(arr / 257.0)).max() <= 1
    assert got.max() > 200  # full range used, not clipped to 255 of 65535


def test_palette_with_transparency_and_rgba_composited_on_white():
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([255, 0, 0] + [0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 1)
    data = encode(pal, "PNG", transparency=0)
    img = decode_image(data, "pal.png")
    assert img.mode == "RGB"
    assert img.getpixel((1, 1)) == (255, 255, 255)  # transparent red -> white
    assert img.getpixel((0, 0)) == (0, 0, 255)
    rgba = Image.new("RGBA", (4, 4), (0, 255, 0, 0))
    rgba.putpixel((2, 2), (0, 255, 0, 255))
    img = decode_image(encode(rgba, "PNG"), "rgba.png")
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255) and img.getpixel((2, 2)) == (0, 255, 0)
    out, info = canonical_image_bytes(encode(rgba, "PNG"), "rgba.png")
    assert info.mode == "RGB" and Image.open(io.BytesIO(out)).mode == "RGB"


def test_grey_and_other_formats_become_rgb():
    grey = photo("coffee", 16).convert("L")
    for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP"):
        out, info = canonical_image_bytes(encode(grey, fmt), f"grey.{fmt}")
        with Image.open(io.BytesIO(out)) as im:
            assert im.mode == "RGB", fmt
            assert im.format in ("PNG", "JPEG", "WEBP"), fmt


def test_canonical_rgb_kept_byte_for_byte():
    for fmt in ("PNG", "JPEG", "WEBP"):
        data = encode(photo("astronaut", 24), fmt)
        out, info = canonical_image_bytes(data, "x")
        assert out == data and info.canonical


@pytest.mark.parametrize("make,what", [(truncated_png, "PNG"), (truncated_jpeg, "JPEG")])
def test_truncated_images_rejected_at_header_depth(make, what):
    data = make()
    with pytest.raises(ImageError, match=f"truncated {what}"):
        inspect_image(data, "t")
    with pytest.raises(ImageError, match="truncated|corrupt"):
        decode_image(data, "t")


def test_not_an_image_and_empty():
    with pytest.raises(ImageError, match="not a recognised image"):
        inspect_image(b"hello, this is text and not a picture", "x.png")
    with pytest.raises(ImageError, match="empty"):
        inspect_image(b"", "x.png")


def test_corrupt_middle_jpeg_passes_header_fails_full():
    data = corrupt_middle_jpeg()
    info = inspect_image(data, "c.jpg")
    assert info.format == "JPEG"
    out, _ = canonical_image_bytes(data, "c.jpg", full=False)
    assert out == data
    with pytest.raises(ImageError, match="corrupt"):
        canonical_image_bytes(data, "c.jpg", full=True)


# --- confinement -----------------------------------------------------------------------------

@pytest.fixture()
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    (r / "sub" / "ok.png").write_bytes(encode(photo("astronaut", 8)))
    (tmp_path / "outside.png").write_bytes(encode(photo("coffee", 8)))
    return r


def test_paths_inside_the_root_resolve(root):
    assert resolve_image_path("sub/ok.png", root) == (root / "sub" / "ok.png").resolve()
    assert resolve_image_path("sub/../sub/ok.png", root).name == "ok.png"
    assert resolve_image_path(str(root / "sub" / "ok.png"), root).name == "ok.png"  # absolute but inside
    (root / "link.png").symlink_to(root / "sub" / "ok.png")
    (root / "rel_link.png").symlink_to("sub/ok.png")
    data = (root / "sub" / "ok.png").read_bytes()
    assert read_image_file("link.png", root) == read_image_file("rel_link.png", root) == data
    (root / "dir_link").symlink_to(root / "sub")
    assert read_image_file("dir_link/ok.png", root) == data


@pytest.mark.parametrize("ref", ["../outside.png", "sub/../../outside.png", "OUTSIDE_ABS", "out_link.png",
                                 "out_dir_link/outside.png"])
def test_paths_escaping_the_root_are_refused(root, ref):
    (root / "out_link.png").symlink_to(root.parent / "outside.png")
    (root / "out_dir_link").symlink_to(root.parent)
    if ref == "OUTSIDE_ABS":
        ref = str(root.parent / "outside.png")
    with pytest.raises(ImageError, match="escapes the images root"):
        read_image_file(ref, root)


@pytest.mark.parametrize("ref,msg", [("missing.png", "not found"), ("sub", "not a regular file"),
                                     ("", "non-empty"), ("http://example.com/a.png", "URL"),
                                     ("a\x00b.png", "."), ("a\ud800.png", ".")])
def test_bad_references_raise_image_error(root, ref, msg):
    with pytest.raises(ImageError, match=msg):
        read_image_file(ref, root)


def test_symlink_loops_and_broken_links_are_refused(root):
    (root / "a.png").symlink_to("b.png")
    (root / "b.png").symlink_to("a.png")
    (root / "dangling.png").symlink_to("nothing-here.png")
    for ref in ("a.png", "dangling.png"):
        with pytest.raises(ImageError, match="broken or looping symlink"):
            read_image_file(ref, root)


def test_named_pipe_is_refused_not_waited_on(root):
    os.mkfifo(root / "pipe.png")
    with pytest.raises(ImageError, match="not a regular file"):
        read_image_file("pipe.png", root)


def test_zero_byte_file(root):
    (root / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match="0 bytes"):
        read_image_file("empty.png", root)


def test_image_references_of_every_kind(root):
    data = (root / "sub" / "ok.png").read_bytes()
    assert image_to_bytes(data, "b", None) == (data, None)
    assert image_to_bytes({"bytes": data, "path": "orig/x.png"}, "s", None) == (data, "orig/x.png")
    assert image_to_bytes({"bytes": None, "path": "sub/ok.png"}, "s", root) == (data, "sub/ok.png")
    assert image_to_bytes("sub/ok.png", "p", root) == (data, "sub/ok.png")
    with pytest.raises(ImageError, match="neither bytes nor path"):
        image_to_bytes({"bytes": None, "path": None}, "s", root)
    with pytest.raises(ImageError, match="no images root"):
        image_to_bytes("sub/ok.png", "p", None)
    with pytest.raises(ImageError, match="unsupported type"):
        image_to_bytes(42, "n", root)


def test_build_sample_never_lets_image_exceptions_escape(root):
    """Whatever the reference holds, a draft either builds or raises DraftError (a reject row)."""
    opts = BuildOptions(root)
    msgs = [{"role": "user", "content": "<image>\nq"}, {"role": "assistant", "content": "a"}]
    for ref in ("a\x00b.png", "a\ud800.png", {"bytes": "not bytes", "path": None}, 3.5, ["sub/ok.png"]):
        d = Draft(Location("f.jsonl", 1), "x", "s", msgs, [ref])
        with pytest.raises(DraftError):
            build_sample(d, opts)
    ok = build_sample(Draft(Location("f.jsonl", 1), 7, "s", msgs, ["sub/ok.png"]), opts)
    assert ok["id"] == "7" and ok["task"] == "understanding"


def _variants() -> list[tuple[str, bytes]]:
    """PNG/JPEG files of many kinds: the fast header reader must agree with PIL on every one."""
    from PIL.PngImagePlugin import PngInfo

    img = photo("chelsea", 40)
    out = [("rgb.png", encode(img)), ("rgb.jpg", encode(img, "JPEG")),
           ("progressive.jpg", encode(img, "JPEG", progressive=True)),
           ("grey.jpg", encode(img.convert("L"), "JPEG")), ("grey.png", encode(img.convert("L"))),
           ("cmyk.jpg", encode(img.convert("CMYK"), "JPEG")), ("rgba.png", encode(img.convert("RGBA"))),
           ("pal.png", encode(img.convert("P"))), ("la.png", encode(img.convert("LA"))),
           ("one_bit.png", encode(img.convert("1"))),
           ("deep.png", encode(Image.fromarray((np.asarray(img.convert("L")).astype(np.uint16) * 250))))]
    for o in range(1, 9):
        out.append((f"exif{o}.jpg", exif_rotated_jpeg(30, 20, o)))
        exif = Image.Exif()
        exif[0x0112] = o
        out.append((f"exif{o}.png", encode(img, "PNG", exif=exif.tobytes())))
    info = PngInfo()
    info.add_text("Comment", "x" * 5000)
    out.append(("text_chunk.png", encode(img, "PNG", pnginfo=info)))
    # an EXIF segment placed after the frame header (legal: APPn may stand anywhere before the scan)
    data = exif_rotated_jpeg(30, 20, 6)
    segs, pos = [], 2
    while data[pos + 1] != 0xDA:
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segs.append(data[pos:pos + 2 + length])
        pos += 2 + length
    app1 = [s for s in segs if s[1] == 0xE1]
    out.append(("late_exif.jpg", b"\xff\xd8" + b"".join(s for s in segs if s[1] != 0xE1) + app1[0] + data[pos:]))
    return out


@pytest.mark.parametrize("name,data", _variants(), ids=[n for n, _ in _variants()])
def test_header_inspection_agrees_with_pil(name, data):
    info = inspect_image(data, name)
    with Image.open(io.BytesIO(data)) as im:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
        assert (info.format, info.width, info.height) == (im.format, im.width, im.height)
        assert info.orientation == orientation
        pil_canonical = im.format in ("PNG", "JPEG", "WEBP") and im.mode == "RGB" and orientation in (0, 1) \
            and "transparency" not in im.info
    assert info.canonical == pil_canonical
    # whatever is stored decodes to the upright RGB image
    stored, _ = canonical_image_bytes(data, name)
    with Image.open(io.BytesIO(stored)) as im:
        assert im.mode == "RGB" and int(im.getexif().get(0x0112, 1) or 1) == 1
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(decode_image(data, name)))

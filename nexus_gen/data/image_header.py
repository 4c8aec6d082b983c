"""Reading the size, mode and EXIF orientation of PNG and JPEG files straight from their
headers, about 10x faster than opening them with PIL. Anything unusual returns None and the
caller falls back to PIL, so this only ever speeds up the common case."""
from __future__ import annotations

import struct
from typing import Optional

PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {(0, 8): "L", (0, 1): "1", (0, 16): "I;16", (2, 8): "RGB", (2, 16): "RGB;16",
              (3, 8): "P", (4, 8): "LA", (6, 8): "RGBA", (6, 16): "RGBA;16"}
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7}


def _exif_orientation(tiff: bytes) -> Optional[int]:
    """Orientation (tag 0x0112) from IFD0 of a TIFF-structured EXIF block, None if unreadable."""
    if len(tiff) < 8:
        return None
    order = tiff[:2]
    if order == b"II":
        e = "<"
    elif order == b"MM":
        e = ">"
    else:
        return None
    (ifd,) = struct.unpack_from(e + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return None
    (n,) = struct.unpack_from(e + "H", tiff, ifd)
    for i in range(n):
        off = ifd + 2 + 12 * i
        if off + 12 > len(tiff):
            return None
        tag, typ, count = struct.unpack_from(e + "HHI", tiff, off)
        if tag == 0x0112:
            if typ != 3 or count != 1:
                return None
            return struct.unpack_from(e + "H", tiff, off + 8)[0]
    return 1


def sniff_png(data: bytes) -> Optional[tuple[str, int, int, str, int]]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _comp, _filt, _interlace = struct.unpack_from(">IIBBBBB", data, 16)
    mode = _PNG_MODES.get((ctype, depth))
    if mode is None or w == 0 or h == 0:
        return None
    pos, orientation = 33, 1
    while pos + 8 <= len(data):  # ancillary chunks before IDAT: tRNS changes the mode, eXIf orientation
        (length,) = struct.unpack_from(">I", data, pos)
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            break
        if kind == b"tRNS":
            return None  # transparency: let PIL decide the mode
        if kind == b"eXIf":
            o = _exif_orientation(data[pos + 8:pos + 8 + length])
            if o is None:
                return None
            orientation = o
        pos += 12 + length
    else:
        return None
    return "PNG", w, h, mode, orientation


def sniff_jpeg(data: bytes) -> Optional[tuple[str, int, int, str, int]]:
    n = len(data)
    pos, orientation, frame = 2, 1, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > n:
            return None
        seg = data[pos + 4:pos + 2 + length]
        if marker == 0xE1 and seg[:6] == b"Exif\x00\x00":
            o = _exif_orientation(seg[6:])
            if o is None:
                return None
            orientation = o
        elif marker in _SOF:
            if len(seg) < 6:
                return None
            precision, h, w, comps = struct.unpack_from(">BHHB", seg, 0)
            if precision != 8 or w == 0 or h == 0:
                return None
            mode = {1: "L", 3: "RGB", 4: "CMYK"}.get(comps)
            if mode is None:
                return None
            frame = (w, h, mode)  # APPn segments (EXIF) may still follow, up to the first scan
        elif marker == 0xDA:  # first scan: the header is complete (no frame yet: let PIL decide)
            if frame is None:
                return None
            return "JPEG", frame[0], frame[1], frame[2], orientation
        pos += 2 + length
    return None


def jpeg_scan_offset(data: bytes) -> Optional[int]:
    """Where the first scan of a JPEG starts, found by walking its marker segments (an EXIF
    thumbnail inside APP1 holds SOS and EOI markers of its own); None when the header is cut."""
    n, pos = len(data), 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:
            return pos
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            return None
        pos += 2 + length
    return None


def sniff(data: bytes) -> Optional[tuple[str, int, int, str, int]]:
    """(format, width, height, mode, orientation) for plain PNG/JPEG headers, else None."""
    if data[:8] == PNG_SIG:
        return sniff_png(data)
    if data[:3] == b"\xff\xd8\xff":
        return sniff_jpeg(data)
    return None

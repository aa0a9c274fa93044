"""One source image file → the JPEG bytes of its sample: copied when it is already an RGB or grayscale JPEG within
--max-size (after a full decode or a header check), otherwise decoded, converted to RGB, resized and re-encoded.
Anything that cannot become a sample raises BadInput with the reason the manifest records. An image with a side
over JPEG's limit (65,500 pixels, libjpeg's JPEG_MAX_DIMENSION) is resized to fit, its aspect kept, and says so.

Damaged JPEGs. libjpeg only warns about most damage inside a scan ("Corrupt JPEG data: ...") and PIL drops its
warnings, so a plain decode passes them. Every JPEG is therefore also checked here:
- its marker structure (`jpeg_layout`, both --verify modes): segments back to back with valid lengths, scan data
  holding only stuffed 0xFF00 bytes and restart markers (in sequence, as many as the frame's size implies) until a
  marker that may follow a scan, and an end-of-image marker. Garbage holding a 0xFF byte is caught here.
- with --verify full, for a single-scan sequential (baseline) JPEG, most photos, the length of its scan
  (`_check_scan_length`): the decoder must need the scan's last byte, and no bytes beyond it. Garbage without a 0xFF
  byte shifts the Huffman stream, so the decode ends early (libjpeg: "extraneous bytes before marker") or runs past
  the end ("premature end of data segment").
Not detected: damage that leaves the Huffman stream as long as before (a flipped bit that decodes as another valid
code), and, in progressive or multi-scan JPEGs and in restart intervals other than the last, damage that neither
breaks the marker structure nor makes the decoder fail.
"""
from __future__ import annotations

import io
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageFile, UnidentifiedImageError

# What PIL raises on a corrupt or unsupported image (OSError covers truncated data and decoder errors; KeyError,
# TypeError and ZeroDivisionError come from some malformed TIFF, GIF and BMP headers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError,
                  struct.error)
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera JPEG with extra pictures appended; every decoder reads the first
# The raster formats read: Image.open tries only these, so no file reaches a plugin that runs code (EPS hands its
# content to Ghostscript) or an exotic decoder.
SOURCE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "PPM", "TIFF", "WEBP")  # "JPEG" opens MPO files too
_MAGIC = (("JPEG", rb"\xff\xd8\xff"), ("PNG", rb"\x89PNG\r\n\x1a\n"), ("GIF", rb"GIF8[79]a"),
          ("BMP", rb"BM.{4}\x00{4}"), ("TIFF", rb"II\*\x00|MM\x00\*"), ("WEBP", rb"RIFF.{4}WEBP"),
          ("PPM", rb"P[1-6]\s"))

_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (DHT, JPG, DAC excluded)
_SEQUENTIAL_HUFFMAN = (0xC0, 0xC1)  # baseline and extended sequential, Huffman-coded
_EOI, _SOS, _DRI = 0xD9, 0xDA, 0xDD
# Markers that may end a scan: EOI, another scan or the tables before it, DNL, hierarchical ones, APPn, COM.
_AFTER_SCAN = frozenset({0xC4, 0xCC, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, 0xFE, *range(0xE0, 0xF0)})
_PARAMETERLESS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length; libjpeg skips them
# Zero bytes put after a scan so that libjpeg-turbo's read-ahead never starves a complete scan: each refill of its
# 64-bit bit buffer reads at most 8 bytes, and a complete scan needs at most two refills past its end.
_SCAN_PAD = 16
JPEG_MAX_SIDE = 65_500  # libjpeg's JPEG_MAX_DIMENSION: it neither writes nor reads a longer side


class BadInput(Exception):
    """An input file that cannot become a sample; `reason` is what goes into the manifest."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def read_source(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise BadInput(f"unreadable: {err.strerror or err}") from err
    if not data:
        raise BadInput("empty file (0 bytes)")
    return data


def target_size(size: tuple[int, int], max_size: int | None) -> tuple[int, int]:
    """`size` with its longer side brought down to `max_size` (aspect kept); unchanged when already within it."""
    w, h = size
    if max_size is None or max(w, h) <= max_size:
        return size
    scale = max_size / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def fit_jpeg(size: tuple[int, int]) -> tuple[int, int]:
    """`size` with its longer side brought down to JPEG_MAX_SIDE (aspect kept, the shorter side rounded); unchanged
    when within it. BadInput when the shorter side would round to 0 pixels (e.g. 200000×1): skipped, not stretched."""
    w, h = size
    if max(w, h) <= JPEG_MAX_SIDE:
        return size
    short = round(min(w, h) * JPEG_MAX_SIDE / max(w, h))
    if short < 1:
        raise BadInput(f"{w:,}×{h:,} pixels: JPEG allows at most {JPEG_MAX_SIDE:,} pixels per side, and scaled down "
                       f"to fit, its shorter side would be under 1 pixel; crop or split it")
    return (JPEG_MAX_SIDE, short) if w >= h else (short, JPEG_MAX_SIDE)


# ------------------------------------------------------------------------------------------ JPEG structure
@dataclass(frozen=True)
class JpegLayout:
    frame: int  # start-of-frame marker: 0xC0 baseline, 0xC2 progressive, ...
    scans: int
    scan_end: int  # offset of the 0xFF that starts the end-of-image marker ending the last scan


def _corrupt(what: str) -> BadInput:
    return BadInput(f"corrupt JPEG data: {what}")


def _next_marker(data: bytes, pos: int, where: str) -> tuple[int, int]:
    """The marker at `pos` (fill 0xFF bytes allowed before it) and the offset after it; `where` ends messages."""
    if pos >= len(data):
        raise _corrupt(f"truncated: the file ends at byte {pos} without an end-of-image marker{where}")
    if data[pos] != 0xFF:
        found = data.find(b"\xff", pos)
        raise _corrupt(f"{(len(data) if found < 0 else found) - pos} extraneous bytes before a marker at byte "
                       f"{pos}{where}")
    while pos < len(data) and data[pos] == 0xFF:
        pos += 1
    if pos >= len(data):
        raise _corrupt(f"truncated: the file ends inside a marker, without an end-of-image marker{where}")
    return data[pos], pos + 1


def _segment(data: bytes, pos: int, marker: int, where: str) -> tuple[bytes, int]:
    """The parameters of the marker segment whose length field starts at `pos`, and the offset after it."""
    length = int.from_bytes(data[pos:pos + 2], "big")
    if length < 2 or pos + length > len(data):
        raise _corrupt(f"the segment of marker 0xFF{marker:02X} at byte {pos - 2} runs past the end of the file "
                       f"(truncated){where}")
    return data[pos + 2:pos + length], pos + length


def _frame(segment: bytes) -> tuple[int, int, dict[int, tuple[int, int]]]:
    """(width, height, component id → (h, v) sampling factors) of a start-of-frame segment."""
    if len(segment) < 6 or len(segment) < 6 + 3 * segment[5]:
        raise _corrupt("start-of-frame segment too short for its components")
    height, width = struct.unpack(">HH", segment[1:5])
    comps = {segment[6 + 3 * i]: (segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 15) for i in range(segment[5])}
    if not comps or min(min(f) for f in comps.values()) < 1:
        raise _corrupt("start-of-frame segment without components or with a zero sampling factor")
    return width, height, comps


def _expected_restarts(frame: tuple, ids: list[int], interval: int) -> int | None:
    """Restart markers a complete scan of components `ids` holds: one between every `interval` MCUs."""
    width, height, comps = frame
    if not interval or not height or not set(ids) <= set(comps):
        return None  # no restarts, or a height given later by a DNL marker: not checked
    hmax, vmax = max(h for h, _ in comps.values()), max(v for _, v in comps.values())
    if len(ids) == 1:  # a non-interleaved scan: one MCU per block of that component
        h, v = comps[ids[0]]
        mcus = math.ceil(math.ceil(width * h / hmax) / 8) * math.ceil(math.ceil(height * v / vmax) / 8)
    else:
        mcus = math.ceil(width / (8 * hmax)) * math.ceil(height / (8 * vmax))
    return math.ceil(mcus / interval) - 1


def _scan_data_end(data: bytes, pos: int, interval: int) -> tuple[int, int, int, int]:
    """Walks the entropy-coded data from `pos`: (offset of the marker that ends it, that marker, offset after it,
    restart markers seen). Restart markers must come in sequence (RST0..RST7, cyclic), and only with a restart
    `interval`."""
    restarts = 0
    while True:
        start = data.find(b"\xff", pos)
        end = start + 1
        while 0 < end < len(data) and data[end] == 0xFF:  # fill bytes
            end += 1
        if start < 0 or end >= len(data):
            raise _corrupt("truncated inside the scan data (no end-of-image marker)")
        code = data[end]
        if code == 0x00:  # a stuffed 0xFF data byte
            pos = end + 1
        elif 0xD0 <= code <= 0xD7:
            if not interval:
                raise _corrupt(f"restart marker RST{code - 0xD0} in the scan data at byte {start}, without a restart "
                               f"interval")
            if code != 0xD0 + restarts % 8:
                raise _corrupt(f"restart marker RST{code - 0xD0} in the scan data at byte {start}, RST{restarts % 8} "
                               f"expected")
            restarts += 1
            pos = end + 1
        else:
            return start, code, end + 1, restarts


def jpeg_layout(data: bytes) -> JpegLayout:
    """Checks the marker structure of a JPEG (see the module docstring); raises BadInput naming the damage."""
    if data[:2] != b"\xff\xd8":
        raise _corrupt("no start-of-image marker")
    frame_marker, frame, interval, scans, where = None, None, 0, 0, ""
    marker, pos = _next_marker(data, 2, where)
    while True:
        if marker == _EOI:
            raise _corrupt(f"end-of-image marker at byte {pos - 2} before any image data")
        if marker in _PARAMETERLESS:
            marker, pos = _next_marker(data, pos, where)
            continue
        if marker < 0xC0 or marker == 0xD8 or (marker in _SOF and frame is not None):
            raise _corrupt(f"unexpected marker 0xFF{marker:02X} at byte {pos - 2}{where}")
        segment, pos = _segment(data, pos, marker, where)
        if marker in _SOF:
            frame_marker, frame = marker, _frame(segment)
        elif marker == _DRI and len(segment) >= 2:
            interval = int.from_bytes(segment[:2], "big")
        if marker != _SOS:
            marker, pos = _next_marker(data, pos, where)
            continue
        if frame is None or not segment or len(segment) < 1 + 2 * segment[0]:
            raise _corrupt(f"scan header before byte {pos} comes before the frame header or is too short")
        ids = [segment[1 + 2 * i] for i in range(segment[0])]
        end, marker, pos, restarts = _scan_data_end(data, pos, interval)
        scans += 1
        expected = _expected_restarts(frame, ids, interval)
        if expected is not None and restarts not in (expected, expected + 1):  # libjpeg accepts one trailing RST
            raise _corrupt(f"the scan data of scan {scans} holds {restarts} restart markers, its size implies "
                           f"{expected}")
        if marker not in _AFTER_SCAN:
            raise _corrupt(f"stray marker 0xFF{marker:02X} inside the scan data at byte {end}")
        if marker == _EOI:
            return JpegLayout(frame_marker, scans, end)
        where = f" (after the data of scan {scans}, which ends at byte {end}: garbage inside the scan data, or a cut)"


def _decode_completes(data: bytes) -> bool:
    """Whether libjpeg (through PIL, at 1/8 scale) decodes every line of `data`: True; False when it runs out of
    data first. Other decoder errors propagate."""
    img = Image.open(io.BytesIO(data), formats=("JPEG",))
    img.draft(None, (1, 1))
    try:
        img.load()
    except OSError as err:
        if "truncated" in str(err):
            return False
        raise
    return True


def _check_scan_length(data: bytes, layout: JpegLayout) -> None:
    """--verify full of a single-scan sequential JPEG: a full decode whose scan is followed by zero bytes instead of
    its end marker must complete (else the scan ends before its last block: "premature end"), and one that lacks
    the scan's last byte must not (else the scan holds bytes after its last block: "extraneous bytes"). Both rely on
    PIL's default ImageFile.LOAD_TRUNCATED_IMAGES = False."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("ImageFile.LOAD_TRUNCATED_IMAGES is set: the JPEG scan check needs truncation errors")
    if not _decode_completes(data[:layout.scan_end] + bytes(_SCAN_PAD)):
        raise _corrupt("the scan data ends before the image's last block (cut short, or garbage inside it)")
    if _decode_completes(data[:layout.scan_end - 1]):
        raise _corrupt("the scan data goes on after the image's last block (garbage inside it)")


# ------------------------------------------------------------------------------------------ decode and encode
def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparent pixels over white rather than whatever colour they hide."""
    if img.mode == "F":
        raise BadInput("32-bit float samples: no standard range to map to 8 bits; convert it to an 8-bit image")
    if img.mode.startswith("I"):  # 16-bit samples (a 16-bit PNG): scale to 8 bits, where convert() would clip
        img = img.convert("I")
        if img.getextrema()[1] > 0xFFFF:
            raise BadInput("32-bit integer samples above 65535: no standard range to map to 8 bits; convert it to "
                           "an 8-bit image")
        img = img.point(lambda v: v * (1 / 256)).convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    return img.convert("RGB")


def _reencode(img: Image.Image, size: tuple[int, int], quality: int) -> bytes:
    """Decodes `img` (a full verification), converts it to RGB, resizes it to `size`, encodes it as JPEG."""
    if img.format in _JPEG_FORMATS and size != img.size:
        img.draft(None, size)  # libjpeg scales by 1/2, 1/4 or 1/8 while decoding, never below `size`
    img.load()
    rgb = _to_rgb(img)
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _verify_jpeg(img: Image.Image, data: bytes, verify: str, copied: bool) -> None:
    """Checks a JPEG source: its marker structure always; with "full", its scan length (single-scan sequential
    JPEGs) or else, for one whose bytes are copied, a decode at 1/8 scale (libjpeg still entropy-decodes every
    coefficient, so truncation and corrupt markers fail exactly as in a full-size decode, for less IDCT work)."""
    layout = jpeg_layout(data)
    if verify != "full":
        return
    if layout.frame in _SEQUENTIAL_HUFFMAN and layout.scans == 1:
        _check_scan_length(data, layout)
    elif copied:
        img.draft(None, (1, 1))
        img.load()


def _bomb(err: Image.DecompressionBombError) -> BadInput:
    counts = re.search(r"\((\d+) pixels\) exceeds limit of (\d+) pixels", str(err))
    what = f"{int(counts[1]):,} pixels, over the limit of {int(counts[2]):,}" if counts else str(err)
    return BadInput(f"decompression bomb: {what} (twice PIL.Image.MAX_IMAGE_PIXELS); not decoded")


def _open(data: bytes) -> Image.Image:
    """The image in `data` (header parsed, nothing decoded); BadInput saying why not."""
    try:
        return Image.open(io.BytesIO(data), formats=SOURCE_FORMATS)
    except Image.DecompressionBombError as err:
        raise _bomb(err) from None
    except UnidentifiedImageError:
        claimed = next((name for name, magic in _MAGIC if re.match(magic, data, re.DOTALL)), None)
        if claimed:
            raise BadInput(f"corrupt {claimed} header: its first bytes say {claimed}, but its header cannot be "
                           f"parsed (truncated or damaged)") from None
        raise BadInput(f"not an image in a supported format ({', '.join(SOURCE_FORMATS)}) by its content") from None
    except _DECODE_ERRORS as err:
        raise BadInput(f"corrupt image header: {err}") from err


class Prepared(NamedTuple):
    """A source image as its sample's JPEG."""

    jpeg: bytes
    reencoded: bool  # False: the source's own bytes
    note: str | None = None  # what the report should say of it: a resize the JPEG format forced


def prepare_jpeg(data: bytes, verify: str = "full", quality: int = 90, max_size: int | None = None) -> Prepared:
    """The sample's JPEG bytes from a source file's bytes, whether they were re-encoded, and a note when the image
    had to be resized to fit JPEG's side limit. The format is read from the content, never the file name. RGB and
    grayscale JPEGs within `max_size` are copied as they are (checked as `verify` says: "full" decode or "header");
    others are re-encoded at `quality`. Every JPEG's structure is checked (see the module docstring)."""
    img = _open(data)
    try:
        wanted = target_size(img.size, max_size)
        size = fit_jpeg(wanted)
        note = None if size == wanted else (f"resized from {img.width:,}×{img.height:,} to {size[0]:,}×{size[1]:,}: "
                                            f"JPEG allows at most {JPEG_MAX_SIDE:,} pixels per side")
        copied = img.format in _JPEG_FORMATS and img.mode in ("RGB", "L") and size == img.size
        if img.format in _JPEG_FORMATS:
            _verify_jpeg(img, data, verify, copied)
        if copied:
            return Prepared(data, False)
        return Prepared(_reencode(img, size, quality), True, note)
    except Image.DecompressionBombError as err:  # a frame larger than the header said
        raise _bomb(err) from None
    except _DECODE_ERRORS as err:
        raise BadInput(f"corrupt {img.format} image: {err}") from err

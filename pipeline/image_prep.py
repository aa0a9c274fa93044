"""One source image file → the JPEG bytes of its sample: copied when it is already an RGB or grayscale JPEG within
--max-size (after a full decode or a header check), otherwise decoded, converted to RGB, resized and re-encoded.
Anything that cannot become a sample raises BadInput with the reason the manifest records."""
from __future__ import annotations

import io
import struct
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# What PIL raises on a corrupt or unsupported image (OSError covers truncated data and decoder errors).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, Image.DecompressionBombError)
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera JPEG with extra pictures appended; every decoder reads the first
_EOI_WINDOW = 1024  # header check: a JPEG's end-of-image marker must lie in its last KiB


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


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparent pixels over white rather than whatever colour they hide."""
    if img.mode.startswith("I"):  # 16-bit samples (a 16-bit PNG): scale to 8 bits, where convert() would clip
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
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


def _verify_copy(img: Image.Image, data: bytes, verify: str) -> None:
    """Checks a JPEG whose bytes will be copied. "full" decodes it at 1/8 scale: libjpeg still entropy-decodes every
    coefficient, so truncation and corrupt markers fail exactly as in a full-size decode, for less IDCT work."""
    if verify == "full":
        img.draft(None, (1, 1))
        img.load()
    elif b"\xff\xd9" not in data[-_EOI_WINDOW:]:
        raise BadInput(f"truncated JPEG: no end-of-image marker in its last {_EOI_WINDOW} bytes")


def prepare_jpeg(data: bytes, verify: str = "full", quality: int = 90,
                 max_size: int | None = None) -> tuple[bytes, bool]:
    """The sample's JPEG bytes from a source file's bytes, and whether they were re-encoded. The format is read from
    the content, never the file name. RGB and grayscale JPEGs within `max_size` are copied as they are (checked as
    `verify` says: "full" decode or "header"); others are re-encoded at `quality`."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as err:
        raise BadInput("not an image (no known image format in its content)") from err
    except _DECODE_ERRORS as err:
        raise BadInput(f"corrupt image header: {err}") from err
    try:
        size = target_size(img.size, max_size)
        if img.format in _JPEG_FORMATS and img.mode in ("RGB", "L") and size == img.size:
            _verify_copy(img, data, verify)
            return data, False
        return _reencode(img, size, quality), True
    except _DECODE_ERRORS as err:
        raise BadInput(f"corrupt {img.format} image: {err}") from err

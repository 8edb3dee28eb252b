"""What an image file is, without decoding its pixels: format, size, gray or colour, EXIF
orientation; and the refusals that need no decoding: empty, unreadable, not an image,
truncated, or over the pixel limit (a guard against decompression bombs).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image as PILImage

MAX_PIXELS_VARIABLE = "IMG2IMG_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 256_000_000  # 16000 x 16000; bigger files are usually attacks or mistakes
PILImage.MAX_IMAGE_PIXELS = None  # we apply the limit above, with a clearer message

_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF", b"RIFF": "WEBP"}


class ImageError(Exception):
    """A file that cannot be read or written as an image; the message names the file."""


@dataclass
class Header:
    format: str  # PNG, JPEG, WEBP, BMP, TIFF
    width: int  # as displayed, after the EXIF orientation
    height: int
    gray: bool  # the file stores gray levels
    orientation: int  # EXIF orientation, 1 when absent


def check_image(path: Path, data: bytes | None = None) -> Header:
    """Every check that needs no decoding; reads only the header and the last bytes unless
    `data` (the whole file) is given."""
    path = Path(path)
    head, tail = _ends(path, data)
    image_format = next((name for magic, name in _SIGNATURES.items() if head.startswith(magic)), None)
    if image_format and _truncated(tail, image_format):
        raise ImageError(f"{path}: the file is truncated (it ends before the image data does)")
    header = _header(path, data, image_format)
    if header.width * header.height > max_pixels():
        raise ImageError(
            f"{path}: {header.width}x{header.height} is {header.width * header.height / 1e6:.0f} megapixels, over "
            f"the limit of {max_pixels() / 1e6:.0f} (a guard against decompression bombs); if you trust the file, "
            f"raise it with --max-pixels or {MAX_PIXELS_VARIABLE}"
        )
    return header


def read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except PermissionError:
        raise ImageError(f"{path}: cannot be read: permission denied") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except OSError as err:
        raise ImageError(f"{path}: cannot be read ({err.strerror or err})") from None
    if not data:
        raise ImageError(f"{path}: empty file (0 bytes)")
    return data


def max_pixels() -> int:
    return int(os.environ.get(MAX_PIXELS_VARIABLE, DEFAULT_MAX_PIXELS))


def set_max_pixels(limit: int) -> None:
    """The decompression-bomb guard for this process and the loader workers it starts."""
    os.environ[MAX_PIXELS_VARIABLE] = str(int(limit))


def _ends(path: Path, data: bytes | None) -> tuple[bytes, bytes]:
    if data is not None:
        return data[:16], data[-64:]
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64))
            tail = handle.read()
    except OSError:
        read_bytes(path)  # raises the message that fits
        raise
    if not head:
        raise ImageError(f"{path}: empty file (0 bytes)")
    return head, tail


def _truncated(tail: bytes, image_format: str) -> bool:
    """Decoders fill a cut-off JPEG with grey and say nothing: look for the end markers."""
    tail = tail.rstrip(b"\0")[-16:]
    if image_format == "JPEG":
        return not tail.endswith(b"\xff\xd9")
    if image_format == "PNG":
        return b"IEND" not in tail
    return False


def _header(path: Path, data: bytes | None, image_format: str | None) -> Header:
    try:
        with PILImage.open(io.BytesIO(data) if data is not None else path) as handle:
            orientation = handle.getexif().get(0x0112, 1)
            width, height = handle.size
            if orientation in (5, 6, 7, 8):  # displayed rotated by 90 degrees
                width, height = height, width
            return Header(handle.format or image_format or "", width, height, handle.mode in _GRAY_MODES, orientation)
    except Exception:
        pass
    if image_format is None:
        raise ImageError(f"{path}: not an image (the format is not recognised)")
    # Pillow lacks some modes OpenCV reads (e.g. float TIFF): ask the decoder itself.
    pixels = cv2.imdecode(np.frombuffer(data if data is not None else read_bytes(path), np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageError(f"{path}: the {image_format} data is corrupt and cannot be decoded")
    gray = pixels.ndim == 2 or pixels.shape[2] in (1, 2)
    return Header(image_format, pixels.shape[1], pixels.shape[0], gray, 1)

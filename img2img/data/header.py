"""What an image file is, without decoding its pixels: format, size, gray or colour, EXIF
orientation; and the refusals that need no decoding: empty, unreadable, not an image,
truncated, or over the pixel limit (a guard against decompression bombs).

The sizes a file declares are read here from its bytes, before any decoder sees it: decoders
allocate from these fields (OpenCV's, and libwebp's animation decoder, as soon as they are
created), and how each library version reacts to an absurd one differs (Pillow 13 raises where
older ones allocate, OpenCV 5 raises where 4.x returned None). Every frame, page and tile a file
declares is checked, since decoders may allocate for any of them. Pillow's lazy open then adds
the colour mode and the EXIF orientation, still without decoding, and must agree on the size.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image as PILImage

MAX_PIXELS_VARIABLE = "IMG2IMG_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 256_000_000  # 16000 x 16000; bigger files are usually attacks or mistakes
PILImage.MAX_IMAGE_PIXELS = None  # we apply the limit above, with a clearer message
MAX_PAGES = 10_000  # IFDs / frames walked per file; more is an attack on the walk itself

_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")
_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF", b"II+\x00": "TIFF", b"MM\x00+": "TIFF", b"RIFF": "WEBP"}
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_EXIF_ORIENTATION = 0x0112


class ImageError(Exception):
    """A file that cannot be read or written as an image; the message, one line, names the file."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """`text` with control characters escaped: a file name may hold a newline, and a message per
    file is one line (cut at the newline, it lost its reason)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class _Corrupt(Exception):
    """A header field that cannot be right; the message says which (the caller adds the path)."""


@dataclass
class Header:
    format: str  # PNG, JPEG, WEBP, BMP, TIFF
    width: int  # as displayed, after the EXIF orientation
    height: int
    gray: bool  # the file stores gray levels
    orientation: int  # EXIF orientation, 1 when absent
    mode: str = ""  # Pillow's mode ("RGBA", "LA", ...); "" when Pillow does not open the file
    sample_bits: int = 8  # bits per sample (TIFF's BitsPerSample)


def check_image(path: Path, data: bytes | None = None) -> Header:
    """Every check that needs no decoding, on `data` (the whole file) or the file read now.
    Read, not memory-mapped: a file cut short while mapped would kill the process (SIGBUS)."""
    path = Path(path)
    return _check(path, read_bytes(path) if data is None else data)


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


def failure(path: Path, err: BaseException, doing: str) -> str:
    """One line naming the file and what went wrong, whatever raised: the per-file boundary's
    message (ImageError messages already name the file)."""
    if isinstance(err, ImageError):
        return str(err).strip().splitlines()[0] if str(err).strip() else f"{path}: {doing} failed"
    if isinstance(err, MemoryError):
        return f"{path}: out of memory while {doing}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__
    return f"{path}: {doing} failed ({reason})"


# ---- the checks -------------------------------------------------------------------------


def _check(path: Path, data: bytes) -> Header:
    if len(data) == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    image_format = next((name for magic, name in _SIGNATURES.items() if data[:16].startswith(magic)), None)
    if image_format is None:
        raise ImageError(f"{path}: not an image (the format is not recognised; png, jpg, webp, bmp and tif are)")
    if _truncated(data, image_format):
        raise ImageError(f"{path}: the file is truncated (it ends before the image data does)")
    try:
        sizes = _DECLARED[image_format](data)
    except (_Corrupt, struct.error, IndexError, ValueError, OverflowError) as err:
        reason = err if isinstance(err, _Corrupt) else "a header field points past the end of the file"
        raise ImageError(f"{path}: the {image_format} header is corrupt ({reason})") from None
    if not sizes:  # e.g. a TIFF whose writer stopped after the header
        raise ImageError(f"{path}: the {image_format} file holds no image (its header lists none)")
    for what, width, height in sizes:
        if width <= 0 or height <= 0:
            raise ImageError(f"{path}: the {image_format} header is corrupt (its {what} is {width}x{height} px)")
        if width * height > max_pixels():
            count, limit = _pixels(width * height), _pixels(max_pixels())
            if count == limit:  # rounded to the same megapixels: the exact counts say which is larger
                count, limit = f"{width * height:,} pixels", f"{max_pixels():,}"
            raise ImageError(
                f"{path}: {width}x{height} ({what}) is {count}, over the limit of {limit} (a guard against "
                f"decompression bombs); if you trust the file, raise it with --max-pixels or {MAX_PIXELS_VARIABLE}")
    return _with_details(path, data, Header(image_format, sizes[0][1], sizes[0][2], False, 1))


def _pixels(count: int) -> str:
    return f"{count / 1e6:.0f} megapixels" if count >= 10_000_000 else f"{count:,} pixels"


def _with_details(path: Path, data, header: Header) -> Header:
    """Mode and EXIF orientation from Pillow's lazy open, which must agree on the size. Files
    Pillow cannot open (e.g. float TIFF) keep the declared size, and OpenCV decides."""
    if header.format == "TIFF":  # read here: Pillow versions differ on what they leave of it
        header.orientation = tiff_orientation(data)[0]
    try:
        with PILImage.open(io.BytesIO(data)) as handle:
            size, mode = handle.size, handle.mode
            orientation = header.orientation if header.format == "TIFF" else _orientation(handle)
            bits = handle.tag_v2.get(_TIFF_BITS, (8,)) if header.format == "TIFF" else (8,)
    except Exception:  # any Pillow version's way of declining a file it does not read
        return _displayed(header)
    stored, turned = (header.width, header.height), (header.height, header.width)
    # Pillow 13 reports a TIFF's size as displayed (turned), older ones as stored.
    if size != stored and not (header.format == "TIFF" and orientation in (5, 6, 7, 8) and size == turned):
        raise ImageError(f"{path}: the {header.format} header is corrupt (it declares both "
                         f"{header.width}x{header.height} and {size[0]}x{size[1]} px)")
    header.gray, header.orientation, header.mode = mode in _GRAY_MODES, orientation, mode
    if header.format == "PNG":  # Pillow opens 16-bit gray + alpha as RGBA
        header.gray = data[25] in (0, 4)  # IHDR colour type: gray, gray + alpha
    header.sample_bits = max(bits) if isinstance(bits, tuple) and bits else 8
    return _displayed(header)


def _displayed(header: Header) -> Header:
    if header.orientation in (5, 6, 7, 8):  # displayed rotated by 90 degrees
        header.width, header.height = header.height, header.width
    return header


def _orientation(handle: PILImage.Image) -> int:
    """From the metadata read at open time: PNG's getexif() would decode the image to look
    for an eXIf chunk after the pixels."""
    if handle.format == "TIFF":
        value = handle.tag_v2.get(_EXIF_ORIENTATION, 1)
    elif "exif" in handle.info:
        exif = PILImage.Exif()
        exif.load(handle.info["exif"])
        value = exif.get(_EXIF_ORIENTATION, 1)
    else:
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _truncated(data, image_format: str) -> bool:
    """Decoders fill a cut-off JPEG with grey and say nothing: look for the end markers where the
    image data ends (phones append a video to Motion Photos, tools append metadata or zeros)."""
    if image_format == "JPEG":
        return not _jpeg_ends(data)
    if image_format == "PNG":
        return not _png_ends(data)
    if image_format == "WEBP":
        return len(data) < 8 + struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else True
    return False


def _jpeg_ends(data) -> bool:
    """An end-of-image marker after the first scan's start. The segments before it are skipped
    by their lengths (an EXIF thumbnail holds one of its own); scan data cannot hold one (a 0xFF
    byte there is always followed by 0 or a restart marker)."""
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return False
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
        elif marker == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", offset) >= 0
        elif marker == 0xD9:
            return True
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            offset += 2
        else:
            offset += 2 + struct.unpack_from(">H", data, offset + 2)[0]
    return False


def _png_ends(data) -> bool:
    """The IEND chunk, reached chunk by chunk; what follows it does not matter."""
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        if kind == b"IEND":
            return True
        offset += 12 + length
    return False


def png_gray_transparent(data) -> int | None:
    """The gray level a gray PNG (colour type 0) declares transparent in its tRNS chunk, on the
    8 or 16-bit scale it is decoded to; None for other PNGs. Decoders give such a file as gray
    without alpha: its transparent pixels would turn opaque."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 29 or data[25] != 0:
        return None
    depth, offset = data[24], 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        if kind in (b"IDAT", b"IEND"):  # tRNS comes before the image data
            return None
        if kind == b"tRNS" and length >= 2 and offset + 10 <= len(data):
            level = struct.unpack_from(">H", data, offset + 8)[0]
            return level if depth == 16 else level * 255 // ((1 << depth) - 1)
        offset += 12 + length
    return None


# ---- declared sizes, per format: [(what, width, height), ...], the image first ----------


def _png_sizes(data) -> list[tuple[str, int, int]]:
    if data[12:16] != b"IHDR":
        raise _Corrupt("IHDR is not the first chunk")
    width, height = struct.unpack_from(">II", data, 16)
    sizes = [("image", width, height)]
    offset = 8
    while offset + 8 <= len(data) and len(sizes) <= MAX_PAGES:
        length, kind = struct.unpack_from(">I4s", data, offset)
        if offset + 12 + length > len(data):  # decoders would wait for bytes that never come
            raise _Corrupt(f"chunk {_name(kind)} of {length} bytes runs past the end of the file")
        if kind == b"fcTL":  # an APNG frame: decoders allocate for it
            sizes.append((f"frame {len(sizes)}", *struct.unpack_from(">II", data, offset + 12)))
        if kind == b"IEND":
            break
        offset += 12 + length
    return sizes


def _jpeg_sizes(data) -> list[tuple[str, int, int]]:
    offset, sizes = 2, []
    while True:
        if offset + 4 > len(data):
            raise _Corrupt("it ends before the image data")
        if data[offset] != 0xFF:
            raise _Corrupt(f"no marker at byte {offset}")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            offset += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no frame header after this
            break
        (length,) = struct.unpack_from(">H", data, offset + 2)
        if length < 2 or offset + 2 + length > len(data):
            raise _Corrupt(f"segment length {length} at byte {offset}")
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", data, offset + 5)
            sizes.append(("image", width, height))
        offset += 2 + length
    if not sizes:
        raise _Corrupt("no frame header (SOF) before the image data")
    if len(sizes) > 1:
        raise _Corrupt(f"{len(sizes)} frame headers (SOF), decoders accept one")
    return sizes


def _bmp_sizes(data) -> list[tuple[str, int, int]]:
    (offset, info_size) = struct.unpack_from("<II", data, 10)
    if info_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
    elif info_size >= 40:
        width, height, _, bits, compression = struct.unpack_from("<iiHHI", data, 18)
        if compression in (0, 3) and bits in (1, 4, 8, 16, 24, 32) and width > 0:  # uncompressed rows
            needed = offset + (width * bits + 31) // 32 * 4 * abs(height)
            if len(data) < needed:
                raise _Corrupt(f"{width}x{abs(height)} px need {needed} bytes, the file has {len(data)}")
    else:
        raise _Corrupt(f"unknown info header size {info_size}")
    return [("image", width, abs(height) if height != -(2**31) else 2**31)]  # negative: stored top-down


def _webp_sizes(data) -> list[tuple[str, int, int]]:
    if data[8:12] != b"WEBP":
        raise _Corrupt("RIFF file of another kind")
    kind, length = struct.unpack_from("<4sI", data, 12)
    if 20 + length > len(data):
        raise _Corrupt(f"chunk {_name(kind)} of {length} bytes runs past the end of the file")
    if kind == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _Corrupt("no VP8 start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return [("image", width & 0x3FFF, height & 0x3FFF)]
    if kind == b"VP8L":
        if data[20] != 0x2F:
            raise _Corrupt("no VP8L signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return [("image", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)]
    if kind != b"VP8X":
        raise _Corrupt(f"unknown first chunk {_name(kind)}")
    sizes = [("canvas", _u24(data, 24) + 1, _u24(data, 27) + 1)]
    offset = 12
    while offset + 8 <= len(data) and len(sizes) <= MAX_PAGES:
        kind, length = struct.unpack_from("<4sI", data, offset)
        if offset + 8 + length > len(data):
            raise _Corrupt(f"chunk {_name(kind)} of {length} bytes runs past the end of the file")
        if kind == b"ANMF":  # an animation frame: x, y, width-1, height-1 (24 bits each)
            sizes.append((f"frame {len(sizes)}", _u24(data, offset + 14) + 1, _u24(data, offset + 17) + 1))
        offset += 8 + length + (length & 1)
    return sizes


def _name(kind: bytes) -> str:
    return "".join(chr(byte) if 32 <= byte < 127 else f"\\x{byte:02x}" for byte in kind)


def _u24(data, offset: int) -> int:
    return data[offset] | data[offset + 1] << 8 | data[offset + 2] << 16


_TIFF_SIZE_TAGS = {256: "width", 257: "height", 322: "tile width", 323: "tile height"}
_TIFF_BITS = 258
_TIFF_PHOTOMETRIC = 262
_TIFF_EXTRA_SAMPLES = 338
_TIFF_PLANAR = 284
_TIFF_SAMPLES = 277
_TIFF_INKSET = 332
_TIFF_SAMPLE_FORMAT = 339


def tiff_orientation(data) -> tuple[int, int | None]:
    """The first page's Orientation (1 when absent or out of range) and where its value is
    stored in `data` (None when absent)."""
    value, where = _first_page_short(data, _EXIF_ORIENTATION)
    return (value if value is not None and 1 <= value <= 8 else 1), where


@dataclass
class TiffLayout:
    """How the first page stores its samples, where decoders differ."""

    alpha: int  # ExtraSamples: 0 none or unspecified, 1 associated (premultiplied colours), 2 unassociated
    photometric: int | None  # 1 gray (black is zero), 2 RGB; others: palette, CMYK, YCbCr, ...
    separate: bool  # PlanarConfiguration 2: each channel stored as a plane of its own
    samples: int  # SamplesPerPixel
    bits: int  # BitsPerSample (of the first sample)
    inks: int  # InkSet of a separated (photometric 5) page: 1 CMYK, 2 other inks
    sample_format: int = 1  # SampleFormat: 1 unsigned, 2 signed, 3 floating point


def tiff_layout(data) -> TiffLayout:
    extra, _ = _first_page_short(data, _TIFF_EXTRA_SAMPLES)
    photometric, _ = _first_page_short(data, _TIFF_PHOTOMETRIC)
    planar, _ = _first_page_short(data, _TIFF_PLANAR)
    samples, _ = _first_page_short(data, _TIFF_SAMPLES)
    bits, _ = _first_page_short(data, _TIFF_BITS)
    inks, _ = _first_page_short(data, _TIFF_INKSET)
    sample_format, _ = _first_page_short(data, _TIFF_SAMPLE_FORMAT)
    return TiffLayout(extra if extra in (1, 2) else 0, photometric, planar == 2, samples or 1, bits or 1, inks or 1,
                      sample_format or 1)


def _first_page_short(data, wanted: int) -> tuple[int | None, int | None]:
    """A SHORT tag of the first page (its first value where it holds several): (value, where it
    is in `data`), (None, None) when absent."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    offset = struct.unpack_from(order + "Q", data, 8)[0] if big else struct.unpack_from(order + "I", data, 4)[0]
    (count,) = struct.unpack_from(order + ("Q" if big else "H"), data, offset)
    start, entry_size = offset + (8 if big else 2), 20 if big else 12
    for entry in range(start, start + count * entry_size, entry_size):
        tag, kind, values = struct.unpack_from(order + ("HHQ" if big else "HHI"), data, entry)
        if tag == wanted and kind == 3:  # SHORT
            where = entry + (12 if big else 8)
            if values * 2 > (8 if big else 4):  # too many to be stored in the entry itself
                (where,) = struct.unpack_from(order + ("Q" if big else "I"), data, where)
            if where + 2 > len(data):  # points past the end: as absent (the decoder names the damage)
                return None, None
            return struct.unpack_from(order + "H", data, where)[0], where
    return None, None


def tiff_upright(data: bytes) -> bytes:
    """`data` with its Orientation set to 1: decoders differ on whether they apply it (OpenCV
    5 does, even when asked not to; Pillow 13 does on load), so it is taken out and applied
    once, by the caller."""
    _, where = tiff_orientation(data)
    if where is None:
        return data
    patched = bytearray(data)
    struct.pack_into(("<" if data[:2] == b"II" else ">") + "H", patched, where, 1)
    return bytes(patched)


def _tiff_sizes(data) -> list[tuple[str, int, int]]:
    """ImageWidth/ImageLength and TileWidth/TileLength of every IFD (classic and BigTIFF)."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack_from(order + "H", data, 2)[0] == 43
    offset = struct.unpack_from(order + "Q", data, 8)[0] if big else struct.unpack_from(order + "I", data, 4)[0]
    count_format, entry_size, next_format = ("Q", 20, "Q") if big else ("H", 12, "I")
    sizes, seen = [], set()
    while offset and len(seen) < MAX_PAGES:
        if offset in seen:
            raise _Corrupt("its pages point back at each other")
        seen.add(offset)
        (count,) = struct.unpack_from(order + count_format, data, offset)
        start = offset + (8 if big else 2)
        fields = {}
        for entry in range(start, start + count * entry_size, entry_size):
            tag, kind = struct.unpack_from(order + "HH", data, entry)
            if tag in _TIFF_SIZE_TAGS:
                value_format = {3: "H", 4: "I", 16: "Q"}.get(kind)
                if value_format is None:
                    raise _Corrupt(f"tag {tag} has type {kind}")
                fields[_TIFF_SIZE_TAGS[tag]] = struct.unpack_from(order + value_format, data, entry + (12 if big else 8))[0]
        page = f"page {len(seen)}" if len(seen) > 1 else "image"
        if "width" not in fields or "height" not in fields:
            raise _Corrupt(f"{page} has no width or height")
        sizes.append((page, fields["width"], fields["height"]))
        if "tile width" in fields or "tile height" in fields:
            sizes.append((f"tile of {page}", fields.get("tile width", 0), fields.get("tile height", 0)))
        (offset,) = struct.unpack_from(order + next_format, data, start + count * entry_size)
    if offset:
        raise _Corrupt(f"more than {MAX_PAGES} pages")
    return sizes


_DECLARED = {"PNG": _png_sizes, "JPEG": _jpeg_sizes, "BMP": _bmp_sizes, "WEBP": _webp_sizes, "TIFF": _tiff_sizes}

"""A hostile corpus: the bundled photographs in every supported format and variant, then broken
in the ways files break or are made to break. Used by tests/test_hostile.py and, at scale, by
benchmarks/hostile.py.

Kinds of damage: truncation at many offsets; bit flips in the header and in the data; runs of
random bytes; forged dimensions (a PNG declaring 90000x90000 with a correct CRC, JPEG SOF,
WebP VP8/VP8L/VP8X canvas and animation frames, TIFF first and later pages, BMP negative and
huge); wrong CRCs; zero-length and oversized chunks and segments; garbage behind valid
signatures; empty files; text files with image names. Everything is seeded: one seed, one corpus.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image as PILImage

from img2img.demo import photo_paths

PHOTO_PX = (40, 48)  # height, width of each corpus image: small, so hundreds translate in seconds


# ---- good files, in every format the product reads ------------------------------------------


def _pil(image: PILImage.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _cv(ext: str, pixels: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(ext, pixels)
    assert ok, ext
    return encoded.tobytes()


def _with_alpha(rgb: np.ndarray) -> PILImage.Image:
    """RGBA with a real gradient of transparency (an opaque alpha would be dropped)."""
    alpha = np.linspace(64, 255, rgb.shape[1], dtype=np.uint8)[None].repeat(rgb.shape[0], 0)
    return PILImage.fromarray(np.dstack([rgb, alpha]), mode="RGBA")


def _frames(rgb: np.ndarray) -> list[PILImage.Image]:
    return [PILImage.fromarray(rgb), PILImage.fromarray(np.ascontiguousarray(rgb[::-1]))]


# name -> (extension, encoder of an RGB uint8 HxWx3 array)
ENCODERS: dict[str, tuple[str, Callable[[np.ndarray], bytes]]] = {
    "png": (".png", lambda rgb: _cv(".png", rgb[:, :, ::-1])),
    "png16": (".png", lambda rgb: _cv(".png", rgb[:, :, ::-1].astype(np.uint16) * 257)),
    "png_gray_alpha": (".png", lambda rgb: _pil(PILImage.fromarray(rgb).convert("LA"), "PNG")),
    "png_palette": (".png", lambda rgb: _pil(PILImage.fromarray(rgb).convert("P"), "PNG")),
    "apng": (".png", lambda rgb: _pil(_frames(rgb)[0], "PNG", save_all=True, append_images=_frames(rgb)[1:])),
    "jpg": (".jpg", lambda rgb: _cv(".jpg", rgb[:, :, ::-1])),
    "jpg_progressive": (".jpeg", lambda rgb: _pil(PILImage.fromarray(rgb), "JPEG", progressive=True, quality=90)),
    "webp_lossy": (".webp", lambda rgb: _pil(PILImage.fromarray(rgb), "WEBP", quality=80)),
    "webp_lossless": (".webp", lambda rgb: _pil(PILImage.fromarray(rgb), "WEBP", lossless=True)),
    "webp_alpha": (".webp", lambda rgb: _pil(_with_alpha(rgb), "WEBP", quality=80)),
    "webp_animated": (".webp", lambda rgb: _pil(_frames(rgb)[0], "WEBP", save_all=True, append_images=_frames(rgb)[1:])),
    "tif": (".tif", lambda rgb: _cv(".tif", rgb[:, :, ::-1])),
    "tif_pages": (".tiff", lambda rgb: _pil(_frames(rgb)[0], "TIFF", save_all=True, append_images=_frames(rgb)[1:])),
    "tif_float": (".tif", lambda rgb: _cv(".tif", rgb[:, :, ::-1].astype(np.float32) / 255)),
    "bmp": (".bmp", lambda rgb: _cv(".bmp", rgb[:, :, ::-1])),
}


def photo_crops(count: int) -> list[np.ndarray]:
    """`count` RGB crops of PHOTO_PX from the bundled photographs."""
    photos = [cv2.imread(str(p))[:, :, ::-1] for p in sum(photo_paths(), [])]
    height, width = PHOTO_PX
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        y = (i // len(photos) * 17) % (photo.shape[0] - height)
        x = (i // len(photos) * 29) % (photo.shape[1] - width)
        crops.append(np.ascontiguousarray(photo[y : y + height, x : x + width]))
    return crops


# ---- damage ---------------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of every chunk, while the lengths hold."""
    chunks, offset = [], 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        chunks.append((offset, kind))
        offset += 12 + length
    return chunks


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def forged_png(width: int, height: int) -> bytes:
    """A PNG that declares width x height, with a few bytes of pixel data and correct CRCs."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b"")


def _png_set_size(data: bytes, width: int, height: int) -> bytes:
    body = struct.pack(">II", width, height) + data[24:29]
    return data[:8] + png_chunk(b"IHDR", body) + data[33:]  # CRC recomputed: only the size lies


def _png_bad_crc(data: bytes, rng: random.Random) -> bytes:
    offset, kind = rng.choice(png_chunks(data))
    (length,) = struct.unpack_from(">I", data, offset)
    crc_at = offset + 8 + length
    return data[:crc_at] + bytes(b ^ 0x5A for b in data[crc_at : crc_at + 4]) + data[crc_at + 4 :]


def _png_chunk_length(data: bytes, rng: random.Random, length: int) -> bytes:
    offset, _ = rng.choice(png_chunks(data))
    return data[:offset] + struct.pack(">I", length) + data[offset + 4 :]


def _jpeg_sof(data: bytes) -> int:
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        if (at := data.find(marker)) > 0:
            return at
    raise ValueError("no SOF")


def _jpeg_set_size(data: bytes, width: int, height: int) -> bytes:
    at = _jpeg_sof(data)
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def _jpeg_segment_length(data: bytes, rng: random.Random, length: int) -> bytes:
    markers = [i for i in range(2, min(len(data), 2000)) if data[i] == 0xFF and 0xC0 <= data[i + 1] <= 0xFE
               and data[i + 1] not in (0xD8, 0xD9)]
    at = rng.choice(markers)
    return data[: at + 2] + struct.pack(">H", length) + data[at + 4 :]


def _webp_set_size(data: bytes, width: int, height: int) -> bytes:
    kind = data[12:16]
    if kind == b"VP8X":
        return data[:24] + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little") + data[30:]
    if kind == b"VP8 ":
        return data[:26] + struct.pack("<HH", width & 0x3FFF, height & 0x3FFF) + data[30:]
    bits = struct.unpack_from("<I", data, 21)[0] & ~((1 << 28) - 1)
    return data[:21] + struct.pack("<I", bits | (width - 1) | (height - 1) << 14) + data[25:]


def _webp_frame_size(data: bytes) -> bytes:
    """An animation frame far larger than its canvas."""
    at = data.find(b"ANMF")
    return data[: at + 14] + (0xFFFFFF).to_bytes(3, "little") * 2 + data[at + 20 :]


def _webp_chunk_size(data: bytes, size: int) -> bytes:
    return data[:16] + struct.pack("<I", size) + data[20:]


def _tiff_ifds(data: bytes) -> list[int]:
    order = "<" if data[:2] == b"II" else ">"
    offsets, offset = [], struct.unpack_from(order + "I", data, 4)[0]
    while offset and offset not in offsets and offset + 2 <= len(data):
        offsets.append(offset)
        (count,) = struct.unpack_from(order + "H", data, offset)
        offset = struct.unpack_from(order + "I", data, offset + 2 + 12 * count)[0]
    return offsets


def _tiff_set_size(data: bytes, width: int, height: int, page: int = 0) -> bytes:
    order = "<" if data[:2] == b"II" else ">"
    buffer = bytearray(data)
    ifd = _tiff_ifds(data)[page]
    (count,) = struct.unpack_from(order + "H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag = struct.unpack_from(order + "H", data, entry)[0]
        if tag in (256, 257):  # rewritten as LONG, whatever the type was
            struct.pack_into(order + "HHII", buffer, entry, tag, 4, 1, width if tag == 256 else height)
    return bytes(buffer)


def _tiff_rewrite_entry(data: bytes, tag: int, new_tag: int, count: int, value: int) -> bytes:
    """The first page's `tag` entry rewritten as `new_tag`, LONG x `count`, value `value`."""
    order = "<" if data[:2] == b"II" else ">"
    buffer = bytearray(data)
    ifd = _tiff_ifds(data)[0]
    (entries,) = struct.unpack_from(order + "H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        if struct.unpack_from(order + "H", data, entry)[0] == tag:
            struct.pack_into(order + "HHII", buffer, entry, new_tag, 4, count, value)
    return bytes(buffer)


def _tiff_huge_tile(data: bytes) -> bytes:
    """RowsPerStrip rewritten as a TileWidth of 2^30 (and no TileLength)."""
    return _tiff_rewrite_entry(data, 278, 322, 1, 2**30)


def _tiff_loop(data: bytes) -> bytes:
    order = "<" if data[:2] == b"II" else ">"
    ifd = _tiff_ifds(data)[0]
    (count,) = struct.unpack_from(order + "H", data, ifd)
    return data[: ifd + 2 + 12 * count] + struct.pack(order + "I", ifd) + data[ifd + 6 + 12 * count :]


def _tiff_tag_past_end(data: bytes) -> bytes:
    """StripByteCounts' values said to lie past the end of the file (Pillow warns and skips it)."""
    return _tiff_rewrite_entry(data, 279, 279, 64, len(data) + 4096)


def _tiff_bits_past_end(data: bytes) -> bytes:
    """BitsPerSample's three SHORTs (stored apart from the entry) said to lie past the end."""
    order = "<" if data[:2] == b"II" else ">"
    buffer = bytearray(data)
    ifd = _tiff_ifds(data)[0]
    (entries,) = struct.unpack_from(order + "H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * entries, 12):
        if struct.unpack_from(order + "H", data, entry)[0] == 258:
            struct.pack_into(order + "HHII", buffer, entry, 258, 3, 3, len(data) + 4096)
    return bytes(buffer)


def _bmp_set_size(data: bytes, width: int, height: int) -> bytes:
    return data[:18] + struct.pack("<ii", width, height) + data[26:]


def _flip(data: bytes, rng: random.Random, start: int, end: int, flips: int) -> bytes:
    buffer = bytearray(data)
    for _ in range(flips):
        at = rng.randrange(start, max(start + 1, min(end, len(data))))
        buffer[at] ^= 1 << rng.randrange(8)
    return bytes(buffer)


def _random_run(data: bytes, rng: random.Random) -> bytes:
    at, size = rng.randrange(len(data)), rng.randint(4, 64)
    return data[:at] + rng.randbytes(size) + data[at + size :]


# Generic damage for any format: name -> f(data, rng)
GENERIC: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "truncated": lambda d, r: d[: r.randrange(1, len(d))],
    "truncated_header": lambda d, r: d[: r.randrange(1, min(len(d), 64))],
    "flipped_header": lambda d, r: _flip(d, r, 0, 64, r.randint(1, 3)),
    "flipped_data": lambda d, r: _flip(d, r, 64, len(d), r.randint(1, 8)),
    "random_run": _random_run,
    "garbage_after_signature": lambda d, r: d[:8] + r.randbytes(r.randint(0, 400)),
    "doubled_tail": lambda d, r: d + d[len(d) // 2 :],
}

HUGE = {"PNG": (90000, 90000), "JPEG": (65000, 65000), "WEBP": (16383, 16383), "TIFF": (2**31 - 1, 2**31 - 1),
        "BMP": (2**31 - 1, 2**31 - 1)}

# Forged headers: name -> (variants it applies to, f(data, rng)); each must be refused before decoding
FORGED: dict[str, tuple[tuple[str, ...], Callable[[bytes, random.Random], bytes]]] = {
    "png_90000": (("png", "png16", "png_gray_alpha", "png_palette", "apng"), lambda d, r: _png_set_size(d, 90000, 90000)),
    "png_zero_width": (("png",), lambda d, r: _png_set_size(d, 0, 40)),
    "png_bomb_file": (("png",), lambda d, r: forged_png(90000, 90000)),
    "jpeg_65000": (("jpg", "jpg_progressive"), lambda d, r: _jpeg_set_size(d, 65000, 65000)),
    "jpeg_dnl_height": (("jpg",), lambda d, r: _jpeg_set_size(d, 48, 0)),
    "webp_huge": (("webp_lossy",), lambda d, r: _webp_set_size(d, 16383, 16383)),
    "webp_lossless_huge": (("webp_lossless",), lambda d, r: _webp_set_size(d, 16384, 16384)),
    "webp_canvas_huge": (("webp_alpha", "webp_animated"), lambda d, r: _webp_set_size(d, 2**24, 2**24)),
    "webp_frame_huge": (("webp_animated",), lambda d, r: _webp_frame_size(d)),
    "tiff_huge": (("tif", "tif_pages", "tif_float"), lambda d, r: _tiff_set_size(d, 2**31 - 1, 2**31 - 1)),
    "tiff_page2_huge": (("tif_pages",), lambda d, r: _tiff_set_size(d, 2**31 - 1, 2**31 - 1, page=1)),
    "tiff_ifd_loop": (("tif_pages",), lambda d, r: _tiff_loop(d)),
    "tiff_huge_tile": (("tif",), lambda d, r: _tiff_huge_tile(d)),
    "bmp_huge": (("bmp",), lambda d, r: _bmp_set_size(d, 2**31 - 1, 2**31 - 1)),
    "bmp_most_negative_height": (("bmp",), lambda d, r: _bmp_set_size(d, 48, -(2**31))),
    "bmp_negative_width": (("bmp",), lambda d, r: _bmp_set_size(d, -48, 40)),
    "bmp_zero_height": (("bmp",), lambda d, r: _bmp_set_size(d, 48, 0)),
}

# Structural damage per format, which may or may not be refused before decoding.
STRUCTURAL: dict[str, tuple[tuple[str, ...], Callable[[bytes, random.Random], bytes]]] = {
    "png_wrong_crc": (("png", "png16", "apng"), _png_bad_crc),
    "png_zero_length_chunk": (("png", "png_palette"), lambda d, r: _png_chunk_length(d, r, 0)),
    "png_oversized_chunk": (("png", "png16"), lambda d, r: _png_chunk_length(d, r, 0x7FFFFFFF)),
    "jpeg_zero_length_segment": (("jpg", "jpg_progressive"), lambda d, r: _jpeg_segment_length(d, r, 0)),
    "jpeg_oversized_segment": (("jpg",), lambda d, r: _jpeg_segment_length(d, r, 0xFFFF)),
    "webp_zero_chunk": (("webp_lossy", "webp_lossless"), lambda d, r: _webp_chunk_size(d, 0)),
    "webp_oversized_chunk": (("webp_lossy", "webp_alpha"), lambda d, r: _webp_chunk_size(d, 0xFFFFFFF0)),
    "tiff_tag_past_end": (("tif", "tif_pages"), lambda d, r: _tiff_tag_past_end(d)),
    "tiff_bits_past_end": (("tif", "tif_pages"), lambda d, r: _tiff_bits_past_end(d)),
}


@dataclass
class Corpus:
    folder: Path
    good: list[Path] = field(default_factory=list)  # untouched files: must always be written
    forged: list[Path] = field(default_factory=list)  # forged sizes: must be refused from the header
    damaged: list[Path] = field(default_factory=list)  # anything else broken: written or refused

    @property
    def hostile(self) -> list[Path]:
        return self.forged + self.damaged

    @property
    def files(self) -> list[Path]:
        return self.good + self.hostile


def build_corpus(folder: Path, hostile: int, good_per_variant: int = 1, seed: int = 0) -> Corpus:
    """About `hostile` broken files plus good_per_variant good files of every variant."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(folder)
    crops = photo_crops(max(8, good_per_variant * len(ENCODERS)))
    variants = {name: (ext, encode(crops[i % len(crops)])) for i, (name, (ext, encode)) in enumerate(ENCODERS.items())}

    def add(kind: list[Path], name: str, ext: str, data: bytes) -> None:
        path = folder / f"{name}{ext}"
        path.write_bytes(data)
        kind.append(path)

    for i, crop in enumerate(crops[: good_per_variant * len(ENCODERS)]):
        name, (ext, encode) = list(ENCODERS.items())[i % len(ENCODERS)]
        add(corpus.good, f"good_{i:03d}_{name}", ext, encode(crop))
    for name, (applies, forge) in FORGED.items():  # every forgery on every variant it fits, once
        for variant in applies:
            add(corpus.forged, f"forged_{name}_{variant}", variants[variant][0], forge(variants[variant][1], rng))
    fixed = [("empty", ".png", b""), ("empty", ".jpg", b""), ("text", ".png", b"not an image\n"),
             ("text", ".jpg", b"GIF89a? no, a text file\n"), ("text", ".webp", b"RIFF....WEBP but text"),
             ("text", ".tif", b"II*\x00 and then words"), ("text", ".bmp", b"BM, a note"),
             # Headers with nothing after them (a write that stopped there): no page, no chunk.
             ("header_only", ".tif", b"II*\x00\x00\x00\x00\x00"), ("header_only", ".tif", b"MM\x00*\x00\x00\x00\x00"),
             ("header_only", ".tif", b"II+\x00\x08\x00\x00\x00" + bytes(8)), ("header_only", ".png", b"\x89PNG\r\n\x1a\n"),
             ("header_only", ".jpg", b"\xff\xd8"), ("header_only", ".webp", b"RIFF\x04\x00\x00\x00WEBP"),
             ("header_only", ".bmp", b"BM" + bytes(12)),
             ("ifd_beyond_any_file", ".tif", b"II+\x00\x08\x00\x00\x00" + (2**63 - 1).to_bytes(8, "little"))]
    for i, (name, ext, data) in enumerate(fixed):
        add(corpus.damaged, f"{name}_{i}", ext, data)
    damages = [(name, None, fn) for name, fn in GENERIC.items()] + [(n, a, f) for n, (a, f) in STRUCTURAL.items()]
    for i in range(max(0, hostile - len(corpus.hostile))):
        name, applies, damage = damages[i % len(damages)]
        variant = rng.choice(applies or list(variants))
        ext, data = variants[variant]
        add(corpus.damaged, f"{name}_{i:05d}_{variant}", ext, damage(data, rng))
    return corpus

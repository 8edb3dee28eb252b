"""Image files <-> float tensors: 8/16-bit, grayscale, alpha, EXIF orientation, atomic writes.

OpenCV does the decoding and encoding (it reads and writes 16-bit PNG/TIFF, which Pillow
cannot do for colour images); header.py checks a file before it is decoded.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image as PILImage

from img2img.data import quiet  # noqa: F401  (silences OpenCV's logger in every process that decodes)
from img2img.data.header import (ImageError, TiffLayout, check_image, one_line, png_gray_transparent, read_bytes,
                                 tiff_layout, tiff_upright)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TEMP_SUFFIX = ".img2img-tmp"  # files being written; a SIGKILL can leave one behind
# .NAME.PID-RANDOM[.buffer].img2img-tmp[.EXT]: the writer's PID, so that a later run removes what
# dead processes left, never what another process writing into the same folder has in flight.
_TEMPORARY = re.compile(r"\..+\.((?P<pid>\d+)-)?\w+(\.buffer)?" + re.escape(TEMP_SUFFIX) + r"(\.\w+)?")

# cv2 flips or rotates to undo each EXIF orientation value (2..8).
_EXIF_FIXES = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.swapaxes(a, 0, 1)[:, ::-1],
    7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
    8: lambda a: np.swapaxes(a, 0, 1)[::-1],
}


@dataclass
class Image:
    rgb: torch.Tensor  # float32, 3xHxW, [0, 1] (translate's results: uint8 where quantised on the GPU)
    alpha: torch.Tensor | None  # float32, 1xHxW, [0, 1], or None
    gray: bool  # the file held one colour channel
    bits: int  # 8 or 16

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[2]


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path, others: list[Path] | None = None) -> list[Path]:
    """All image files below `folder`, recursively, in a stable order. Not searched: hidden
    folders (.git, .thumbnails, ...) and Synology's @eaDir thumbnails; not taken: macOS's "._"
    metadata files, which carry the image's name. A link to nowhere is taken, so that reading
    it names it (a file that vanished), rather than passing over it in silence. `others`, where
    given, receives the files left out for their names (x.gif, notes.txt; hidden ones aside).
    Links to folders are followed (data sets are often assembled from them), each folder once."""
    found = []
    seen: set[tuple[int, int]] = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        here = os.stat(root)
        if (here.st_dev, here.st_ino) in seen:  # a link back up, or a second link to one folder
            folders[:] = []
            continue
        seen.add((here.st_dev, here.st_ino))
        folders[:] = sorted(name for name in folders if not name.startswith(".") and name != "@eaDir")
        for name in files:
            path = Path(root, name)
            if not (path.is_file() or path.is_symlink()):
                continue
            if is_image_file(path) and not name.startswith("._"):
                found.append(path)
            elif others is not None and not name.startswith("."):
                others.append(path)
    if others is not None:
        others.sort()
    return sorted(found)


def files_by_key(folder: Path) -> dict[str, list[Path]]:
    """Images below `folder` by key, the relative path without extension (`x/1` for x/1.png):
    how pairs, outputs and targets are matched whatever their formats."""
    files: dict[str, list[Path]] = {}
    for path in list_images(folder):
        files.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    return files


def files_by_stem(folder: Path, problems: list[str] | None = None) -> dict[str, Path]:
    """Relative path without extension -> file. One name in several formats (a.png and a.jpg)
    cannot be paired by name: each such name is added to `problems`, where given."""
    files = {}
    for key, paths in files_by_key(folder).items():
        if len(paths) > 1 and problems is not None:
            problems.append(f"{', '.join(map(str, paths))}: one name in {len(paths)} formats, and files are paired by "
                            "name without extension; keep one of them")
        files[key] = paths[0]
    return files


def read_image(path: Path) -> Image:
    return decode_image(path).to_image()


@dataclass
class Decoded:
    """A decoded file still in its stored form (uint8/uint16: a quarter or half of the float
    Image): translate keeps 8-bit images like this up to the batch (stack_rgb) and huge ones
    until each tile is converted."""

    pixels: np.ndarray  # H x W (x C) as OpenCV returns it: BGR, BGRA or gray, EXIF-oriented
    gray: bool
    bits: int
    scale: float  # what the stored values are divided by to reach [0, 1]
    full_size: tuple[int, int] = (0, 0)  # height, width as displayed, of the file (pixels may be a reduced decode)

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[0], self.pixels.shape[1]

    @property
    def has_alpha(self) -> bool:
        return self.pixels.ndim == 3 and self.pixels.shape[2] in (2, 4)

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes

    def rgb(self, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        """3 x h x w float32 in [0, 1] of a region (gray files: the gray plane three times)."""
        region = self.planes(rows, cols)
        if self.gray:
            return self._to_float(region[:, :, 0])[None].expand(3, -1, -1).contiguous()
        out = torch.empty(3, region.shape[0], region.shape[1])
        for channel, source in enumerate((2, 1, 0)):  # OpenCV is BGR
            out[channel] = self._to_float(region[:, :, source])
        return out

    def alpha(self, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor | None:
        if not self.has_alpha:
            return None
        return self._to_float(self.planes(rows, cols)[:, :, -1])[None]

    def to_image(self) -> Image:
        return Image(rgb=self.rgb(), alpha=self.alpha(), gray=self.gray, bits=self.bits)

    def stacks_with(self, other: Decoded) -> bool:
        """Whether stack_rgb can batch the two: 8-bit, same size, same planes."""
        return (self.pixels.dtype == other.pixels.dtype == np.uint8 and self.pixels.shape == other.pixels.shape
                and self.gray == other.gray)

    def planes(self, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
        region = self.pixels[rows, cols]
        return region[:, :, None] if region.ndim == 2 else region

    def _to_float(self, plane: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(plane).astype(np.float32) / self.scale)


def stack_rgb(images: list[Decoded], device: torch.device) -> torch.Tensor:
    """N x 3 x H x W float32 in [0, 1] on `device`, the same values as each image's rgb(), from
    8-bit images that stack (Decoded.stacks_with): the bytes cross to the device as stored, a
    quarter of the floats', and become floats there."""
    planes = torch.from_numpy(np.stack([image.planes() for image in images]))
    if device.type == "cuda":
        planes = planes.pin_memory().to(device, non_blocking=True)
    rgb = planes[..., :1].expand(-1, -1, -1, 3) if images[0].gray else planes[..., [2, 1, 0]]  # OpenCV is BGR
    return rgb.permute(0, 3, 1, 2).contiguous().float().div_(255)


def decode_image(path: Path, at_least: int | None = None) -> Decoded:
    """The file's first frame or page. With `at_least`, a JPEG whose sides are both twice that or
    more is decoded at 1/2, 1/4 or 1/8 of its size (libjpeg scales in the DCT: the largest
    reduction that keeps `at_least` a side), for callers that shrink it anyway."""
    path = Path(path)
    data = read_bytes(path)
    header = check_image(path, data)  # sizes checked before the decoder allocates anything
    flags = cv2.IMREAD_UNCHANGED
    if at_least and header.format == "JPEG":
        factor = max((f for f in (1, 2, 4, 8) if min(header.width, header.height) >= f * at_least), default=1)
        if factor > 1:  # EXIF orientation stays ours (below), as for every other decode
            flags = REDUCED_JPEG[factor, header.gray] | cv2.IMREAD_IGNORE_ORIENTATION
    if header.format == "TIFF" and header.orientation != 1:
        data = tiff_upright(data)  # the orientation is applied below, once, whatever the decoder does
    layout = tiff_layout(data) if header.format == "TIFF" else None
    via_tifffile = layout is not None and _needs_tifffile(layout)
    clear = png_gray_transparent(data) if header.format == "PNG" else None
    try:
        if via_tifffile:
            pixels = _tiff_planes(path, data, layout)
        elif header.format == "TIFF" and header.mode in _ALPHA_MODES and header.sample_bits == 8:
            pixels = _tiff_with_alpha(data)
        else:
            pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except ImageError:
        raise
    except Exception:  # OpenCV 4 returned None for what OpenCV 5 raises on: never mind which
        pixels = None
    del data
    if pixels is None or pixels.size == 0 or (pixels.ndim == 3 and pixels.shape[2] > 4):
        raise ImageError(f"{path}: the {header.format or 'image'} data is corrupt and cannot be decoded")
    if clear is not None and pixels.ndim == 2:
        opaque = np.iinfo(pixels.dtype).max
        pixels = np.dstack([pixels, np.where(pixels == clear, 0, opaque).astype(pixels.dtype)])
    if layout is not None and layout.photometric == 5 and layout.samples == 4 and pixels.shape[-1] == 4:
        pixels = pixels[..., :3]  # CMYK, converted by libtiff to colour plus an alpha that the file has not
    fix = _EXIF_FIXES.get(header.orientation)
    if fix is not None:
        pixels = fix(pixels)
    # Associated alpha: tifffile and OpenCV at 16 bits give the colours as stored; Pillow, which
    # decodes the 8-bit ones, gives them straight already.
    stored = layout is not None and (via_tifffile or pixels.dtype == np.uint16) and not _odd_cmyk(layout)
    if stored and layout.alpha == 1:  # (CMYK: straightened before its conversion)
        pixels = _unpremultiplied(pixels)
    if pixels.dtype == np.uint8:
        bits, scale = 8, 255.0
    elif pixels.dtype == np.uint16:
        bits, scale = 16, 65535.0
    elif pixels.dtype in (np.float16, np.float32, np.float64):
        bits, scale = 16, 1.0  # float TIFF: keep precision, write back as 16-bit
        pixels = np.clip(np.nan_to_num(pixels.astype(np.float32, copy=False)), 0.0, 1.0)
    else:
        raise ImageError(f"{path}: unsupported pixel type {pixels.dtype}")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    # OpenCV expands gray+alpha files to BGRA; the header says what the file really holds.
    gray = channels in (1, 2) or header.gray
    return Decoded(pixels=pixels, gray=gray, bits=bits, scale=scale, full_size=(header.height, header.width))


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La")


def _tiff_with_alpha(data: bytes) -> np.ndarray:
    """An 8-bit TIFF with alpha as BGRA or gray + alpha, colours straight (not premultiplied).
    Through Pillow: OpenCV premultiplies the colours of such a file (libtiff's RGBA reader)
    and drops the alpha of gray + alpha ones."""
    with PILImage.open(io.BytesIO(data)) as handle:
        gray = handle.mode in ("LA", "La")
        pixels = np.asarray(handle.convert("LA" if gray else "RGBA"))
    return pixels if gray else np.ascontiguousarray(pixels[..., [2, 1, 0, 3]])


def _needs_tifffile(layout: TiffLayout) -> bool:
    """Gray or RGB samples that OpenCV and Pillow get wrong: planes stored one after the other
    (OpenCV returns a gray mix of them at 16 bits), gray + alpha (OpenCV: 8-bit gray, no alpha)."""
    plain = layout.photometric in (1, 2) and layout.samples <= 4  # more: refused as other decoders do
    half = layout.sample_format == 3 and layout.bits == 16  # half floats: OpenCV has no such type
    return (plain and (layout.separate or half or (layout.alpha and layout.photometric == 1))) or _odd_cmyk(layout)


def _odd_cmyk(layout: TiffLayout) -> bool:
    """CMYK with an alpha or at 16 bits: OpenCV reads plain 8-bit CMYK only, and Pillow none of these."""
    cmyk = layout.photometric == 5 and layout.inks == 1 and layout.samples in (4, 5)
    return cmyk and (layout.samples == 5 or layout.bits == 16)


def _tiff_planes(path: Path, data: bytes, layout: TiffLayout) -> np.ndarray:
    """The first page's samples through tifffile, as OpenCV orders them (BGR, BGRA, gray,
    gray + alpha), colours as stored (premultiplied where the file says so)."""
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as handle:
            pixels = handle.pages.first.asarray()
    except Exception as err:  # e.g. a compression tifffile decodes only with the imagecodecs package
        kind = ("planar (a plane per channel)" if layout.separate else "CMYK" if _odd_cmyk(layout)
                else "half-float" if layout.sample_format == 3 else "gray + alpha")
        raise ImageError(f"{path}: this {kind} TIFF cannot be decoded ({err}); if the file is sound, save it "
                         "uncompressed or with ZIP compression") from None
    if layout.separate and pixels.ndim == 3:
        pixels = np.moveaxis(pixels, 0, -1)
    if _odd_cmyk(layout):
        return _cmyk_to_bgr(pixels, layout.alpha == 1)
    if pixels.ndim == 3:
        pixels = pixels[..., :4 if layout.photometric == 2 else 2]
        if layout.photometric == 2:
            pixels = pixels[..., [2, 1, 0, 3][:pixels.shape[2]]]
    return np.ascontiguousarray(pixels)


def _cmyk_to_bgr(pixels: np.ndarray, premultiplied: bool) -> np.ndarray:
    """BGR or BGRA from CMYK or CMYK + alpha samples, with libtiff's conversion (no colour
    profile: each colour is (1 - ink) * (1 - black), rounded down), which OpenCV applies to
    8-bit CMYK, so that every CMYK file reads alike."""
    if premultiplied:  # straight inks first: the conversion is not linear in them
        pixels = _unpremultiplied(pixels)
    top = float(np.iinfo(pixels.dtype).max)
    out = np.empty(pixels.shape[:2] + (pixels.shape[2] - 1,), pixels.dtype)
    for start in range(0, len(pixels), CHUNK_ROWS):
        band = pixels[start:start + CHUNK_ROWS].astype(np.float64)
        colour = (top - band[..., [2, 1, 0]]) * (top - band[..., 3:4]) // top  # inks Y, M, C give B, G, R
        out[start:start + CHUNK_ROWS, :, :3] = colour
        if pixels.shape[2] == 5:
            out[start:start + CHUNK_ROWS, :, 3] = pixels[start:start + CHUNK_ROWS, :, 4]
    return out


def _unpremultiplied(pixels: np.ndarray) -> np.ndarray:
    """Straight colours from premultiplied ones (a TIFF's associated alpha), in place, a band of
    rows at a time: the float copy of a whole large image would not fit."""
    top = float(np.iinfo(pixels.dtype).max)
    for start in range(0, len(pixels), CHUNK_ROWS):
        band = pixels[start:start + CHUNK_ROWS]
        alpha = band[..., -1:].astype(np.float32)
        colour = band[..., :-1].astype(np.float32) * top / np.maximum(alpha, 1)
        band[..., :-1] = np.clip(np.rint(colour), 0, top)
    return pixels


REDUCED_JPEG = {(2, False): cv2.IMREAD_REDUCED_COLOR_2, (4, False): cv2.IMREAD_REDUCED_COLOR_4,
                (8, False): cv2.IMREAD_REDUCED_COLOR_8, (2, True): cv2.IMREAD_REDUCED_GRAYSCALE_2,
                (4, True): cv2.IMREAD_REDUCED_GRAYSCALE_4, (8, True): cv2.IMREAD_REDUCED_GRAYSCALE_8}


def read_rgb_resized(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(size x size x 3 float32 RGB in [0, 1], the file's height and width): the training
    loaders' resize (alpha dropped). Photographs at least twice `size` a side are shrunk while
    still bytes, by area averaging (JPEGs decoded at a reduced scale first): a 12 MP photo
    otherwise costs some 250 ms of float conversion and bicubic resizing per sample, and a
    bicubic kernel aliases at such ratios. Smaller images keep the reference's bicubic resize."""
    decoded = decode_image(path, at_least=2 * size)  # a reduced JPEG is still shrunk by area, as others are
    if min(decoded.size) >= 2 * size:
        decoded.pixels = cv2.resize(decoded.pixels, (size, size), interpolation=cv2.INTER_AREA)
        return decoded.rgb().permute(1, 2, 0).numpy(), decoded.full_size
    return bicubic_square(decoded.rgb().permute(1, 2, 0).numpy(), size), decoded.full_size


def bicubic_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """The reference's resize of a training image: bicubic, to size x size."""
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)


@dataclass
class Layout:
    """How an image's planes are stored in a file: channel order, bit depth, mode."""

    channels: str  # "RGB", "RGBA", "G" or "GA" (what the file holds, in file order)
    bits: int  # 8 or 16
    flatten: bool = False  # the image has an alpha the format cannot hold: composited onto white

    @property
    def dtype(self) -> type:
        return np.uint16 if self.bits == 16 else np.uint8


def output_layout(suffix: str, gray: bool, alpha: bool, bits: int) -> Layout:
    """The bit depth and channels an image is written with, for a file extension."""
    suffix = suffix.lower()
    if bits == 16 and suffix in (".jpg", ".jpeg", ".webp", ".bmp"):
        bits = 8  # these formats hold 8 bits only
    if alpha and suffix in (".jpg", ".jpeg"):  # as image editors save a transparent image as JPEG
        return Layout("G" if gray else "RGB", bits, flatten=True)
    if gray and alpha:  # WebP holds no gray + alpha: colour + alpha there
        return Layout("GA" if suffix in (".png", ".tif", ".tiff") else "RGBA", bits)
    if gray:
        return Layout("G", bits)
    return Layout("RGBA" if alpha else "RGB", bits)


CHUNK_ROWS = 64  # rows converted at a time: the float temporaries stay small


def quantise_on_device(layout: Layout) -> bool:
    """Whether an output in `layout` can leave the GPU as 8-bit RGB: a quarter of the float
    transfer, and the writer threads skip the conversion (to_pixels takes either)."""
    return layout.bits == 8 and layout.channels in ("RGB", "RGBA") and not layout.flatten


def to_pixels(rgb: torch.Tensor, alpha: torch.Tensor | None, layout: Layout) -> np.ndarray:
    """Float planes in [0, 1] (3 x H x W, 1 x H x W) -> H x W x C integers in `layout`'s order.
    `rgb` may already be 8-bit (quantised on the GPU, see quantise_on_device)."""
    if rgb.dtype == torch.uint8:
        if quantise_on_device(layout):
            planes = [rgb] if alpha is None else [rgb, (alpha.clamp(0, 1) * 255).round().to(torch.uint8)]
            return np.ascontiguousarray(torch.cat(planes).permute(1, 2, 0).numpy())
        rgb = rgb.float() / 255
    height, width = rgb.shape[1:]
    out = np.empty((height, width, len(layout.channels)), layout.dtype)
    scale = 65535.0 if layout.bits == 16 else 255.0
    for top in range(0, height, CHUNK_ROWS):
        rows = slice(top, top + CHUNK_ROWS)
        part = rgb[:, rows].clamp(0, 1)
        if alpha is not None and layout.flatten:
            opacity = alpha[:, rows].clamp(0, 1)
            part = part * opacity + (1 - opacity)
        planes = [part.mean(0, keepdim=True)] if layout.channels[0] == "G" else [part]
        if alpha is not None and layout.channels[-1] == "A":
            planes.append(alpha[:, rows].clamp(0, 1))
        hwc = torch.cat(planes).permute(1, 2, 0).cpu().numpy()
        out[rows] = np.rint(hwc * scale).astype(layout.dtype)
    return out


def write_image(path: Path, image: Image) -> None:
    """Encode `image` to `path` (format from the extension), atomically: temp file + rename."""
    path = Path(path)
    layout = output_layout(path.suffix, image.gray, image.alpha is not None, image.bits)
    pixels = to_pixels(image.rgb, image.alpha, layout)
    if layout.channels[-1] == "A" and path.suffix.lower() in (".tif", ".tiff"):
        write_bytes_atomic(path, _encode_tiff_with_alpha(pixels))
        return
    if layout.channels == "GA":
        write_bytes_atomic(path, _encode_png_gray_alpha(pixels))
        return
    try:
        ok, encoded = cv2.imencode(path.suffix.lower(), to_opencv(pixels, layout))
    except Exception:  # raised by some OpenCV versions, returned as False by others
        ok = False
    if not ok:
        raise ImageError(f"{path}: OpenCV cannot encode {path.suffix!r} images")
    write_bytes_atomic(path, encoded.tobytes())


def to_opencv(pixels: np.ndarray, layout: Layout) -> np.ndarray:
    """RGB(A) -> BGR(A), gray -> H x W: what OpenCV's encoders take (a view where possible)."""
    if layout.channels == "G":
        return pixels[:, :, 0]
    if layout.channels == "RGB":
        return pixels[:, :, ::-1]
    return pixels[:, :, [2, 1, 0, 3]]


def _encode_png_gray_alpha(la: np.ndarray) -> bytes:
    """Gray + alpha PNG, which OpenCV cannot write: Pillow at 8 bits, pypng at 16 (Pillow has
    no 16-bit gray + alpha)."""
    buffer = io.BytesIO()
    if la.dtype == np.uint8:
        PILImage.fromarray(la, mode="LA").save(buffer, format="PNG")
    else:
        write_png_rows(buffer, la.shape[1], la.shape[0], Layout("GA", 16), la)
    return buffer.getvalue()


def write_png_rows(handle, width: int, height: int, layout: Layout, rows: Iterable[np.ndarray],
                   compression: int | None = None) -> None:
    """A PNG of any layout through pypng, rows as they come (H x W x C integers in file order)."""
    import png

    writer = png.Writer(width, height, greyscale=layout.channels[0] == "G", alpha=layout.channels[-1] == "A",
                        bitdepth=layout.bits, compression=compression)
    big_endian = ">u2" if layout.bits == 16 else "u1"  # PNG stores 16-bit samples big-endian
    writer.write_packed(handle, (row.astype(big_endian).tobytes() for row in rows))


def _encode_tiff_with_alpha(pixels: np.ndarray) -> bytes:
    """RGBA or gray + alpha (8 or 16 bits), the last sample declared as unassociated alpha,
    through tifffile: OpenCV declares nothing, which other programs read as another colour."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, pixels, photometric="rgb" if pixels.shape[2] == 4 else "minisblack",
                     extrasamples=["unassalpha"], compression="zlib")
    return buffer.getvalue()


class WriteError(Exception):
    """A file could not be written (a full disk, no permission, a read-only folder)."""

    def __init__(self, message: str, full: bool = False):
        super().__init__(one_line(message))
        self.full = full  # the disk is full: the files after this one would fail too


@contextmanager
def writing(path: Path):
    """Turns an OSError while writing path into a WriteError that names the file and the cause."""
    try:
        yield
    except OSError as err:
        full = err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        hint = ": free space there or write elsewhere" if full else ""
        if err.errno in (errno.EEXIST, errno.ENOTDIR) and (blocking := _file_in_the_way(path)) is not None:
            hint = f" ({blocking} is a file, where a folder is needed)"  # mkdir says "File exists"
        raise WriteError(f"{path}: could not be written: {err.strerror or err}{hint}", full) from None


def _file_in_the_way(path: Path) -> Path | None:
    """The first folder of `path`'s that exists as a file, if any."""
    return next((parent for parent in reversed(Path(path).parents) if parent.is_file()), None)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            publish(Path(tmp), path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


TEMP_NAME_BYTES = 150  # of the file's name in its temporary's: the rest (pid, random part, suffixes) fits NAME_MAX


def temporary_prefix(path: Path) -> str:
    """The start of a temporary's name for `path`; a long name is cut, so that a file whose
    name the file system takes also gets a temporary."""
    name = path.name
    while len(os.fsencode(name)) > TEMP_NAME_BYTES:
        name = name[:-1]
    return f".{name}.{os.getpid()}-"


def remove_stale_temporaries(folder: Path, name: str | None = None) -> None:
    """The temporaries that killed writers left (SIGKILL skips all clean-up): anywhere below
    `folder`, or only those of its file `name`. Those of live writers stay (is_stale_temporary)."""
    if name is not None:
        prefix = temporary_prefix(folder / name).rsplit(".", 1)[0]
        found = folder.glob(f"{glob.escape(prefix)}.*{TEMP_SUFFIX}*")
    else:
        found = folder.rglob(f"*{TEMP_SUFFIX}*")
    for path in list(found):
        if is_stale_temporary(path):  # its name tells which are ours, OpenCV's and buffers included
            path.unlink(missing_ok=True)


def is_stale_temporary(path: Path) -> bool:
    """A temporary file of ours whose writer is gone (killed: SIGKILL skips all clean-up)."""
    match = _TEMPORARY.fullmatch(path.name)
    if match is None:
        return False
    if match["pid"] is None or os.name != "posix":  # named before PIDs were; or no harmless way to ask
        return True
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive: another user's process
    except OverflowError:
        return False  # no PID is that large: not a name of ours to judge
    return False


def publish(temporary: Path, path: Path) -> None:
    """Move a finished temporary file over path, atomically and durably.

    mkstemp makes private files (0600), which a web server or a colleague in the group could not
    read: the result gets the permissions of the file it replaces, else those a plain open()
    gives a new file (0666 less the umask).
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666 & ~UMASK
    os.chmod(temporary, mode)
    os.replace(temporary, path)
    _fsync_folder(path.parent)


def _umask() -> int:
    try:  # Linux tells it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere it can only be read by setting it: once, at import, before any writer thread.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable, so a power cut cannot bring the old file back."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

"""Image files <-> float tensors: 8/16-bit, grayscale, alpha, EXIF orientation, atomic writes.

OpenCV does the decoding and encoding (it reads and writes 16-bit PNG/TIFF, which Pillow
cannot do for colour images); header.py checks a file before it is decoded.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image as PILImage

from img2img.data.header import ImageError, check_image, read_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
TEMP_SUFFIX = ".img2img-tmp"  # files being written; a SIGKILL can leave one behind

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
    rgb: torch.Tensor  # float32, 3xHxW, [0, 1]
    alpha: torch.Tensor | None  # float32, 1xHxW, [0, 1], or None
    gray: bool  # the file held one colour channel
    bits: int  # 8 or 16

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.shape[1], self.rgb.shape[2]


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """All image files below `folder`, recursively, in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def files_by_key(folder: Path) -> dict[str, list[Path]]:
    """Images below `folder` by key, the relative path without extension (`x/1` for x/1.png):
    how pairs, outputs and targets are matched whatever their formats."""
    files: dict[str, list[Path]] = {}
    for path in list_images(folder):
        files.setdefault(path.relative_to(folder).with_suffix("").as_posix(), []).append(path)
    return files


def read_image(path: Path) -> Image:
    path = Path(path)
    data = read_bytes(path)
    header = check_image(path, data)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageError(f"{path}: the {header.format or 'image'} data is corrupt and cannot be decoded")
    fix = _EXIF_FIXES.get(header.orientation)
    if fix is not None:
        pixels = fix(pixels)
    if pixels.dtype == np.uint8:
        bits, scale = 8, 255.0
    elif pixels.dtype == np.uint16:
        bits, scale = 16, 65535.0
    elif pixels.dtype in (np.float32, np.float64):
        bits, scale = 16, 1.0  # float TIFF: keep precision, write back as 16-bit
        pixels = np.clip(np.nan_to_num(pixels), 0.0, 1.0)
    else:
        raise ImageError(f"{path}: unsupported pixel type {pixels.dtype}")
    array = torch.from_numpy(np.ascontiguousarray(pixels).astype(np.float32) / scale)
    if array.ndim == 2:
        array = array[:, :, None]
    channels = array.shape[2]
    # OpenCV expands gray+alpha files to BGRA; the header says what the file really holds.
    gray = channels in (1, 2) or header.gray
    alpha = array[:, :, -1:].permute(2, 0, 1).contiguous() if channels in (2, 4) else None
    if gray:
        rgb = array[:, :, :1].permute(2, 0, 1).expand(3, -1, -1).contiguous()
    else:
        rgb = array[:, :, [2, 1, 0]].permute(2, 0, 1).contiguous()  # OpenCV is BGR
    return Image(rgb=rgb, alpha=alpha, gray=gray, bits=bits)


def write_image(path: Path, image: Image) -> None:
    """Encode `image` to `path` (format from the extension), atomically: temp file + rename."""
    path = Path(path)
    scale, dtype = (65535.0, np.uint16) if image.bits == 16 else (255.0, np.uint8)
    if image.bits == 16 and path.suffix.lower() in (".jpg", ".jpeg", ".webp", ".bmp"):
        scale, dtype = 255.0, np.uint8  # these formats hold 8 bits only
    rgb = image.rgb.clamp(0, 1)
    gray_alpha = image.gray and image.alpha is not None
    if gray_alpha and dtype == np.uint8 and path.suffix.lower() in (".png", ".tif", ".tiff"):
        write_bytes_atomic(path, _encode_gray_alpha(rgb.mean(0), image.alpha[0], path.suffix))
        return
    # OpenCV writes 1, 3 or 4 channels: other gray+alpha cases become BGRA with equal colours.
    planes = [rgb.mean(0, keepdim=True)] if image.gray and not gray_alpha else [rgb[[2, 1, 0]]]
    if image.alpha is not None:
        planes.append(image.alpha.clamp(0, 1))
    hwc = torch.cat(planes).permute(1, 2, 0).cpu().numpy()
    pixels = np.rint(hwc * scale).astype(dtype)
    if pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    ok, encoded = cv2.imencode(path.suffix.lower(), pixels)
    if not ok:
        raise ImageError(f"{path}: OpenCV cannot encode {path.suffix!r} images")
    write_bytes_atomic(path, encoded.tobytes())


def _encode_gray_alpha(gray: torch.Tensor, alpha: torch.Tensor, suffix: str) -> bytes:
    """8-bit gray + alpha, which OpenCV cannot write, through Pillow's LA mode."""
    la = torch.stack([gray, alpha.clamp(0, 1)], -1).cpu().numpy()
    buffer = io.BytesIO()
    PILImage.fromarray(np.rint(la * 255).astype(np.uint8), mode="LA").save(
        buffer, format="PNG" if suffix.lower() == ".png" else "TIFF")
    return buffer.getvalue()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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

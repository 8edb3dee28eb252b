"""Super-resolution data: HR-only folders whose LR is made on the fly by a degradation, or
explicit LR/HR folders paired by relative path and file stem.

Each training sample is a random HR patch of `size` pixels (a multiple of the scale) and its LR
patch of size // scale, with a random flip/rotation (the 8 symmetries of the square). Crop,
symmetry and degradation all draw from one numpy Generator seeded with the sample's seed
(see datasets.SeededSampler), so a run makes the same batches however it is resumed or
however many loader workers it uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from img2img.config import ConfigError, require_folder
from img2img.data.datasets import (DataError, checked_size, first_readable, image_size, partner_problems,
                                   raise_problems, scan_images, to_tensor)
from img2img.data.degrade import degrade
from img2img.data.header import ImageError
from img2img.data.images import Decoded, decode_image, files_by_stem
from img2img.metrics import SSIM_WINDOW

VAL_COUNT = 4  # training images measured when no --val-hr folder is given
SAMPLE_COUNT = 4
PATCH = "the {} px HR patch (--size)"
CONTEXT = 3  # LR pixels of image around a training patch that its degradation sees


@dataclass(frozen=True)
class SRItem:
    hr: Path
    lr: Path | None  # None: made from hr by the degradation


# ---- scanning ----------------------------------------------------------------------------


def scan_hr(folder: Path, min_size: int, flag: str = "--hr", need: str = PATCH,
            left_out: list[str] | None = None) -> list[SRItem]:
    """HR images at least min_size px on each side. Smaller ones are named: as problems that stop
    the scan, or, given `left_out`, there, and the others are used (a folder of photographs
    with a few thumbnails among them)."""
    require_folder(folder, flag)
    small = set()

    def large_enough(path: Path, width: int, height: int) -> str | None:
        if min(width, height) >= min_size:
            return None
        problem = too_small(path, (width, height), min_size, need)
        if left_out is None:
            return problem
        small.add(path)
        left_out.append(problem)
        return None

    files = [path for path in scan_images(folder, flag, large_enough) if path not in small]
    if not files:
        raise DataError(f"{flag} {folder}: every image is smaller than {need.format(min_size)}, e.g. {left_out[0]}")
    return [SRItem(path, None) for path in files]


def scan_sr_pairs(lr_root: Path, hr_root: Path, scale: int, min_size: int,
                  flags: tuple[str, str] = ("--lr-dir", "--hr"), need: str = PATCH,
                  left_out: list[str] | None = None) -> list[SRItem]:
    """LR/HR files matched by relative path and stem; each LR must be HR // scale in size. Pairs
    smaller than min_size are problems, or, given `left_out`, named there and left out (as
    scan_hr does)."""
    require_folder(lr_root, flags[0])
    require_folder(hr_root, flags[1])
    problems: list[str] = []
    lr_files, hr_files = files_by_stem(lr_root, problems), files_by_stem(hr_root, problems)
    if not hr_files:
        raise DataError(f"{flags[1]} {hr_root}: no images found")
    problems += partner_problems(hr_files, hr_root, lr_files, lr_root)
    items = []
    for key in sorted(hr_files.keys() & lr_files.keys()):
        lr_size, hr_size = checked_size(lr_files[key], problems), checked_size(hr_files[key], problems)
        if lr_size is None or hr_size is None:
            continue
        problem = pair_problem(lr_files[key], lr_size, hr_files[key], hr_size, scale)
        if problem is None and min(hr_size) < min_size:
            (problems if left_out is None else left_out).append(too_small(hr_files[key], hr_size, min_size, need))
            continue
        if problem:
            problems.append(problem)
        items.append(SRItem(hr_files[key], lr_files[key]))
    raise_problems(problems, f"{len(problems)} problem(s) pairing {lr_root} with {hr_root} at --scale {scale}")
    if not items and left_out:
        raise DataError(f"{flags[1]} {hr_root}: every pair is smaller than {need.format(min_size)}, e.g. {left_out[0]}")
    return items


def too_small(path: Path, size: tuple[int, int], min_size: int, need: str) -> str:
    return f"{path} is {size[0]}x{size[1]}, smaller than {need.format(min_size)}"


def pair_problem(lr: Path, lr_size: tuple[int, int], hr: Path, hr_size: tuple[int, int], scale: int) -> str | None:
    (lw, lh), (hw, hh) = lr_size, hr_size
    if (lw, lh) != (hw // scale, hh // scale):
        return (f"{lr} is {lw}x{lh} but {hr} is {hw}x{hh}: with --scale {scale} the LR image must be "
                f"{hw // scale}x{hh // scale}")
    return None


def scan_training(hr: Path | None, lr: Path | None, scale: int, size: int,
                  left_out: list[str] | None = None) -> list[SRItem]:
    """HR images (LR made on the fly), or HR/LR pairs when `lr` is given; those smaller than the
    patch go to `left_out`."""
    if hr is None:
        raise ConfigError("give --hr DIR (high-resolution images), and --lr-dir DIR if their LR partners exist")
    if lr is not None:
        return scan_sr_pairs(lr, hr, scale, size, ("--lr-dir", "--hr"), left_out=left_out)
    return scan_hr(hr, size, left_out=left_out)


def validation_min_size(scale: int) -> int:
    # After trimming to the generator's multiple and cropping the scale-pixel border, the Y
    # channel must still hold one 11x11 SSIM window.
    return SSIM_WINDOW + 4 * scale + 4


def scan_validation(val_hr: Path | None, val_lr: Path | None, scale: int, training: list[SRItem]) -> list[SRItem]:
    """--val-hr (with --val-lr if given), else the first training images large enough."""
    min_size, need = validation_min_size(scale), f"the {{}} px needed to measure SSIM at x{scale}"
    if val_hr is None:
        usable = list(islice((item for item in training if min(image_size(item.hr)) >= min_size), VAL_COUNT))
        if training and not usable:
            raise DataError(f"no training image is large enough to validate on (at least {min_size} px "
                            "a side); give --val-hr DIR")
        return usable
    if val_lr is not None:
        return scan_sr_pairs(val_lr, val_hr, scale, min_size, ("--val-lr", "--val-hr"), need)
    return scan_hr(val_hr, min_size, "--val-hr", need)


# ---- loading and cropping ----------------------------------------------------------------


class Lazy:
    """A decoded image, or a window of it, that becomes float32 RGB (H x W x 3, alpha dropped)
    only where it is cropped: a random patch of a 12 MP photograph converts its patch, not the
    photograph (whose float copy alone is 144 MB and some 120 ms)."""

    def __init__(self, decoded: Decoded, rows: slice = slice(None), cols: slice = slice(None)):
        height, width = decoded.size
        self.decoded, self.rows, self.cols = decoded, slice(*rows.indices(height)), slice(*cols.indices(width))

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.rows.stop - self.rows.start, self.cols.stop - self.cols.start, 3

    def __getitem__(self, key: tuple[slice, slice]) -> Lazy:
        """A window (slices without steps, clamped as numpy clamps them)."""
        rows, cols = (slice(*part.indices(length)) for part, length in zip(key, self.shape))
        return Lazy(self.decoded, slice(self.rows.start + rows.start, self.rows.start + max(rows.start, rows.stop)),
                    slice(self.cols.start + cols.start, self.cols.start + max(cols.start, cols.stop)))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rgb = self.decoded.rgb(self.rows, self.cols).permute(1, 2, 0).numpy()
        return rgb if dtype is None else rgb.astype(dtype)


def load_item(item: SRItem, scale: int) -> tuple[Lazy, Lazy | None]:
    """(hr, lr or None), the HR trimmed to exactly lr * scale where an LR file exists."""
    hr = Lazy(decode_image(item.hr))
    if item.lr is None:
        return hr, None
    lr = Lazy(decode_image(item.lr))
    return hr[: lr.shape[0] * scale, : lr.shape[1] * scale], lr


def crop(hr, lr, scale: int, lr_h: int, lr_w: int, top: int, left: int) -> tuple[np.ndarray, np.ndarray | None]:
    """An LR window at (top, left) of lr_h x lr_w and the HR window over the same scene, as arrays."""
    hr = np.asarray(hr[top * scale:(top + lr_h) * scale, left * scale:(left + lr_w) * scale])
    return hr, None if lr is None else np.asarray(lr[top:top + lr_h, left:left + lr_w])


def lr_shape(hr: np.ndarray, lr: np.ndarray | None, scale: int) -> tuple[int, int]:
    return lr.shape[:2] if lr is not None else (hr.shape[0] // scale, hr.shape[1] // scale)


def random_window(hr, lr, scale: int, size: int, rng: np.random.Generator) -> tuple[int, int, int, int, int]:
    """(LR height, LR width, LR patch side, top, left) of a random patch of `size` HR pixels."""
    height, width = lr_shape(hr, lr, scale)
    patch = size // scale
    return height, width, patch, int(rng.integers(height - patch + 1)), int(rng.integers(width - patch + 1))


def random_crop(hr, lr, scale: int, size: int, rng: np.random.Generator):
    _, _, patch, top, left = random_window(hr, lr, scale, size, rng)
    return crop(hr, lr, scale, patch, patch, top, left)


def degraded_patch(hr: np.ndarray, scale: int, size: int, degradation: str, rng: np.random.Generator):
    """A random HR patch and the LR made from it. The degradation sees CONTEXT LR pixels of the
    image around the patch (where the image goes on), so that the patch's edges come out as a
    downscale of the whole image gives them, not from a resampling kernel clamped at the crop.
    (Bicubic x4 reaches 2 LR pixels out: 30% of a 24 px LR patch would otherwise differ from
    what translate and validation give the network.)"""
    height, width, patch, top, left = random_window(hr, None, scale, size, rng)
    region_top, region_left = max(0, top - CONTEXT), max(0, left - CONTEXT)
    region_h = min(height, top + patch + CONTEXT) - region_top
    region_w = min(width, left + patch + CONTEXT) - region_left
    region, _ = crop(hr, None, scale, region_h, region_w, region_top, region_left)
    region_lr = degrade(np.ascontiguousarray(region), scale, degradation, rng)
    return crop(region, region_lr, scale, patch, patch, top - region_top, left - region_left)


def center_crop(hr, lr, scale: int, lr_h: int, lr_w: int):
    height, width = lr_shape(hr, lr, scale)
    return crop(hr, lr, scale, lr_h, lr_w, (height - lr_h) // 2, (width - lr_w) // 2)


def random_symmetry(images: Sequence[np.ndarray | None], rng: np.random.Generator) -> list:
    """The same one of the square's 8 symmetries applied to every image."""
    flip, turns = bool(rng.integers(2)), int(rng.integers(4))

    def apply(x):
        if x is None:
            return None
        x = x[:, ::-1] if flip else x
        return np.rot90(x, turns)

    return [apply(x) for x in images]


# ---- datasets ----------------------------------------------------------------------------


class SRDataset(Dataset):
    """Yields {"lr", "hr"} tensors in [0, 1]; indexed by (index, seed) pairs."""

    def __init__(self, items: Sequence[SRItem], size: int, scale: int, degradation: str,
                 train: bool = True, symmetry: bool = True):
        self.items, self.size, self.scale = list(items), size, scale
        # train: random crops (and symmetries); else the centre crop, for fixed sample grids.
        self.degradation, self.train, self.symmetry = degradation, train, symmetry

    def __len__(self) -> int:
        return len(self.items)

    def sources(self, item: tuple[int, int]) -> list[Path]:
        """The files an item reads."""
        found = self.items[item[0]]
        return [found.hr] if found.lr is None else [found.hr, found.lr]

    def __getitem__(self, item: tuple[int, int] | int) -> dict:
        index, seed = item if isinstance(item, tuple) else (item, index_seed(item))
        rng = np.random.default_rng(seed)
        hr, lr = load_item(self.items[index], self.scale)
        if min(lr_shape(hr, lr, self.scale)) < self.size // self.scale:  # replaced since the scan
            raise ImageError(f"{self.items[index].hr}: now {hr.shape[1]}x{hr.shape[0]}, smaller than the "
                             f"{self.size} px HR patch (--size)")
        if self.train:
            if lr is None:
                hr, lr = degraded_patch(hr, self.scale, self.size, self.degradation, rng)
            else:
                hr, lr = random_crop(hr, lr, self.scale, self.size, rng)
            if self.symmetry:
                hr, lr = random_symmetry([hr, lr], rng)
        else:
            hr, lr = center_crop(hr, lr, self.scale, self.size // self.scale, self.size // self.scale)
        if lr is None:
            lr = degrade(np.ascontiguousarray(hr), self.scale, self.degradation, rng)
        return {"lr": to_tensor(lr, "0,1"), "hr": to_tensor(hr, "0,1"), "index": index}


def index_seed(index: int) -> int:
    # A fixed seed per image for samples and validation, so their LR never changes in a run.
    return int(np.random.SeedSequence([index, 0x5EED]).generate_state(1)[0])


def validation_images(items: Sequence[SRItem], scale: int, degradation: str,
                      multiple: int = 1) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """(lr, hr) 1x3xHxW tensors of whole images, trimmed to what the generator accepts, and the
    messages of those that could not be read (decoded late, at the first validation: a file
    may have gone since the scan)."""
    pairs, unreadable = [], []
    for index, item in enumerate(items):
        try:
            hr, lr = load_item(item, scale)
        except ImageError as err:
            unreadable.append(str(err))
            continue
        if min(hr.shape[:2]) < validation_min_size(scale):  # replaced since the scan
            unreadable.append(f"{item.hr}: now {hr.shape[1]}x{hr.shape[0]}, too small to measure SSIM at x{scale}")
            continue
        height, width = lr_shape(hr, lr, scale)
        hr, lr = center_crop(hr, lr, scale, height // multiple * multiple, width // multiple * multiple)
        if lr is None:
            lr = degrade(np.ascontiguousarray(hr), scale, degradation, np.random.default_rng(index_seed(index)))
        pairs.append((to_tensor(lr, "0,1")[None], to_tensor(hr, "0,1")[None]))
    return pairs, unreadable


def sample_batch(items: Sequence[SRItem], fallback: Sequence[SRItem], size: int, scale: int,
                 degradation: str, unreadable: list[str]) -> dict | None:
    """Centre crops of the first SAMPLE_COUNT readable images big enough for a --size patch
    (None: none reads)."""
    def big_enough(item: SRItem) -> bool:
        return min(image_size(item.hr)) >= size

    chosen = [item for item in items if big_enough(item)] or list(fallback)
    dataset = SRDataset(chosen, size, scale, degradation, train=False)
    samples = first_readable(dataset.__getitem__, range(len(dataset)), SAMPLE_COUNT, unreadable, "the sample grid")
    if not samples:
        return None
    return {"lr": torch.stack([s["lr"] for s in samples]), "hr": torch.stack([s["hr"] for s in samples])}

"""Unpaired training data (CycleGAN): two folders of images with no correspondence.

As in the reference's unaligned dataset, an epoch covers the larger domain: item `index`
takes A = files_a[index % len_a] and B either at random or, with `serial`, files_b[index % len_b].
All randomness (the B draw and each side's own crop and flip) comes from the item's seed, so
the data a step sees does not depend on resuming or on the number of loader workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from img2img.config import require_folder
from img2img.data.datasets import first_readable, paired_augmentation, raise_problems, scan_images, to_tensor
from img2img.data.images import read_rgb_resized


def scan_domains(*domains: tuple[Path, str]) -> list[list[Path]]:
    """Every image below each (root, flag), recursively; the unreadable files of all of them
    are listed by name at once, not a folder per try."""
    for root, flag in domains:
        require_folder(root, flag)
    problems: list[str] = []
    found = [scan_images(root, flag, problems=problems) for root, flag in domains]
    folders = " and ".join(dict.fromkeys(str(root) for root, _ in domains))
    raise_problems(problems, f"{len(problems)} unusable file(s) in {folders}")
    return found


class UnpairedDataset(Dataset):
    """Yields {"A", "B"} tensors in [-1, 1] (and their indices); indexed by (index, seed) pairs."""

    def __init__(self, files_a: Sequence[Path], files_b: Sequence[Path], size: int, load_size: int,
                 flip: bool = True, serial: bool = False, augment: bool = True):
        self.files_a, self.files_b = list(files_a), list(files_b)
        self.size, self.serial = size, serial
        self.load_size = load_size if augment else size  # unaugmented: the whole image at `size`
        self.transform = paired_augmentation(size, load_size, flip) if augment else None

    def __len__(self) -> int:
        return max(len(self.files_a), len(self.files_b))

    def draw(self, item: tuple[int, int] | int) -> tuple[int, int, int, int]:
        """(index_a, index_b, seed_a, seed_b) of an item: all from its seed."""
        index, seed = item if isinstance(item, tuple) else (item, 0)
        rng = np.random.default_rng(seed)
        index_a = index % len(self.files_a)
        index_b = index % len(self.files_b) if self.serial else int(rng.integers(len(self.files_b)))
        # Independent crops and flips: the two sides have nothing to keep aligned.
        seed_a, seed_b = (int(s) for s in rng.integers(0, 2**31, size=2))
        return index_a, index_b, seed_a, seed_b

    def sources(self, item: tuple[int, int]) -> list[Path]:
        """The files an item reads."""
        index_a, index_b, _, _ = self.draw(item)
        return [self.files_a[index_a], self.files_b[index_b]]

    def __getitem__(self, item: tuple[int, int] | int) -> dict:
        index_a, index_b, seed_a, seed_b = self.draw(item)
        a = self.load(self.files_a[index_a], seed_a)
        b = self.load(self.files_b[index_b], seed_b)
        return {"A": to_tensor(a, "-1,1"), "B": to_tensor(b, "-1,1"), "index_a": index_a, "index_b": index_b}

    def load(self, path: Path, seed: int) -> np.ndarray:
        rgb, _ = read_rgb_resized(path, self.load_size)
        if self.transform is None:
            return rgb
        self.transform.set_random_seed(seed)
        return self.transform(image=rgb)["image"]


def stack_samples(dataset: UnpairedDataset, count: int, unreadable: list[str],
                  what: str = "the sample grid") -> dict[str, torch.Tensor] | None:
    """The first `count` readable images of each domain, unaugmented: a fixed batch for sample
    grids and validation (None when a domain has none that reads)."""
    load = lambda path: to_tensor(dataset.load(path, 0), "-1,1")  # noqa: E731
    a = first_readable(load, dataset.files_a, count, unreadable, what)
    b = first_readable(load, dataset.files_b, count, unreadable, what)
    return {"A": torch.stack(a), "B": torch.stack(b)} if a and b else None

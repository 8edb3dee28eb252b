"""Training data: scanning folders for pairs, augmentation, and a resumable, seeded sampler.

Determinism: every sample is drawn as (index, seed) by `SeededSampler`; the dataset seeds its
augmentation from that seed alone. A run therefore sees the same crops at the same step
whether it ran straight through, was resumed, or used any number of loader workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, get_worker_info

from img2img.config import ConfigError, require_folder
from img2img.data import workers
from img2img.data.header import ImageError, check_image, failure
from img2img.data.images import (IMAGE_EXTENSIONS, bicubic_square, files_by_stem, is_image_file, list_images, read_image,
                                 read_rgb_resized)


class DataError(Exception):
    """The training data cannot be used; the message lists the offending files (the first 20),
    `problems` every one."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class Pair:
    a: Path
    b: Path | None  # None: `a` holds A|B side by side (the reference's aligned layout)

    @property
    def name(self) -> str:
        return str(self.a)


def raise_problems(problems: list[str], what: str) -> None:
    """A DataError naming `problems` (the first 20 in its message), and what to do about them."""
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise DataError(f"{what}:\n  {shown}{more}\nMove these files out of the training folders (or mend them), "
                        "then run the same command again; `img2img data check DIR` lists what a folder holds.",
                        problems)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) after the checks that need no decoding (readable, not truncated, not a bomb)."""
    header = check_image(path)
    return header.width, header.height


def checked_size(path: Path, problems: list[str]) -> tuple[int, int] | None:
    """(width, height), or None with the reason added to `problems`: the per-file boundary of
    every scan, so one file, whatever it does, never stops a scan."""
    try:
        return image_size(path)
    except Exception as err:
        problems.append(failure(path, err, "reading the header"))
        return None


LAYOUT_SPLITS = ("train", "val", "test", "trainA", "trainB", "testA", "testB")  # --data: both references


def _split_folder(root: Path, split: str) -> Path:
    """The reference's layout has train/ val/ test/ below the data folder; a folder without
    them is a folder of training images alone. One with other splits but no train/ is refused:
    training on all of it would train on the held-out images too."""
    if (root / split).is_dir():
        return root / split
    splits = sorted(entry.name + "/" for entry in root.iterdir() if entry.is_dir()
                    and (entry.name in LAYOUT_SPLITS or entry.name.lower() == split))
    if splits:
        raise ConfigError(f"--data {root} holds {', '.join(splits)} but no {split}/ subfolder: name the training "
                          f"images' folder {split}/ (the reference layout), or give a folder of training images alone")
    return root


def scan_images(folder: Path, flag: str, check: Callable[[Path, int, int], str | None] | None = None,
                problems: list[str] | None = None) -> list[Path]:
    """Every image below `folder`, each one's header read; unreadable files and those `check`
    (path, width, height) objects to are reported together, by name (with `problems`: added
    to it, for the caller to report with those of other folders)."""
    files = list_images(folder)
    if not files:
        raise DataError(f"{flag} {folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    own = problems is None
    problems = [] if problems is None else problems
    for path in files:
        size = checked_size(path, problems)
        if size is None:
            continue
        width, height = size
        problem = check(path, width, height) if check else None
        if problem:
            problems.append(problem)
    if own:
        raise_problems(problems, f"{len(problems)} unusable file(s) in {folder}")
    return files


def scan_aligned(root: Path, split: str = "train") -> list[Pair]:
    """Files holding A|B side by side; the width must be even (two equal halves)."""
    require_folder(root, "--data")

    def even_width(path: Path, width: int, height: int) -> str | None:
        return f"{path}: width {width} is odd, so it cannot hold two equal halves A|B" if width % 2 else None

    return [Pair(path, None) for path in scan_images(_split_folder(root, split), "--data", even_width)]


def partner_problems(files: dict[str, Path], root: Path, others: dict[str, Path], other_root: Path) -> list[str]:
    """One line per file of either folder that has no partner of the same key in the other."""
    return ([f"{files[k]}: no partner in {other_root} (looked for {k}.*)" for k in sorted(files.keys() - others.keys())]
            + [f"{others[k]}: no partner in {root} (looked for {k}.*)" for k in sorted(others.keys() - files.keys())])


def scan_paired(a_root: Path, b_root: Path, flags: tuple[str, str] = ("--a", "--b")) -> list[Pair]:
    """Two folders paired by relative path and file stem (any extension); same sizes required."""
    require_folder(a_root, flags[0])
    require_folder(b_root, flags[1])
    problems: list[str] = []
    a_files, b_files = files_by_stem(a_root, problems), files_by_stem(b_root, problems)
    if not a_files:
        raise DataError(f"{flags[0]} {a_root}: no images found")
    problems += partner_problems(a_files, a_root, b_files, b_root)
    pairs = []
    for key in sorted(a_files.keys() & b_files.keys()):
        size_a, size_b = checked_size(a_files[key], problems), checked_size(b_files[key], problems)
        if size_a is None or size_b is None:
            continue
        if size_a != size_b:
            problems.append(f"{a_files[key]} is {size_a[0]}x{size_a[1]} but {b_files[key]} is {size_b[0]}x{size_b[1]}")
        pairs.append(Pair(a_files[key], b_files[key]))
    raise_problems(problems, f"{len(problems)} problem(s) pairing {a_root} with {b_root}")
    return pairs


def load_pair(pair: Pair, direction: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(input, target) as float32 size x size x 3 arrays in [0, 1] (read_rgb_resized)."""
    if pair.b is None:
        ab = read_image(pair.a).rgb.permute(1, 2, 0).numpy()
        half = ab.shape[1] // 2
        a, b = bicubic_square(ab[:, :half], size), bicubic_square(ab[:, half:], size)
    else:
        (a, a_size), (b, b_size) = read_rgb_resized(pair.a, size), read_rgb_resized(pair.b, size)
        if a_size != b_size:  # the scan checked; a file has been replaced since
            raise ImageError(f"{pair.a} ({a_size[1]}x{a_size[0]}) and {pair.b} ({b_size[1]}x{b_size[0]}) "
                             "are no longer the same size")
    return (a, b) if direction == "AtoB" else (b, a)


def paired_augmentation(size: int, load_size: int, flip: bool) -> A.Compose:
    """The reference's resize_and_crop after the loader's resize to load_size: random crop, flip."""
    import albumentations as A  # here: translate and the CLI's start-up need none of it

    steps: list = []
    if load_size > size:
        steps.append(A.RandomCrop(size, size))
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps, additional_targets={"target": "image"})


def to_tensor(hwc: np.ndarray, pixel_range: str) -> torch.Tensor:
    chw = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1).float().clamp(0, 1)
    return chw * 2 - 1 if pixel_range == "-1,1" else chw


class PairedDataset(Dataset):
    """Yields {"A": input, "B": target} tensors in [-1, 1]; indexed by (index, seed) pairs."""

    def __init__(self, pairs: Sequence[Pair], size: int, load_size: int, flip: bool = True,
                 direction: str = "AtoB", augment: bool = True):
        self.pairs = list(pairs)
        self.direction = direction
        self.size = size
        self.load_size = load_size if augment else size  # unaugmented: the whole image at `size`
        self.transform = paired_augmentation(size, load_size, flip) if augment else None

    def __len__(self) -> int:
        return len(self.pairs)

    def sources(self, item: tuple[int, int]) -> list[Path]:
        """The files item (index, seed) reads."""
        pair = self.pairs[item[0]]
        return [pair.a] if pair.b is None else [pair.a, pair.b]

    def __getitem__(self, item: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, 0)
        a, b = load_pair(self.pairs[index], self.direction, self.load_size)
        if self.transform is not None:
            self.transform.set_random_seed(seed)
            out = self.transform(image=a, target=b)
            a, b = out["image"], out["target"]
        return {"A": to_tensor(a, "-1,1"), "B": to_tensor(b, "-1,1"), "index": index}


class SeededSampler(Sampler):
    """Endless (index, seed) stream: a DistributedSampler permutation per epoch, resumable.

    `start` skips that many samples of this rank's stream, so a resumed run continues with
    exactly the samples (and augmentation seeds) it would have drawn.
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 shuffle: bool = True):
        self.length, self.seed, self.start = length, seed, start
        self.sampler = DistributedSampler(range(length), num_replicas=world_size, rank=rank,
                                          shuffle=shuffle, seed=seed, drop_last=False)
        self.per_epoch = len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, offset = divmod(self.start, self.per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            for position, index in enumerate(self.sampler):
                if position < offset:
                    continue
                yield index, sample_seed(self.seed, epoch, index)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; the loop counts steps
        return 2**62


T = TypeVar("T")


def first_readable(load: Callable[[Any], T], candidates: Iterable, count: int, unreadable: list[str],
                   what: str) -> list[T]:
    """`load` of the first `count` candidates that can be read, for the fixed sample and
    validation batches: a file that does not decode is passed over, as training passes over it,
    and named in `unreadable` (with `what` it was left out of), and so is a `what` left empty."""
    loaded: list[T] = []
    tried = 0
    for candidate in candidates:
        if len(loaded) == count:
            break
        tried += 1
        try:
            loaded.append(load(candidate))
        except ImageError as err:
            unreadable.append(f"skipped {err} (left out of {what})")
    if tried and not loaded:
        unreadable.append(nothing_readable(what, tried))
    return loaded


def nothing_readable(what: str, tried: int) -> str:
    return f"none of the {tried} image(s) for {what} can be read: the run goes on without {what}"


class SkipUnreadable(Dataset):
    """A training set that outlives files which stop being readable during a run (deleted,
    replaced by a broken copy, a network share gone for a moment) or crash their decoder: the
    sample is drawn again from the next images (other seeds, so an unpaired partner is drawn
    again too) and carries the lost files' messages in "unreadable" ("" when none) for the loop
    to report. Only when UNREADABLE_IN_A_ROW draws fail together does it give up (DataError).

    Each loader process posts the item it is decoding in shared memory: when a decoder kills
    its process, `batches` decodes that item's files again in a child process of their own,
    excludes the one that kills it, and restarts the loader where it was."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.in_flight = torch.full((IN_FLIGHT_SLOTS, 3), -1, dtype=torch.int64).share_memory_()  # pid, item
        self.excluded: dict[Path, str] = {}  # files that crashed their decoder -> why

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        worker = get_worker_info()
        slot = self.in_flight[(worker.id if worker else 0) % IN_FLIGHT_SLOTS]
        lost: list[str] = []
        try:
            for attempt in range(min(UNREADABLE_IN_A_ROW, len(self.dataset))):
                drawn = ((index + attempt) % len(self.dataset), (seed + attempt) % 2**32)
                slot.copy_(torch.tensor((os.getpid(), *drawn)))
                try:
                    sample = self.draw(drawn)
                except ImageError as err:
                    lost.append(str(err))
                    continue
                return {**sample, "unreadable": "\n".join(lost)}
        finally:
            slot.fill_(-1)
        tried = (f"none of the {len(lost)} training images could" if len(lost) == len(self.dataset)
                 else f"{len(lost)} training images in a row could not")
        raise DataError(f"{tried} be read now, the last: {lost[-1]}; is the data folder still there?")

    def draw(self, item: tuple[int, int]) -> dict:
        for path in self.dataset.sources(item):
            if path in self.excluded:
                raise ImageError(self.excluded[path])
        return self.dataset[item]

    def batches(self, open_loader: Callable[[int], Iterator[dict]], drawn: int, batch_size: int) -> Iterator[dict]:
        """Batches of the loader `open_loader(drawn)` gives, `drawn` counting the samples this
        process has drawn so far. The first loader is opened now (opening one draws from the
        RNG), again after a loader process died."""
        loader = open_loader(drawn)

        def endless():
            nonlocal loader, drawn
            while True:
                try:
                    batch = next(loader)
                except RuntimeError as err:
                    if not workers.died(err):
                        raise
                    workers.stop(loader)  # now: torch's SIGCHLD handler would raise again later
                    self.exclude_crashing(self.reading(err))
                    loader = open_loader(drawn)
                    continue
                drawn += batch_size
                yield batch

        return endless()

    def reading(self, err: RuntimeError) -> list[Path]:
        """The files the dead processes were decoding (every process's, where torch names none)."""
        pids = workers.dead_pids(err)
        return [path for pid, index, seed in self.in_flight.tolist() if index >= 0 and (not pids or pid in pids)
                for path in self.dataset.sources((index, seed))]

    def exclude_crashing(self, suspects: list[Path]) -> None:
        """Exclude those of `suspects` that kill a process decoding them alone; none doing so,
        something else stopped the loader process: a DataError."""
        from img2img.data.check import decode_problems  # it imports this module

        crashing = {path: why for path, why in decode_problems(suspects).items() if "killed" in why}
        if not crashing:
            raise DataError("a process decoding training images died, reading "
                            f"{' or '.join(map(str, suspects)) or 'an image'}, and these decode on their own: "
                            "the system stopped it (short of memory?)")
        self.excluded |= crashing


IN_FLIGHT_SLOTS = 64  # loader processes whose current item is known, far more than anyone starts
UNREADABLE_IN_A_ROW = 16


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def scan_training_pairs(data: Path | None, a: Path | None, b: Path | None) -> list[Pair]:
    if data is not None:
        return scan_aligned(data, "train")
    if a is None or b is None:
        raise ConfigError("give --data DIR (A|B side by side) or both --a DIR and --b DIR")
    return scan_paired(a, b)


def scan_validation_pairs(data: Path | None) -> list[Pair]:
    """The aligned layout's val/ (or test/) split, if present."""
    split = validation_split(data) if data is not None else None
    return scan_aligned(data, split) if split else []


def validation_split(data: Path) -> str | None:
    """Which of the aligned layout's val/ and test/ validation takes (val/ first), if either holds images."""
    for split in ("val", "test"):
        if (data / split).is_dir() and any(is_image_file(p) for p in (data / split).rglob("*")):
            return split
    return None

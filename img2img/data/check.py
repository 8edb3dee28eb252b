"""`img2img data check`: the scan `train` runs before its first step, on its own."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from img2img.config import ConfigError, require_folder
from img2img.data import datasets
from img2img.data.header import check_image, failure
from img2img.data.images import files_by_stem, list_images, read_image


@dataclass
class Report:
    folder: Path
    files: int = 0
    problems: list[str] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    skipped: list[Path] = field(default_factory=list)  # files whose names are not images
    unreadable: set[Path] = field(default_factory=set)  # named among the problems


def scan_folder(folder: Path, decode: bool = False) -> Report:
    """Every image below `folder`: readable header, not truncated, within the pixel limit, and
    with `decode` fully decoded. Other files are listed, not failed."""
    require_folder(folder)
    report = Report(folder)
    headers = {}
    # What training reads: hidden folders and ._ files left out, broken links in; the files
    # left out for their names are listed (hidden ones, .DS_Store and the like, are not).
    images = list_images(folder, report.skipped)
    for path in images:
        try:
            headers[path] = check_image(path)
        except Exception as err:  # the per-file boundary: named, and the scan goes on
            report.problems.append(failure(path, err, "reading the header"))
            report.unreadable.add(path)
    undecodable = decode_problems(list(headers)) if decode else {}
    for path, header in headers.items():
        if path in undecodable:
            report.problems.append(undecodable[path])
            report.unreadable.add(path)
            continue
        report.files += 1
        report.formats[header.format] += 1
        report.sizes[(header.width, header.height)] += 1
    if not images:
        report.problems.append(f"{folder}: no images found (png, jpg, webp, bmp, tif)")
    return report


def decode_problems(paths: list[Path]) -> dict[Path, str]:
    """Each file that does not decode -> why, decoded in child processes on every core, so that
    a file that crashes its decoder (as crafted files can) is named too instead of ending the
    scan: the files of a pool that broke are decoded again, a process at a time."""
    problems: dict[Path, str] = {}
    again: list[Path] = []
    chunks = _chunks(paths)
    if chunks:
        with ProcessPoolExecutor(min(len(chunks), os.cpu_count() or 1), initializer=_one_thread) as pool:
            for chunk, future in [(chunk, pool.submit(_decode_all, chunk)) for chunk in chunks]:
                try:
                    problems |= future.result()
                except BrokenProcessPool:  # this chunk, or one beside it, killed a process
                    again += chunk
    return problems | _decode_one_process_at_a_time(again)


def _decode_one_process_at_a_time(paths: list[Path]) -> dict[Path, str]:
    problems: dict[Path, str] = {}
    chunks = _chunks(paths)
    while chunks:
        chunk = chunks.pop(0)
        try:
            with ProcessPoolExecutor(1, initializer=_one_thread) as pool:
                problems |= pool.submit(_decode_all, chunk).result()
        except BrokenProcessPool:
            if len(chunk) > 1:  # one at a time, so the next death names its file
                chunks[:0] = [[path] for path in chunk]
            else:
                problems[chunk[0]] = f"{chunk[0]}: decoding it killed the decoding process (a file the image " \
                                     "decoder cannot handle)"
    return problems


def _chunks(paths: list[Path]) -> list[list[Path]]:
    return [paths[i:i + DECODE_CHUNK] for i in range(0, len(paths), DECODE_CHUNK)]


DECODE_CHUNK = 64  # files per child process: few processes, and few files to decode again after a crash


def _one_thread() -> None:
    """A forked child of a process whose thread pools have run (a training run) hangs in the
    first parallel region: decode on one thread, as DataLoader workers do. (OpenCV's own pool
    is not to be touched there: cv2.setNumThreads itself hangs in such a child.)"""
    import torch

    torch.set_num_threads(1)


def _decode_all(paths: list[Path]) -> dict[Path, str]:
    problems = {}
    for path in paths:
        try:
            read_image(path)
        except Exception as err:  # the per-file boundary: named, and the scan goes on
            problems[path] = failure(path, err, "decoding")
    return problems


def pairing_problems(a: Path, b: Path, named: set[Path] = frozenset()) -> list[str]:
    """What pairing `a` with `b` finds, but for files already `named` as unreadable."""
    if not files_by_stem(a).keys() & files_by_stem(b).keys():
        return [f"no file of {a} has a partner of the same relative path and stem in {b}; if these are two "
                "unpaired domains (CycleGAN), pass --unpaired"]
    try:
        datasets.scan_paired(a, b)
    except datasets.DataError as err:
        return [line for line in err.problems if not any(line.startswith(f"{path}:") for path in named)]
    return []


def aligned_problems(folder: Path) -> list[str]:
    """Of every split that train reads: train/ and the validation split."""
    problems = []
    for split in filter(None, ("train", datasets.validation_split(folder))):
        try:
            datasets.scan_aligned(folder, split)
        except datasets.DataError as err:
            problems += err.problems
        except ConfigError as err:  # a layout train refuses: one problem, as train names it
            problems.append(err.message)
    return problems

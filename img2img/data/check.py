"""`img2img data check`: the scan `train` runs before its first step, on its own."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from img2img.config import ConfigError
from img2img.data import datasets
from img2img.data.header import check_image, failure
from img2img.data.images import is_image_file, read_image


@dataclass
class Report:
    folder: Path
    files: int = 0
    problems: list[str] = field(default_factory=list)
    formats: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    skipped: list[Path] = field(default_factory=list)  # files whose names are not images


def scan_folder(folder: Path, decode: bool = False) -> Report:
    """Every image below `folder`: readable header, not truncated, within the pixel limit, and
    with `decode` fully decoded. Other files are listed, not failed."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder")
    report = Report(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if not is_image_file(path):
            report.skipped.append(path)
            continue
        report.files += 1
        try:
            header = check_image(path)
            if decode:
                read_image(path)
        except Exception as err:  # the per-file boundary: named, and the scan goes on
            report.problems.append(failure(path, err, "decoding" if decode else "reading the header"))
            continue
        report.formats[header.format] += 1
        report.sizes[(header.width, header.height)] += 1
    if report.files == 0:
        report.problems.append(f"{folder}: no images found (png, jpg, webp, bmp, tif)")
    return report


def pairing_problems(a: Path, b: Path) -> list[str]:
    if not datasets.files_by_stem(a).keys() & datasets.files_by_stem(b).keys():
        return [f"no file of {a} has a partner of the same relative path and stem in {b}; if these are two "
                "unpaired domains (CycleGAN), pass --unpaired"]
    try:
        datasets.scan_paired(a, b)
    except datasets.DataError as err:
        return str(err).splitlines()[1:]
    return []


def aligned_problems(folder: Path) -> list[str]:
    try:
        datasets.scan_aligned(folder, "train")
    except datasets.DataError as err:
        return str(err).splitlines()[1:]
    return []

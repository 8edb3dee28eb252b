"""Applying a generator to image files: any size (pad to what the network needs, crop back),
8/16-bit, grayscale and alpha kept, relative paths kept, every output written atomically.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, TextIO

import torch
import torch.nn.functional as F
from torch import nn

from img2img.data.images import Image, ImageError, is_image_file, list_images, read_image, write_image
from img2img.gan.checkpoint import GeneratorSpec, load_generator
from img2img.progress import Reporter, Silent


class InputError(Exception):
    """INPUT names nothing usable (missing path, empty folder, empty stdin)."""


@dataclass
class Job:
    source: Path
    relative: Path  # where, below OUTPUT, the result goes (extension included)


@dataclass
class Result:
    job: Job
    output: Path | None
    error: str | None = None
    milliseconds: float = 0.0
    skipped: bool = False


def collect_jobs(source: str, out_dir: Path, stdin: TextIO | None = None) -> list[Job]:
    """INPUT as a file, a folder (recursive) or '-' (newline-separated paths on stdin)."""
    if source == "-":
        lines = [line.strip() for line in (stdin or sys.stdin).read().splitlines()]
        paths = [Path(line) for line in lines if line]
        if not paths:
            raise InputError("INPUT is '-' but no paths arrived on standard input")
        # Keep the layout below the paths' common folder, as for a folder INPUT.
        root = Path(os.path.commonpath([str(p.resolve().parent) for p in paths]))
        return [Job(p, p.resolve().relative_to(root)) for p in paths]
    path = Path(source)
    if path.is_file():
        return [Job(path, Path(path.name))]
    if path.is_dir():
        out_resolved = out_dir.resolve()
        files = [p for p in list_images(path) if out_resolved not in p.resolve().parents]
        if not files:
            raise InputError(f"{path}: no images found in this folder (png, jpg, webp, bmp, tif)")
        return [Job(p, p.relative_to(path)) for p in files]
    raise InputError(f"{path}: no such file or folder")


def set_bn_mode(module: nn.Module, mode: str) -> None:
    """eval: BatchNorm running statistics, dropout off. train: what the reference test script
    does by default (it never calls eval()): each image normalised by its own statistics and
    dropout active; running statistics are left untouched."""
    module.eval()
    if mode == "eval":
        return
    for layer in module.modules():
        if isinstance(layer, (nn.BatchNorm2d, nn.Dropout)):
            layer.train()
            if isinstance(layer, nn.BatchNorm2d):
                layer.momentum = 0.0  # batch statistics are used but never stored


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad right/bottom to a multiple; reflect where the image is large enough, else replicate."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return x, height, width
    mode = "reflect" if pad_h < height and pad_w < width else "replicate"
    return F.pad(x, (0, pad_w, 0, pad_h), mode=mode), height, width


class Translator:
    """A loaded generator applied to one image at a time, in its own pixel convention."""

    def __init__(self, module: nn.Module, spec: GeneratorSpec, device: torch.device, bn_mode: str = "eval"):
        self.module, self.spec, self.device = module.to(device), spec, device
        set_bn_mode(self.module, bn_mode)
        self.multiple = int(getattr(module, "multiple", 1))
        self.in_channels = int(spec.hparams.get("in_ch", spec.hparams.get("num_in_ch", 3)))

    @torch.inference_mode()
    def __call__(self, image: Image) -> Image:
        x = image.rgb[:1] if self.in_channels == 1 else image.rgb
        x = x.unsqueeze(0).to(self.device)
        if self.spec.pixel_range == "-1,1":
            x = x * 2 - 1
        padded, height, width = pad_to_multiple(x, self.multiple)
        y = self.module(padded).float()
        y = y[..., : height * self.spec.scale, : width * self.spec.scale]
        if self.spec.pixel_range == "-1,1":
            y = (y + 1) / 2
        y = y.clamp(0, 1)[0].cpu()
        if y.shape[0] == 1:
            y = y.expand(3, -1, -1)
        alpha = image.alpha
        if alpha is not None and self.spec.scale != 1:
            alpha = F.interpolate(alpha[None], scale_factor=self.spec.scale, mode="bicubic")[0].clamp(0, 1)
        return Image(rgb=y, alpha=alpha, gray=image.gray, bits=image.bits)


def translate(model: str | Path, source: str, out_dir: str | Path, *, device: torch.device,
              direction: str = "AtoB", bn_mode: str = "eval", overwrite: bool = False,
              reporter: Reporter | None = None, stdin: TextIO | None = None) -> list[Result]:
    reporter = reporter or Silent()
    out_dir = Path(out_dir)
    jobs = collect_jobs(source, out_dir, stdin)
    module, spec = load_generator(Path(model), direction)
    translator = Translator(module, spec, device, bn_mode)
    results = []
    reporter.start(len(jobs), 0, "translating")
    for number, job in enumerate(jobs, 1):
        results.append(_translate_one(translator, job, out_dir, overwrite))
        reporter.update(number)
    reporter.finish()
    return results


def _translate_one(translator: Translator, job: Job, out_dir: Path, overwrite: bool) -> Result:
    target = out_dir / job.relative
    if target.exists() and not overwrite:
        return Result(job, target, skipped=True)
    if not is_image_file(job.source):
        return Result(job, None, error=f"{job.source}: not an image file name (png, jpg, webp, bmp, tif)")
    start = time.perf_counter()
    try:
        image = read_image(job.source)
        write_image(target, translator(image))
    except (ImageError, OSError) as err:
        return Result(job, None, error=str(err))
    return Result(job, target, milliseconds=(time.perf_counter() - start) * 1000)

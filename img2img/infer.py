"""Applying a generator to image files, fast and safely.

Pipeline: DataLoader workers decode; images of one size are batched together; batches go to
the device through pinned memory; the network runs under inference_mode (channels_last and
bf16/fp16 autocast on CUDA, with an fp32 retry for a batch that produces NaN/Inf); writer
threads encode and write while the device computes the next batch. Any image size works:
inputs are padded (reflect) to what the network needs and cropped back; large images can be
tiled with feathered blending. Every output is written atomically (temp file + rename).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from img2img.data.header import ImageError, check_image
from img2img.data.images import IMAGE_EXTENSIONS, TEMP_SUFFIX, Image, is_image_file, list_images, read_image, write_image
from img2img.device import default_workers
from img2img.gan.checkpoint import load_generator
from img2img.progress import Reporter, Silent
from img2img.tiling import run_tiled
from img2img.translator import Translator, scale_alpha


class InputError(Exception):
    """INPUT names nothing usable (missing path, empty folder, empty stdin, bad option)."""


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
    size: tuple[int, int] | None = None  # output height, width

    def to_json(self) -> dict:
        record = {"input": str(self.job.source), "output": str(self.output) if self.output else None}
        if self.size:
            record["size"] = list(self.size)
        if self.error:
            record["error"] = self.error
        if self.skipped:
            record["skipped"] = True
        record["ms"] = round(self.milliseconds, 2)
        return record


@dataclass
class Options:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int | None = None  # None: per device (see default_batch_size)
    direction: str = "AtoB"
    bn_mode: str = "eval"
    overwrite: bool = False
    ext: str | None = None  # output format ("png" or ".png"); None keeps the input's
    tile: int | None = None  # tile side in input pixels; None: whole images
    tile_overlap: int = 32
    resize: int | None = None  # resize so the shorter side has this many pixels
    amp: str = "auto"  # auto: bf16/fp16 on CUDA; off: fp32
    compile: bool = False
    workers: int | None = None
    writers: int = 4

    def __post_init__(self) -> None:
        """The checks the CLI and the API share: a bad option is a usage error, named by its flag."""
        if self.ext is not None:
            self.ext = f".{self.ext.lstrip('.').lower()}"
            if self.ext not in IMAGE_EXTENSIONS:
                raise InputError(f"--ext {self.ext[1:]}: choose one of png, jpg, webp, bmp, tif")
        if self.tile is not None and self.tile < 16:
            raise InputError(f"--tile {self.tile}: tiles must be at least 16 px")
        if self.tile is not None and not 0 <= self.tile_overlap * 2 < self.tile:
            raise InputError(f"--tile-overlap {self.tile_overlap} must be at least 0 and less than half of --tile {self.tile}")
        for flag, value in (("--batch-size", self.batch_size), ("--resize", self.resize)):
            if value is not None and value < 1:
                raise InputError(f"{flag} {value}: must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise InputError(f"--workers {self.workers}: must be at least 0")
        for flag, value, choices in (("--direction", self.direction, ("AtoB", "BtoA")),
                                     ("--bn-mode", self.bn_mode, ("eval", "train")), ("--amp", self.amp, ("auto", "off"))):
            if value not in choices:
                raise InputError(f"{flag} {value!r}: choose {' or '.join(choices)}")


# ---- what to translate ------------------------------------------------------------------


def collect_jobs(source: str, out_dir: Path, stdin: TextIO | None = None, ext: str | None = None) -> list[Job]:
    """INPUT as a file, a folder (recursive) or '-' (newline-separated paths on stdin)."""
    jobs = _collect(source, Path(out_dir), stdin)
    if ext:
        jobs = [Job(j.source, j.relative.with_suffix(ext)) for j in jobs]
    return jobs


def _collect(source: str, out_dir: Path, stdin: TextIO | None) -> list[Job]:
    if source == "-":
        lines = [line.strip() for line in (stdin or sys.stdin).read().splitlines()]
        paths = [Path(line) for line in lines if line]
        if not paths:
            raise InputError("INPUT is '-' but no paths arrived on standard input")
        # Keep the layout below the paths' common folder, as for a folder INPUT.
        root = Path(os.path.commonpath([str(p.absolute().parent) for p in paths]))
        return [Job(p, p.absolute().relative_to(root)) for p in paths]
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


def header_size(path: Path) -> tuple[int, int]:
    """(height, width) as displayed, from the header alone; (0, 0) when unreadable."""
    try:
        header = check_image(path)
    except ImageError:  # decoding will report it properly
        return 0, 0
    return header.height, header.width


# ---- decoding in workers ----------------------------------------------------------------


class DecodeDataset(Dataset):
    """Decodes jobs in DataLoader workers; failures travel back as messages, not exceptions."""

    def __init__(self, jobs: list[Job], resize: int | None):
        self.jobs, self.resize = jobs, resize

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict:
        job = self.jobs[index]
        start = time.perf_counter()
        if not is_image_file(job.source):
            return {"index": index, "error": f"{job.source}: not an image file name (png, jpg, webp, bmp, tif)"}
        try:
            image = read_image(job.source)
        except (ImageError, OSError) as err:
            return {"index": index, "error": str(err)}
        if self.resize:
            image = resize_shorter_side(image, self.resize)
        return {"index": index, "image": image, "decode_ms": (time.perf_counter() - start) * 1000}


def resize_shorter_side(image: Image, pixels: int) -> Image:
    height, width = image.size
    factor = pixels / min(height, width)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    resize = lambda t: F.interpolate(t[None], size=size, mode="bicubic", antialias=True)[0].clamp(0, 1)
    alpha = None if image.alpha is None else resize(image.alpha)
    return Image(rgb=resize(image.rgb), alpha=alpha, gray=image.gray, bits=image.bits)


def collate(items: list[dict]) -> list[dict]:
    return items  # images keep their own sizes; batches are stacked per size in the main loop


def size_batches(jobs: list[Job], batch_size: int) -> list[list[int]]:
    """Job indices grouped into batches of one image size (read from the headers)."""
    if batch_size == 1:
        return [[i] for i in range(len(jobs))]
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, job in enumerate(jobs):
        by_size.setdefault(header_size(job.source), []).append(index)
    return [batch for indices in by_size.values() for batch in _chunks(indices, batch_size)]


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


AUTO_TILE_PIXELS = 4096 * 4096  # output pixels beyond which an image is tiled unasked
AUTO_TILE = 1024


def default_batch_size(device: torch.device, tile: int | None) -> int:
    # CPUs gain little from batching; GPUs need several images in flight to stay busy.
    if device.type != "cuda":
        return 1
    return 16 if tile else 8


# ---- the run ----------------------------------------------------------------------------


class Writer:
    """Encodes and writes results on threads while the device computes; bounded in flight."""

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="img2img-write")
        self.slots = threading.Semaphore(threads * 2)
        self.pending: list[Future] = []

    def submit(self, fn: Callable[[], Result]) -> None:
        self.slots.acquire()
        future = self.pool.submit(fn)
        future.add_done_callback(lambda _: self.slots.release())
        self.pending.append(future)

    def done(self) -> Iterator[Result]:
        """Results finished so far, in completion order (and forgets them)."""
        finished = [f for f in self.pending if f.done()]
        self.pending = [f for f in self.pending if not f.done()]
        return (f.result() for f in finished)

    def close(self) -> Iterator[Result]:
        self.pool.shutdown(wait=True)
        yield from self.done()


def translate(model: str | Path, source: str, out_dir: str | Path, *, options: Options | None = None,
              reporter: Reporter | None = None, stdin: TextIO | None = None,
              on_result: Callable[[Result], None] | None = None, **overrides) -> list[Result]:
    """Translate INPUT (file, folder or '-') into `out_dir`; returns one Result per input."""
    options = options or Options(**overrides)
    reporter = reporter or Silent()
    out_dir = Path(out_dir)
    jobs = collect_jobs(source, out_dir, stdin, options.ext)
    module, spec = load_generator(Path(model), options.direction)
    translator = Translator(module, spec, options.device, options.bn_mode, options.amp, options.compile)
    remove_stale_temporaries(out_dir)
    return run_jobs(translator, jobs, out_dir, options, reporter, on_result)


def remove_stale_temporaries(out_dir: Path) -> None:
    """Half-written files of a run that was killed (SIGKILL skips all clean-up)."""
    if out_dir.is_dir():
        for stale in out_dir.rglob(f"*{TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)


def run_jobs(translator: Translator, jobs: list[Job], out_dir: Path, options: Options,
             reporter: Reporter, on_result: Callable[[Result], None] | None = None) -> list[Result]:
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        if on_result:
            on_result(result)
        reporter.update(len(results))

    reporter.start(len(jobs), 0, "translating")
    todo = []
    for job in jobs:
        if (out_dir / job.relative).exists() and not options.overwrite:
            record(Result(job, out_dir / job.relative, skipped=True))
        else:
            todo.append(job)
    if todo:
        _run_pipeline(translator, todo, out_dir, options, reporter, record)
    reporter.finish()
    if translator.fp32_retries:
        reporter.message(f"{translator.fp32_retries} batch(es) overflowed in reduced precision and ran again in fp32")
    return results


def _run_pipeline(translator: Translator, jobs: list[Job], out_dir: Path, options: Options,
                  reporter: Reporter, record: Callable[[Result], None]) -> None:
    device = options.device
    batch_size = options.batch_size or default_batch_size(device, options.tile)
    workers = default_workers(device) if options.workers is None else options.workers
    loader = DataLoader(DecodeDataset(jobs, options.resize),
                        batch_sampler=size_batches(jobs, 1 if options.tile else batch_size),
                        num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    writer = Writer(options.writers)
    state = {"batch": batch_size, "tile": options.tile}
    for items in loader:
        for item in items:
            if "error" in item:
                record(Result(jobs[item["index"]], None, error=item["error"]))
        decoded = [item for item in items if "image" in item]
        for group in _same_size_groups(decoded):
            try:
                _translate_group(translator, group, jobs, out_dir, state, options, reporter, writer)
            except (RuntimeError, ValueError) as err:  # the network refused this input: name it, go on
                reason = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
                for item in group:
                    record(Result(jobs[item["index"]], None, error=f"{jobs[item['index']].source}: translation failed: {reason}"))
        for result in writer.done():
            record(result)
    for result in writer.close():
        record(result)


def _same_size_groups(items: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for item in items:
        groups.setdefault(item["image"].size, []).append(item)
    return list(groups.values())


def _translate_group(translator, group, jobs, out_dir, state, options, reporter, writer) -> None:
    start = time.perf_counter()
    outputs = _run_with_fallback(translator, [item["image"] for item in group], state, options, reporter)
    elapsed = (time.perf_counter() - start) * 1000 / len(group)
    for item, rgb in zip(group, outputs):
        image, job = item["image"], jobs[item["index"]]
        result_image = Image(rgb=rgb, alpha=scale_alpha(image.alpha, translator.scale), gray=image.gray, bits=image.bits)
        ms = elapsed + item.get("decode_ms", 0.0)
        writer.submit(lambda job=job, result_image=result_image, ms=ms: _write(job, result_image, out_dir, ms))


def _run_with_fallback(translator: Translator, images: list[Image], state: dict, options: Options,
                       reporter: Reporter) -> list[torch.Tensor]:
    """Translate same-size images; on out-of-memory, retry with smaller batches, then tiles.
    Huge images are tiled from the start: their activations would not fit anywhere."""
    height, width = images[0].size
    huge = height * width * translator.scale**2 > AUTO_TILE_PIXELS
    if huge and not state["tile"] and not state.get("told_huge"):
        reporter.message(f"images of {width}x{height} px and larger are translated in {AUTO_TILE} px tiles")
        state["told_huge"] = True
    while True:
        try:
            tile = state["tile"] or (AUTO_TILE if huge else None)
            if tile:
                return [run_tiled(translator, im.rgb, tile, options.tile_overlap, state["batch"])
                        for im in images]
            outputs = []
            for i in range(0, len(images), state["batch"]):
                batch = torch.stack([im.rgb for im in images[i : i + state["batch"]]])
                outputs.extend(translator.run(batch).cpu())
            return outputs
        except (torch.OutOfMemoryError, MemoryError) as err:
            _shrink_after_oom(state, images[0].size, reporter, err)


def _shrink_after_oom(state: dict, size: tuple[int, int], reporter: Reporter, err: Exception) -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if state["batch"] > 1:
        state["batch"] //= 2
        reporter.message(f"out of memory: retrying with batch size {state['batch']}")
    elif state["tile"] is None or state["tile"] > 64:
        state["tile"] = max(64, (state["tile"] or max(size)) // 2)
        reporter.message(f"out of memory: retrying with {state['tile']} px tiles")
    else:
        raise err


def _write(job: Job, image: Image, out_dir: Path, ms: float) -> Result:
    target = out_dir / job.relative
    try:
        write_image(target, image)
    except ImageError as err:
        return Result(job, None, error=str(err))
    except OSError as err:  # e.g. a full disk: the temporary file is already gone
        return Result(job, None, error=f"{target}: could not be written: {err.strerror or err}")
    return Result(job, target, milliseconds=ms, size=image.size)

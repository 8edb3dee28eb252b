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
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, TextIO

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from img2img import memory
from img2img.data import workers as worker_processes
from img2img.data.header import ImageError, check_image, failure, max_pixels, one_line
from img2img.data.images import (IMAGE_EXTENSIONS, Decoded, Image, WriteError, decode_image, is_image_file,
                                 list_images, output_layout, quantise_on_device, remove_stale_temporaries, stack_rgb,
                                 to_pixels, write_image, writing)
from img2img.data.strips import StripWriter, streams
from img2img.config import AMP_CHOICES, UsageError
from img2img.device import amp_note, default_workers, default_writers
from img2img.gan.checkpoint import load_generator
from img2img.progress import Reporter, Silent
from img2img.tiling import AlphaRows, blend_strips
from img2img.translator import Translator, scale_alpha


class InputError(UsageError):
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
    disk_full: bool = False  # the error was a full disk: the run stops (see run_jobs)

    def __post_init__(self):
        if self.error:
            self.error = one_line(self.error)

    @classmethod
    def unwritten(cls, job: Job, err: WriteError) -> Result:
        return cls(job, None, error=str(err), disk_full=err.full)

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


OTHER_IMAGE_SUFFIXES = (".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".exr", ".tga")  # read or written elsewhere
TILE_OVERLAP = 32  # pixels shared by neighbouring tiles, cross-faded


@dataclass
class Options:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int | None = None  # None: per device (see default_batch_size)
    direction: str | None = None  # AtoB or BtoA; None: a CycleGAN run's AtoB, any file's own
    bn_mode: str = "eval"
    overwrite: bool = False
    ext: str | None = None  # output format ("png" or ".png"); None keeps the input's
    tile: int | None = None  # tile side in input pixels; None: whole images
    tile_overlap: int | None = None  # None: TILE_OVERLAP, at most a quarter of the tile
    resize: int | None = None  # resize so the shorter side has this many pixels
    amp: str = "auto"  # config.AMP_CHOICES
    compile: bool = False
    workers: int | None = None
    writers: int | None = None  # encoding threads; None: per device (device.default_writers)
    max_memory: int | None = None  # bytes of image data; None: what the system has free

    def overlap(self, tile: int) -> int:
        """Pixels shared by neighbouring tiles of side `tile`."""
        return min(TILE_OVERLAP, tile // 4) if self.tile_overlap is None else self.tile_overlap

    def __post_init__(self) -> None:
        """The checks the CLI and the API share: a bad option is a usage error, named by its flag."""
        for name in ("batch_size", "tile", "tile_overlap", "resize", "workers", "writers", "max_memory"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise InputError(f"--{name.replace('_', '-')} {value!r}: must be a whole number")
        for name in ("overwrite", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"--{name} {getattr(self, name)!r}: must be True or False")
        if self.ext is not None and not isinstance(self.ext, str):
            raise InputError(f"--ext {self.ext!r}: must be a text such as 'png'")
        if self.ext is not None:
            self.ext = f".{self.ext.lstrip('.').lower()}"
            if self.ext not in IMAGE_EXTENSIONS:
                raise InputError(f"--ext {self.ext[1:]}: choose one of png, jpg, webp, bmp, tif")
        if self.tile is not None and self.tile < 16:
            raise InputError(f"--tile {self.tile}: tiles must be at least 16 px")
        if self.tile is not None and self.tile_overlap is not None and not 0 <= self.tile_overlap * 2 < self.tile:
            raise InputError(f"--tile-overlap {self.tile_overlap} must be at least 0 and less than half of --tile {self.tile}")
        for flag, value in (("--batch-size", self.batch_size), ("--resize", self.resize), ("--writers", self.writers),
                            ("--max-memory", self.max_memory)):
            if value is not None and value < 1:
                raise InputError(f"{flag} {value}: must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise InputError(f"--workers {self.workers}: must be at least 0")
        for flag, value, choices in (("--direction", self.direction or "AtoB", ("AtoB", "BtoA")),
                                     ("--bn-mode", self.bn_mode, ("eval", "train")), ("--amp", self.amp, AMP_CHOICES)):
            if value not in choices:
                raise InputError(f"{flag} {value!r}: choose {' or '.join(choices)}")


# ---- what to translate ------------------------------------------------------------------


def names_a_file(source: str, output: Path) -> bool:
    """One input file and an OUTPUT named like an image (out.png) that is not a folder: OUTPUT
    is that file. Otherwise OUTPUT is a folder."""
    # os.path's checks answer False for a name the file system refuses (too long): writing says so.
    return (source != "-" and Path(source).is_file() and output.suffix.lower() in IMAGE_EXTENSIONS
            and not os.path.isdir(output))


@dataclass
class OutputPlan:
    folder: Path  # results go to folder / job.relative
    jobs: list[Job]
    to_file: bool  # OUTPUT is one file, in a folder that is the user's, not ours
    left_out: list[Path] = field(default_factory=list)  # files of a folder INPUT that are no images by name
    sizes: dict[Path, tuple[int, int]] = field(default_factory=dict)  # headers read before the work (--resize)


def plan_outputs(source: str, output: Path, stdin: TextIO | None = None, ext: str | None = None) -> OutputPlan:
    """Where each result goes, for OUTPUT a folder or (see names_a_file) a file."""
    if not names_a_file(source, output):
        refuse_a_folder_named_like_an_image(source, output)
        left_out: list[Path] = []
        outputs = OutputPlan(output, collect_jobs(source, output, stdin, ext, left_out), to_file=False, left_out=left_out)
    elif ext and ext != output.suffix.lower():
        raise InputError(f"--ext {ext[1:]} and OUTPUT {output} name different formats: give one of them")
    else:
        outputs = OutputPlan(output.parent, [Job(Path(source), Path(output.name))], to_file=True)
    folder = outputs.folder.resolve()  # once: resolving is a system call per path component
    for job in outputs.jobs:
        if folder / job.relative == job.source.resolve():
            raise InputError(f"OUTPUT {output} would replace the input {job.source} with its result: "
                             "choose another OUTPUT")
    refuse_shared_outputs(outputs)
    return outputs


def refuse_shared_outputs(outputs: OutputPlan) -> None:
    """Two inputs whose results would be one file (a.png and a.jpg with --ext png): the second
    would replace the first. Refused before any work, naming them: which to keep is the user's call."""
    sources: dict[Path, list[Path]] = {}
    for job in outputs.jobs:
        sources.setdefault(job.relative, []).append(job.source)
    shared = [_collision(list(dict.fromkeys(inputs)), outputs.folder / result) for result, inputs in sources.items()
              if len(set(inputs)) > 1]
    if shared:
        more = f"\n(and {len(shared) - 5} more)" if len(shared) > 5 else ""
        # one name in several formats (a.png, a.jpg under --ext), or else paths from stdin placed alike
        formats = any(len({source.with_suffix("") for source in inputs}) == 1 for inputs in sources.values()
                      if len(set(inputs)) > 1)
        cause = ("keep each input's own format (leave out --ext)" if formats else  # else: paths from stdin
                 "list them from a folder above both, mark what to keep of each path with /./ (as rsync -R reads it)")
        raise InputError("\n".join(shared[:5]) + more + f"\n{cause}, or translate them into separate OUTPUT folders")


def _collision(inputs: list[Path], result: Path) -> str:
    names = ", ".join(map(str, inputs[:-1])) + f" and {inputs[-1]}"
    return f"{names} would {'both' if len(inputs) == 2 else 'all'} be written to {result}"


def refuse_a_folder_named_like_an_image(source: str, output: Path) -> None:
    """OUTPUT out.png for a folder or a list of inputs, or out.gif for one: not made a folder."""
    suffix = output.suffix.lower()
    if output.is_dir() or suffix not in (*IMAGE_EXTENSIONS, *OTHER_IMAGE_SUFFIXES):
        return
    shown = one_line(str(output))
    if source != "-" and not os.path.exists(source):  # the first thing to fix, as without the extension
        raise InputError(f"{one_line(source)}: no such file or folder")
    if suffix in OTHER_IMAGE_SUFFIXES and Path(source).is_file():
        raise InputError(f"OUTPUT {shown}: img2img writes png, jpg, webp, bmp and tif, not {suffix[1:]}")
    what = "INPUT is a list of paths" if source == "-" else f"INPUT {one_line(source)} is a folder"
    raise InputError(f"OUTPUT {shown} is named like an image, but {what}, so OUTPUT is a folder of results: "
                     "name that folder without an image extension")


def collect_jobs(source: str, out_dir: Path, stdin: TextIO | None = None, ext: str | None = None,
                 left_out: list[Path] | None = None) -> list[Job]:
    """INPUT as a file, a folder (recursive) or '-' (newline- or NUL-separated paths on stdin);
    `left_out` receives the files of a folder that are no images by name."""
    jobs = _collect(source, Path(out_dir), stdin, left_out)
    if ext:
        jobs = [Job(j.source, j.relative.with_suffix(ext)) for j in jobs]
    return jobs


def stdin_layout(listed: str) -> Path:
    """Where, below OUTPUT, the result of a path from stdin goes, the same whatever else is
    listed (so a re-run finds it done): what follows a '/./' in it, as rsync -R reads one
    (`find /data/./shots` lists /data/./shots/x.jpg: OUTPUT/shots/x.jpg); else its path from
    the current folder (`find shots`: OUTPUT/shots/x.jpg, whether listed relative or absolute);
    else as listed, less a leading '/' or '..' (/d/x.jpg: OUTPUT/d/x.jpg; ../a/x.jpg:
    OUTPUT/a/x.jpg). '..' inside a path is resolved (a/../b is b): no result leaves OUTPUT."""
    if "/./" in listed:
        return _inside(Path(listed.split("/./", 1)[1]))
    here = Path(os.path.normpath(Path.cwd()))
    absolute = Path(os.path.normpath(Path(listed).absolute()))
    if here in absolute.parents:
        return absolute.relative_to(here)
    return _inside(Path(listed))


def _inside(path: Path) -> Path:
    """`path` with '..' resolved and no leading '/' or '..'."""
    spelt = Path(os.path.normpath(path))
    parts = list(spelt.parts[1:] if spelt.anchor else spelt.parts)
    while parts and parts[0] == "..":
        parts.pop(0)
    return Path(*parts)


def _collect(source: str, out_dir: Path, stdin: TextIO | None, left_out: list[Path] | None) -> list[Job]:
    if source == "-":
        text = (stdin or sys.stdin).read()
        # NUL-separated (find -print0) where a NUL appears: no path holds one; else one path a line.
        names = text.split("\0") if "\0" in text else [line.strip() for line in text.split("\n")]
        resolved = {}  # a file listed twice, under any spelling: once
        for name in names:
            if name:
                resolved.setdefault(Path(name).resolve(), name)  # as listed: Path() would drop a '/./
        if not resolved:
            raise InputError("INPUT is '-' but no paths arrived on standard input")
        # As for a folder INPUT: results of an earlier run (find run from above OUTPUT) are not inputs.
        out_resolved = out_dir.resolve()
        paths = [name for real, name in resolved.items() if out_resolved not in real.parents]
        if not paths:
            raise InputError(f"every path on standard input lies inside OUTPUT {out_dir}: choose another OUTPUT")
        return [Job(Path(name), stdin_layout(name)) for name in paths]
    path = Path(source)
    if path.is_file():
        return [Job(path, Path(path.name))]
    if path.is_dir():
        out_resolved = out_dir.resolve()
        if out_resolved == path.resolve():
            raise InputError(f"OUTPUT {out_dir} is the INPUT folder: the results would replace or mix with the "
                             "images they come from; choose another OUTPUT")
        if out_resolved in path.resolve().parents:
            raise InputError(f"INPUT {path} lies inside OUTPUT {out_dir}, where images are taken for earlier "
                             "results: choose an OUTPUT outside it")
        others: list[Path] = []
        files = [p for p in list_images(path, others) if out_resolved not in p.resolve().parents]
        if left_out is not None:
            left_out += [p for p in others if out_resolved not in p.resolve().parents]
        if not files:
            raise InputError(f"{path}: no images found in this folder (png, jpg, webp, bmp, tif)")
        return [Job(p, p.relative_to(path)) for p in files]
    raise InputError(f"{path}: no such file or folder")


def header_size(path: Path) -> tuple[int, int]:
    """(height, width) as displayed, from the header alone; (0, 0) when unreadable."""
    try:
        header = check_image(path)
    except Exception:  # decoding will report it, for this file alone
        return 0, 0
    return header.height, header.width


# ---- decoding in workers ----------------------------------------------------------------


class DecodeDataset(Dataset):
    """Decodes jobs in DataLoader workers; failures travel back as messages, not exceptions:
    an exception would stop the loader, and the whole run with it. 8-bit images and images
    that will be tiled stay in their stored form (a Decoded, 4x smaller than floats)."""

    def __init__(self, jobs: list[Job], resize: int | None, tiled: Callable[[tuple[int, int]], int | None]):
        self.jobs, self.resize, self.tiled = jobs, resize, tiled

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> dict:
        job = self.jobs[index]
        start = time.perf_counter()
        if not is_image_file(job.source):
            return {"index": index, "error": f"{job.source}: not an image file name (png, jpg, webp, bmp, tif)"}
        try:
            image = decode_image(job.source)
            if self.resize:
                image = resize_shorter_side(image.to_image(), self.resize)
            elif self.tiled(image.size) is None and image.bits != 8:
                image = image.to_image()  # 8-bit images become floats a batch at a time (stack_rgb)
        except Exception as err:  # the per-file boundary: whatever this file does, it fails alone
            return {"index": index, "error": failure(job.source, err, "reading")}
        return {"index": index, "image": image, "decode_ms": (time.perf_counter() - start) * 1000}


def resized(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(height, width) with the shorter side `shorter` pixels long, the aspect kept."""
    factor = shorter / max(1, min(size))
    return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))


def refuse_oversized_resize(jobs: list[Job], sizes: dict[Path, tuple[int, int]], shorter: int) -> None:
    """--resize is the user's choice for every image: one that makes an image larger than the
    pixel limit is a usage error before any work, not an allocation failure per file."""
    for job in jobs:
        size = sizes[job.source]
        height, width = resized(size, shorter)
        if min(size) and height * width > max_pixels():  # (0, 0): unreadable, which decoding reports
            raise InputError(f"--resize {shorter} makes {one_line(str(job.source))} {width}x{height} px, over the "
                             f"limit of {max_pixels():,} pixels: choose a smaller --resize (or raise --max-pixels)")


def resize_shorter_side(image: Image, pixels: int) -> Image:
    size = resized(image.size, pixels)
    resize = lambda t: F.interpolate(t[None], size=size, mode="bicubic", antialias=True)[0].clamp(0, 1)
    alpha = None if image.alpha is None else resize(image.alpha)
    return Image(rgb=resize(image.rgb), alpha=alpha, gray=image.gray, bits=image.bits)


def collate(items: list[dict]) -> list[dict]:
    return items  # images keep their own sizes; batches are stacked per size in the main loop


def size_batches(jobs: list[Job], batch_size: int, sizes: list[tuple[int, int]] | None = None) -> list[list[int]]:
    """Job indices grouped into batches of one image size (read from the headers)."""
    if batch_size == 1:
        return [[i] for i in range(len(jobs))]
    sizes = sizes or [header_size(job.source) for job in jobs]
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, size in enumerate(sizes):
        by_size.setdefault(size, []).append(index)
    return [batch for indices in by_size.values() for batch in _chunks(indices, batch_size)]


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


AUTO_TILE_PIXELS = 4096 * 4096  # output pixels beyond which an image is tiled unasked
AUTO_TILE = 1024


BATCH_PIXELS = 32 * 256 * 256  # input pixels per GPU batch by default (measured: benchmarks/pipeline.py)


def default_batch_size(device: torch.device, tile: int | None, pixels: int = 256 * 256) -> int:
    """CPUs gain little from batching; GPUs need many pixels in flight to stay busy: 32 images
    of 256x256, 6 of 640x480 (out-of-memory halves it)."""
    if device.type != "cuda":
        return 1
    if tile:
        return 16
    return max(1, min(32, BATCH_PIXELS // max(1, pixels)))


# ---- the run ----------------------------------------------------------------------------


class Writer:
    """Encodes and writes results on threads while the device computes; bounded in flight."""

    def __init__(self, threads: int, in_flight: int | None = None):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="img2img-write")
        self.slots = threading.Semaphore(in_flight or threads * 2)
        self.pending: list[Future] = []

    def submit(self, fn: Callable[[], Result]) -> None:
        self.slots.acquire()
        future = self.pool.submit(fn)
        future.add_done_callback(lambda _: self.slots.release())
        self.pending.append(future)

    def done(self) -> Iterator[Result]:
        """Results finished so far, in completion order (and forgets them)."""
        done = {f: f.done() for f in self.pending}  # asked once: a future finishing meanwhile stays pending
        self.pending = [f for f, finished in done.items() if not finished]
        return (f.result() for f, finished in done.items() if finished)

    def close(self) -> Iterator[Result]:
        self.pool.shutdown(wait=True)
        yield from self.done()

    def abandon(self) -> list[Result]:
        """The writes under way finish (or remove their temporaries); those queued never start.
        Returns the results finished and not yet taken: their files exist."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        return [f.result() for f in self.pending if f.done() and not f.cancelled() and f.exception() is None]


def translate(model: str | Path, source: str, out_dir: str | Path, *, options: Options | None = None,
              reporter: Reporter | None = None, stdin: TextIO | None = None,
              on_result: Callable[[Result], None] | None = None, **overrides) -> list[Result]:
    """Translate INPUT (file, folder or '-') into `out_dir`; returns one Result per input."""
    options = options or Options(**overrides)
    reporter = reporter or Silent()
    outputs = plan_outputs(source, Path(out_dir), stdin, options.ext)
    module, spec = load_generator(Path(model), options.direction)
    translator = Translator(module, spec, options.device, options.bn_mode, options.amp, options.compile)
    if note := amp_note(options.device, options.amp, translator.dtype):
        reporter.message(note)
    if spec.guessed:
        reporter.message(f"note: {model}: {spec.guessed}")
    if outputs.left_out:
        reporter.message(f"left out {len(outputs.left_out)} file(s) that are no images by their names "
                         f"(png, jpg, webp, bmp, tif), e.g. {one_line(str(outputs.left_out[0]))}")
    prepare_output(outputs, options)
    return run_jobs(translator, outputs.jobs, outputs.folder, options, reporter, on_result, outputs.sizes)


def prepare_output(outputs: OutputPlan, options: Options) -> None:
    """A --resize too large for some image is refused first, so that a usage error leaves no
    folder behind. A folder that cannot be written is one error, not one per image; then the
    temporaries that killed runs left (SIGKILL skips all clean-up) go: anywhere below an OUTPUT
    folder, or an OUTPUT file's own."""
    if options.resize:  # the headers read here serve the work too (each read is the whole file)
        outputs.sizes = {job.source: header_size(job.source) for job in outputs.jobs}
        refuse_oversized_resize(outputs.jobs, outputs.sizes, options.resize)
    with writing(outputs.folder):
        outputs.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outputs.folder):
            pass
    remove_stale_temporaries(outputs.folder, outputs.jobs[0].relative.name if outputs.to_file else None)


def run_jobs(translator: Translator, jobs: list[Job], out_dir: Path, options: Options,
             reporter: Reporter, on_result: Callable[[Result], None] | None = None,
             sizes: dict[Path, tuple[int, int]] | None = None) -> list[Result]:
    """Translates `jobs` into `out_dir`; `sizes`: headers already read, by source."""
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        if on_result:
            on_result(result)
        reporter.update(len(results))
        if result.disk_full:  # every image after it would be computed only to fail the same way
            raise WriteError(f"{result.error}. Translation stopped: run the same command again to finish (the "
                             "images already written are skipped)", full=True)

    reporter.start(len(jobs), 0, "translating")
    todo = []
    for job in jobs:
        target = out_dir / job.relative
        exists = os.path.exists(target)  # one stat for a new result; False for a name too long: its write says so
        if exists and os.path.isdir(target):  # not a result of an earlier run, and nothing can be written there
            record(Result(job, None, error=f"{one_line(str(target))} is a folder, so the result cannot be written "
                                           "there: move it away"))
        elif exists and not options.overwrite:
            record(Result(job, target, skipped=True))
        else:
            todo.append(job)
    try:
        if todo:
            _run_pipeline(translator, todo, out_dir, options, reporter, record, sizes or {})
    finally:
        reporter.finish()
    if translator.fp32_retries:
        reporter.message(f"{translator.fp32_retries} batch(es) overflowed in reduced precision and ran again in fp32")
    return results


def _run_pipeline(translator: Translator, jobs: list[Job], out_dir: Path, options: Options,
                  reporter: Reporter, record: Callable[[Result], None], known: dict[Path, tuple[int, int]]) -> None:
    device = options.device
    workers = default_workers(device) if options.workers is None else options.workers
    writers = options.writers or default_writers(device)
    sizes = [known[job.source] if job.source in known else header_size(job.source) for job in jobs]
    batch_size = options.batch_size or default_batch_size(device, options.tile, max(h * w for h, w in sizes))
    plan = _plan_memory(translator, jobs, sizes, options, batch_size)
    for message in plan.messages:
        reporter.message(message)
    state = {"batch": batch_size, "tile": tile_for(translator, options.tile, reporter), "tile_batch": plan.tile_batch,
             "plan": plan}
    dataset = DecodeDataset(jobs, options.resize, TilePolicy(options.tile, plan, translator.scale))
    prefetch = PREFETCH if plan.whole_limit >= AUTO_TILE_PIXELS else 1
    # Results waiting to be written hold their whole output (float + integer): two batches, so
    # the device computes the next one meanwhile; within a budget, no more than fit in it.
    in_flight = max(writers, batch_size) * 2
    if options.max_memory:
        largest = max((h * w for h, w in sizes), default=0) * translator.scale**2 * 16
        in_flight = max(1, min(in_flight, options.max_memory // max(1, largest)))
    writer = Writer(writers, in_flight)
    batches = size_batches(jobs, 1 if options.tile else batch_size, sizes)
    try:
        for items in _decoded_batches(dataset, batches, workers, prefetch, device, record):
            for item in items:
                if "error" in item:
                    record(Result(jobs[item["index"]], None, error=item["error"]))
            decoded = [item for item in items if "image" in item]
            for group in _same_size_groups(decoded):
                for attempt in range(2):
                    try:
                        _translate_group(translator, group, jobs, out_dir, state, options, reporter, writer)
                        break
                    except Exception as err:  # e.g. the network refused this input: name the files, go on
                        if attempt == 0 and worker_processes.died(err):  # raised by torch's SIGCHLD handler meanwhile
                            continue
                        for item in group:
                            if not item.get("done"):
                                source = jobs[item["index"]].source
                                record(Result(jobs[item["index"]], None, error=failure(source, err, "translating")))
                        break
            for result in writer.done():
                record(result)
        for result in writer.close():
            record(result)
    except BaseException:  # e.g. a full disk (see run_jobs) or Ctrl-C: no write starts after it
        for result in writer.abandon():  # written all the same: reported, unless reporting is what failed
            with suppress(Exception):
                record(result)
        raise

PREFETCH = 4  # batches in flight per decoding worker


def _decoded_batches(dataset: DecodeDataset, batches: list[list[int]], workers: int, prefetch: int,
                     device: torch.device, record: Callable[[Result], None]) -> Iterator[list[dict]]:
    """Decoded batches, in order. A decoding process that dies (a decoder crashed on a file, or
    the system killed it) is replaced: the files that were in flight are decoded again one at
    a time, so the next death names its file, which fails alone."""
    jobs = dataset.jobs
    careful = 0  # files still to decode one at a time
    while batches:
        one_at_a_time = careful > 0
        loader = worker_processes.opened_quietly(lambda: iter(DataLoader(
            dataset, batch_sampler=batches, num_workers=1 if one_at_a_time else workers, collate_fn=collate,
            worker_init_fn=worker_processes.quiet_crash, pin_memory=device.type == "cuda",
            prefetch_factor=(1 if one_at_a_time else prefetch) if workers else None)))
        received = 0
        try:
            for items in loader:
                received += 1
                careful = max(0, careful - 1)
                yield items
                if one_at_a_time and careful == 0:
                    break  # past the suspects: the fast loader takes the rest
        except Exception as err:  # DecodeDataset never raises: the decoding process itself is gone
            if workers == 0:
                raise
            if one_at_a_time:  # one file was in flight: it took the decoder down with it
                index = batches[received][0]
                reason = failure(jobs[index].source, err, "decoding").split(" failed ", 1)[-1]
                record(Result(jobs[index], None, error=f"{jobs[index].source}: the decoder crashed on this file, "
                                                       f"its process died {reason}"))
                received, careful = received + 1, careful - 1
            else:  # any batch in flight may be the cause: their files, one at a time
                end = received + prefetch * workers
                suspects = [[i] for batch in batches[received:end] for i in batch]
                batches, careful = batches[:received] + suspects + batches[end:], len(suspects)
        worker_processes.stop(loader)
        batches = batches[received:]


def _plan_memory(translator: Translator, jobs: list[Job], sizes: list[tuple[int, int]], options: Options,
                 batch_size: int) -> memory.Plan:
    """Estimate the peak for the largest image before anything starts; over the budget or
    the free memory, choose tiles, a disk-backed output or smaller tile batches (and say so)."""
    # A model that tiles internally or whose tiles differ from its whole (tiling_advice) is not tiled for its
    # size alone.
    whole_limit = AUTO_TILE_PIXELS if translator.tiling == "supported" else 2**62
    if not jobs:
        return memory.Plan(batch_size, False, whole_limit, 0, [], AUTO_TILE)
    largest = max(range(len(jobs)), key=lambda i: sizes[i][0] * sizes[i][1])
    height, width = sizes[largest]
    if options.resize and min(height, width):
        height, width = resized((height, width), options.resize)
    need = memory.Need(height, width, translator.scale, memory.widest_layer(translator.module))
    suffix = jobs[largest].relative.suffix
    return memory.plan(need, options.tile or AUTO_TILE, batch_size, not streams(suffix), whole_limit,
                       options.max_memory, memory.available_memory(), explicit_tile=options.tile is not None)


@dataclass
class TilePolicy:
    """Which images are tiled: all with --tile, else those whose output is over whole_limit."""

    tile: int | None
    plan: memory.Plan  # its whole_limit (output pixels) and the tile side beyond it
    scale: int

    def __call__(self, size: tuple[int, int]) -> int | None:
        """The tile side for images of `size` (height, width), or None to translate them whole."""
        if self.tile:
            return self.tile
        return self.plan.tile if size[0] * size[1] * self.scale**2 > self.plan.whole_limit else None


def _tile_size(state: dict, size: tuple[int, int], scale: int) -> int | None:
    return TilePolicy(state["tile"], state["plan"], scale)(size)


def _same_size_groups(items: list[dict]) -> list[list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for item in items:
        groups.setdefault(item["image"].size, []).append(item)
    return list(groups.values())


def _translate_group(translator, group, jobs, out_dir, state, options, reporter, writer) -> None:
    """Same-size images; on out-of-memory, retry with smaller batches, then tiles."""
    height, width = group[0]["image"].size
    while True:
        try:
            tile = _tile_size(state, (height, width), translator.scale)
            if tile and not state["tile"] and not state.get("told_huge"):
                reporter.message(f"images of {width}x{height} px and larger are translated in {tile} px tiles")
                state["told_huge"] = True
            split = tile is not None and max(height, width) > tile
            if split and translator.tiling == "discouraged" and not state.get("told_tiling"):
                reporter.message(tiling_note(translator, asked=options.tile is not None))
                state["told_tiling"] = True
            for item in group:
                if item.get("done"):
                    continue
                if tile:
                    _translate_tiled(translator, item, jobs[item["index"]], out_dir, tile, state, options, writer)
                    item["done"] = True
            if not tile:
                _translate_whole(translator, group, jobs, out_dir, state, writer)
            return
        except (torch.OutOfMemoryError, MemoryError) as err:
            _shrink_after_oom(state, (height, width), reporter, err, translator)


def _translate_whole(translator, group, jobs, out_dir, state, writer) -> None:
    """Same-size images in batches. On a GPU the results leave it as 8-bit where the output
    format takes 8 bits, copied asynchronously: the writers wait for the copy, the device goes
    on with the next batch."""
    start = time.perf_counter()
    images = [item["image"] for item in group]
    alphas = [image.alpha() if isinstance(image, Decoded) else image.alpha for image in images]
    layouts = [output_layout(jobs[item["index"]].relative.suffix, image.gray, alpha is not None, image.bits)
               for item, image, alpha in zip(group, images, alphas)]
    quantise = translator.device.type == "cuda" and all(map(quantise_on_device, layouts))
    outputs, copied = [], []
    for i in range(0, len(images), state["batch"]):
        result = translator.run(_batch_rgb(images[i : i + state["batch"]], translator.device))
        if quantise:
            result = result.mul(255).round_().to(torch.uint8)
        host, ready = _to_host(result)
        outputs.extend(host)
        copied.extend([ready] * len(host))
    elapsed = (time.perf_counter() - start) * 1000 / len(group)
    for item, image, alpha, rgb, ready in zip(group, images, alphas, outputs, copied):
        job = jobs[item["index"]]
        result_image = Image(rgb=rgb, alpha=scale_alpha(alpha, translator.scale), gray=image.gray, bits=image.bits)
        ms = elapsed + item.get("decode_ms", 0.0)
        item["done"] = True
        writer.submit(lambda job=job, result_image=result_image, ms=ms, ready=ready:
                      _write(job, result_image, out_dir, ms, ready))


def _to_host(result: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """The result in host memory: from a GPU, into pinned memory without waiting (the event
    says when it has arrived)."""
    if result.device.type != "cuda":
        return result.cpu(), None
    result = result.contiguous(memory_format=torch.channels_last)  # HWC per image, as the encoders take it
    host = torch.empty_strided(result.shape, result.stride(), dtype=result.dtype, pin_memory=True)
    host.copy_(result, non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return host, ready


def _batch_rgb(images: list[Image | Decoded], device: torch.device) -> torch.Tensor:
    """N x 3 x H x W in [0, 1]; 8-bit images that stack cross to the device as bytes."""
    first = images[0]
    if all(isinstance(image, Decoded) and first.stacks_with(image) for image in images):
        return stack_rgb(images, device)
    return torch.stack([image.rgb() if isinstance(image, Decoded) else image.rgb for image in images])


def _translate_tiled(translator: Translator, item: dict, job: Job, out_dir: Path, tile: int, state: dict,
                     options: Options, writer: Writer) -> None:
    """One image in tiles, its rows converted and handed to the file's encoder as they are
    final: no full-size float image exists at any point."""
    start = time.perf_counter()
    image, scale = item["image"], translator.scale
    height, width = image.size
    if isinstance(image, Decoded):
        region, alpha, has_alpha = image.rgb, image.alpha, image.has_alpha
    else:
        region = lambda rows, cols, rgb=image.rgb: rgb[:, rows, cols]
        alpha = lambda rows, cols=slice(None), plane=image.alpha: plane[:, rows, cols]
        has_alpha = image.alpha is not None
    target = out_dir / job.relative
    layout = output_layout(target.suffix, image.gray, has_alpha, image.bits)
    alpha_rows = AlphaRows(alpha, height, scale) if has_alpha else None
    try:
        output = StripWriter(target, height * scale, width * scale, layout, on_disk=state["plan"].on_disk)
    except WriteError as err:
        writer.submit(lambda: Result.unwritten(job, err))
        return
    try:
        batch = min(state["batch"], state["tile_batch"])
        for top, rgb in blend_strips(translator, region, (height, width), tile, options.overlap(tile), batch):
            bottom = top + rgb.shape[1]
            output.write(to_pixels(rgb, alpha_rows.rows(top, bottom) if alpha_rows else None, layout))
    except (ImageError, WriteError) as err:  # the encoder failed (e.g. a full disk): this file alone
        output.abort()
        result = (Result.unwritten(job, err) if isinstance(err, WriteError)
                  else Result(job, None, error=f"{target}: could not be written: {err}"))
        writer.submit(lambda: result)
        return
    except BaseException:
        output.abort()
        raise
    ms = (time.perf_counter() - start) * 1000 + item.get("decode_ms", 0.0)
    writer.submit(lambda: _finish(job, output, target, ms))


def _finish(job: Job, output: StripWriter, target: Path, ms: float) -> Result:
    try:
        output.close()
    except ImageError as err:
        return Result(job, None, error=str(err))
    except WriteError as err:
        return Result.unwritten(job, err)
    except Exception as err:  # runs on a writer thread: an escaped exception would lose the result
        return Result(job, None, error=failure(target, err, "writing"))
    return Result(job, target, milliseconds=ms, size=(output.height, output.width))


def tile_for(translator: Translator, tile: int | None, reporter: Reporter) -> int | None:
    """--tile, unless the model tiles internally."""
    if tile and translator.tiling == "internal":
        reporter.message("this model tiles internally: --tile is ignored")
        return None
    return tile


def tiling_note(translator: Translator, asked: bool) -> str:
    """Said when the first image is split into tiles by a model whose tiles differ from its whole."""
    return (f"note: tiled results of this model differ from its whole-image results: {translator.tiling_reason}; "
            f"seams may show{'; leave out --tile if the images fit' if asked else ''}")


def _shrink_after_oom(state: dict, size: tuple[int, int], reporter: Reporter, err: Exception,
                      translator: Translator) -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if state["batch"] > 1:
        state["batch"] //= 2
        reporter.message(f"out of memory: retrying with batch size {state['batch']}")
    elif translator.tiling != "internal" and (state["tile"] is None or state["tile"] > 64):
        state["tile"] = max(64, (state["tile"] or max(size)) // 2)
        reporter.message(f"out of memory: retrying with {state['tile']} px tiles")
    else:
        raise err


def _write(job: Job, image: Image, out_dir: Path, ms: float, ready: torch.cuda.Event | None = None) -> Result:
    target = out_dir / job.relative
    if ready is not None:
        ready.synchronize()  # the copy from the GPU has arrived
    try:
        write_image(target, image)
    except WriteError as err:  # e.g. a full disk: the temporary file is already gone
        return Result.unwritten(job, err)
    except Exception as err:  # runs on a writer thread: an escaped exception would lose the result
        return Result(job, None, error=failure(target, err, "writing"))
    return Result(job, target, milliseconds=ms, size=image.size)

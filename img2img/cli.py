"""The `img2img` command: thin Typer wrappers that parse flags, call the API and print.

Human messages and progress go to stderr; results meant for programs go to stdout.
Exit codes: 0 success, 1 failure, 2 usage error (bad flag, missing input).
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from img2img.config import ConfigError
from img2img.data.datasets import DataError
from img2img.data.images import IMAGE_EXTENSIONS, ImageError
from img2img.gan.checkpoint import CheckpointError
from img2img.infer import InputError

console = Console(stderr=True)
app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train and run image-to-image translation GANs (pix2pix, CycleGAN, SR).")
train_app = typer.Typer(no_args_is_help=True, help="Train a model into a run folder.")
app.add_typer(train_app, name="train")

USAGE_ERRORS = (ConfigError, InputError)
FAILURES = (DataError, CheckpointError, ImageError)


class RichReporter:
    """The library's Reporter, drawn with rich on stderr; plain lines when stderr is a log file."""

    PLAIN_EVERY_S = 10.0

    def __init__(self):
        self.progress: Progress | None = None
        self.task_id = None
        self.plain = not console.is_terminal
        self.total, self.description, self.last_line = 0, "", 0.0

    def start(self, total: int, done: int, description: str) -> None:
        self.total, self.description = total, description
        if self.plain:
            return
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=16), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
            console=console, transient=False,
        )
        self.progress.start()
        self.task_id = self.progress.add_task(description, total=total, completed=done, info="")

    def update(self, done: int, info: str = "") -> None:
        if self.progress is not None:
            fields = {"info": info} if info else {}
            self.progress.update(self.task_id, completed=done, **fields)
        elif self.plain and (time.monotonic() - self.last_line > self.PLAIN_EVERY_S or done == self.total):
            self.last_line = time.monotonic()
            console.print(f"{self.description} {done}/{self.total} {info}", highlight=False)

    def message(self, text: str) -> None:
        console.print(text, highlight=False)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def fail(message: str, code: int) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def run_guarded(action):
    """Run `action`, turning the user's mistakes into a message and an exit code, not a traceback."""
    try:
        return action()
    except USAGE_ERRORS as err:
        fail(str(err), 2)
    except FAILURES as err:
        fail(str(err), 1)
    except KeyboardInterrupt:
        console.print("interrupted")
        raise typer.Exit(130)


class Direction(str, Enum):
    AtoB = "AtoB"
    BtoA = "BtoA"


class BnMode(str, Enum):
    eval = "eval"
    train = "train"


# ---- train ----------------------------------------------------------------------------


@train_app.command("pix2pix")
def train_pix2pix(
    data: Optional[Path] = typer.Option(None, "--data", help="Aligned layout: each file holds A|B side by side; train/ val/ test/ subfolders."),
    a: Optional[Path] = typer.Option(None, "--a", help="Folder of inputs, paired with --b by relative path and file stem."),
    b: Optional[Path] = typer.Option(None, "--b", help="Folder of targets."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/pix2pix)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps (batches)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs over the data (default: 200)."),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="Training crop in pixels (default: 256)."),
    load_size: Optional[int] = typer.Option(None, "--load-size", help="Resize before cropping (default: size*286/256)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="(default: 1)"),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default: auto)."),
    netG: Optional[str] = typer.Option(None, "--netG", help="unet_256, unet_128 (unet_N), resnet_9blocks, resnet_6blocks (default: unet_256)."),
    ngf: Optional[int] = typer.Option(None, "--ngf", help="Generator width (default: 64)."),
    ndf: Optional[int] = typer.Option(None, "--ndf", help="Discriminator width (default: 64)."),
    netD: Optional[str] = typer.Option(None, "--netD", help="basic (70x70 PatchGAN), n_layers, pixel (default: basic)."),
    n_layers_d: Optional[int] = typer.Option(None, "--n-layers-d", help="PatchGAN depth with --netD n_layers (default: 3)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="batch, instance or none (default: batch)."),
    gan_loss: Optional[str] = typer.Option(None, "--gan-loss", help="vanilla (non-saturating), minimax, lsgan, hinge, wgangp (default: vanilla)."),
    lambda_l1: Optional[float] = typer.Option(None, "--lambda-l1", help="(default: 100)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default: 2e-4)."),
    direction: Optional[Direction] = typer.Option(None, "--direction", help="(default: AtoB)"),
    ema: Optional[float] = typer.Option(None, "--ema", help="EMA decay of G's weights, exported instead of G (default: off)."),
    save_every: Optional[int] = typer.Option(None, "--save-every", min=1, help="Checkpoint every N steps (default: 1000)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Data loader processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="(default: 0)"),
):
    """Paired translation (pix2pix): U-Net generator, PatchGAN discriminator, L1 + GAN loss."""
    values = {k: v for k, v in locals().items() if k not in ("resume",)}
    values["direction"] = direction.value if direction else None
    _train("pix2pix", values, resume)


def _train(task: str, values: dict, resume: bool) -> None:
    from img2img import api
    from img2img.config import make_config

    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}
    if values.get("out") is None:
        values["out"] = f"runs/{task}"

    def action():
        cfg = api.resume_config(Path(values["out"]), values) if resume else make_config(task, values)
        run_dir = api.train(cfg, resume=resume, reporter=RichReporter())
        console.print(f"run folder: [bold]{run_dir}[/] (generator in {run_dir / 'checkpoints'})")

    run_guarded(action)


# ---- translate ------------------------------------------------------------------------


@app.command()
def translate(
    input: str = typer.Argument(..., help="An image, a folder (recursive), or - for paths on stdin."),
    output: Path = typer.Argument(..., help="Output folder; relative paths and file names are kept."),
    model: Path = typer.Option(..., "--model", help="A .safetensors/.pth generator or a run folder."),
    direction: Direction = typer.Option(Direction.AtoB, "--direction", help="For CycleGAN runs: which generator."),
    bn_mode: BnMode = typer.Option(BnMode.eval, "--bn-mode", help="eval: running statistics; train: the reference test script's default."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Shard the files over several devices: cuda:0,cuda:1 or all."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images (or tiles) per forward pass (default: 8 on GPU, 1 on CPU)."),
    tile: Optional[int] = typer.Option(None, "--tile", min=16, help="Process large images in tiles of this many input pixels."),
    tile_overlap: int = typer.Option(32, "--tile-overlap", min=0, help="Pixels shared by neighbouring tiles, cross-faded."),
    resize: Optional[int] = typer.Option(None, "--resize", min=1, help="Resize inputs so the shorter side has this many pixels."),
    ext: Optional[str] = typer.Option(None, "--ext", help="Output format: png, jpg, webp, bmp, tif (default: the input's)."),
    amp: str = typer.Option("auto", "--amp", help="auto: bf16/fp16 on CUDA; off: fp32."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the generator (pays off on long GPU runs)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decoding processes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that exist (default: skip them)."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per image on stdout."),
):
    """Translate images with a trained generator (any size; no resizing unless asked)."""
    from img2img import api, infer

    if ext is not None and f".{ext.lstrip('.').lower()}" not in IMAGE_EXTENSIONS:
        fail(f"--ext {ext}: choose one of png, jpg, webp, bmp, tif", 2)
    if tile is not None and tile_overlap * 2 >= tile:
        fail(f"--tile-overlap {tile_overlap} must be less than half of --tile {tile}", 2)

    def print_json(result) -> None:
        if json_output:
            typer.echo(json.dumps(result.to_json()))

    def action():
        options = infer.Options(
            device=api.resolve_device(device), batch_size=batch_size, direction=direction.value,
            bn_mode=bn_mode.value, overwrite=overwrite, ext=f".{ext.lstrip('.').lower()}" if ext else None,
            tile=tile, tile_overlap=tile_overlap, resize=resize, amp=amp, compile=compile, workers=workers)
        if devices:
            results = infer.translate_sharded(model, input, output, infer.parse_devices(devices), options=options,
                                              reporter=RichReporter(), on_result=print_json)
        else:
            results = infer.translate(model, input, output, options=options, reporter=RichReporter(),
                                      on_result=print_json)
        _summarise(results, output)

    run_guarded(action)


def _summarise(results, output: Path) -> None:
    failures = [r for r in results if r.error]
    written = sum(1 for r in results if r.output and not r.skipped and not r.error)
    skipped = sum(1 for r in results if r.skipped)
    console.print(f"wrote {written} image(s) to {output}" + (f", skipped {skipped} that exist" if skipped else ""))
    if failures:
        console.print(f"[red]{len(failures)} input(s) failed:[/]")
        for failure in failures:
            console.print(f"  {failure.error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


class ExportFormat(str, Enum):
    onnx = "onnx"


@app.command()
def export(
    out: Path = typer.Argument(..., help="The file to write, e.g. model.onnx."),
    model: Path = typer.Option(..., "--model", help="A .safetensors/.pth generator or a run folder."),
    format: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="Export format."),
    direction: Direction = typer.Option(Direction.AtoB, "--direction", help="For CycleGAN runs: which generator."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
):
    """Export a generator (ONNX: [0, 1] images in and out, dynamic batch, height and width)."""
    from img2img.export import ExportError, export_onnx

    def action():
        try:
            spec = export_onnx(model, out, direction.value, opset)
        except ExportError as err:
            fail(str(err), 1)
        console.print(f"wrote {out} ({spec.arch}, x{spec.scale}, input and output in [0, 1])")

    run_guarded(action)


# ---- info -----------------------------------------------------------------------------


@app.command()
def info(
    path: Path = typer.Argument(..., help="A generator file (.safetensors/.pth) or a run folder."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
):
    """Describe a checkpoint: architecture, parameters, pixel convention, training step."""
    from img2img.gan.checkpoint import load_generator, resolve_generator_path
    from img2img.nets.registry import count_parameters

    def action():
        file = resolve_generator_path(path)
        module, spec = load_generator(file)
        record = {"file": str(file), "arch": spec.arch, "hparams": spec.hparams,
                  "parameters": count_parameters(module), "pixel_range": spec.pixel_range,
                  "scale": spec.scale, "task": spec.task, "direction": spec.direction,
                  "step": spec.step, "source": spec.source}
        if json_output:
            typer.echo(json.dumps(record))
            return
        for key, value in record.items():
            console.print(f"[bold]{key:>12}[/] {value}", highlight=False)

    run_guarded(action)


# ---- demo -----------------------------------------------------------------------------


@app.command()
def demo(
    out: Path = typer.Option(Path("img2img-demo"), "--out", help="Where the demo writes its data and run."),
    steps: int = typer.Option(600, "--steps", min=1, help="Training steps."),
    device: str = typer.Option("auto", "--device"),
):
    """Train a small pix2pix on the bundled photographs and show what it learned."""
    from img2img.demo import run_demo

    def action():
        grid = run_demo(out, steps=steps, device=device, reporter=RichReporter())
        console.print(f"input | output | target grid of held-out photos: [bold]{grid}[/]")

    run_guarded(action)


def main() -> None:  # python -m img2img
    app()

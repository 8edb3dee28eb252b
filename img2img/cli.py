"""The `img2img` command: thin Typer wrappers that parse flags, call the API and print.

The `train` commands are derived from the config dataclasses of the task files, so every
option is declared once, with its help, panel, range and default (config.py).
Human messages and progress go to stderr; results meant for programs go to stdout.
Exit codes: 0 success, 1 failure, 2 usage error (bad flag, missing input).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from img2img.cli_train import MAX_PIXELS_HELP, add_train_command
from img2img.config import AMP_HELP, ConfigError, require_folder
from img2img.console import RichReporter, console, fail, list_and_exit, run_guarded, say, to_stdout
from img2img.data.header import set_max_pixels
from img2img.tasks import TASKS

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train and run image-to-image translation GANs (pix2pix, CycleGAN, CUT, SR).")
train_app = typer.Typer(no_args_is_help=True, help="Train a model into a run folder.")
app.add_typer(train_app, name="train")
data_app = typer.Typer(no_args_is_help=True, help="Inspect training data.")
app.add_typer(data_app, name="data")

MODEL_HELP = "A .safetensors/.pth generator or a run folder."
DEVICE_HELP = "auto, cpu, cuda or cuda:N."


class Direction(str, Enum):
    AtoB = "AtoB"
    BtoA = "BtoA"


class BnMode(str, Enum):
    eval = "eval"
    train = "train"


for _task in TASKS.values():
    add_train_command(train_app, _task)


# ---- translate and export -------------------------------------------------------------------


@app.command()
def translate(
    input: str = typer.Argument(..., help="An image, a folder (recursive), or - for paths on stdin."),
    output: Path = typer.Argument(..., help="Output folder; relative paths and file names are kept. For one input image, a file name (out.png) writes that file."),
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    direction: Optional[Direction] = typer.Option(None, "--direction", help="For CycleGAN runs: which generator (default: AtoB)."),
    bn_mode: BnMode = typer.Option(BnMode.eval, "--bn-mode", help="eval: running statistics; train: the reference test script's default."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    devices: Optional[str] = typer.Option(None, "--devices", help="Shard the files over several devices: cuda:0,cuda:1 or all."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images (or tiles) per forward pass (default: on a GPU 32 of 256x256 or as many pixels, 16 tiles; on a CPU 1)."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Process large images in tiles of this many input pixels."),
    tile_overlap: Optional[int] = typer.Option(None, "--tile-overlap", help="Pixels shared by neighbouring tiles, cross-faded (default: 32, at most a quarter of the tile)."),
    resize: Optional[int] = typer.Option(None, "--resize", help="Resize inputs so the shorter side has this many pixels."),
    ext: Optional[str] = typer.Option(None, "--ext", help="Output format: png, jpg, webp, bmp, tif (default: the input's)."),
    amp: str = typer.Option("auto", "--amp", help=AMP_HELP),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the generator (pays off on long GPU runs)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decoding processes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that exist (default: skip them)."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per image on stdout."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help=MAX_PIXELS_HELP),
    gallery: bool = typer.Option(False, "--gallery", help="Write OUTPUT/gallery.html: input | output (| target) side by side."),
    targets: Optional[Path] = typer.Option(None, "--targets", help="Targets paired by relative path and stem: adds them and PSNR/SSIM to the gallery (implies --gallery)."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory for image data, e.g. 2G (default: what is free); over it, tiles, disk-backed outputs, smaller tile batches."),
):
    """Translate images with a trained generator (any size; no resizing unless asked)."""
    from img2img import api, infer, memory, sharding
    from img2img.data.images import files_by_stem

    try:
        memory_budget = memory.parse_size(max_memory) if max_memory is not None else None
    except ValueError as err:
        fail(f"--max-memory {err}", 2)

    def print_json(result) -> None:
        if json_output:
            to_stdout(json.dumps(result.to_json()))

    def action():
        if max_pixels:
            set_max_pixels(max_pixels)
        if targets is not None:
            require_folder(targets, "--targets")
            ambiguous: list[str] = []
            files_by_stem(targets, ambiguous)
            if ambiguous:
                raise ConfigError(f"--targets {targets}: " + "\n".join(ambiguous))
            if targets.resolve() in (output.resolve(), *output.resolve().parents):
                raise ConfigError(f"OUTPUT {output} is inside --targets {targets}: the results would replace or mix "
                                  "with the images they are measured against; choose another OUTPUT")
        if (gallery or targets is not None) and infer.names_a_file(input, output):
            raise ConfigError(f"--gallery writes OUTPUT/gallery.html: give a folder as OUTPUT, not the file {output}")
        options = infer.Options(
            device=api.resolve_device(device), batch_size=batch_size, direction=direction and direction.value, bn_mode=bn_mode.value,
            overwrite=overwrite, ext=ext, tile=tile, tile_overlap=tile_overlap, resize=resize, amp=amp,
            compile=compile, workers=workers, max_memory=memory_budget)
        if devices:
            results = sharding.translate_sharded(model, input, output, sharding.parse_devices(devices), options=options,
                                                 reporter=RichReporter(), on_result=print_json)
        else:
            results = infer.translate(model, input, output, options=options, reporter=RichReporter(), on_result=print_json)
        if gallery or targets is not None:
            from img2img.report import translate_gallery

            say(f"gallery: {translate_gallery(results, output, targets, say)}")
        _summarise(results, output)

    run_guarded(action)


def _summarise(results, output: Path) -> None:
    failures = [r for r in results if r.error]
    written = sum(1 for r in results if r.output and not r.skipped and not r.error)
    skipped = sum(1 for r in results if r.skipped)
    say(f"wrote {written} image(s) to {output}" + (f", skipped {skipped} that exist" if skipped else ""))
    list_and_exit("input(s) failed", [failure.error for failure in failures])


class ExportFormat(str, Enum):
    onnx = "onnx"


@app.command()
def export(
    out: Path = typer.Argument(..., help="The file to write, e.g. model.onnx."),
    model: Path = typer.Option(..., "--model", help=MODEL_HELP),
    format: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="Export format."),
    direction: Optional[Direction] = typer.Option(None, "--direction", help="For CycleGAN runs: which generator (default: AtoB)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset version."),
):
    """Export a generator (ONNX: [0, 1] images in and out, dynamic batch, height and width)."""
    from img2img.export import ExportError, export_onnx

    def action():
        from img2img.data.images import IMAGE_EXTENSIONS
        from img2img.infer import OTHER_IMAGE_SUFFIXES

        if not out.name or out.is_dir():
            raise ConfigError(f"OUT {out} is a folder: give the file to write, e.g. model.onnx")
        other_kinds = (*IMAGE_EXTENSIONS, *OTHER_IMAGE_SUFFIXES, ".safetensors", ".pth", ".pt")
        named_otherwise = out.suffix.lower() in other_kinds
        if named_otherwise and not out.exists():  # an existing file: export_onnx says it would replace it
            stem = out.stem  # x.onnx.png: x.onnx, not x.onnx.onnx
            suggestion = stem if stem.lower().endswith(".onnx") else f"{stem}.onnx"
            raise ConfigError(f"OUT {out}: export writes an ONNX graph; name the file .onnx (e.g. {suggestion})")
        try:
            spec = export_onnx(model, out, direction and direction.value, opset)
        except ExportError as err:
            fail(str(err), 1)
        say(f"wrote {out} ({spec.arch}, x{spec.scale}, input and output in [0, 1])")

    run_guarded(action)


@app.command()
def info(
    path: Path = typer.Argument(..., help="A generator file (.safetensors/.pth) or a run folder."),
    json_output: bool = typer.Option(False, "--json", help="One JSON object per generator on stdout."),
):
    """Describe a generator on stdout: architecture, parameters, pixels, step (a CycleGAN run: both)."""
    from img2img.gan.checkpoint import describe_generators

    def action():
        for record in describe_generators(path):
            if json_output:
                to_stdout(json.dumps(record))
                continue
            to_stdout("\n".join(f"{key:>12} {value}" for key, value in record.items() if value is not None))

    run_guarded(action)


# ---- eval and report ------------------------------------------------------------------------


@app.command("eval")
def eval_command(
    pred_dir: Path = typer.Argument(..., help="Outputs (searched recursively)."),
    target_dir: Path = typer.Argument(..., help="Targets, paired with outputs by relative path and stem (any extension)."),
    metrics: str = typer.Option("psnr,ssim", "--metrics", help="Comma-separated: psnr, ssim, lpips (paired); fid, kid (the two sets)."),
    crop_border: int = typer.Option(0, "--crop-border", min=0, help="Pixels cropped from each side before PSNR/SSIM (SR: the scale)."),
    y_channel: bool = typer.Option(False, "--y-channel", help="PSNR/SSIM on the BT.601 Y channel (BasicSR's convention) instead of RGB."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Folder holding the LPIPS/Inception weights (else torch's hub cache); nothing is downloaded."),
    lpips_net: str = typer.Option("alex", "--lpips-net", help="LPIPS backbone: alex, vgg or squeeze."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_output: bool = typer.Option(False, "--json", help="One JSON object on stdout: means and per-image values."),
):
    """Measure outputs against targets: PSNR, SSIM, LPIPS per pair; FID, KID between the sets."""
    from img2img import api
    from img2img.evaluate import describe_unmatched, evaluate

    def action():
        result = evaluate(pred_dir, target_dir, metrics, crop_border=crop_border, y_channel=y_channel,
                          weights_dir=weights, lpips_net=lpips_net, device=api.resolve_device(device),
                          reporter=RichReporter())
        for line in describe_unmatched(result) + result.warnings:
            console.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
        if json_output:
            to_stdout(json.dumps(result.to_json()))
        else:
            _print_means(result)
        list_and_exit("image(s) could not be measured", result.failures)

    run_guarded(action)


def _print_means(result) -> None:
    """The means on stdout, where a result goes (`img2img eval P T > metrics.txt`)."""
    counts, settings = result.counts, result.settings
    pixel = "/".join(name.upper() for name in ("psnr", "ssim") if name in result.means)
    if "pairs" in counts:
        on = f"; {pixel} on {settings['channels']}, border crop {settings['crop_border']} px" if pixel else ""
        to_stdout(f"{counts['pairs']} pair(s){on}")
    if "pred" in counts:
        to_stdout(f"FID/KID: {counts['pred']} output(s) against {counts['target']} target(s)")
    for name, value in result.means.items():
        if name != "kid_std":
            spread = f" ± {result.means['kid_std']:.5f}" if name == "kid" else ""
            measured = counts.get(name, counts.get("pairs"))
            fewer = f" (on {measured} of the {counts['pairs']} pairs)" if measured != counts.get("pairs") else ""
            to_stdout(f"{name:>6} {value:.5g}{' dB' if name == 'psnr' else ''}{spread}{fewer}")


@app.command("report")
def report_command(
    run_dir: Path = typer.Argument(..., help="A run folder (holding log.jsonl, samples/, config.yaml)."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also replay log.jsonl into RUN_DIR/tensorboard/ (needs tensorboard)."),
):
    """Write RUN_DIR/report.html (samples, loss and D(real)/D(fake) plots, validation) and print its path."""
    from img2img.report import export_tensorboard, write_run_report

    def action():
        report = write_run_report(run_dir)
        for note in report.notes:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        if tensorboard:
            say(f"TensorBoard events: {export_tensorboard(run_dir)}")
        to_stdout(str(report.path))

    run_guarded(action)


@app.command("recipes")
def show_recipes(name: Optional[str] = typer.Argument(None, help="A recipe to print in full.")):
    """List the bundled recipes, or print one."""
    from img2img import recipes

    def action():
        if name:
            to_stdout(recipes.text(name), end="")
            return
        for recipe in recipes.names():
            to_stdout(f"{recipe:<24} {recipes.summary(recipe)}")

    run_guarded(action)


@data_app.command("check")
def data_check(
    folder: Path = typer.Argument(..., help="A folder of images (searched recursively)."),
    b: Optional[Path] = typer.Option(None, "--b", help="A second folder whose files pair with FOLDER's by relative path and stem."),
    unpaired: bool = typer.Option(False, "--unpaired", help="FOLDER and --b are two unpaired domains (CycleGAN, CUT): no pairing check."),
    aligned: bool = typer.Option(False, "--aligned", help="FOLDER holds A|B side by side (pix2pix --data)."),
    decode: bool = typer.Option(False, "--decode", help="Decode every image fully (slower, catches corrupt pixel data)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help=MAX_PIXELS_HELP),
):
    """Check training data the way `train` does before its first step, and summarise it."""
    from img2img.data.check import aligned_problems, pairing_problems, scan_folder

    def action():
        if aligned and b is not None:
            raise ConfigError("--aligned: FOLDER holds both sides (A|B in each file), so there is no --b to give")
        if unpaired and b is None:
            raise ConfigError("--unpaired: give the second domain as --b DIR")
        if max_pixels:
            set_max_pixels(max_pixels)
        reports = [scan_folder(folder, decode)] + ([scan_folder(b, decode)] if b else [])
        problems = [p for r in reports for p in r.problems]
        if b is not None and not unpaired:
            problems += pairing_problems(folder, b, {path for report in reports for path in report.unreadable})
        if aligned:
            problems += aligned_problems(folder)
        for report in reports:
            sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common(3))
            formats = ", ".join(f"{f} {n}" for f, n in report.formats.most_common())
            unreadable = f" (and {len(report.unreadable)} unreadable)" if report.unreadable else ""
            say(f"{report.folder}: {report.files} images{unreadable}; {formats or 'none readable'}; "
                f"most common sizes {sizes or '-'}")
            if report.skipped:
                say(f"  {len(report.skipped)} other file(s) ignored, e.g. {report.skipped[0]}")
        list_and_exit("problem(s)", list(dict.fromkeys(problems)))
        say("no problems found")

    run_guarded(action)


@app.command()
def demo(
    out: Path = typer.Option(Path("img2img-demo"), "--out", help="Where the demo writes its data and run."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps (default: the demo's)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
):
    """Train a small pix2pix on the bundled photographs and show what it learned."""
    from img2img.demo import DEMO_STEPS, run_demo

    def action():
        result = run_demo(out, steps=steps or DEMO_STEPS, device=device, reporter=RichReporter())
        say(f"input | output | target grid of held-out photos: {result.grid}")

    run_guarded(action, to_continue="run the same command again")  # the demo goes on from its checkpoint

"""The `img2img` command: thin Typer wrappers that parse flags, call the API and print.

Human messages and progress go to stderr; results meant for programs go to stdout.
Exit codes: 0 success, 1 failure, 2 usage error (bad flag, missing input).
"""

from __future__ import annotations

import json
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from img2img.config import ConfigError
from img2img.data.datasets import DataError
from img2img.data.header import ImageError, set_max_pixels
from img2img.data.images import IMAGE_EXTENSIONS
from img2img.gan.checkpoint import CheckpointError
from img2img.gan.loop import TrainingStopped
from img2img.infer import InputError

console = Console(stderr=True)
app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train and run image-to-image translation GANs (pix2pix, CycleGAN, CUT, SR).")
train_app = typer.Typer(no_args_is_help=True, help="Train a model into a run folder.")
app.add_typer(train_app, name="train")
data_app = typer.Typer(no_args_is_help=True, help="Inspect training data.")
app.add_typer(data_app, name="data")

USAGE_ERRORS = (ConfigError, InputError)
FAILURES = (DataError, CheckpointError, ImageError)

# Help of the options every train command shares.
GRAD_ACCUM_HELP = "Micro-batches accumulated per optimizer step (default: 1)."
AMP_HELP = "auto: bf16 (or fp16 with loss scaling) autocast on CUDA; off: fp32."
COMPILE_HELP = "torch.compile the generator and discriminator."
SYNC_BN_HELP = "SyncBatchNorm across processes (CUDA, BatchNorm networks)."
NPROC_HELP = "Processes (GPUs) per node: re-launches this command under torchrun."
NNODES_HELP = "Nodes taking part (with --nproc-per-node)."
NODE_RANK_HELP = "This node's rank, 0 to nnodes-1."
RDZV_HELP = "HOST:PORT every node can reach (rank-0 node), for --nnodes > 1."
LOG_EVERY_HELP = "Write log.jsonl and update the progress line every N steps (default: 10)."
TENSORBOARD_HELP = "Also log to RUN/tensorboard/ (needs the tensorboard extra)."
RECIPE_HELP = "Start from a recipe: a bundled name (see `img2img recipes`) or a YAML file; flags override it."
SET_HELP = "Override any setting: --set key=value (repeatable), e.g. --set lambda_l1=50."
MAX_PIXELS_HELP = "Refuse images with more pixels than this (decompression-bomb guard; default 256 million)."
R1_HELP = "Zero-centred R1 penalty on D's gradient at real images, weight gamma (0: off; R3GAN: 0.1 with --gan-loss rpgan)."
R2_HELP = "Zero-centred R2 penalty on D's gradient at fakes, weight gamma (0: off)."
REG_EVERY_HELP = "Lazy regularisation: R1/R2 every N steps, scaled by N (default: 16)."
RESTARTS_HELP = "Elastic restarts after a failed process; restarted processes resume from the newest checkpoint."


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
    except TrainingStopped as stop:
        console.print(f"{stop}; a checkpoint was written: run the same command with --resume to continue")
        raise typer.Exit(128 + stop.signum)
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
    dropout: Optional[bool] = typer.Option(None, "--dropout/--no-dropout", help="Dropout in G (default: on, as in the reference pix2pix)."),
    gan_loss: Optional[str] = typer.Option(None, "--gan-loss", help="vanilla (non-saturating), minimax, lsgan, hinge, wgangp, ragan, rpgan (relativistic pairing) (default: vanilla)."),
    r1: Optional[float] = typer.Option(None, "--r1", min=0, help=R1_HELP),
    r2: Optional[float] = typer.Option(None, "--r2", min=0, help=R2_HELP),
    reg_every: Optional[int] = typer.Option(None, "--reg-every", min=1, help=REG_EVERY_HELP),
    lambda_l1: Optional[float] = typer.Option(None, "--lambda-l1", help="(default: 100)"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default: 2e-4)."),
    direction: Optional[Direction] = typer.Option(None, "--direction", help="(default: AtoB)"),
    ema: Optional[float] = typer.Option(None, "--ema", help="EMA decay of G's weights, exported instead of G (default: off)."),
    save_every: Optional[int] = typer.Option(None, "--save-every", min=1, help="Checkpoint every N steps (default: 1000)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", min=1, help=LOG_EVERY_HELP),
    val_a: Optional[Path] = typer.Option(None, "--val-a", help="Validation inputs (default: the --data folder's val/ split)."),
    val_b: Optional[Path] = typer.Option(None, "--val-b", help="Validation targets, paired with --val-a by name."),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=1, help="Validate every N steps (default: --save-every)."),
    best_metric: Optional[str] = typer.Option(None, "--best-metric", help="Validation metric that picks checkpoints/best_*.safetensors (default: val_l1)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Data loader processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="(default: 0)"),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", min=1, help=GRAD_ACCUM_HELP),
    amp: Optional[str] = typer.Option(None, "--amp", help=AMP_HELP),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help=COMPILE_HELP),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn", help=SYNC_BN_HELP),
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", min=1, help=NPROC_HELP),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help=NNODES_HELP),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help=NODE_RANK_HELP),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help=RDZV_HELP),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0, help=RESTARTS_HELP),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help=TENSORBOARD_HELP),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help=MAX_PIXELS_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=RECIPE_HELP),
    set_values: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
):
    """Paired translation (pix2pix): U-Net generator, PatchGAN discriminator, L1 + GAN loss."""
    values = {k: v for k, v in locals().items() if k not in ("resume",)}
    values["direction"] = direction.value if direction else None
    _train("pix2pix", values, resume)


@train_app.command("cyclegan")
def train_cyclegan(
    a: Optional[Path] = typer.Option(None, "--a", help="Folder of domain A images (searched recursively)."),
    b: Optional[Path] = typer.Option(None, "--b", help="Folder of domain B images; no pairing with --a."),
    data: Optional[Path] = typer.Option(None, "--data", help="The reference layout instead: trainA/ trainB/ (and testA/ testB/ for sample grids)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/cyclegan)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps (batches)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs over the larger domain (default: 200)."),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="Training crop in pixels (default: 256)."),
    load_size: Optional[int] = typer.Option(None, "--load-size", help="Resize before cropping (default: size*286/256)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="(default: 1)"),
    serial: Optional[bool] = typer.Option(None, "--serial/--no-serial", help="Take B images in order instead of at random (default: random)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default: auto)."),
    netG: Optional[str] = typer.Option(None, "--netG", help="resnet_9blocks, resnet_6blocks (resnet_Nblocks), unet_256, unet_128 (default: resnet_9blocks)."),
    ngf: Optional[int] = typer.Option(None, "--ngf", help="Generator width (default: 64)."),
    ndf: Optional[int] = typer.Option(None, "--ndf", help="Discriminator width (default: 64)."),
    netD: Optional[str] = typer.Option(None, "--netD", help="basic (70x70 PatchGAN), n_layers, pixel (default: basic)."),
    n_layers_d: Optional[int] = typer.Option(None, "--n-layers-d", help="PatchGAN depth with --netD n_layers (default: 3)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="instance, batch or none (default: instance)."),
    dropout: Optional[bool] = typer.Option(None, "--dropout/--no-dropout", help="Dropout in the generators (default: off, as in the reference CycleGAN)."),
    gan_loss: Optional[str] = typer.Option(None, "--gan-loss", help="lsgan, vanilla (non-saturating), minimax, hinge, wgangp, ragan, rpgan (relativistic pairing) (default: lsgan)."),
    r1: Optional[float] = typer.Option(None, "--r1", min=0, help=R1_HELP),
    r2: Optional[float] = typer.Option(None, "--r2", min=0, help=R2_HELP),
    reg_every: Optional[int] = typer.Option(None, "--reg-every", min=1, help=REG_EVERY_HELP),
    lambda_cycle: Optional[float] = typer.Option(None, "--lambda-cycle", help="Cycle loss weight, both directions (default: 10)."),
    lambda_identity: Optional[float] = typer.Option(None, "--lambda-identity", help="Identity loss, as a fraction of --lambda-cycle; 0 disables (default: 0.5)."),
    pool_size: Optional[int] = typer.Option(None, "--pool-size", min=0, help="Past fakes kept per discriminator; 0 disables the pool (default: 50)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default: 2e-4)."),
    ema: Optional[float] = typer.Option(None, "--ema", help="EMA decay of both generators' weights, exported instead (default: off)."),
    save_every: Optional[int] = typer.Option(None, "--save-every", min=1, help="Checkpoint every N steps (default: 1000)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", min=1, help=LOG_EVERY_HELP),
    val_a: Optional[Path] = typer.Option(None, "--val-a", help="Held-out A images for validation (default: --data's testA/)."),
    val_b: Optional[Path] = typer.Option(None, "--val-b", help="Held-out B images for validation (default: --data's testB/)."),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=1, help="Validate every N steps (default: --save-every)."),
    best_metric: Optional[str] = typer.Option(None, "--best-metric", help="Validation metric that picks checkpoints/best_*.safetensors (e.g. val_cycle_A)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Data loader processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="(default: 0)"),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", min=1, help=GRAD_ACCUM_HELP),
    amp: Optional[str] = typer.Option(None, "--amp", help=AMP_HELP),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help=COMPILE_HELP),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn", help=SYNC_BN_HELP),
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", min=1, help=NPROC_HELP),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help=NNODES_HELP),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help=NODE_RANK_HELP),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help=RDZV_HELP),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0, help=RESTARTS_HELP),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help=TENSORBOARD_HELP),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help=MAX_PIXELS_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=RECIPE_HELP + " CycleGAN: horse2zebra, monet2photo, summer2winter_yosemite."),
    set_values: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
):
    """Unpaired translation (CycleGAN): two ResNet generators (A->B, B->A), two PatchGANs, LSGAN + cycle + identity loss."""
    values = {k: v for k, v in locals().items() if k not in ("resume",)}
    _train("cyclegan", values, resume)


@train_app.command("cut")
def train_cut(
    a: Optional[Path] = typer.Option(None, "--a", help="Folder of domain A images (searched recursively)."),
    b: Optional[Path] = typer.Option(None, "--b", help="Folder of domain B images; no pairing with --a."),
    data: Optional[Path] = typer.Option(None, "--data", help="The reference layout instead: trainA/ trainB/ (and testA/ for validation)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="cut (identity PatchNCE on B, lambda_NCE 1) or fastcut (lambda_NCE 10, flip equivariance) (default: cut)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/cut)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps (batches)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs over the larger domain (default: 200)."),
    size: Optional[int] = typer.Option(None, "--size", min=16, help="Training crop in pixels (default: 256)."),
    load_size: Optional[int] = typer.Option(None, "--load-size", help="Resize before cropping (default: size*286/256)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="(default: 1)"),
    serial: Optional[bool] = typer.Option(None, "--serial/--no-serial", help="Take B images in order instead of at random (default: random)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default: auto)."),
    netG: Optional[str] = typer.Option(None, "--netG", help="resnet_9blocks, resnet_6blocks (resnet_Nblocks) (default: resnet_9blocks)."),
    antialias: Optional[bool] = typer.Option(None, "--antialias/--no-antialias", help="Blur-pool down/up-sampling in G, as the reference (default: on)."),
    ngf: Optional[int] = typer.Option(None, "--ngf", help="Generator width (default: 64)."),
    ndf: Optional[int] = typer.Option(None, "--ndf", help="Discriminator width (default: 64)."),
    netD: Optional[str] = typer.Option(None, "--netD", help="basic (70x70 PatchGAN), n_layers, pixel (default: basic)."),
    n_layers_d: Optional[int] = typer.Option(None, "--n-layers-d", help="PatchGAN depth with --netD n_layers (default: 3)."),
    norm: Optional[str] = typer.Option(None, "--norm", help="instance, batch or none (default: instance)."),
    gan_loss: Optional[str] = typer.Option(None, "--gan-loss", help="lsgan, vanilla (non-saturating), minimax, hinge, wgangp, ragan, rpgan (relativistic pairing) (default: lsgan)."),
    r1: Optional[float] = typer.Option(None, "--r1", min=0, help=R1_HELP),
    r2: Optional[float] = typer.Option(None, "--r2", min=0, help=R2_HELP),
    reg_every: Optional[int] = typer.Option(None, "--reg-every", min=1, help=REG_EVERY_HELP),
    lambda_gan: Optional[float] = typer.Option(None, "--lambda-gan", help="GAN loss weight (default: 1)."),
    lambda_nce: Optional[float] = typer.Option(None, "--lambda-nce", help="PatchNCE weight (default: 1 cut, 10 fastcut)."),
    nce_idt: Optional[bool] = typer.Option(None, "--nce-idt/--no-nce-idt", help="Identity PatchNCE on B images (default: on for cut, off for fastcut)."),
    flip_equivariance: Optional[bool] = typer.Option(None, "--flip-equivariance/--no-flip-equivariance", help="Mirror half the batches and ask for mirrored features (default: fastcut only)."),
    nce_layers: Optional[str] = typer.Option(None, "--nce-layers", help="Generator layers PatchNCE compares (default: 0,4,8,12,16)."),
    num_patches: Optional[int] = typer.Option(None, "--num-patches", min=1, help="Patches sampled per layer (default: 256)."),
    nce_t: Optional[float] = typer.Option(None, "--nce-t", help="PatchNCE temperature (default: 0.07)."),
    netf_nc: Optional[int] = typer.Option(None, "--netf-nc", min=1, help="Width of the projection heads (default: 256)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (default: 2e-4)."),
    ema: Optional[float] = typer.Option(None, "--ema", help="EMA decay of G's weights, exported instead of G (default: off)."),
    save_every: Optional[int] = typer.Option(None, "--save-every", min=1, help="Checkpoint every N steps (default: 1000)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", min=1, help=LOG_EVERY_HELP),
    val_a: Optional[Path] = typer.Option(None, "--val-a", help="Held-out A images for validation (default: --data's testA/)."),
    val_b: Optional[Path] = typer.Option(None, "--val-b", help="Their targets, paired with --val-a by name, where the answer is known: adds val_l1."),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=1, help="Validate every N steps (default: --save-every)."),
    best_metric: Optional[str] = typer.Option(None, "--best-metric", help="Validation metric that picks checkpoints/best_generator.safetensors (default: val_l1 with --val-b)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Data loader processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    seed: Optional[int] = typer.Option(None, "--seed", help="(default: 0)"),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", min=1, help=GRAD_ACCUM_HELP),
    amp: Optional[str] = typer.Option(None, "--amp", help=AMP_HELP),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help=COMPILE_HELP),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn", help=SYNC_BN_HELP),
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", min=1, help=NPROC_HELP),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help=NNODES_HELP),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help=NODE_RANK_HELP),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help=RDZV_HELP),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0, help=RESTARTS_HELP),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help=TENSORBOARD_HELP),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help=MAX_PIXELS_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=RECIPE_HELP + " CUT: horse2zebra_cut, horse2zebra_fastcut."),
    set_values: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
):
    """Unpaired translation (CUT / FastCUT): one ResNet generator, a PatchGAN, PatchNCE between input and output patches."""
    values = {k: v for k, v in locals().items() if k not in ("resume",)}
    _train("cut", values, resume)


@train_app.command("srgan")
def train_srgan(
    hr: Optional[Path] = typer.Option(None, "--hr", help="High-resolution images; their LR is made on the fly unless --lr is given."),
    lr_dir: Optional[Path] = typer.Option(None, "--lr", help="LR partners of --hr, paired by relative path and file stem (each HR/scale in size)."),
    scale: Optional[int] = typer.Option(None, "--scale", min=2, max=4, help="2, 3 or 4 (default: 4)."),
    netG: Optional[str] = typer.Option(None, "--netG", help="msrresnet, rrdbnet or srvgg (default: msrresnet)."),
    ngf: Optional[int] = typer.Option(None, "--ngf", min=1, help="Generator width (default: 64)."),
    n_blocks: Optional[int] = typer.Option(None, "--n-blocks", min=1, help="Generator depth (default: 16 msrresnet, 23 rrdbnet, 32 srvgg)."),
    netD: Optional[str] = typer.Option(None, "--netD", help="vgg (ESRGAN; --size 128 or 256) or unet (Real-ESRGAN, spectral norm)."),
    ndf: Optional[int] = typer.Option(None, "--ndf", min=1, help="Discriminator width (default: 64)."),
    pretrain_steps: Optional[int] = typer.Option(None, "--pretrain-steps", min=0, help="Pixel-loss-only steps before the GAN stage (default: 0)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Training steps, pretraining included."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs over the data (instead of --steps)."),
    size: Optional[int] = typer.Option(None, "--size", min=8, help="HR patch in pixels, a multiple of --scale."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
    degradation: Optional[str] = typer.Option(None, "--degradation", help="bicubic or realesrgan (second-order blur, resize, noise, JPEG)."),
    perceptual: Optional[str] = typer.Option(None, "--perceptual", help="vgg19 or none (default: vgg19)."),
    perceptual_weights: Optional[Path] = typer.Option(None, "--perceptual-weights", help="torchvision's vgg19-dcbb9e9d.pth (default: the torch hub cache)."),
    perceptual_layers: Optional[str] = typer.Option(None, "--perceptual-layers", help="VGG19 layers before ReLU and weights, e.g. conv5_4:1."),
    gan_loss: Optional[str] = typer.Option(None, "--gan-loss", help="vanilla, ragan (relativistic average), rpgan (relativistic pairing), lsgan or hinge."),
    r1: Optional[float] = typer.Option(None, "--r1", min=0, help=R1_HELP),
    r2: Optional[float] = typer.Option(None, "--r2", min=0, help=R2_HELP),
    reg_every: Optional[int] = typer.Option(None, "--reg-every", min=1, help=REG_EVERY_HELP),
    lambda_pixel: Optional[float] = typer.Option(None, "--lambda-pixel", help="L1 weight in the GAN stage."),
    lambda_perceptual: Optional[float] = typer.Option(None, "--lambda-perceptual"),
    lambda_gan: Optional[float] = typer.Option(None, "--lambda-gan"),
    ema: Optional[float] = typer.Option(None, "--ema", help="EMA decay of G's weights; the EMA is exported (default: 0.999)."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start G from this generator (ours, a run folder, or BasicSR .pth)."),
    learning_rate: Optional[float] = typer.Option(None, "--learning-rate", help="Adam learning rate (default: 1e-4)."),
    val_hr: Optional[Path] = typer.Option(None, "--val-hr", help="Held-out HR images for PSNR/SSIM (default: the first 4 training images)."),
    val_lr: Optional[Path] = typer.Option(None, "--val-lr", help="Their LR partners (default: made by --degradation)."),
    val_every: Optional[int] = typer.Option(None, "--val-every", min=1, help="Validate every N steps (default: --save-every)."),
    best_metric: Optional[str] = typer.Option(None, "--best-metric", help="Validation metric that picks checkpoints/best_*.safetensors (default: psnr_y)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder (default: runs/srgan)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N (default: auto)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="(default: 0)"),
    save_every: Optional[int] = typer.Option(None, "--save-every", min=1, help="Checkpoint every N steps (default: 1000)."),
    log_every: Optional[int] = typer.Option(None, "--log-every", min=1, help=LOG_EVERY_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Data loader processes."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", min=1, help=GRAD_ACCUM_HELP),
    amp: Optional[str] = typer.Option(None, "--amp", help=AMP_HELP),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help=COMPILE_HELP),
    sync_bn: Optional[bool] = typer.Option(None, "--sync-bn/--no-sync-bn", help=SYNC_BN_HELP),
    nproc_per_node: Optional[int] = typer.Option(None, "--nproc-per-node", min=1, help=NPROC_HELP),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help=NNODES_HELP),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help=NODE_RANK_HELP),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help=RDZV_HELP),
    max_restarts: int = typer.Option(0, "--max-restarts", min=0, help=RESTARTS_HELP),
    tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help=TENSORBOARD_HELP),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help=MAX_PIXELS_HELP),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=RECIPE_HELP + " SR: srresnet_x4, srgan_x4, esrgan_x4, realesrgan_x4."),
    set_values: Optional[list[str]] = typer.Option(None, "--set", help=SET_HELP),
):
    """Super-resolution (SRGAN / ESRGAN / Real-ESRGAN): pixel-loss pretraining, then GAN training."""
    values = {k: v for k, v in locals().items() if k not in ("resume", "learning_rate")}
    values["lr"] = learning_rate  # srgan's --lr is the LR image folder
    _train("srgan", values, resume)


LAUNCH_FLAGS = ("--nproc-per-node", "--nnodes", "--node-rank", "--rdzv-endpoint", "--max-restarts")
tensorboard: Optional[bool] = typer.Option(None, "--tensorboard/--no-tensorboard", help=TENSORBOARD_HELP),


def _launcher_argv(argv: list[str]) -> list[str]:
    """This command's arguments without the launcher's own flags (torchrun gets those)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            kept.append(arg)
    return kept


def _relaunch(launch: dict) -> None:
    from img2img.gan import distributed

    try:
        code = distributed.relaunch(_launcher_argv(sys.argv[1:]), launch["nproc_per_node"], launch["nnodes"],
                                    launch["node_rank"], launch["rdzv_endpoint"], launch["max_restarts"])
    except ValueError as err:
        fail(str(err), 2)
    raise typer.Exit(code)


def _train(task: str, values: dict, resume: bool) -> None:
    from img2img import api
    from img2img.config import make_config

    launch = {k: values.pop(k, None) for k in ("nproc_per_node", "nnodes", "node_rank", "rdzv_endpoint", "max_restarts")}
    recipe, set_values = values.pop("recipe", None), values.pop("set_values", None) or []
    max_pixels = values.pop("max_pixels", None)
    if max_pixels:
        set_max_pixels(max_pixels)
    if launch["nproc_per_node"] and "LOCAL_RANK" not in os.environ:
        _relaunch(launch)
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}
    if values.get("out") is None:
        values["out"] = f"runs/{task}"

    def action():
        from img2img import recipes
        from img2img.config import parse_overrides

        overrides = {**values, **parse_overrides(set_values)}
        if resume:
            cfg = api.resume_config(Path(overrides["out"]), overrides)
        else:
            recipe_task, recipe_values = recipes.load(recipe) if recipe else (task, {})
            if recipe_task != task:
                raise ConfigError(f"--recipe {recipe} is a {recipe_task} recipe: use `img2img train {recipe_task}`")
            cfg = make_config(task, overrides, recipe_values)
        run_dir = api.train(cfg, resume=resume, reporter=RichReporter())
        if os.environ.get("RANK", "0") == "0":
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
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help=MAX_PIXELS_HELP),
    gallery: bool = typer.Option(False, "--gallery", help="Write OUTPUT/gallery.html: input | output (| target) side by side."),
    targets: Optional[Path] = typer.Option(None, "--targets", help="Targets paired by relative path and stem: adds them and PSNR/SSIM to the gallery (implies --gallery)."),
):
    """Translate images with a trained generator (any size; no resizing unless asked)."""
    from img2img import api, infer, sharding

    if max_pixels:
        set_max_pixels(max_pixels)
    if ext is not None and f".{ext.lstrip('.').lower()}" not in IMAGE_EXTENSIONS:
        fail(f"--ext {ext}: choose one of png, jpg, webp, bmp, tif", 2)
    if tile is not None and tile_overlap * 2 >= tile:
        fail(f"--tile-overlap {tile_overlap} must be less than half of --tile {tile}", 2)
    if targets is not None and not targets.is_dir():
        fail(f"--targets {targets}: no such folder", 2)

    def print_json(result) -> None:
        if json_output:
            typer.echo(json.dumps(result.to_json()))

    def action():
        options = infer.Options(
            device=api.resolve_device(device), batch_size=batch_size, direction=direction.value,
            bn_mode=bn_mode.value, overwrite=overwrite, ext=f".{ext.lstrip('.').lower()}" if ext else None,
            tile=tile, tile_overlap=tile_overlap, resize=resize, amp=amp, compile=compile, workers=workers)
        if devices:
            results = sharding.translate_sharded(model, input, output, sharding.parse_devices(devices), options=options,
                                              reporter=RichReporter(), on_result=print_json)
        else:
            results = infer.translate(model, input, output, options=options, reporter=RichReporter(),
                                      on_result=print_json)
        if gallery or targets is not None:
            from img2img.report import translate_gallery

            console.print(f"gallery: [bold]{translate_gallery(results, output, targets)}[/]", highlight=False)
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


# ---- eval and report ------------------------------------------------------------------


@app.command("eval")
def eval_command(
    pred_dir: Path = typer.Argument(..., help="Outputs (searched recursively)."),
    target_dir: Path = typer.Argument(..., help="Targets, paired with outputs by relative path and stem (any extension)."),
    metrics: str = typer.Option("psnr,ssim", "--metrics", help="Comma-separated: psnr, ssim, lpips (paired); fid, kid (the two sets)."),
    crop_border: int = typer.Option(0, "--crop-border", min=0, help="Pixels cropped from each side before PSNR/SSIM (SR: the scale)."),
    y_channel: bool = typer.Option(False, "--y-channel", help="PSNR/SSIM on the BT.601 Y channel (BasicSR's convention) instead of RGB."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Folder holding the LPIPS/Inception weights (else torch's hub cache); nothing is downloaded."),
    lpips_net: str = typer.Option("alex", "--lpips-net", help="LPIPS backbone: alex, vgg or squeeze."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
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
            console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
        if json_output:
            typer.echo(json.dumps(result.to_json()))
        else:
            _print_means(result)
        if result.failures:
            console.print(f"[red]{len(result.failures)} image(s) could not be measured:[/]")
            for failure in result.failures:
                console.print(f"  {failure}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)

    run_guarded(action)


def _print_means(result) -> None:
    units = {"psnr": " dB"}
    counts, settings = result.counts, result.settings
    if "pairs" in counts:
        console.print(f"{counts['pairs']} pair(s); PSNR/SSIM on {settings['channels']}, "
                      f"border crop {settings['crop_border']} px", highlight=False)
    if "pred" in counts:
        console.print(f"FID/KID: {counts['pred']} output(s) against {counts['target']} target(s)", highlight=False)
    for name, value in result.means.items():
        if name == "kid_std":
            continue
        spread = f" ± {result.means['kid_std']:.5f}" if name == "kid" else ""
        console.print(f"[bold]{name:>6}[/] {value:.5g}{units.get(name, '')}{spread}", highlight=False)


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
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        if tensorboard:
            console.print(f"TensorBoard events: {export_tensorboard(run_dir)}", highlight=False)
        typer.echo(str(report.path))

    run_guarded(action)


# ---- recipes --------------------------------------------------------------------------


@app.command("recipes")
def show_recipes(name: Optional[str] = typer.Argument(None, help="A recipe to print in full.")):
    """List the bundled recipes, or print one."""
    from img2img import recipes

    def action():
        if name:
            typer.echo(recipes.text(name), nl=False)
            return
        for recipe in recipes.names():
            typer.echo(f"{recipe:<24} {recipes.summary(recipe)}")

    run_guarded(action)


# ---- data check -----------------------------------------------------------------------


@data_app.command("check")
def data_check(
    folder: Path = typer.Argument(..., help="A folder of images (searched recursively)."),
    b: Optional[Path] = typer.Option(None, "--b", help="A second folder whose files pair with FOLDER's by relative path and stem."),
    aligned: bool = typer.Option(False, "--aligned", help="FOLDER holds A|B side by side (pix2pix --data)."),
    decode: bool = typer.Option(False, "--decode", help="Decode every image fully (slower, catches corrupt pixel data)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", min=1, help=MAX_PIXELS_HELP),
):
    """Check training data the way `train` does before its first step, and summarise it."""
    from img2img.data.check import aligned_problems, pairing_problems, scan_folder

    def action():
        if max_pixels:
            set_max_pixels(max_pixels)
        reports = [scan_folder(folder, decode)] + ([scan_folder(b, decode)] if b else [])
        problems = [p for r in reports for p in r.problems]
        if b is not None:
            problems += pairing_problems(folder, b)
        if aligned:
            problems += aligned_problems(folder)
        for report in reports:
            sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.sizes.most_common(3))
            formats = ", ".join(f"{f} {n}" for f, n in report.formats.most_common())
            console.print(f"[bold]{report.folder}[/]: {report.files} images; {formats or 'none readable'}; "
                          f"most common sizes {sizes or '-'}", highlight=False)
            if report.skipped:
                console.print(f"  {len(report.skipped)} other file(s) ignored, e.g. {report.skipped[0]}", highlight=False)
        if problems:
            console.print(f"[red]{len(problems)} problem(s):[/]")
            for problem in problems:
                console.print(f"  {problem.strip()}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        console.print("no problems found")

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

"""The configuration of a training run: one flat dataclass, per-task defaults, YAML in and out.

Flat on purpose: every field is one CLI flag and one `--set key=value` override, and the
resolved config saved in the run folder reads top to bottom.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(Exception):
    """A setting that cannot work; the message says what to pass instead."""


@dataclass
class TrainConfig:
    task: str = "pix2pix"
    # data
    data: str | None = None  # aligned A|B files (pix2pix)
    a: str | None = None
    b: str | None = None
    direction: str = "AtoB"
    size: int = 256  # training crop
    load_size: int | None = None  # resize before cropping; default size * 286 / 256
    flip: bool = True
    serial: bool = False  # unpaired data: take B in order instead of at random
    workers: int | None = None  # DataLoader workers; None: chosen from the CPU count
    # super-resolution data
    hr: str | None = None  # high-resolution images; LR made on the fly unless lr_dir is given
    lr_dir: str | None = None  # explicit low-resolution partners of hr (CLI: --lr for srgan)
    scale: int = 4
    degradation: str = "bicubic"  # bicubic, realesrgan
    val_a: str | None = None  # paired validation inputs (pix2pix); default: the data's val/ split
    val_b: str | None = None  # their targets
    val_hr: str | None = None  # held-out HR images for PSNR/SSIM; default: the first training images
    val_lr: str | None = None  # their explicit LR partners; default: made by `degradation`, seeded per image
    # length
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 1
    # networks
    netG: str = "unet_256"
    ngf: int = 64
    ndf: int = 64
    netD: str = "basic"  # basic (70x70 PatchGAN), n_layers, pixel
    n_layers_d: int = 3
    n_blocks: int | None = None  # SR generators' depth (blocks, or convs for srvgg); None: the published one
    norm: str = "batch"
    dropout: bool = True
    # losses and optimisation
    gan_loss: str = "vanilla"
    lambda_l1: float = 100.0
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5
    pool_size: int = 50
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    decay_start: float = 0.5  # fraction of the run after which the LR decays linearly to 0
    ema: float = 0.0  # EMA decay of G's weights; 0 disables
    # super-resolution losses and stages
    pretrain_steps: int = 0  # pixel-loss-only steps before the GAN phases start
    init: str | None = None  # start G from this generator checkpoint
    perceptual: str = "vgg19"  # vgg19, none
    perceptual_weights: str | None = None  # local VGG19 weights file
    perceptual_layers: str = "conv5_4:1"  # VGG19 layers (before ReLU) and their weights
    lambda_pixel: float = 1e-2
    lambda_perceptual: float = 1.0
    lambda_gan: float = 5e-3
    # zero-centred gradient penalties on D, for every task (R3GAN: --gan-loss rpgan --r1 0.1 --r2 0.1)
    r1: float = 0.0  # gamma of R1, gamma/2 * E||grad D(real)||^2; 0 disables
    r2: float = 0.0  # gamma of R2, the same on fakes
    reg_every: int = 16  # lazy regularisation: the penalties every N steps, scaled by N
    # CUT / FastCUT (None: from --mode)
    mode: str = "cut"  # cut, fastcut
    lambda_nce: float | None = None  # cut 1, fastcut 10
    nce_idt: bool | None = None  # identity PatchNCE on B: cut yes, fastcut no
    flip_equivariance: bool | None = None  # cut no, fastcut yes
    nce_layers: str = "0,4,8,12,16"  # generator layers whose features PatchNCE compares
    num_patches: int = 256  # patches sampled per layer
    nce_t: float = 0.07  # PatchNCE temperature
    netf_nc: int = 256  # width of the projection heads
    antialias: bool = True  # CUT's blur-pool down/up-sampling (False: strided convs)
    amp: str = "auto"  # auto (bf16/fp16 on CUDA), off
    grad_accum: int = 1  # micro-batches per optimizer step
    compile: bool = False  # torch.compile G and D
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA, BatchNorm networks)
    # recorded by train(): processes and images per optimizer step over all of them
    world_size: int = 1
    effective_batch_size: int = 1
    # bookkeeping
    out: str = "runs/run"
    device: str = "auto"
    seed: int = 0
    save_every: int = 1000
    sample_every: int | None = None  # default: save_every
    log_every: int = 10
    tensorboard: bool = False  # mirror log.jsonl into RUN/tensorboard/ (needs the tensorboard extra)
    val_every: int | None = None  # validation metrics every N steps (and at the end)
    best_metric: str | None = None  # keep checkpoints/best_*.safetensors by this validation metric

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        from img2img.data.images import write_bytes_atomic

        write_bytes_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False).encode())


# Where CycleGAN's reference defaults differ from pix2pix's.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "pix2pix": {},
    "cyclegan": {"netG": "resnet_9blocks", "norm": "instance", "gan_loss": "lsgan", "dropout": False},
    # CUT's reference defaults (contrastive-unpaired-translation): ResNet 9 blocks, instance norm,
    # LSGAN with lambda_GAN 1, no image pool.
    "cut": {"netG": "resnet_9blocks", "norm": "instance", "gan_loss": "lsgan", "dropout": False, "lambda_gan": 1.0,
            "pool_size": 0},
    # BasicSR's train_SRGAN_x4.yml: MSRResNet + VGG-style D, 128 px HR patches, batch 16, Adam 1e-4
    # with betas (0.9, 0.99), L1 1e-2 + perceptual (conv5_4) 1 + vanilla GAN 5e-3, EMA 0.999.
    "srgan": {"netG": "msrresnet", "netD": "vgg", "gan_loss": "vanilla", "ema": 0.999, "lr": 1e-4,
              "beta1": 0.9, "beta2": 0.99, "size": 128, "batch_size": 16, "lambda_pixel": 1e-2,
              "lambda_perceptual": 1.0, "lambda_gan": 5e-3, "perceptual_layers": "conv5_4:1"},
}


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def make_config(task: str, values: dict[str, Any], recipe: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig for `task`: task defaults, then a recipe, then `values` (None: not given)."""
    if task not in TASK_DEFAULTS:
        raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASK_DEFAULTS)}")
    merged = {"task": task, **TASK_DEFAULTS[task]}
    for source in (recipe or {}, values):
        for key, value in source.items():
            if value is not None:
                merged[key] = check_value(key, value)
    return TrainConfig(**merged)


def check_value(key: str, value: Any) -> Any:
    """`value` as the type of setting `key`, or a ConfigError that says what was expected."""
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    if key not in types:
        raise ConfigError(f"unknown setting {key!r}{_did_you_mean(key)}")
    expected, optional = types[key].replace(" | None", ""), "None" in types[key]
    if value is None and optional:
        return None
    if expected == "float" and isinstance(value, str):  # YAML reads 2e-4 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            pass
    if expected == "bool" and isinstance(value, bool):
        return value
    if expected == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if expected == "str" and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"setting {key!r} takes {'an' if expected == 'int' else 'a'} {expected}"
                      f"{' or null' if optional else ''}, not {value!r}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set key=value` items (YAML values: 2e-4, true, null, unet_128) to a dict, checked."""
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: write it as key=value, e.g. --set lambda_l1=50")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        overrides[key.strip()] = check_value(key.strip(), value)
    return overrides


def load_config(path: Path) -> TrainConfig:
    data = yaml.safe_load(Path(path).read_text()) or {}
    return make_config(data.pop("task", "pix2pix"), data)


def _did_you_mean(key: str) -> str:
    close = difflib.get_close_matches(key, field_names(), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""

"""Super-resolution GANs (SRGAN, ESRGAN, Real-ESRGAN) on the generic GAN core.

One run has two stages, as in the papers:
  1. steps [0, pretrain_steps): L1 pixel loss only, the PSNR-oriented generator;
  2. steps [pretrain_steps, steps): a D update on the detached output, then a G update on
     lambda_pixel * L1 + lambda_perceptual * VGG19 features + lambda_gan * GAN loss.
`--init` starts G from an earlier generator instead (e.g. a PSNR-oriented model), and the EMA
of G's weights is what the generator file holds. Images are [0, 1] throughout; validation
reports PSNR/SSIM on Y next to the bicubic upscale of the same LR images.

The task defaults are BasicSR's SRGAN settings; the published setups of SRResNet, SRGAN,
ESRGAN and Real-ESRGAN are the recipes srresnet_x4, srgan_x4, esrgan_x4 and realesrgan_x4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from img2img import metrics
from img2img.config import ConfigError, TrainConfig
from img2img.data import sr_data
from img2img.gan import checkpoint, losses
from img2img.gan.checkpoint import GeneratorSpec
from img2img.gan.loop import Phase, Task
from img2img.gan.perceptual import PerceptualLoss, build_perceptual
from img2img.nets import registry
from img2img.progress import Reporter
from img2img.tasks.common import penalty_phases

DEFAULT_DEPTH = {"msrresnet": 16, "rrdbnet": 23, "srvgg": 32}  # the released models' depths
SR_GAN_LOSSES = ("vanilla", "ragan", "rpgan", "lsgan", "hinge")


# ---- networks ----------------------------------------------------------------------------


def generator_arch(cfg: TrainConfig) -> tuple[str, dict]:
    if cfg.netG not in DEFAULT_DEPTH:
        raise ConfigError(f"unknown --netG {cfg.netG!r} for srgan; choose {', '.join(DEFAULT_DEPTH)}")
    depth = cfg.n_blocks or DEFAULT_DEPTH[cfg.netG]
    io = {"num_in_ch": 3, "num_out_ch": 3}
    if cfg.netG == "msrresnet":
        return "msrresnet", {**io, "num_feat": cfg.ngf, "num_block": depth, "upscale": cfg.scale}
    if cfg.netG == "srvgg":
        return "srvgg", {**io, "num_feat": cfg.ngf, "num_conv": depth, "upscale": cfg.scale, "act_type": "prelu"}
    if cfg.scale not in (2, 4):
        raise ConfigError(f"--netG rrdbnet upscales x2 or x4, not x{cfg.scale}; use --netG msrresnet or srvgg for x3")
    # Growth channels are half the width, as in every released RRDBNet (64 / 32).
    return "rrdbnet", {**io, "scale": cfg.scale, "num_feat": cfg.ngf, "num_block": depth,
                       "num_grow_ch": max(1, cfg.ngf // 2)}


def build_discriminator(cfg: TrainConfig) -> nn.Module:
    if cfg.netD == "vgg":
        if cfg.size not in (128, 256):
            raise ConfigError(f"--netD vgg judges whole 128 or 256 px patches (its linear layer has a fixed "
                              f"size), so it needs --size 128 or 256, not {cfg.size}; or use --netD unet")
        return registry.build("vgg", num_in_ch=3, num_feat=cfg.ndf, input_size=cfg.size)
    if cfg.netD in ("unet", "unet_sn"):
        if cfg.size % 8:
            raise ConfigError(f"--netD unet needs --size to be a multiple of 8, got {cfg.size}")
        return registry.build("unet_sn", num_in_ch=3, num_feat=cfg.ndf, skip_connection=True)
    raise ConfigError(f"unknown --netD {cfg.netD!r} for srgan; choose vgg (ESRGAN) or unet (Real-ESRGAN)")


def init_flags(arch: str, hparams: dict) -> str:
    """The srgan flags that build this generator, for error messages."""
    depth = hparams.get("num_block", hparams.get("num_conv"))
    scale = hparams.get("upscale", hparams.get("scale"))
    return f"--netG {arch} --ngf {hparams['num_feat']} --n-blocks {depth} --scale {scale}"


def load_init(G: nn.Module, arch: str, hparams: dict, path: str) -> None:
    """Copy the weights of the generator in `path` (ours, a run folder, or BasicSR .pth) into G."""
    module, spec = checkpoint.load_generator(Path(path))
    if spec.arch != arch or spec.hparams != hparams:
        raise ConfigError(f"--init {path} holds a {spec.arch} with {spec.hparams}, but this run builds a {arch} "
                          f"with {hparams}; pass {init_flags(spec.arch, spec.hparams)} to train it")
    G.load_state_dict(module.state_dict())


def gan_stage_runs(cfg: TrainConfig) -> bool:
    return cfg.steps is None or cfg.steps > cfg.pretrain_steps


def build_perceptual_loss(cfg: TrainConfig) -> PerceptualLoss | None:
    if cfg.perceptual not in ("vgg19", "none"):
        raise ConfigError(f"unknown --perceptual {cfg.perceptual!r}; choose vgg19 or none")
    # A pixel-loss-only run needs no VGG19 weights.
    if cfg.perceptual == "none" or cfg.lambda_perceptual == 0 or not gan_stage_runs(cfg):
        return None
    return build_perceptual(cfg.perceptual_weights, cfg.perceptual_layers)


def check_settings(cfg: TrainConfig, G: nn.Module, reporter: Reporter) -> None:
    sr_data.check_sizes(cfg)
    if cfg.gan_loss not in SR_GAN_LOSSES:
        raise ConfigError(f"--gan-loss {cfg.gan_loss!r} is not offered for srgan; choose {', '.join(SR_GAN_LOSSES)}")
    lr_patch = cfg.size // cfg.scale
    if lr_patch % G.multiple:
        raise ConfigError(f"--netG {cfg.netG} at x{cfg.scale} needs LR patches that are a multiple of {G.multiple} "
                          f"px; --size {cfg.size} gives {lr_patch}")
    if cfg.lr_dir is not None and cfg.degradation != "bicubic":
        reporter.message(f"--degradation {cfg.degradation} is unused: the LR images come from --lr {cfg.lr_dir}")
    if gan_stage_runs(cfg) and cfg.pretrain_steps == 0 and not cfg.init:
        reporter.message("note: the GAN stage starts from an untrained generator; the published setups start "
                         "from a PSNR-oriented one (--init RUN_OR_PTH, or --pretrain-steps N first)")
    horizon = 1 / (1 - cfg.ema) if 0 < cfg.ema < 1 else 0
    if cfg.steps is not None and cfg.steps < 10 * horizon:
        reporter.message(f"note: --ema {cfg.ema} averages over about {horizon:.0f} steps, a large part of this "
                         f"{cfg.steps}-step run, so the exported generator lags the trained one; "
                         "a shorter run wants a smaller --ema (or --ema 0)")


# ---- the task ----------------------------------------------------------------------------


def validation_source(cfg: TrainConfig, reporter: Reporter) -> Callable[[], list[sr_data.SRItem]]:
    """The validation images, scanned now when --val-hr names them (so a bad folder fails before
    training), else the first training images, found when first needed."""
    if cfg.val_hr is not None:
        items = sr_data.scan_validation(cfg, [])
        reporter.message(f"validation: PSNR/SSIM on Y of {len(items)} image(s) from {cfg.val_hr}")
        return lambda: items
    reporter.message(f"validation: PSNR/SSIM on Y of the first {sr_data.VAL_COUNT} training images "
                     "(give --val-hr DIR for held-out ones)")
    return lambda: sr_data.scan_validation(cfg, sr_data.scan_training(cfg))


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    # antialias=True selects PyTorch's PIL-style kernel (a = -0.5, MATLAB's), the usual baseline.
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def make_validate(items: Callable[[], list[sr_data.SRItem]], cfg: TrainConfig, multiple: int,
                  device: torch.device):
    loaded: list[tuple[torch.Tensor, torch.Tensor]] = []

    def validate(export_module) -> dict[str, float]:
        if not loaded:  # decoded on first use: only the process that validates holds them
            loaded.extend(sr_data.validation_images(items(), cfg.scale, cfg.degradation, multiple))
        G = export_module("G")
        totals = dict.fromkeys(("psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic"), 0.0)
        for lr, hr in loaded:
            lr, hr = lr.to(device), hr.to(device)
            sr, bicubic = G(lr).float().clamp(0, 1), bicubic_upscale(lr, cfg.scale)
            totals["psnr_y"] += metrics.psnr_y(sr, hr, cfg.scale)
            totals["ssim_y"] += metrics.ssim_y(sr, hr, cfg.scale)
            totals["psnr_y_bicubic"] += metrics.psnr_y(bicubic, hr, cfg.scale)
            totals["ssim_y_bicubic"] += metrics.ssim_y(bicubic, hr, cfg.scale)
        return {key: value / len(loaded) for key, value in totals.items()}

    return validate


def prepare_data(cfg: TrainConfig) -> tuple[sr_data.SRDataset, dict]:
    """(training set, a fixed batch for sample grids, from the validation images where they fit)."""
    items = sr_data.scan_training(cfg)
    dataset = sr_data.SRDataset(items, cfg.size, cfg.scale, cfg.degradation, symmetry=cfg.flip)
    val_items = sr_data.scan_validation(cfg, items)
    return dataset, sr_data.sample_batch(val_items, items, cfg.size, cfg.scale, cfg.degradation)


def build(cfg: TrainConfig, device: torch.device, reporter: Reporter) -> Task:
    arch, hparams = generator_arch(cfg)
    G = registry.build(arch, **hparams)
    check_settings(cfg, G, reporter)
    if cfg.init:
        load_init(G, arch, hparams, cfg.init)
    # The loop swaps DDP wrappers in and out of `nets`: always call networks through it.
    nets = {"G": G.to(device), "D": build_discriminator(cfg).to(device)}
    perceptual = build_perceptual_loss(cfg)
    perceptual = perceptual.to(device) if perceptual is not None else None
    val_items = validation_source(cfg, reporter)
    kind, start = cfg.gan_loss, cfg.pretrain_steps

    def forward(batch: dict) -> dict:
        return {"lr": batch["lr"], "hr": batch["hr"], "sr": nets["G"](batch["lr"])}

    def pixel_step(s: dict) -> tuple[torch.Tensor, dict]:
        loss = F.l1_loss(s["sr"], s["hr"])
        return loss, {"loss_G_pixel": loss.item()}

    def d_step(s: dict) -> tuple[torch.Tensor, dict]:
        return losses.discriminator_step(kind, nets["D"], s["hr"], s["sr"])

    def g_step(s: dict) -> tuple[torch.Tensor, dict]:
        gan = losses.generator_adversarial(kind, nets["D"], s["sr"], s["hr"])
        pixel = F.l1_loss(s["sr"], s["hr"])
        total = cfg.lambda_gan * gan + cfg.lambda_pixel * pixel
        logged = {"loss_G_GAN": gan.item(), "loss_G_pixel": pixel.item()}
        if perceptual is not None:
            feature = perceptual(s["sr"], s["hr"])
            total = total + cfg.lambda_perceptual * feature
            logged["loss_G_perceptual"] = feature.item()
        return total, logged

    def sample_columns(batch: dict) -> list[torch.Tensor]:
        lr_big = F.interpolate(batch["lr"], scale_factor=cfg.scale, mode="nearest")
        return [lr_big, nets["G"](batch["lr"]), batch["hr"]]

    phases = [Phase("D", ("D",), d_step, first_step=start),
              *penalty_phases(cfg, nets, lambda s: {"D": (s["hr"], s["sr"].detach())}, first_step=start),
              Phase("G", ("G",), g_step, first_step=start)]
    if start > 0:
        phases.insert(0, Phase("G_pixel", ("G",), pixel_step, last_step=start))
    return Task(
        name="srgan",
        nets=nets,
        phases=phases,
        forward=forward,
        sample_columns=sample_columns,
        exports={"generator": ("G", lambda: GeneratorSpec(arch=arch, hparams=hparams, pixel_range="0,1",
                                                          scale=cfg.scale, task="srgan", config=cfg.to_dict()))},
        ema_nets=("G",),
        forward_nets=("G",),
        validate=make_validate(val_items, cfg, G.multiple, device),
        default_best_metric="psnr_y",
    )

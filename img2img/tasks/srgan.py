"""Super-resolution GANs (SRGAN, ESRGAN, Real-ESRGAN) on the generic GAN core.

One run has two stages, as in the papers:
  1. steps [0, pretrain_steps): L1 pixel loss only, the PSNR-oriented generator;
  2. steps [pretrain_steps, steps): a G update on lambda_pixel * L1 + lambda_perceptual *
     VGG19 features + lambda_gan * GAN loss, then a D update on the detached output (BasicSR's order).
`--init` starts G from an earlier generator instead (e.g. a PSNR-oriented model), and the EMA
of G's weights is what the generator file holds. Images are [0, 1] throughout; validation
reports PSNR/SSIM on Y next to the bicubic upscale of the same LR images.

The task defaults are BasicSR's SRGAN settings; the published setups of SRResNet, SRGAN,
ESRGAN and Real-ESRGAN are the recipes srresnet_x4, srgan_x4, esrgan_x4 and realesrgan_x4.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from img2img import metrics
from img2img.config import BaseConfig, ConfigError, opt, with_absolute_paths
from img2img.data import sr_data
from img2img.data.datasets import nothing_readable
from img2img.data.degrade import DEGRADATIONS, matlab_bicubic
from img2img.gan import checkpoint, losses
from img2img.gan.checkpoint import GeneratorSpec
from img2img.gan.loop import Nets, Phase, Task
from img2img.gan.perceptual import PerceptualLoss, build_perceptual
from img2img.nets import registry
from img2img.progress import Reporter
from img2img.tasks import register
from img2img.tasks.common import penalty_phases

DEFAULT_DEPTH = {"msrresnet": 16, "rrdbnet": 23, "srvgg": 32}  # the released models' depths


@dataclass
class SRGANConfig(BaseConfig):
    # BasicSR's train_SRGAN_x4.yml: MSRResNet + VGG-style D, 128 px HR patches, batch 16, Adam
    # 1e-4 with betas (0.9, 0.99), L1 1e-2 + perceptual (conv5_4) 1 + vanilla GAN 5e-3, EMA 0.999.
    hr: str | None = opt(None, "High-resolution images; their LR is made on the fly unless --lr-dir is given.",
                         panel="Data", path=True)
    lr_dir: str | None = opt(None, "LR partners of --hr, paired by relative path and file stem (each HR/scale "
                             "in size); --lr DIR is accepted too.", panel="Data", path=True, flag_alias="--lr")
    scale: int = opt(4, "Upscaling factor: 2, 3 or 4.", panel="Data", min=2, max=4, kept=True)
    size: int = opt(128, "HR patch in pixels, a multiple of --scale.", panel="Data", min=8)
    degradation: str = opt("bicubic", "bicubic or realesrgan (second-order blur, resize, noise, JPEG).",
                           panel="Data", choices=DEGRADATIONS)
    batch_size: int = 16
    netG: str = opt("msrresnet", "msrresnet, rrdbnet or srvgg.", panel="Networks", choices=tuple(DEFAULT_DEPTH))
    n_blocks: int | None = opt(None, "Generator depth.", panel="Networks", min=1,
                               default_text="16 msrresnet, 23 rrdbnet, 32 srvgg")
    grow_ch: int = opt(32, "RRDBNet growth channels (BasicSR's num_grow_ch; spandrel loads 32 alone).",
                       panel="Networks", min=1)
    netD: str = opt("vgg", "vgg (ESRGAN; any --size) or unet (Real-ESRGAN, spectral norm).",
                    panel="Networks", choices=("vgg", "unet"))
    init: str | None = opt(None, "Start G from this generator (ours, a run folder, or BasicSR .pth).",
                           panel="Networks", path=True)
    pretrain_steps: int = opt(0, "Pixel-loss-only steps before the GAN stage.", min=0)
    # BasicSR's PSNR-oriented recipes (MSRResNet, RRDBNet_PSNR, Real-ESRNet) train at 2e-4,
    # their GAN stages at 1e-4.
    pretrain_lr: float = opt(2e-4, "Learning rate of the pixel-loss stage (--learning-rate is the GAN stage's).",
                             min=0)
    gan_loss: str = opt("vanilla", "vanilla, ragan (relativistic average), rpgan (relativistic pairing), lsgan or "
                        "hinge.", panel="Losses", choices=("vanilla", "ragan", "rpgan", "lsgan", "hinge"), kept=True)
    perceptual: str = opt("vgg19", "vgg19 or none.", panel="Losses", choices=("vgg19", "none"))
    perceptual_weights: str | None = opt(None, "torchvision's vgg19-dcbb9e9d.pth.", panel="Losses", path=True,
                                         default_text="the torch hub cache")
    perceptual_layers: str = opt("conv5_4:1", "VGG19 layers before ReLU and their weights.", panel="Losses")
    lambda_pixel: float = opt(1e-2, "L1 weight in the GAN stage.", panel="Losses", min=0)
    lambda_perceptual: float = opt(1.0, "Perceptual loss weight.", panel="Losses", min=0)
    lambda_gan: float = opt(5e-3, "GAN loss weight.", panel="Losses", min=0)
    lr: float = 1e-4
    beta1: float = 0.9
    beta2: float = 0.99
    ema: float = 0.999
    val_hr: str | None = opt(None, "Held-out HR images for PSNR/SSIM.", panel="Validation", path=True,
                             default_text="the first 4 training images")
    val_lr: str | None = opt(None, "Their LR partners.", panel="Validation", path=True,
                             default_text="made by --degradation")

    def check(self) -> None:
        if self.size % self.scale:
            raise ConfigError(f"--size {self.size} (the HR patch) must be a multiple of --scale {self.scale} "
                              f"(try --size {max(self.scale, self.size // self.scale * self.scale)})")
        if self.val_lr is not None and self.val_hr is None:
            raise ConfigError("--val-lr needs --val-hr (the HR partners of the LR images)")

    def gan_stage_runs(self, total_steps: int | None = None) -> bool:
        """Whether steps follow the pixel stage; with --epochs, known once the data is scanned
        (`total_steps`), and taken to be so before."""
        steps = self.steps or total_steps
        return steps is None or steps > self.pretrain_steps


# ---- networks ----------------------------------------------------------------------------


def generator_arch(cfg: SRGANConfig) -> tuple[str, dict]:
    depth = cfg.n_blocks or DEFAULT_DEPTH[cfg.netG]
    io = {"num_in_ch": 3, "num_out_ch": 3}
    if cfg.netG == "msrresnet":
        return "msrresnet", {**io, "num_feat": cfg.ngf, "num_block": depth, "upscale": cfg.scale}
    if cfg.netG == "srvgg":
        return "srvgg", {**io, "num_feat": cfg.ngf, "num_conv": depth, "upscale": cfg.scale, "act_type": "prelu"}
    if cfg.scale not in (2, 4):
        raise ConfigError(f"--netG rrdbnet upscales x2 or x4, not x{cfg.scale}; use --netG msrresnet or srvgg for x3")
    return "rrdbnet", {**io, "scale": cfg.scale, "num_feat": cfg.ngf, "num_block": depth, "num_grow_ch": cfg.grow_ch}


def build_discriminator(cfg: SRGANConfig) -> nn.Module:
    if cfg.netD == "vgg":  # its depth follows --size (see VGGStyleDiscriminator)
        return registry.build("vgg", num_in_ch=3, num_feat=cfg.ndf, input_size=cfg.size)
    if cfg.size % 8:
        raise ConfigError(f"--netD unet needs --size to be a multiple of 8, got {cfg.size}")
    return registry.build("unet_sn", num_in_ch=3, num_feat=cfg.ndf, skip_connection=True)


def init_flags(cfg: SRGANConfig, arch: str, hparams: dict) -> str | None:
    """The srgan flags that build this generator (None: no flags do, e.g. another family, x8,
    or a layout option no flag sets), for error messages."""
    depth = hparams.get("num_block", hparams.get("num_conv"))
    scale = hparams.get("upscale", hparams.get("scale"))
    if arch not in DEFAULT_DEPTH or not isinstance(scale, int) or not 2 <= scale <= 4:
        return None
    candidate = dataclasses.replace(cfg, netG=arch, ngf=hparams.get("num_feat"), n_blocks=depth, scale=scale,
                                    grow_ch=hparams.get("num_grow_ch", cfg.grow_ch))
    try:
        if generator_arch(candidate) != (arch, hparams):
            return None
    except ConfigError:
        return None
    growth = f" --grow-ch {hparams['num_grow_ch']}" if "num_grow_ch" in hparams else ""
    return f"--netG {arch} --ngf {hparams['num_feat']} --n-blocks {depth}{growth} --scale {scale}"


def load_init(G: nn.Module, cfg: SRGANConfig, arch: str, hparams: dict) -> None:
    """Copy the weights of the generator in --init (ours, a run folder, or BasicSR .pth) into G."""
    module, spec = checkpoint.load_generator(Path(cfg.init))
    if spec.arch == arch and spec.hparams == hparams:
        G.load_state_dict(module.state_dict())
        return
    held = f"--init {cfg.init} holds a {spec.arch} with {spec.hparams}, and this run builds a {arch} with {hparams}"
    if flags := init_flags(cfg, spec.arch, spec.hparams):
        raise ConfigError(f"{held}; pass {flags} to train it")
    raise ConfigError(f"{held}; no flags of train srgan build that generator (it builds --netG msrresnet, srvgg and "
                      "rrdbnet at x2 to x4 in BasicSR's layouts): start without --init, or from a generator it builds")


def build_perceptual_loss(cfg: SRGANConfig) -> PerceptualLoss | None:
    if cfg.perceptual == "none" or cfg.lambda_perceptual == 0:
        return None
    return build_perceptual(cfg.perceptual_weights, cfg.perceptual_layers)


def notes(cfg: SRGANConfig, reporter: Reporter) -> None:
    if cfg.lr_dir is not None and cfg.degradation != "bicubic":
        reporter.message(f"--degradation {cfg.degradation} is unused: the LR images come from --lr-dir {cfg.lr_dir}")
    if cfg.gan_stage_runs() and cfg.pretrain_steps == 0 and not cfg.init:
        reporter.message("note: the GAN stage starts from an untrained generator; the published setups start "
                         "from a PSNR-oriented one (--init RUN_OR_PTH, or --pretrain-steps N first)")


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline SR papers and BasicSR measure against: MATLAB's bicubic upscale."""
    return matlab_bicubic(lr, scale, shrink=False).clamp(0, 1)


# ---- the task ----------------------------------------------------------------------------


@register
class SRGAN(Task):
    """Super-resolution (SRGAN / ESRGAN / Real-ESRGAN): pixel-loss pretraining, then GAN training."""

    name = "srgan"
    sample_caption = "each row: LR (enlarged, nearest) | output | HR"
    Config = SRGANConfig
    example = "img2img train srgan --recipe srgan_x4 --hr photos/ --init runs/srresnet_x4"
    ema_nets = forward_nets = ("G",)
    default_best_metric = "psnr_y"
    metrics = ("psnr_y", "ssim_y", "psnr_y_bicubic", "ssim_y_bicubic")

    def __init__(self, cfg: SRGANConfig, device: torch.device, reporter: Reporter, data: bool = True):
        self.cfg, self.device, self.reporter = cfg, device, reporter
        self.arch, self.hparams = generator_arch(cfg)
        G = registry.build(self.arch, **self.hparams)
        lr_patch = cfg.size // cfg.scale
        if lr_patch % G.multiple:
            raise ConfigError(f"--netG {cfg.netG} at x{cfg.scale} needs LR patches that are a multiple of "
                              f"{G.multiple} px; --size {cfg.size} gives {lr_patch}")
        notes(cfg, reporter)
        if cfg.init:
            load_init(G, cfg, self.arch, self.hparams)
        self.nets = {"G": G.to(device)}
        self.perceptual = None
        start = cfg.pretrain_steps
        self.phases = [Phase("G_pixel", ("G",), self.pixel_loss, last_step=start, lr=cfg.pretrain_lr)] if start else []
        # With --epochs and a pixel stage, whether a GAN stage follows is known once the data is
        # scanned (plan_length); otherwise now, so that bad D flags fail before the scan.
        if cfg.steps is not None or start == 0:
            self.plan_length(cfg.steps or 1)
        self.validates = True
        if data:
            self.load_data()

    def plan_length(self, total_steps: int) -> None:
        """The GAN stage's networks and phases where steps follow the pixel stage: a pixel-loss-only
        run neither builds nor checks a D, nor needs VGG19 weights."""
        cfg, start = self.cfg, self.cfg.pretrain_steps
        if "D" in self.nets or not cfg.gan_stage_runs(total_steps):
            return
        perceptual = build_perceptual_loss(cfg)
        self.perceptual = perceptual.to(self.device) if perceptual is not None else None
        self.nets["D"] = build_discriminator(cfg).to(self.device)
        # BasicSR's order: G against the D of the last step, then D on this step's output.
        self.phases += [Phase("G", ("G",), self.g_loss, first_step=start),
                        Phase("D", ("D",), self.d_loss, first_step=start),
                        *penalty_phases(cfg, ("D",), lambda s: {"D": (s["hr"], s["sr"].detach())}, first_step=start)]

    def load_data(self) -> None:
        cfg = self.cfg
        folder = lambda value: None if value is None else Path(value)  # noqa: E731
        left_out: list[str] = []
        items = sr_data.scan_training(folder(cfg.hr), folder(cfg.lr_dir), cfg.scale, cfg.size, left_out)
        if left_out:
            more = f" (and {len(left_out) - 3} more)" if len(left_out) > 3 else ""
            self.reporter.message(f"left out {len(left_out)} image(s) smaller than the HR patch: "
                                  f"{'; '.join(left_out[:3])}{more}")
        self.dataset = sr_data.SRDataset(items, cfg.size, cfg.scale, cfg.degradation, symmetry=cfg.flip)
        self.val_items = sr_data.scan_validation(folder(cfg.val_hr), folder(cfg.val_lr), cfg.scale, items)
        if cfg.val_hr:
            self.reporter.message(f"validation: PSNR/SSIM on Y of {len(self.val_items)} image(s) from {cfg.val_hr}")
        else:
            self.reporter.message(f"validation: PSNR/SSIM on Y of the first {len(self.val_items)} training images "
                                  "(give --val-hr DIR for held-out ones)")
        self.sample_batch = sr_data.sample_batch(self.val_items, items, cfg.size, cfg.scale, cfg.degradation,
                                                 self.unreadable)
        self.val_images: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # decoded on first use

    # ---- the step ----------------------------------------------------------------------------

    def forward(self, nets: Nets, batch: dict) -> dict:
        return {"lr": batch["lr"], "hr": batch["hr"], "sr": nets["G"](batch["lr"])}

    def pixel_loss(self, nets: Nets, s: dict) -> tuple[torch.Tensor, dict]:
        loss = F.l1_loss(s["sr"], s["hr"])
        return loss, {"loss_G_pixel": loss.item()}

    def d_loss(self, nets: Nets, s: dict) -> tuple[torch.Tensor, dict]:
        return losses.discriminator_step(self.cfg.gan_loss, nets["D"], s["hr"], s["sr"])

    def g_loss(self, nets: Nets, s: dict) -> tuple[torch.Tensor, dict]:
        cfg, kind = self.cfg, self.cfg.gan_loss
        gan = losses.generator_adversarial(kind, nets["D"], s["sr"], s["hr"])
        pixel = F.l1_loss(s["sr"], s["hr"])
        total = cfg.lambda_gan * gan + cfg.lambda_pixel * pixel
        logged = {"loss_G_GAN": gan.item(), "loss_G_pixel": pixel.item()}
        if self.perceptual is not None:
            feature = self.perceptual(s["sr"], s["hr"])
            total = total + cfg.lambda_perceptual * feature
            logged["loss_G_perceptual"] = feature.item()
        return total, logged

    # ---- what the recorder shows and keeps ------------------------------------------------------

    def sample_columns(self, nets: Nets, batch: dict) -> list[torch.Tensor]:
        lr_big = F.interpolate(batch["lr"], scale_factor=self.cfg.scale, mode="nearest")
        return [lr_big, nets["G"](batch["lr"]), batch["hr"]]

    def exports(self) -> dict:
        spec = GeneratorSpec(arch=self.arch, hparams=self.hparams, pixel_range="0,1", scale=self.cfg.scale,
                             task="srgan", config=with_absolute_paths(self.cfg))
        return {"generator": ("G", spec)}

    def validate(self, nets: Nets) -> dict[str, float]:
        """PSNR/SSIM on Y of the generator and of the bicubic upscale, BasicSR's convention."""
        scale = self.cfg.scale
        if self.val_images is None:  # decoded on first use: only the process that validates holds them
            self.val_images, unreadable = sr_data.validation_images(self.val_items, scale, self.cfg.degradation,
                                                                    self.nets["G"].multiple)
            for message in unreadable:
                self.reporter.message(f"validation goes on without {message}" if self.val_images else
                                      f"skipped {message} (left out of validation)")
            if unreadable and not self.val_images:
                self.reporter.message(nothing_readable("validation", len(unreadable)))
        if not self.val_images:
            return {}
        totals = dict.fromkeys(self.metrics, 0.0)
        for lr, hr in self.val_images:
            lr, hr = lr.to(self.device), hr.to(self.device)
            sr, bicubic = nets["G"](lr).float().clamp(0, 1), bicubic_upscale(lr, scale)
            totals["psnr_y"] += metrics.psnr_y(sr, hr, scale)
            totals["ssim_y"] += metrics.ssim_y(sr, hr, scale)
            totals["psnr_y_bicubic"] += metrics.psnr_y(bicubic, hr, scale)
            totals["ssim_y_bicubic"] += metrics.ssim_y(bicubic, hr, scale)
        return {key: value / len(self.val_images) for key, value in totals.items()}

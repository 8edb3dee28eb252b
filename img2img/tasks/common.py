"""What the pix2pix and CycleGAN families share: their network options (--netG / --netD names
-> modules) and the [-1, 1] image convention. Not a task: it registers nothing."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from img2img.config import BaseConfig, ConfigError, opt, with_absolute_paths
from img2img.gan import losses
from img2img.gan.checkpoint import GeneratorSpec
from img2img.gan.loop import Phase
from img2img.nets import registry

MIN_UNET_LEVELS = 5


@dataclass
class TranslationConfig(BaseConfig):
    """The reference pytorch-CycleGAN-and-pix2pix options both families take."""

    load_size: int | None = opt(None, "Resize before cropping.", panel="Data", min=16, default_text="size*286/256")
    netD: str = opt("basic", "basic (70x70 PatchGAN), n_layers, pixel.", panel="Networks",
                    choices=("basic", "n_layers", "pixel"))
    n_layers_d: int = opt(3, "PatchGAN depth with --netD n_layers.", panel="Networks", min=1)
    norm: str = opt("batch", "batch, instance or none.", panel="Networks", choices=("batch", "instance", "none"))
    dropout: bool = opt(True, "Dropout in the generators.", panel="Networks", kept=True)

    def check(self) -> None:
        data, a, b = (getattr(self, name, None) for name in ("data", "a", "b"))  # every family's data flags
        if data and (a or b):  # one would be left unused in silence
            raise ConfigError(f"--data {data} and --a/--b both name the training images: give one of them")
        if self.load_size is not None and self.load_size < self.size:
            raise ConfigError(f"--load-size {self.load_size} is smaller than --size {self.size}: images are resized "
                              f"to --load-size, then cropped to --size; give --load-size {self.size} or more")


def generator_arch(cfg, in_ch: int = 3, out_ch: int = 3) -> tuple[str, dict, str | None]:
    """(arch, hparams, note) for --netG; note says how a U-Net was adapted to --size."""
    if m := re.fullmatch(r"resnet_(\d+)blocks", cfg.netG):
        if cfg.size % 4:
            raise ConfigError(f"--netG {cfg.netG} needs --size to be a multiple of 4, got {cfg.size}")
        hparams = {"in_ch": in_ch, "out_ch": out_ch, "ngf": cfg.ngf, "n_blocks": int(m.group(1)),
                   "norm": cfg.norm, "use_dropout": cfg.dropout}
        return "resnet", hparams, None
    if m := re.fullmatch(r"unet_(\d+)", cfg.netG):
        levels, note = unet_levels(int(m.group(1)), cfg.size, cfg.netG)
        hparams = {"in_ch": in_ch, "out_ch": out_ch, "num_downs": levels, "ngf": cfg.ngf,
                   "norm": cfg.norm, "use_dropout": cfg.dropout}
        return "unet", hparams, note
    raise ConfigError(f"unknown --netG {cfg.netG!r}; choose unet_256, unet_128 (or unet_N for N a power of 2), "
                      "resnet_9blocks or resnet_6blocks")


def unet_levels(input_px: int, size: int, name: str) -> tuple[int, str | None]:
    """U-Net depth for crops of `size`: each level halves the image, so 2**levels must divide it."""
    requested = input_px.bit_length() - 1
    if 2**requested != input_px or requested < MIN_UNET_LEVELS:
        raise ConfigError(f"--netG {name}: the number after unet_ must be a power of 2 of at least 32 (e.g. unet_256)")
    levels = requested
    while levels >= MIN_UNET_LEVELS and size % 2**levels:
        levels -= 1
    if levels < MIN_UNET_LEVELS:
        raise ConfigError(f"--size {size} does not suit a U-Net: it must be a multiple of 32 "
                          f"(try --size {max(32, round(size / 32) * 32)})")
    if levels == requested:
        return levels, None
    return levels, (f"{name} has {requested} levels, which need crops of a multiple of {input_px} px; "
                    f"with --size {size} it is built with {levels} levels (unet_{2**levels})")


def build_discriminator(cfg: TranslationConfig, in_ch: int) -> nn.Module:
    if cfg.netD == "pixel":
        return registry.build("pixel", in_ch=in_ch, ndf=cfg.ndf, norm=cfg.norm)
    n_layers = cfg.n_layers_d if cfg.netD == "n_layers" else 3
    if cfg.size < patchgan_min_size(n_layers):
        raise ConfigError(_patchgan_too_deep(cfg.size, n_layers))
    return registry.build("patchgan", in_ch=in_ch, ndf=cfg.ndf, n_layers=n_layers, norm=cfg.norm)


def patchgan_min_size(n_layers: int) -> int:
    """The smallest crop a PatchGAN of `n_layers` judges: its n strides halve the image, then
    two 4x4 convolutions take a pixel each; one output pixel must be left (and its last
    normalisation must see more than one value)."""
    return 3 * 2**n_layers


def _patchgan_too_deep(size: int, n_layers: int) -> str:
    fitting = max((n for n in range(1, n_layers) if patchgan_min_size(n) <= size), default=None)
    other = f" or --netD n_layers --n-layers-d {fitting}" if fitting else " or --netD pixel"
    return (f"--size {size} is too small for a PatchGAN of {n_layers} layers, which judges crops of "
            f"{patchgan_min_size(n_layers)} px or more: give a larger --size{other}")


def generator_spec(arch: str, hparams: dict, cfg: BaseConfig, direction: str) -> GeneratorSpec:
    return GeneratorSpec(arch=arch, hparams=hparams, pixel_range="-1,1", scale=1, task=cfg.task,
                         direction=direction, config=with_absolute_paths(cfg))


def load_size(cfg: TranslationConfig) -> int:
    return cfg.load_size or round(cfg.size * 286 / 256)


def penalty_phases(cfg: BaseConfig, d_names: tuple[str, ...], inputs, first_step: int = 0) -> list[Phase]:
    """R1/R2 as their own lazy phase every `reg_every` steps, stepping the D phase's optimizer
    (StyleGAN2's "Dreg"). `inputs(batch)` gives {D name: (real input, fake input)}."""
    if cfg.r1 == 0 and cfg.r2 == 0:
        return []

    def loss(nets, s: dict):
        total, metrics = 0.0, {}
        for name, (real, fake) in inputs(s).items():
            penalty, logged = losses.zero_centred_penalties(nets[name], real, fake, cfg.r1, cfg.r2, cfg.reg_every, name)
            total, metrics = total + penalty, metrics | logged
        return total, metrics

    return [Phase("D_reg", d_names, loss, every=cfg.reg_every, first_step=first_step, optimizer="D")]


def validation_note(measures: str, measured: int, held_out: int, source: str, size: int) -> str:
    """What a translation task's validation measures: a fixed batch of held-out images at the
    training crop's size (eval measures whole images)."""
    which = f"the first {measured} of {held_out}" if held_out > measured else str(measured)
    return (f"validation: {measures} on {which} held-out image(s) from {source}, each resized to {size}x{size} px "
            "(`img2img eval` measures whole images)")


def to_unit(x):
    """[-1, 1] -> [0, 1] for sample grids."""
    return (x + 1) / 2

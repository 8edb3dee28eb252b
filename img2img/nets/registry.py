"""A tiny registry: architecture name -> builder, plus state_dict inference.

Every architecture module registers a builder (keyword hyper-parameters -> nn.Module) and,
for generators that exist in the wild, an `infer` function that reads hyper-parameters back
from a plain state_dict (key names and tensor shapes), returning None when the keys are not
its layout. A checkpoint therefore only needs `arch` + `hparams` to rebuild its network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Arch:
    name: str
    build: Callable[..., nn.Module]
    infer: Callable[[StateDict], dict | None] | None
    pixel_range: str  # "-1,1" (pix2pix/CycleGAN family) or "0,1" (SR family)
    kind: str  # "generator" or "discriminator"
    # What `infer` had to guess for these hparams ("" where nothing), said where a file is read.
    guessed: Callable[[dict], str] = lambda hparams: ""


_ARCHS: dict[str, Arch] = {}


def register(
    name: str,
    *,
    pixel_range: str = "-1,1",
    kind: str = "generator",
    infer: Callable[[StateDict], dict | None] | None = None,
    guessed: Callable[[dict], str] | None = None,
):
    """Decorator registering `build(**hparams) -> nn.Module` under `name`."""

    def wrap(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ARCHS:
            raise ValueError(f"architecture {name!r} registered twice")
        _ARCHS[name] = Arch(name, build, infer, pixel_range, kind, *([guessed] if guessed else []))
        return build

    return wrap


def get(name: str) -> Arch:
    _load_all()
    try:
        return _ARCHS[name]
    except KeyError:
        known = ", ".join(sorted(_ARCHS))
        raise KeyError(f"unknown architecture {name!r}; known: {known}") from None


def names(kind: str | None = None) -> list[str]:
    _load_all()
    return sorted(n for n, a in _ARCHS.items() if kind is None or a.kind == kind)


def build(name: str, **hparams) -> nn.Module:
    return get(name).build(**hparams)


# nn.init's random fills, skipped when a file's weights are about to replace them.
RANDOM_FILLS = ("normal_", "uniform_", "kaiming_normal_", "kaiming_uniform_", "xavier_normal_", "xavier_uniform_",
                "trunc_normal_", "orthogonal_", "sparse_")


def build_uninitialised(name: str, **hparams) -> nn.Module:
    """The module with its weights left as allocated, for a state_dict to be assigned into: the
    random init of a ResNet generator that a file overwrites anyway cost a quarter second of
    `translate`'s start-up. (Not the meta device: random fills there import torch._dynamo.)"""
    saved = {fill: getattr(nn.init, fill) for fill in RANDOM_FILLS}
    try:
        for fill in RANDOM_FILLS:
            setattr(nn.init, fill, lambda tensor, *args, **kwargs: tensor)
        return build(name, **hparams)
    finally:
        for fill, function in saved.items():
            setattr(nn.init, fill, function)


def infer_from_state_dict(state_dict: StateDict) -> tuple[str, dict]:
    """Return (arch name, hparams) of the generator whose layout matches `state_dict`."""
    _load_all()
    for arch in _ARCHS.values():
        if arch.infer is None:
            continue
        hparams = arch.infer(state_dict)
        if hparams is not None:
            return arch.name, hparams
    sample = ", ".join(list(state_dict)[:4])
    raise ValueError(
        "the weights match no known generator layout "
        f"(first keys: {sample}); supported: reference CycleGAN/pix2pix ResnetGenerator and "
        "UnetGenerator, CUT's anti-aliased ResnetGenerator, BasicSR/Real-ESRGAN MSRResNet, RRDBNet and SRVGGNetCompact"
    )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _load_all() -> None:
    # Importing the architecture modules runs their @register decorators.
    from img2img.nets import cut, patchgan, resnet, sr, sr_disc, unet  # noqa: F401

"""Pieces shared by the reference CycleGAN/pix2pix architectures."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "instance", "none")
FOREIGN_NORMS = ("instance_affine",)  # only in generators recognised from other code bases


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The reference's norm choices: affine BatchNorm, non-affine InstanceNorm, or none; and
    the affine InstanceNorm of other CycleGAN code bases."""
    if norm == "batch":
        return lambda channels: nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if norm in ("instance", "instance_affine"):
        affine = norm == "instance_affine"
        return lambda channels: InstanceNorm2d(channels, affine=affine, track_running_stats=False)
    if norm == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


class InstanceNorm2d(nn.InstanceNorm2d):
    """nn.InstanceNorm2d, computed on the CPU as a GroupNorm of one channel per group: the same
    statistics (equal within 1e-6), 3 to 30 times faster there than PyTorch's CPU instance_norm,
    which goes through a batch-norm reshape (it was a tenth of a ResNet generator's CPU time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.track_running_stats or x.dim() != 4 or torch.onnx.is_in_onnx_export():
            return super().forward(x)  # exported: ONNX's own InstanceNormalization
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


def conv_bias(norm: str, bias: bool | None = None) -> bool:
    # The reference gives convolutions a bias only when followed by InstanceNorm (BatchNorm has
    # its own shift; with "none" the reference's check also yields False). Kept for its layout;
    # `bias` overrides it for files from code bases that chose otherwise.
    return norm.startswith("instance") if bias is None else bias


def init_weights(module: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """The reference's init_weights: conv and linear weights N(0, gain) ('normal', the
    pix2pix/CycleGAN code's default) or Xavier-normal with that gain ('xavier', the CUT code's:
    std gain * sqrt(2 / (fan_in + fan_out)), 10 to 50x smaller here), zero biases, BatchNorm
    scales N(1, gain)."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            if init_type == "xavier":
                nn.init.xavier_normal_(layer.weight, gain)
            else:
                nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)
    return module


@torch.no_grad()
def init_resize_like(layer: nn.ConvTranspose2d, gain: float = 0.02) -> nn.ConvTranspose2d:
    """Weights that make a stride-2 transposed convolution start as a nearest-neighbour
    upsampling followed by a convolution: the kernel is a random (k-1)x(k-1) one convolved with a
    2x2 box, so each of the four output phases sums the same weights and the random start paints
    no period-2 checkerboard that training must first unlearn (Odena et al. 2016, "Deconvolution
    and checkerboard artifacts"; the ICNR idea of Aitken et al. 2017). Layout unchanged. Taps
    inside the kernel get the standard deviation `gain`, as with init_weights."""
    weight = layer.weight
    channels, height, width = weight.shape[0] * weight.shape[1], weight.shape[2], weight.shape[3]
    small = torch.randn(channels, 1, height - 1, width - 1, device=weight.device, dtype=weight.dtype) * (gain / 2)
    box = torch.ones(1, 1, 2, 2, device=weight.device, dtype=weight.dtype)
    weight.copy_(F.conv2d(F.pad(small, (1, 1, 1, 1)), box).view_as(weight))
    return layer


def has_norm_weights(state_dict, prefix: str) -> bool:
    return f"{prefix}.weight" in state_dict and state_dict[f"{prefix}.weight"].ndim == 1


def infer_norm(state_dict, norm_prefix: str, conv_prefix: str) -> str:
    """batch when the norm slot has affine weights + running stats, else instance/none by bias."""
    if f"{norm_prefix}.running_mean" in state_dict and has_norm_weights(state_dict, norm_prefix):
        return "batch"
    return "instance" if f"{conv_prefix}.bias" in state_dict else "none"

"""Discriminators of the reference code: NLayerDiscriminator (PatchGAN) and PixelDiscriminator."""

from __future__ import annotations

import torch
from torch import nn

from img2img.nets.layers import conv_bias, init_weights, norm_layer
from img2img.nets.registry import register


class NLayerDiscriminator(nn.Module):
    """PatchGAN: n_layers=3 classifies overlapping 70x70 patches as real or fake (logits)."""

    def __init__(self, in_ch: int = 6, ndf: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                make_norm(ndf * mult), nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PixelDiscriminator(nn.Module):
    """1x1 PatchGAN: classifies every pixel on its own."""

    def __init__(self, in_ch: int = 6, ndf: int = 64, norm: str = "batch"):
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        self.net = nn.Sequential(
            nn.Conv2d(in_ch, ndf, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, 1, bias=bias), make_norm(ndf * 2), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, 1, bias=bias),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@register("patchgan", kind="discriminator")
def build_patchgan(**hparams) -> NLayerDiscriminator:
    return NLayerDiscriminator(**hparams)


@register("pixel", kind="discriminator")
def build_pixel(**hparams) -> PixelDiscriminator:
    return PixelDiscriminator(**hparams)

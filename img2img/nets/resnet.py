"""ResnetGenerator in the reference pytorch-CycleGAN-and-pix2pix layout (keys `model.N...`)."""

from __future__ import annotations

import re

import torch
from torch import nn

from img2img.nets.layers import conv_bias, infer_norm, init_weights, norm_layer
from img2img.nets.registry import register

UPSAMPLES = ("transpose", "nearest")


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, norm: str, use_dropout: bool, bias: bool | None = None):
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm, bias)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), make_norm(dim), nn.ReLU(True),
        ]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=bias), make_norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, two stride-2 downsamplings, n residual blocks, two upsamplings, c7s1-out, tanh.

    `bias` overrides the reference's rule for conv biases and `upsample="nearest"` replaces the
    transposed convolutions by nearest x2 + 3x3 conv: both only for files of other code bases."""

    multiple = 4  # two stride-2 stages: inputs are padded to a multiple of this
    min_size = 8  # InstanceNorm needs more than one value per channel after the two stages

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm: str = "instance", use_dropout: bool = False, bias: bool | None = None,
                 upsample: str = "transpose"):
        super().__init__()
        if upsample not in UPSAMPLES:
            raise ValueError(f"unknown upsample {upsample!r}; choose one of {', '.join(UPSAMPLES)}")
        make_norm, bias_flag = norm_layer(norm), conv_bias(norm, bias)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, bias=bias_flag), make_norm(ngf), nn.ReLU(True),
        ]
        for i in range(2):
            ch = ngf * 2**i
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=bias_flag), make_norm(ch * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm, use_dropout, bias) for _ in range(n_blocks)]
        for i in range(2):
            ch = ngf * 2 ** (2 - i)
            if upsample == "transpose":
                up = [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=bias_flag)]
            else:
                up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch // 2, 3, padding=1, bias=bias_flag)]
            layers += [*up, make_norm(ch // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def infer_resnet(sd) -> dict | None:
    if "model.1.weight" not in sd or not any(".conv_block." in k for k in sd):
        return None
    if any(k.endswith(".filt") for k in sd):
        return None  # CUT's anti-aliased layout (nets/cut.py)
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.conv_block\.", k))}
    first = sd["model.1.weight"]
    use_dropout = any(k.startswith(f"model.{min(blocks)}.conv_block.6.") for k in sd)
    last_conv = max((k for k in sd if k.endswith(".weight") and sd[k].ndim == 4 and ".conv_block." not in k),
                    key=lambda k: int(k.split(".")[1]))
    return {
        "in_ch": first.shape[1],
        "out_ch": sd[last_conv].shape[0],
        "ngf": first.shape[0],
        "n_blocks": len(blocks),
        "norm": infer_norm(sd, "model.2", "model.1"),
        "use_dropout": use_dropout,
    }


@register("resnet", infer=infer_resnet)
def build_resnet(**hparams) -> ResnetGenerator:
    return ResnetGenerator(**hparams)

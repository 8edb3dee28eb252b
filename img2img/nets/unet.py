"""UnetGenerator in the reference pytorch-CycleGAN-and-pix2pix layout (keys `model.model.N...`)."""

from __future__ import annotations

import torch
from torch import nn

from img2img.nets.layers import conv_bias, infer_norm, init_weights, init_resize_like, norm_layer
from img2img.nets.registry import register


class UnetSkipBlock(nn.Module):
    """One U-Net level: down, the inner levels, up; its input concatenated to its output."""

    def __init__(self, outer_ch: int, inner_ch: int, *, in_ch: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False,
                 innermost: bool = False, norm: str = "batch", use_dropout: bool = False,
                 bias: bool | None = None):
        super().__init__()
        self.outermost = outermost
        make_norm, bias = norm_layer(norm), conv_bias(norm, bias)
        in_ch = outer_ch if in_ch is None else in_ch
        down_conv = nn.Conv2d(in_ch, inner_ch, 4, stride=2, padding=1, bias=bias)
        if outermost:
            up_conv = nn.ConvTranspose2d(inner_ch * 2, outer_ch, 4, stride=2, padding=1)
            layers = [down_conv, submodule, nn.ReLU(True), up_conv, nn.Tanh()]
        elif innermost:
            up_conv = nn.ConvTranspose2d(inner_ch, outer_ch, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down_conv, nn.ReLU(True), up_conv, make_norm(outer_ch)]
        else:
            up_conv = nn.ConvTranspose2d(inner_ch * 2, outer_ch, 4, stride=2, padding=1, bias=bias)
            layers = [nn.LeakyReLU(0.2, True), down_conv, make_norm(inner_ch), submodule,
                      nn.ReLU(True), up_conv, make_norm(outer_ch)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """U-Net with `num_downs` stride-2 levels: unet_256 has 8, unet_128 has 7."""

    # Its innermost level sees all of what it is given: a tile's result depends on the whole tile.
    tiling, tiling_reason = "discouraged", "its U-Net sees the whole image at once, far beyond the tiles' overlap"

    def __init__(self, in_ch: int = 3, out_ch: int = 3, num_downs: int = 8, ngf: int = 64,
                 norm: str = "batch", use_dropout: bool = True, bias: bool | None = None):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"a U-Net needs at least 5 levels, got num_downs={num_downs}")
        self.multiple = 2**num_downs
        kw = {"norm": norm, "bias": bias}  # bias: see ResnetGenerator
        block = UnetSkipBlock(ngf * 8, ngf * 8, innermost=True, **kw)
        for _ in range(num_downs - 5):
            block = UnetSkipBlock(ngf * 8, ngf * 8, submodule=block, use_dropout=use_dropout, **kw)
        block = UnetSkipBlock(ngf * 4, ngf * 8, submodule=block, **kw)
        block = UnetSkipBlock(ngf * 2, ngf * 4, submodule=block, **kw)
        block = UnetSkipBlock(ngf, ngf * 2, submodule=block, **kw)
        self.model = UnetSkipBlock(out_ch, ngf, in_ch=in_ch, submodule=block, outermost=True, **kw)
        init_weights(self)
        for layer in self.modules():
            if isinstance(layer, nn.ConvTranspose2d):
                # With N(0, 0.02) kernels its outputs carried a checkerboard that 600 steps of the
                # demo did not unlearn: held-out SSIM 0.687 -> 0.759 at LR 2e-4 (see img2img/demo.py).
                init_resize_like(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def infer_unet(sd) -> dict | None:
    if "model.model.0.weight" not in sd:
        return None
    # Each level nests one `.model.1.` (outermost) or `.model.3.` (inner levels) deeper.
    depth, prefix = 1, "model.model.1"
    while f"{prefix}.model.1.weight" in sd:
        depth += 1
        prefix += ".model.3"
    first = sd["model.model.0.weight"]
    return {
        "in_ch": first.shape[1],
        "out_ch": sd["model.model.3.weight"].shape[1],
        "num_downs": depth,
        "ngf": first.shape[0],
        "norm": infer_norm(sd, "model.model.1.model.2", "model.model.1.model.1"),
        # Dropout has no weights, so files cannot tell; pix2pix trains with it (eval turns it off).
        "use_dropout": True,
    }


@register("unet", infer=infer_unet)
def build_unet(**hparams) -> UnetGenerator:
    return UnetGenerator(**hparams)

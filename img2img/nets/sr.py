"""Super-resolution generators in the BasicSR / Real-ESRGAN state_dict layouts.

MSRResNet (`conv_first`, `body.N.conv1`, `upconv1`), RRDBNet (`conv_first`, `body.N.rdb1.conv1`,
`conv_body`, `conv_up1`) and SRVGGNetCompact (`body.N`) keep the parameter names of the released
`.pth` files so those load with `load_state_dict(strict=True)`. All work on pixels in [0, 1].
Every generator exposes `scale` (output size = input size * scale) and `multiple` (what input
height and width must be divisible by).
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from img2img.nets.registry import register


def scaled_kaiming_init(modules: list[nn.Module], scale: float = 0.1) -> None:
    """BasicSR's default_init_weights: kaiming-normal weights shrunk by `scale`, zero biases.

    Shrinking keeps each residual branch close to zero at start, so deep residual stacks begin
    near the identity and train stably.
    """
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight)
                with torch.no_grad():
                    layer.weight.mul_(scale)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)


def identity_init(convs: list[nn.Conv2d], scale: float = 0.1) -> None:
    """Each conv the identity (Dirac) plus a kaiming-normal part shrunk by `scale`, zero biases.

    For a plain stack of same-width convs this is what the scaled init is for residual blocks:
    the stack starts close to the identity, so the gradient reaches the first layer whole however
    deep it is. PyTorch's default init shrinks the signal at every layer (1e-16 of the last
    layer's gradient at SRVGGNetCompact's first layer); He init keeps its scale but, measured on
    photographs, the first updates then shrink all 33 layers to silence the random residual,
    and 300 steps later the output was still the nearest-neighbour upscale.
    """
    for conv in convs:
        nn.init.kaiming_normal_(conv.weight)
        with torch.no_grad():
            conv.weight.mul_(scale)
            conv.weight.add_(nn.init.dirac_(torch.empty_like(conv.weight)))
        nn.init.zeros_(conv.bias)


def conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, 1, 1)


def has_keys(state_dict, *keys: str) -> bool:
    return all(key in state_dict for key in keys)


def block_indices(state_dict, pattern: str) -> set[int]:
    """The distinct N of keys matching `pattern` (a regex with one `(\\d+)` group)."""
    return {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}


# --- MSRResNet ----------------------------------------------------------------------------


class ResidualBlockNoBN(nn.Module):
    """conv-relu-conv with an identity shortcut; no BatchNorm, as in EDSR/SRResNet."""

    def __init__(self, num_feat: int = 64, res_scale: float = 1.0):
        super().__init__()
        self.res_scale = res_scale
        self.conv1 = conv3x3(num_feat, num_feat)
        self.conv2 = conv3x3(num_feat, num_feat)
        self.relu = nn.ReLU()
        scaled_kaiming_init([self.conv1, self.conv2], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x))) * self.res_scale


class MSRResNet(nn.Module):
    """Modified SRResNet: residual blocks, pixel-shuffle upsampling, plus a bilinear skip."""

    multiple = 1

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_block: int = 16, upscale: int = 4):
        super().__init__()
        if upscale not in (2, 3, 4):
            raise ValueError(f"msrresnet supports upscale 2, 3 or 4, not {upscale}")
        self.scale = upscale
        self.conv_first = conv3x3(num_in_ch, num_feat)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat) for _ in range(num_block)])
        if upscale == 4:  # x4 is two x2 stages, each its own conv (keys upconv1, upconv2)
            self.upconv1 = conv3x3(num_feat, num_feat * 4)
            self.upconv2 = conv3x3(num_feat, num_feat * 4)
            self.pixel_shuffle = nn.PixelShuffle(2)
        else:
            self.upconv1 = conv3x3(num_feat, num_feat * upscale * upscale)
            self.pixel_shuffle = nn.PixelShuffle(upscale)
        self.conv_hr = conv3x3(num_feat, num_feat)
        self.conv_last = conv3x3(num_feat, num_out_ch)
        self.lrelu = nn.LeakyReLU(0.1)
        upconvs = [self.upconv1] + ([self.upconv2] if upscale == 4 else [])
        scaled_kaiming_init([self.conv_first, *upconvs, self.conv_hr, self.conv_last], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(self.lrelu(self.conv_first(x)))
        out = self.lrelu(self.pixel_shuffle(self.upconv1(out)))
        if self.scale == 4:
            out = self.lrelu(self.pixel_shuffle(self.upconv2(out)))
        out = self.conv_last(self.lrelu(self.conv_hr(out)))
        # The network only learns the residual over a bilinear upscale of the input.
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


def infer_msrresnet(sd) -> dict | None:
    if not has_keys(sd, "conv_first.weight", "body.0.conv1.weight", "upconv1.weight", "conv_last.weight"):
        return None
    num_feat = sd["conv_first.weight"].shape[0]
    if "upconv2.weight" in sd:
        upscale = 4
    else:
        upscale = math.isqrt(sd["upconv1.weight"].shape[0] // num_feat)
    return {
        "num_in_ch": sd["conv_first.weight"].shape[1],
        "num_out_ch": sd["conv_last.weight"].shape[0],
        "num_feat": num_feat,
        "num_block": len(block_indices(sd, r"body\.(\d+)\.conv1\.weight$")),
        "upscale": upscale,
    }


@register("msrresnet", pixel_range="0,1", infer=infer_msrresnet)
def build_msrresnet(**hparams) -> MSRResNet:
    return MSRResNet(**hparams)


# --- RRDBNet (ESRGAN / Real-ESRGAN) --------------------------------------------------------


class ResidualDenseBlock(nn.Module):
    """Five densely connected convs; each sees the block input and every earlier output."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        self.conv1 = conv3x3(num_feat, num_grow_ch)
        self.conv2 = conv3x3(num_feat + num_grow_ch, num_grow_ch)
        self.conv3 = conv3x3(num_feat + 2 * num_grow_ch, num_grow_ch)
        self.conv4 = conv3x3(num_feat + 3 * num_grow_ch, num_grow_ch)
        self.conv5 = conv3x3(num_feat + 4 * num_grow_ch, num_feat)
        self.lrelu = nn.LeakyReLU(0.2)
        scaled_kaiming_init([self.conv1, self.conv2, self.conv3, self.conv4, self.conv5], 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            features.append(self.lrelu(conv(torch.cat(features, 1))))
        # Residual scaling 0.2 (ESRGAN) keeps the 3 x num_block residual branches from blowing up.
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks inside one more scaled residual."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


# BasicSR's trunk always upsamples x4; smaller scales fold the input into channels first.
RRDB_UNSHUFFLE = {4: 1, 2: 2, 1: 4}
RRDB_TRUNK_SCALES = (1, 2, 4, 8)  # x2 nearest-upsampling stages: 0 to 3


class RRDBNet(nn.Module):
    """ESRGAN generator; the Real-ESRGAN x4plus / x2plus / anime_6B weights use this layout.

    `unshuffle` (default: BasicSR's choice for `scale`) folds unshuffle x unshuffle pixels into
    channels before the trunk, which then upsamples scale * unshuffle times in x2 stages
    (`conv_up1`, `conv_up2`, ...): the original ESRGAN's 1x, 2x and 8x models have no unshuffle
    and 0, 1 or 3 stages."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32, unshuffle: int | None = None):
        super().__init__()
        if unshuffle is None and scale not in RRDB_UNSHUFFLE:
            raise ValueError(f"rrdbnet supports scale 1, 2 or 4 (or give unshuffle), not {scale}")
        self.scale = scale
        self.unshuffle = RRDB_UNSHUFFLE[scale] if unshuffle is None else unshuffle
        trunk_scale = scale * self.unshuffle
        if trunk_scale not in RRDB_TRUNK_SCALES:
            raise ValueError(f"rrdbnet: scale {scale} x unshuffle {self.unshuffle} must be 1, 2, 4 or 8")
        self.conv_first = conv3x3(num_in_ch * self.unshuffle**2, num_feat)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = conv3x3(num_feat, num_feat)
        self.up_convs = [f"conv_up{i + 1}" for i in range(trunk_scale.bit_length() - 1)]
        for name in self.up_convs:
            setattr(self, name, conv3x3(num_feat, num_feat))
        self.conv_hr = conv3x3(num_feat, num_feat)
        self.conv_last = conv3x3(num_feat, num_out_ch)
        self.lrelu = nn.LeakyReLU(0.2)
        self.start_as_bilinear_upscale()

    def start_as_bilinear_upscale(self) -> None:
        """Initialise so that the network starts as a bilinear upscale of its input.

        RRDBNet has no interpolation skip: with BasicSR's init (PyTorch's default outside the
        dense blocks) it first has to learn to redraw the photograph, and after 300 x4 steps it
        was still 2.5 dB below bicubic. Here the first input-sized group of channels carries the
        input: `conv_first` copies it, each x2 stage smooths its nearest-neighbour upsampling
        with [1, 2, 1] / 4 in both directions (which makes it bilinear), `conv_hr` copies, and
        `conv_last` reads it back (averaging the sub-pixels that `unshuffle` folded into
        channels). The other channels start as in a residual network: identity-plus-small
        upsampling convs, a shrunk `conv_body` and a near-silent `conv_last`, so the trunk's
        gradient arrives whole and its output starts as a small correction. The parameter
        names and shapes are BasicSR's; only the starting values differ."""
        inputs = self.conv_first.in_channels
        if self.conv_first.out_channels < inputs:  # too narrow to carry the input: BasicSR's init
            return
        ups = [getattr(self, name) for name in self.up_convs]
        scaled_kaiming_init([self.conv_body], 0.1)
        scaled_kaiming_init([self.conv_last], 0.01)
        identity_init(ups + [self.conv_hr])
        smooth = torch.outer(*2 * [torch.tensor([1.0, 2.0, 1.0], device=self.conv_hr.weight.device)]) / 16
        folded = self.unshuffle ** 2
        with torch.no_grad():
            for conv in (self.conv_first, self.conv_body, *ups, self.conv_hr):
                conv.weight[:inputs] = 0.0
                conv.bias[:inputs] = 0.0
            for channel in range(inputs):
                self.conv_first.weight[channel, channel, 1, 1] = 1.0
                self.conv_hr.weight[channel, channel, 1, 1] = 1.0
                for conv in ups:
                    conv.weight[channel, channel] = smooth
            for out in range(self.conv_last.out_channels):
                source = out % (inputs // folded)
                self.conv_last.weight[out, source * folded:(source + 1) * folded, 1, 1] += 1.0 / folded

    @property
    def multiple(self) -> int:
        return self.unshuffle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for name in self.up_convs:
            feat = self.lrelu(getattr(self, name)(F.interpolate(feat, scale_factor=2, mode="nearest")))
        return self.conv_last(self.lrelu(self.conv_hr(feat)))


def rrdb_hparams(first_conv: torch.Tensor, last_conv: torch.Tensor, first_rdb_conv: torch.Tensor,
                 num_block: int, num_up: int) -> dict | None:
    """RRDBNet hyper-parameters from the tensor shapes every RRDB layout shares.

    conv_first sees num_in_ch * unshuffle^2 channels; the file does not store num_in_ch, so take
    it to equal num_out_ch (true of every released model) when that explains the channels, as
    spandrel does. `unshuffle` is named only where it differs from BasicSR's default."""
    first_in, num_out_ch = first_conv.shape[1], last_conv.shape[0]
    unshuffle = next((u for u in (2, 4) if first_in == num_out_ch * u * u), 1)
    trunk_scale = 2**num_up
    if trunk_scale not in RRDB_TRUNK_SCALES or trunk_scale % unshuffle:
        return None
    scale = trunk_scale // unshuffle
    hparams = {
        "num_in_ch": first_in // unshuffle**2,
        "num_out_ch": num_out_ch,
        "scale": scale,
        "num_feat": first_conv.shape[0],
        "num_block": num_block,
        "num_grow_ch": first_rdb_conv.shape[0],
    }
    if RRDB_UNSHUFFLE.get(scale) != unshuffle:
        hparams["unshuffle"] = unshuffle
    return hparams


def infer_rrdbnet(sd) -> dict | None:
    if not has_keys(sd, "conv_first.weight", "body.0.rdb1.conv1.weight", "conv_body.weight", "conv_last.weight"):
        return None
    num_up = len(block_indices(sd, r"conv_up(\d+)\.weight$"))
    return rrdb_hparams(sd["conv_first.weight"], sd["conv_last.weight"], sd["body.0.rdb1.conv1.weight"],
                        len(block_indices(sd, r"body\.(\d+)\.rdb1\.conv1\.weight$")), num_up)


@register("rrdbnet", pixel_range="0,1", infer=infer_rrdbnet)
def build_rrdbnet(**hparams) -> RRDBNet:
    return RRDBNet(**hparams)


# --- SRVGGNetCompact (Real-ESRGAN realesr-general / animevideo) -----------------------------

ACT_TYPES = ("prelu", "relu", "leakyrelu")


# The slope on the negative side that each activation starts with (PReLU's initial 0.25).
NEGATIVE_SLOPE = {"prelu": 0.25, "relu": 0.0, "leakyrelu": 0.1}


def make_activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "relu":
        return nn.ReLU()
    if act_type == "leakyrelu":
        return nn.LeakyReLU(0.1)
    raise ValueError(f"unknown act_type {act_type!r}; choose one of {', '.join(ACT_TYPES)}")


class SRVGGNetCompact(nn.Module):
    """A plain conv stack working at low resolution, one pixel shuffle at the end."""

    multiple = 1

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64,
                 num_conv: int = 16, upscale: int = 4, act_type: str = "prelu"):
        super().__init__()
        self.scale = upscale
        # One flat ModuleList (convs and activations interleaved) because the released files
        # index it that way: body.0 conv, body.1 activation, body.2 conv, ...
        self.body = nn.ModuleList([conv3x3(num_in_ch, num_feat), make_activation(act_type, num_feat)])
        for _ in range(num_conv):
            self.body.extend([conv3x3(num_feat, num_feat), make_activation(act_type, num_feat)])
        self.body.append(conv3x3(num_feat, num_out_ch * upscale * upscale))
        self.upsampler = nn.PixelShuffle(upscale)
        first, *middle, last = [layer for layer in self.body if isinstance(layer, nn.Conv2d)]
        nn.init.kaiming_normal_(first.weight, a=NEGATIVE_SLOPE[act_type], nonlinearity="leaky_relu")
        nn.init.zeros_(first.bias)
        identity_init(middle)
        # The residual starts near zero, so the output starts as the nearest-neighbour upscale.
        scaled_kaiming_init([last], 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        # Learns the residual over a nearest-neighbour upscale of the input.
        return self.upsampler(out) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def infer_srvgg(sd) -> dict | None:
    first = sd.get("body.0.weight")
    if first is None or first.ndim != 4 or "conv_first.weight" in sd:
        return None
    conv_indices = sorted(i for i in block_indices(sd, r"body\.(\d+)\.weight$") if sd[f"body.{i}.weight"].ndim == 4)
    num_in_ch = first.shape[1]
    last_out = sd[f"body.{conv_indices[-1]}.weight"].shape[0]
    # The file stores num_out_ch * upscale^2 only; assume num_out_ch == num_in_ch (true of the
    # released models), and fall back to RGB output if that does not give a square.
    upscale = None
    for num_out_ch in dict.fromkeys((num_in_ch, 3, 1)):
        root = math.isqrt(last_out // num_out_ch)
        if last_out % num_out_ch == 0 and root * root * num_out_ch == last_out:
            upscale = root
            break
    if upscale is None:
        return None
    # Only PReLU has weights; ReLU and LeakyReLU leave no trace in the state_dict and cannot be
    # told apart, so guess 'leakyrelu'. A wrong guess still loads but changes the outputs.
    act_type = "prelu" if "body.1.weight" in sd else "leakyrelu"
    return {
        "num_in_ch": num_in_ch,
        "num_out_ch": num_out_ch,
        "num_feat": first.shape[0],
        "num_conv": len(conv_indices) - 2,
        "upscale": upscale,
        "act_type": act_type,
    }


def _guessed_activation(hparams: dict) -> str:
    if hparams["act_type"] == "prelu":
        return ""
    return "no PReLU weights: a ReLU or LeakyReLU network, read as LeakyReLU; the two give other outputs"


@register("srvgg", pixel_range="0,1", infer=infer_srvgg, guessed=_guessed_activation)
def build_srvgg(**hparams) -> SRVGGNetCompact:
    return SRVGGNetCompact(**hparams)

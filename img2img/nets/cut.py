"""CUT's networks (Park et al. 2020, contrastive-unpaired-translation) in its layout.

- `CutResnetGenerator`: the reference CUT ResnetGenerator. By default its down-sampling is
  anti-aliased (a stride-1 conv, norm, ReLU, then a fixed [1, 2, 1] blur sampled with stride 2:
  `Downsample`) and so is its up-sampling (a fixed [1, 3, 3, 1] blur transposed-conv with
  stride 2, then a stride-1 conv: `Upsample`). Trained with `--no_antialias` /
  `--no_antialias_up` it uses strided convs instead, which is the CycleGAN layout. The blur
  filters are buffers (`model.N.filt`), so the keys match the reference's `latest_net_G.pth`.
  `encode(x, layers)` returns the outputs of the given `model` indices: PatchNCE's features.
- `PatchHeads`: the projection heads (the reference's PatchSampleF with `mlp_sample`): for each
  feature layer, sample the same patch positions of query and key features, pass them through
  a Linear-ReLU-Linear MLP and L2-normalise. The reference creates the MLPs at the first
  forward pass, when the feature widths are known; here they are built from the widths the
  generator reports, so every process builds and seeds them alike before DDP wraps them.

Both start as the reference CUT's do (`--init_type xavier --init_gain 0.02`), not as the
CycleGAN code's N(0, 0.02); on benchmarks/unpaired.py's colour task the two inits end 600 steps
alike (0.785 and 0.794 of the identity error), so the reference's is kept.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from img2img.nets.layers import conv_bias, infer_norm, init_weights, norm_layer
from img2img.nets.registry import register
from img2img.nets.resnet import ResnetBlock


def binomial_filter(taps: int) -> torch.Tensor:
    """The outer product of a binomial row ([1, 2, 1] or [1, 3, 3, 1]), summing to 1."""
    row = torch.tensor([1.0, 2.0, 1.0] if taps == 3 else [1.0, 3.0, 3.0, 1.0])
    kernel = row[:, None] * row[None, :]
    return kernel / kernel.sum()


class Downsample(nn.Module):
    """Blur then subsample by 2 (Zhang 2019): reflect-pad 1, [1, 2, 1]^2 / 16, stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("filt", binomial_filter(3)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class Upsample(nn.Module):
    """Up by 2 with a fixed [1, 3, 3, 1]^2 / 16 (x4) kernel: replicate-pad 1, transposed conv,
    then drop the first and last row and column, so H x W becomes exactly 2H x 2W."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("filt", (binomial_filter(4) * 4)[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        out = F.conv_transpose2d(padded, self.filt, stride=2, padding=2, groups=x.shape[1])
        return out[:, :, 1:-1, 1:-1]


class CutResnetGenerator(nn.Module):
    """c7s1-ngf, two down-samplings, n residual blocks, two up-samplings, c7s1-out, tanh."""

    multiple = 4
    min_size = 8

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ngf: int = 64, n_blocks: int = 9, norm: str = "instance",
                 use_dropout: bool = False, antialias: bool = True, antialias_up: bool = True):
        super().__init__()
        make_norm, bias = norm_layer(norm), conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, bias=bias), make_norm(ngf), nn.ReLU(True),
        ]
        for ch in (ngf, ngf * 2):
            if antialias:
                layers += [nn.Conv2d(ch, ch * 2, 3, padding=1, bias=bias), make_norm(ch * 2), nn.ReLU(True),
                           Downsample(ch * 2)]
            else:
                layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1, bias=bias), make_norm(ch * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm, use_dropout) for _ in range(n_blocks)]
        for ch in (ngf * 4, ngf * 2):
            if antialias_up:
                layers += [Upsample(ch), nn.Conv2d(ch, ch // 2, 3, padding=1, bias=bias)]
            else:
                layers += [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1, bias=bias)]
            layers += [make_norm(ch // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self, "xavier")

    def forward(self, x: torch.Tensor, layers: tuple[int, ...] | None = None):
        """The translation; with `layers`, the encoder features instead (through forward, so
        that a DDP wrapper sees the call)."""
        return self.model(x) if layers is None else self.encode(x, layers)

    def encode(self, x: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
        """The outputs of `model[i]` for i in `layers` (sorted); stops after the last one."""
        features = []
        for index, layer in enumerate(self.model[: max(layers) + 1]):
            x = layer(x)
            if index in layers:
                features.append(x)
        return features

    def feature_channels(self, layers: tuple[int, ...]) -> list[int]:
        """The width of each `encode` output, read from the modules (no forward pass)."""
        channels, widths = self.model[1].in_channels, []
        for index, layer in enumerate(self.model[: max(layers) + 1]):
            channels = getattr(layer, "out_channels", channels)
            if index in layers:
                widths.append(channels)
        return widths


class PatchHeads(nn.Module):
    """One Linear-ReLU-Linear head per feature layer (keys `mlp_N.0/2`, as the reference's)."""

    def __init__(self, in_channels: list[int], width: int = 256):
        super().__init__()
        for index, channels in enumerate(in_channels):
            self.add_module(f"mlp_{index}", nn.Sequential(nn.Linear(channels, width), nn.ReLU(), nn.Linear(width, width)))
        self.count = len(in_channels)
        init_weights(self, "xavier")

    def forward(self, features: list[torch.Tensor], num_patches: int,
                patch_ids: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(projected patches per layer, each (batch * patches) x width; the positions drawn).
        The same positions serve every image of the batch, and `patch_ids` repeats a draw."""
        projected, drawn = [], []
        for index, feature in enumerate(features):
            flat = feature.flatten(2).transpose(1, 2)  # B x HW x C
            if patch_ids is None:
                ids = torch.randperm(flat.shape[1])[:num_patches].to(flat.device)
            else:
                ids = patch_ids[index]
            sample = flat[:, ids].flatten(0, 1)
            sample = getattr(self, f"mlp_{index}")(sample)
            projected.append(sample / (sample.norm(dim=1, keepdim=True) + 1e-7))
            drawn.append(ids)
        return projected, drawn


def patch_nce(query: torch.Tensor, key: torch.Tensor, batch: int, temperature: float) -> torch.Tensor:
    """PatchNCE (InfoNCE over patches): each output patch `query` must pick its own input patch
    `key` among the other patches of the same image. query, key: (batch * P) x C, L2-normalised.
    Returns the loss per patch. As in the reference, the keys carry no gradient and a patch's
    similarity to itself among the negatives is replaced by -10 (almost nothing after exp)."""
    key = key.detach()
    positive = (query * key).sum(1, keepdim=True)
    q, k = query.view(batch, -1, query.shape[1]), key.view(batch, -1, key.shape[1])
    negatives = torch.bmm(q, k.transpose(1, 2))
    diagonal = torch.eye(q.shape[1], dtype=torch.bool, device=q.device)[None]
    negatives = negatives.masked_fill(diagonal, -10.0).flatten(0, 1)
    logits = torch.cat([positive, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device), reduction="none")


def infer_cut_resnet(sd) -> dict | None:
    """The reference CUT ResnetGenerator, recognised by its blur buffers (`model.N.filt`)."""
    blurs = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"model\.(\d+)\.filt", k)))
    if "model.1.weight" not in sd or not blurs:
        return None
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"model\.(\d+)\.conv_block\.", k))}
    if not blocks:
        return None
    first_block, ngf = min(blocks), sd["model.1.weight"].shape[0]
    antialias_up = any(i > first_block for i in blurs)
    antialias = any(i < first_block for i in blurs)
    last_conv = max((k for k in sd if k.endswith(".weight") and sd[k].ndim == 4 and ".conv_block." not in k),
                    key=lambda k: int(k.split(".")[1]))
    return {
        "in_ch": sd["model.1.weight"].shape[1],
        "out_ch": sd[last_conv].shape[0],
        "ngf": ngf,
        "n_blocks": len(blocks),
        "norm": infer_norm(sd, "model.2", "model.1"),
        "use_dropout": any(k.startswith(f"model.{first_block}.conv_block.6.") for k in sd),
        "antialias": antialias,
        "antialias_up": antialias_up,
    }


@register("cut_resnet", infer=infer_cut_resnet)
def build_cut_resnet(**hparams) -> CutResnetGenerator:
    return CutResnetGenerator(**hparams)

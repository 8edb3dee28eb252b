"""Perceptual loss: L1 distance between VGG19 features of the output and of the target.

As in ESRGAN / BasicSR: torchvision's VGG19 with ImageNet weights, features taken *before* the
ReLU (ESRGAN showed post-activation features are sparse and weaken the loss), inputs
normalised with the ImageNet mean and std, a weighted sum over layers (ESRGAN: conv5_4 alone;
Real-ESRGAN: conv1_2 0.1, conv2_2 0.1, conv3_4 1, conv4_4 1, conv5_4 1).

The network is frozen and kept out of the task's trained networks, so it is never updated,
wrapped in DDP or checkpointed. Nothing is downloaded: the weights come from
--perceptual-weights or from torchvision's file in the torch hub cache.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from img2img.config import ConfigError
from img2img.gan.checkpoint import CheckpointError, safe_torch_load

VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG19_URL = f"https://download.pytorch.org/models/{VGG19_FILE}"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Convolutions per VGG19 block; each conv is followed by a ReLU, each block by a max-pool.
VGG19_BLOCKS = (2, 2, 4, 4, 4)


def vgg19_layer_names() -> list[str]:
    """Names of torchvision's vgg19().features modules, in order: conv1_1, relu1_1, ..., pool5."""
    names = []
    for block, convs in enumerate(VGG19_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
        names.append(f"pool{block}")
    return names


def parse_layer_weights(text: str) -> dict[str, float]:
    """'conv3_4:1,conv5_4:1' -> {'conv3_4': 1.0, 'conv5_4': 1.0}."""
    known = vgg19_layer_names()
    weights = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition(":")
        if name not in known:
            raise ConfigError(f"perceptual_layers: unknown VGG19 layer {name!r}; use names like conv5_4 or relu3_4")
        try:
            weights[name] = float(value or 1.0)
        except ValueError:
            raise ConfigError(f"perceptual_layers: {part!r} is not name:weight") from None
    if not weights:
        raise ConfigError("perceptual_layers names no layer; e.g. conv5_4:1")
    return weights


def default_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG19_FILE


def find_weights(path: str | Path | None) -> Path:
    """The VGG19 weights file to use, or a ConfigError saying how to get one."""
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(f"--perceptual-weights {path}: no such file")
        return Path(path)
    cached = default_weights_path()
    if cached.is_file():
        return cached
    raise ConfigError(
        f"the perceptual loss needs ImageNet VGG19 weights, and none were found: no "
        f"--perceptual-weights was given and {cached} does not exist. Nothing is downloaded during "
        f"training: fetch {VGG19_URL} on a machine with internet access (or run "
        f"`python -c \"import torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')\"` there) "
        f"and put the file at {cached}, or pass --perceptual-weights PATH; or train without the "
        f"perceptual loss: --perceptual none"
    )


def load_vgg19_features(path: Path, depth: int) -> nn.Sequential:
    """torchvision's vgg19().features[:depth] with the weights in `path` (a full VGG19
    state_dict, or only its `features.*` entries up to the deepest layer used)."""
    from torchvision.models import vgg19  # here: the CLI's start-up needs none of torchvision

    features = vgg19(weights=None).features[:depth]
    try:
        state = safe_torch_load(path)
    except CheckpointError as err:
        raise ConfigError(f"--perceptual-weights: {err}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"{path}: holds no VGG19 state_dict")
    wanted = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    own = features.state_dict()
    missing = sorted(own.keys() - wanted.keys())
    if missing:
        raise ConfigError(f"{path}: not a torchvision VGG19 state_dict (missing features.{missing[0]}"
                          f"{' and more' if len(missing) > 1 else ''})")
    try:
        features.load_state_dict({k: wanted[k] for k in own}, strict=True)
    except RuntimeError as err:
        raise ConfigError(f"{path}: the weights do not fit VGG19 ({str(err).splitlines()[0]})") from None
    return features


class PerceptualLoss(nn.Module):
    """sum_l w_l * |vgg_l(output) - vgg_l(target)|_1 on [0, 1] images."""

    def __init__(self, features: nn.Sequential, layer_weights: dict[str, float]):
        super().__init__()
        names = vgg19_layer_names()
        self.index_weights = {names.index(name): weight for name, weight in layer_weights.items()}
        self.features = features[: max(self.index_weights) + 1]
        for layer in self.features:
            if isinstance(layer, nn.ReLU):
                layer.inplace = False  # an in-place ReLU would overwrite the pre-activation features taken
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        return super().train(False)  # a fixed loss network: never in training mode

    def extract(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = (x - self.mean) / self.std
        taken = {}
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.index_weights:
                taken[index] = x
        return taken

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out_features = self.extract(output)
        with torch.no_grad():
            target_features = self.extract(target.detach())
        return sum(weight * F.l1_loss(out_features[i], target_features[i])
                   for i, weight in self.index_weights.items())


def build_perceptual(weights_path: str | None, layers: str) -> PerceptualLoss:
    layer_weights = parse_layer_weights(layers)
    depth = max(vgg19_layer_names().index(name) for name in layer_weights) + 1
    features = load_vgg19_features(find_weights(weights_path), depth)
    return PerceptualLoss(features, layer_weights)

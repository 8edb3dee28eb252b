"""Which of our generators a foreign state_dict holds, and its weights under our names.

Files from the wild differ in three ways, handled in this order:
1. Wrapping: `{"params_ema": sd}`, `{"state_dict": sd}`, `{"netG": sd}`, two generators in one file
   (`G_A`/`G_B`), prefixes such as `module.` (DDP), `netG.`, `G.` or `_orig_mod.` (torch.compile):
   `unwrap` peels them off.
2. Names: our own layouts (the reference CycleGAN/pix2pix code, BasicSR / Real-ESRGAN) are read
   from their key names; the original ESRGAN and BSRGAN layouts are renamed onto RRDBNet.
3. Structure: the CycleGAN / pix2pix family under any names. The file's layers, in order, are
   convolutions (4-D weights) and norm layers (1-D weights and/or running statistics); the first
   conv gives the width, the chain of shapes gives the depth, the norm tensors say BatchNorm,
   affine or plain InstanceNorm, and a candidate network is accepted only when its own layer
   sequence has exactly the file's shapes. The weights are then assigned layer by layer.
A candidate is built (on the CPU: the meta device would cost seconds of imports on first use)
and handed back built, so the file's network is built only once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from img2img.nets import registry
from img2img.nets.esrgan_layouts import LAYOUTS as RRDB_LAYOUTS
from img2img.nets.layers import conv_bias

Tensors = dict[str, torch.Tensor]

WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "netG", "generator", "net_g", "net")
PREFIXES = ("module.", "_orig_mod.", "netG.", "G.", "generator.", "net_g.")
# Files holding both CycleGAN generators: (the A->B name, the B->A name).
DIRECTION_PAIRS = (("G_A", "G_B"), ("netG_A", "netG_B"), ("G_AB", "G_BA"), ("netG_AB", "netG_BA"),
                   ("genA2B", "genB2A"))
STAT_NAMES = ("running_mean", "running_var", "num_batches_tracked")
SUPPORTED = ("our .safetensors generators; reference pytorch-CycleGAN-and-pix2pix ResnetGenerator and "
             "UnetGenerator files and their relatives under any key names (ResNet with 7x7 first conv, two "
             "stride-2 convs, N residual blocks of two 3x3 convs, two transposed or nearest+conv upsamplings; "
             "BatchNorm, affine or plain InstanceNorm); BasicSR / Real-ESRGAN MSRResNet, RRDBNet and "
             "SRVGGNetCompact; original ESRGAN and BSRGAN RRDBNet files")


@dataclass
class Recognised:
    arch: str
    hparams: dict
    state_dict: Tensors  # in our key names, ready for load_state_dict(strict=True)
    layout: str  # where the layout comes from, for `info`
    module: nn.Module | None = None  # built by the check that accepted it; weights not yet loaded
    guessed: str = ""  # what the file does not say and was assumed, for `info` and `translate`


class NotAStateDict(ValueError):
    """The file holds no mapping of names to tensors."""


# ---- 1. wrapping -----------------------------------------------------------------------------


def unwrap(obj: Any, direction: str = "AtoB") -> Tensors:
    """The generator's state_dict inside whatever the file wraps it in."""
    side = 0 if direction == "AtoB" else 1
    for _ in range(4):  # wrappers nest: {"state_dict": {"netG": ...}}
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        inner = inner if inner is not None else next(
            (obj[pair[side]] for pair in DIRECTION_PAIRS if isinstance(obj.get(pair[side]), dict)), None)
        if inner is None and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
            inner = next(iter(obj.values()))
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise NotAStateDict("holds no state_dict of tensors that could be a generator")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise NotAStateDict("holds no state_dict of tensors that could be a generator")
    return strip_prefixes(select_direction(tensors, side))


def select_direction(sd: Tensors, side: int) -> Tensors:
    """`G_A.model.1.weight` + `G_B.model.1.weight` + ...: the keys of one generator."""
    heads = {key.split(".", 1)[0] for key in sd}
    for pair in DIRECTION_PAIRS:
        if set(pair) <= heads:
            prefix = pair[side] + "."
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def strip_prefixes(sd: Tensors) -> Tensors:
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                stripped = True
    return sd


# ---- 2 and 3. recognition ----------------------------------------------------------------------


class Misfit(ValueError):
    """A layout's names matched but its tensors do not fit the network they describe."""


def recognise(sd: Tensors) -> Recognised | None:
    """Our generator that computes what `sd` describes, or None. Raises Misfit when a layout we
    own matched by name but its shapes do not fit and no other reading of the file works."""
    misfit: str | None = None
    for candidate in _candidates(sd):
        problem = _misfit(candidate)
        if problem is None:
            return candidate
        misfit = misfit or problem
        candidate.module = None
    if misfit:
        raise Misfit(misfit)
    return None


# Whose layout a file in our architectures' own key names comes from, as `info` names it.
LAYOUT_OWNERS = {"resnet": "pix2pix/CycleGAN reference", "unet": "pix2pix/CycleGAN reference",
                 "cut_resnet": "CUT reference", "msrresnet": "BasicSR / Real-ESRGAN", "rrdbnet": "BasicSR / Real-ESRGAN",
                 "srvgg": "BasicSR / Real-ESRGAN"}


def _candidates(sd: Tensors) -> Iterable[Recognised]:
    for arch_name in registry.names("generator"):
        arch = registry.get(arch_name)
        if arch.infer is not None and (hparams := arch.infer(sd)) is not None:
            guess = arch.guessed(hparams)
            owner = LAYOUT_OWNERS.get(arch_name, "img2img")
            yield Recognised(arch_name, hparams, _drop_instance_stats(sd), owner + (f" ({guess})" if guess else ""),
                             guessed=guess)
    for layout, convert in RRDB_LAYOUTS.items():
        if (converted := convert(sd)) is not None:
            yield Recognised("rrdbnet", converted[0], converted[1], layout)
    for order in _orders(sd):
        for arch_name, hints in STRUCTURAL.items():
            if (hparams := hints(order)) is None or (module := _build(arch_name, hparams)) is None:
                continue
            if (mapped := assign_by_position(module, hparams, order)) is not None:
                yield Recognised(arch_name, hparams, mapped, f"{arch_name} generator recognised by structure", module)


def _drop_instance_stats(sd: Tensors) -> Tensors:
    # Old PyTorch saved running statistics for InstanceNorm; current InstanceNorm has none, and
    # a BatchNorm's statistics always come with its affine weights.
    return {k: v for k, v in sd.items()
            if not k.endswith(STAT_NAMES) or k.rsplit(".", 1)[0] + ".weight" in sd}


def _misfit(candidate: Recognised) -> str | None:
    candidate.module = candidate.module or _build(candidate.arch, candidate.hparams)
    if candidate.module is None:
        return f"the hyper-parameters read from it do not build a {candidate.arch}: {candidate.hparams}"
    own = candidate.module.state_dict()
    missing = [k for k in own if k not in candidate.state_dict]
    unexpected = [k for k in candidate.state_dict if k not in own]
    wrong = [k for k in own if k in candidate.state_dict and own[k].shape != candidate.state_dict[k].shape]
    if not (missing or unexpected or wrong):
        return None
    if wrong:
        k = wrong[0]
        return (f"size mismatch for {k}: the file has {tuple(candidate.state_dict[k].shape)}, "
                f"a {candidate.arch} needs {tuple(own[k].shape)}")
    return f"missing keys {missing[:3]}, unexpected keys {unexpected[:3]}"


def _build(arch_name: str, hparams: dict) -> nn.Module | None:
    try:
        return registry.build_uninitialised(arch_name, **hparams)
    except (TypeError, ValueError, RuntimeError):
        return None


def _orders(sd: Tensors) -> list[Tensors]:
    """The file's own key order (how the modules were registered), then natural order
    (`model.2` before `model.10`), for files whose writer sorted the keys (safetensors)."""
    natural = dict(sorted(sd.items(), key=lambda item: _natural_key(item[0])))
    return [sd] if list(natural) == list(sd) else [sd, natural]


def _natural_key(key: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


# ---- layers --------------------------------------------------------------------------------


@dataclass
class Layer:
    name: str
    tensors: Tensors  # parameter name ("weight", "bias", "running_mean", ...) -> tensor

    @property
    def kind(self) -> str:
        weight = self.tensors.get("weight")
        if weight is not None and weight.ndim == 4 and set(self.tensors) <= {"weight", "bias"}:
            return "conv"
        if set(self.tensors) <= {"weight", "bias", *STAT_NAMES} and all(t.ndim <= 1 for t in self.tensors.values()):
            return "norm"
        return "other"

    @property
    def shape(self) -> tuple:
        return tuple(self.tensors["weight"].shape)

    @property
    def stats_only(self) -> bool:
        return self.kind == "norm" and "weight" not in self.tensors


def layers_of(sd: Tensors) -> list[Layer]:
    """Consecutive keys of one module form a layer, in the order given."""
    layers: list[Layer] = []
    for key, tensor in sd.items():
        module, _, param = key.rpartition(".")
        if not layers or layers[-1].name != module or param in layers[-1].tensors:
            layers.append(Layer(module, {}))
        layers[-1].tensors[param] = tensor
    return layers


def norm_kind(layers: list[Layer]) -> str | None:
    """What the norm layers' tensors say: BatchNorm (affine + running statistics), affine
    InstanceNorm (affine only), plain InstanceNorm (nothing, or the running statistics old
    PyTorch versions saved for it); None when the layers disagree."""
    norms = [layer for layer in layers if layer.kind == "norm" and not layer.stats_only]
    if not norms:
        return "instance"
    running = {"running_mean" in layer.tensors for layer in norms}
    if len(running) > 1:
        return None
    return "batch" if running == {True} else "instance_affine"


def _bias_hparams(norm: str, convs: list[Layer]) -> dict:
    # Only a bias the file has and our rule would leave out needs a flag; a bias our rule
    # wants and the file lacks is filled with zeros by assign_by_position.
    has_bias = any("bias" in conv.tensors for conv in convs)
    return {"bias": True} if has_bias and not conv_bias(norm) else {}


def conv_chain(sd: Tensors) -> tuple[list[Layer], str] | None:
    """The convolutions and the norm kind of a file made of convs and norm layers only."""
    layers = layers_of(sd)
    norm = norm_kind(layers)
    if norm is None or any(layer.kind == "other" for layer in layers):
        return None
    return [layer for layer in layers if layer.kind == "conv"], norm


def resnet_hints(sd: Tensors) -> dict | None:
    chain = conv_chain(sd)
    if chain is None:
        return None
    convs, norm = chain
    if len(convs) < 7 or convs[0].shape[2:] != (7, 7) or convs[-1].shape[2:] != (7, 7):
        return None
    ngf, in_ch = convs[0].shape[:2]
    width = 4 * ngf
    n_blocks, rest = divmod(sum(1 for conv in convs if conv.shape == (width, width, 3, 3)), 2)
    if rest or len(convs) != 6 + 2 * n_blocks:
        return None
    hparams = {"in_ch": in_ch, "out_ch": convs[-1].shape[0], "ngf": ngf, "n_blocks": n_blocks, "norm": norm,
               "use_dropout": False, **_bias_hparams(norm, convs[:-1])}
    # A transposed conv stores (in, out, k, k); a conv after a nearest upsample (out, in, k, k).
    if convs[3 + 2 * n_blocks].shape[:2] == (2 * ngf, width):
        hparams["upsample"] = "nearest"
    return hparams


def unet_hints(sd: Tensors) -> dict | None:
    chain = conv_chain(sd)
    if chain is None:
        return None
    convs, norm = chain
    if len(convs) < 10 or len(convs) % 2 or any(c.shape[2:] != (4, 4) for c in convs):
        return None
    ngf, in_ch = convs[0].shape[:2]
    return {"in_ch": in_ch, "out_ch": convs[-1].shape[1], "num_downs": len(convs) // 2, "ngf": ngf,
            "norm": norm, "use_dropout": True, **_bias_hparams(norm, convs[:-1])}


STRUCTURAL: dict[str, Callable[[Tensors], dict | None]] = {"resnet": resnet_hints, "unet": unet_hints}


def assign_by_position(module: nn.Module, hparams: dict, sd: Tensors) -> Tensors | None:
    """The file's tensors under our names, layer by layer, when every layer of our network has
    the file's shapes; a conv bias the file lacks becomes zeros. None when anything differs."""
    norm = hparams.get("norm")
    theirs = [layer for layer in layers_of(sd) if not (norm == "instance" and layer.stats_only)]
    ours = layers_of(module.state_dict())
    if len(theirs) != len(ours):
        return None
    mapped: Tensors = {}
    for own, their in zip(ours, theirs):
        if own.kind != their.kind or set(their.tensors) - set(own.tensors):
            return None
        for param, own_tensor in own.tensors.items():
            tensor = their.tensors.get(param)
            if tensor is None:
                tensor = _filler(param, own_tensor)
            if tensor is None or tensor.shape != own_tensor.shape:
                return None
            mapped[f"{own.name}.{param}"] = tensor
    return mapped


def _filler(param: str, like: torch.Tensor) -> torch.Tensor | None:
    if param == "bias":
        return torch.zeros(like.shape)
    if param == "num_batches_tracked":
        return torch.zeros((), dtype=torch.long)
    return None


# ---- when nothing matches ------------------------------------------------------------------


def describe(sd: Tensors) -> str:
    """What the file holds, in the terms the structural recognition uses."""
    layers = layers_of(sd)
    convs = [layer for layer in layers if layer.kind == "conv"]
    parts = [f"{len(sd)} tensors, {len(convs)} convolutions"]
    if convs:
        parts.append(f"first conv {convs[0].name} {_shape(convs[0])}, last conv {convs[-1].name} {_shape(convs[-1])}")
        square = [conv.shape for conv in convs if conv.shape[0] == conv.shape[1] and conv.shape[2:] == (3, 3)]
        if square:
            width = max(set(square), key=square.count)
            parts.append(f"{square.count(width) // 2} residual-block-like pairs of {width[0]}->{width[0]} 3x3 convs")
    norms = [layer for layer in layers if layer.kind == "norm"]
    batch = sum(1 for n in norms if "weight" in n.tensors and "running_mean" in n.tensors)
    affine = sum(1 for n in norms if "weight" in n.tensors and "running_mean" not in n.tensors)
    stats = sum(1 for n in norms if n.stats_only)
    if norms:
        parts.append(f"norm layers: {batch} with affine weights and running statistics (BatchNorm), "
                     f"{affine} affine only (InstanceNorm affine or other), {stats} running statistics only")
    else:
        parts.append("no norm tensors (plain InstanceNorm or no norm)")
    others = [layer for layer in layers if layer.kind == "other"]
    if others:
        parts.append(f"{len(others)} other layers, e.g. {others[0].name or 'tensors at the top level'} "
                     f"({', '.join(f'{k} {tuple(v.shape)}' for k, v in list(others[0].tensors.items())[:2])})")
    return "; ".join(parts)


def _shape(layer: Layer) -> str:
    return "x".join(str(d) for d in layer.shape)

"""The two older RRDBNet key layouts, renamed onto our (BasicSR) RRDBNet.

- The original ESRGAN layout, which most community upscalers on OpenModelDB still use: one flat
  `model` sequence: `model.0` first conv, `model.1.sub.N.RDBk.convj.0` the dense blocks with
  `model.1.sub.<num_block>` the trunk conv, then per x2 stage an upsample, a conv
  (`model.3`, `model.6`, ...) and an activation, then the HR conv and the last conv
  (`model.<3u+2>`, `model.<3u+4>` after u stages). 1x and 2x models made from Real-ESRGAN fold
  pixels into channels first (pixel unshuffle): their first conv sees 4x or 16x the channels.
- The BSRGAN / RealSR layout: `RRDB_trunk.N.RDBk.convj`, `trunk_conv`, `upconv1`, `upconv2`,
  `HRconv`, `conv_last`.

Both compute exactly what RRDBNet computes, so only the names change.
"""

from __future__ import annotations

import re

import torch

from img2img.nets.sr import block_indices, rrdb_hparams

Converted = tuple[dict, dict[str, torch.Tensor]]  # (RRDBNet hparams, state_dict in our names)

_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_BSRGAN_RDB = re.compile(r"RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)$")


def from_original_esrgan(sd) -> Converted | None:
    if "model.0.weight" not in sd or "model.1.sub.0.RDB1.conv1.0.weight" not in sd:
        return None
    if any(".conv1x1." in key for key in sd):  # ESRGAN+ adds 1x1 convs RRDBNet does not have
        return None
    num_block = len(block_indices(sd, r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight$"))
    tail = sorted(block_indices(sd, r"model\.(\d+)\.weight$") - {0})
    num_up = (len(tail) - 2)
    # Each x2 stage is (upsample, conv, activation): its conv sits at 3, 6, 9, ...
    expected = [3 * (i + 1) for i in range(num_up)] + [3 * num_up + 2, 3 * num_up + 4]
    if num_up < 0 or tail != expected:
        return None
    names = {"model.0": "conv_first", f"model.1.sub.{num_block}": "conv_body",
             f"model.{3 * num_up + 2}": "conv_hr", f"model.{3 * num_up + 4}": "conv_last"}
    names.update({f"model.{3 * (i + 1)}": f"conv_up{i + 1}" for i in range(num_up)})
    return _rename(sd, names, _OLD_RDB, num_block, num_up, "model.1.sub.0.RDB1.conv1.0.weight")


def from_bsrgan(sd) -> Converted | None:
    if not all(k in sd for k in ("conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight", "trunk_conv.weight")):
        return None
    num_block = len(block_indices(sd, r"RRDB_trunk\.(\d+)\.RDB1\.conv1\.weight$"))
    num_up = len(block_indices(sd, r"upconv(\d+)\.weight$"))
    names = {"conv_first": "conv_first", "trunk_conv": "conv_body", "HRconv": "conv_hr", "conv_last": "conv_last"}
    names.update({f"upconv{i + 1}": f"conv_up{i + 1}" for i in range(num_up)})
    return _rename(sd, names, _BSRGAN_RDB, num_block, num_up, "RRDB_trunk.0.RDB1.conv1.weight")


def _rename(sd, names: dict[str, str], rdb_pattern: re.Pattern, num_block: int, num_up: int,
            first_rdb_key: str) -> Converted | None:
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if match := rdb_pattern.match(key):
            block, rdb, conv, kind = match.groups()
            renamed[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = tensor
            continue
        module, _, kind = key.rpartition(".")
        if module not in names:
            return None  # a tensor this layout does not have: not an RRDBNet
        renamed[f"{names[module]}.{kind}"] = tensor
    last = renamed.get("conv_last.weight")
    if last is None or "conv_first.weight" not in renamed:
        return None
    hparams = rrdb_hparams(renamed["conv_first.weight"], last, sd[first_rdb_key], num_block, num_up)
    return None if hparams is None else (hparams, renamed)


LAYOUTS = {"original ESRGAN": from_original_esrgan, "BSRGAN/RealSR": from_bsrgan}

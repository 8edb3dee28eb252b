"""Device choices shared by training and inference: which device, which autocast dtype, how
many loader processes."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from img2img.config import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
    if device.type not in ("cuda", "cpu"):  # mps, xpu, meta...: nothing here is written or tested for them
        raise ConfigError(f"--device {name}: img2img runs on cpu or cuda (cuda:N)")
    return device


REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def autocast_dtype(device: torch.device, amp: str, allowed: tuple = REDUCED_PRECISION) -> torch.dtype | None:
    """The autocast precision for `amp` (AMP_CHOICES), if the model declares it supports it;
    None: fp32 (amp off, or nothing allowed). fp16 needs loss scaling in training. A CPU runs
    bf16 only when asked: `auto` keeps it in fp32, the precision the reference outputs and the
    learning figures were made in (bf16 is 1.7x faster there only on CPUs with bf16
    instructions, RESULTS.md)."""
    if amp == "off" or device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cpu":
        preferred = (torch.bfloat16,) if amp == "bf16" else ()
    elif amp == "auto":
        preferred = REDUCED_PRECISION if torch.cuda.is_bf16_supported() else (torch.float16,)
    else:
        preferred = {"bf16": (torch.bfloat16,), "fp16": (torch.float16,)}[amp]
    return next((dtype for dtype in preferred if dtype in allowed), None)


def amp_note(device: torch.device, amp: str, chosen: torch.dtype | None = None) -> str | None:
    """What to tell a user whose --amp this device, or the model (`chosen`: what autocast_dtype
    gave it), does not run (None: nothing)."""
    if device.type == "cpu" and amp == "fp16":
        return "--amp fp16: a CPU has no fp16 autocast, so this runs in fp32; --amp bf16 is a CPU's reduced precision"
    if amp in ("bf16", "fp16") and chosen is None and device.type in ("cpu", "cuda"):
        return f"--amp {amp}: this model's architecture declares no {amp} support, so it runs in fp32"
    return None


def default_workers(device: torch.device, training: bool = False) -> int:
    """Loader processes: a GPU needs several to stay fed. On a CPU they compete with the
    network's threads for the cores: translate decodes in line (measured in
    benchmarks/translate.py); training keeps up to two for its augmentation and degradations."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, max(1, cpus - 1))
    return max(0, min(2, cpus - 1)) if training else 0


def default_writers(device: torch.device) -> int:
    """Encoding threads for translate: on a GPU enough to keep up with it (JPEG encoding
    is ~1.4 ms per 256x256 image per thread, the GPU's network ~1 ms); on a CPU four, which
    mostly wait for the network."""
    cpus = os.cpu_count() or 1
    return min(8, max(4, cpus // 2)) if device.type == "cuda" else 4


def compiled(module: nn.Module, **options) -> nn.Module:
    """torch.compile, with the compiler's own log lines (warnings about its symbolic shapes
    by the hundred with dynamic=True) kept off the user's terminal: errors still show."""
    torch._logging.set_logs(all=logging.ERROR)
    return torch.compile(module, **options)

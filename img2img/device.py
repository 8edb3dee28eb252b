"""Device choices shared by training and inference: which device, which autocast dtype, how
many loader processes."""

from __future__ import annotations

import os

import torch

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
    return device


REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def autocast_dtype(device: torch.device, amp: str, allowed: tuple = REDUCED_PRECISION) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (which needs loss scaling in training), and only
    a precision the model declares it supports; None: fp32 (CPU, amp off, or nothing allowed)."""
    if device.type != "cuda" or amp == "off":
        return None
    preferred = REDUCED_PRECISION if torch.cuda.is_bf16_supported() else (torch.float16,)
    return next((dtype for dtype in preferred if dtype in allowed), None)


def default_workers(device: torch.device, training: bool = False) -> int:
    """Loader processes: a GPU needs several to stay fed. On a CPU they compete with the
    network's threads for the cores: translate decodes in line (measured in
    benchmarks/translate.py); training keeps up to two for its augmentation and degradations."""
    cpus = os.cpu_count() or 1
    if device.type == "cuda":
        return min(8, max(1, cpus - 1))
    return max(0, min(2, cpus - 1)) if training else 0

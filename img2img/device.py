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


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """bf16 where the GPU supports it, else fp16 (which needs loss scaling); None: fp32 (CPU, or amp off)."""
    if device.type != "cuda" or amp == "off":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def default_workers(device: torch.device) -> int:
    """Loader processes: a GPU needs several to stay fed; on a CPU they compete with the
    network for the cores, so at most two, leaving one core to the main process."""
    cpus = os.cpu_count() or 1
    return min(8, max(1, cpus - 1)) if device.type == "cuda" else max(0, min(2, cpus - 1))

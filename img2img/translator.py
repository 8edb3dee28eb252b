"""A generator applied to batches of images in [0, 1], whatever its own pixel convention:
padding to what the architecture needs, eval/train norm modes, autocast with an fp32 retry."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from img2img.data.images import Image
from img2img.device import REDUCED_PRECISION, autocast_dtype, compiled
from img2img.gan.checkpoint import GeneratorSpec, channels


def set_bn_mode(module: nn.Module, mode: str) -> None:
    """eval: BatchNorm running statistics, dropout off. train: what the reference test script
    does by default (it never calls eval()): each image normalised by its own statistics and
    dropout active; running statistics are left untouched."""
    module.eval()
    if mode == "eval":
        return
    for layer in module.modules():
        if isinstance(layer, (nn.BatchNorm2d, nn.Dropout)):
            layer.train()
            if isinstance(layer, nn.BatchNorm2d):
                layer.momentum = 0.0  # batch statistics are used but never stored


def to_network_range(x: torch.Tensor, pixel_range: str) -> torch.Tensor:
    """[0, 1] images in the network's own convention ("-1,1": pix2pix/CycleGAN; "0,1": SR)."""
    return x * 2 - 1 if pixel_range == "-1,1" else x


def to_unit_range(y: torch.Tensor, pixel_range: str) -> torch.Tensor:
    """A network's output back to [0, 1], clamped."""
    return ((y + 1) / 2 if pixel_range == "-1,1" else y).clamp(0, 1)


BT601 = (0.299, 0.587, 0.114)  # the luma weights of gray models' training data (OpenCV, Pillow, kornia)


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W -> N x 1 x H x W for one-channel models; a gray image (three equal
    channels) gives its own values back."""
    weights = torch.tensor(BT601, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)


def pad_to_multiple(x: torch.Tensor, multiple: int, min_size: int = 1,
                    square: bool = False) -> tuple[torch.Tensor, int, int]:
    """Pad right/bottom to a multiple (at least min_size; square if asked): reflect as far as
    the image reaches, replicate the rest. This is spandrel's rule too, so community models see
    the same borders in both. Traceable: an exported graph pads every size as translate does."""
    height, width = x.shape[-2:]
    target_h, target_w = _grown(height, multiple, min_size), _grown(width, multiple, min_size)
    if square:
        target_h = target_w = _larger(target_h, target_w)
    pad_h, pad_w = target_h - height, target_w - width
    traced = torch.jit.is_tracing()  # the sizes are values of the graph there: no branching on them
    if not traced and pad_h == 0 and pad_w == 0:
        return x, height, width
    reflect_h, reflect_w = _smaller(pad_h, height - 1), _smaller(pad_w, width - 1)
    x = F.pad(x, (0, reflect_w, 0, reflect_h), mode="reflect")
    if traced or reflect_h < pad_h or reflect_w < pad_w:
        x = F.pad(x, (0, pad_w - reflect_w, 0, pad_h - reflect_h), mode="replicate")
    return x, height, width


def _grown(size, multiple: int, min_size: int):
    """The smallest multiple of `multiple` that is at least `size` and `min_size`."""
    return (_larger(size, min_size) + multiple - 1) // multiple * multiple


def _larger(a, b):
    return torch.maximum(torch.as_tensor(a), torch.as_tensor(b)) if torch.jit.is_tracing() else max(a, b)


def _smaller(a, b):
    return torch.minimum(torch.as_tensor(a), torch.as_tensor(b)) if torch.jit.is_tracing() else min(a, b)


def prefers_channels_last(module: nn.Module, device: torch.device) -> bool:
    """Convolutions run faster channels-last on recent GPUs, but PyTorch's instance norm does
    not: on an H100, bf16, resnet_9blocks ran at 870 img/s channels-last and 1178 NCHW, while
    SRVGG and RRDBNet gained 44% and 32% (benchmarks/pipeline.py, RESULTS.md). On a CPU (oneDNN)
    all three gain, instance norm included: 6%, 6% and 9% in fp32 (RESULTS.md)."""
    if device.type == "cpu":
        return True
    return device.type == "cuda" and not any(isinstance(layer, nn.InstanceNorm2d) for layer in module.modules())


def input_channels(module: nn.Module, spec: GeneratorSpec) -> int:
    """What the network takes: a community model says so itself, ours in its hyper-parameters."""
    return int(getattr(module, "in_channels", 0) or channels(spec.hparams)[0])


def tiling_advice(module: nn.Module, one_by_one: bool) -> tuple[str, str]:
    """Whether tiles give the whole image's result: "supported", "discouraged" or "internal"
    (the model tiles by itself), and why not where they do not."""
    if one_by_one:
        return "discouraged", "--bn-mode train normalises what the network sees at once, here each tile by itself"
    if any(isinstance(m, nn.InstanceNorm2d) for m in module.modules()):
        return "discouraged", "it normalises by the statistics of what it sees (instance norm), here each tile's"
    return getattr(module, "tiling", "supported"), getattr(module, "tiling_reason", "")


class Translator:
    """A loaded generator applied to batches of same-sized images in [0, 1]."""

    def __init__(self, module: nn.Module, spec: GeneratorSpec, device: torch.device,
                 bn_mode: str = "eval", amp: str = "auto", compile: bool = False):
        self.spec, self.device = spec, device
        self.module = module.to(device)
        set_bn_mode(self.module, bn_mode)
        # Batch statistics would mix the images of a batch: the reference normalises each by its own.
        self.one_by_one = bn_mode == "train" and any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
        self.multiple = int(getattr(module, "multiple", 1))
        self.min_size = int(getattr(module, "min_size", 1))
        self.square = bool(getattr(module, "square", False))
        self.scale = int(spec.scale)
        self.in_channels = input_channels(module, spec)
        # Community models (nets.zoo) declare their precisions and their advice on tiling.
        self.dtype = autocast_dtype(device, amp, getattr(module, "reduced_precision", REDUCED_PRECISION))
        self.tiling, self.tiling_reason = tiling_advice(module, self.one_by_one)
        self.fp32_retries = 0
        self.channels_last = getattr(module, "channels_last", True) and prefers_channels_last(module, device)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        self.forward = compiled(self.module, dynamic=True) if compile else self.module

    @torch.inference_mode()
    def run(self, rgb: torch.Tensor) -> torch.Tensor:
        """N x 3 x H x W in [0, 1] (any device) -> N x 3 x sH x sW in [0, 1] on the device."""
        x = rgb.to(self.device, non_blocking=True).float()
        if self.in_channels == 1:
            x = luma(x)
        x = to_network_range(x, self.spec.pixel_range)
        padded, height, width = pad_to_multiple(x, self.multiple, self.min_size, self.square)
        if self.channels_last:
            padded = padded.contiguous(memory_format=torch.channels_last)
        if self.one_by_one:
            y = torch.cat([self._forward(image) for image in padded.split(1)])
        else:
            y = self._forward(padded)
        y = to_unit_range(y[..., : height * self.scale, : width * self.scale], self.spec.pixel_range)
        return y.expand(-1, 3, -1, -1) if y.shape[1] == 1 else y

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return self.forward(x).float()
        with torch.autocast(self.device.type, dtype=self.dtype):
            y = self.forward(x).float()
        # Only fp16 overflows where fp32 does not (bf16 has fp32's exponent range), and the
        # check waits for the device: the GPU would idle while the host prepares the next batch.
        if self.dtype != torch.float16 or torch.isfinite(y).all():
            return y
        self.fp32_retries += 1  # fp16 overflow: this batch again in full precision
        return self.module(x).float()

    def __call__(self, image: Image) -> Image:
        """One image in, one image out (alpha carried through, upscaled for SR)."""
        y = self.run(image.rgb.unsqueeze(0))[0].cpu()
        return Image(rgb=y, alpha=scale_alpha(image.alpha, self.scale), gray=image.gray, bits=image.bits)


def scale_alpha(alpha: torch.Tensor | None, scale: int) -> torch.Tensor | None:
    if alpha is None or scale == 1:
        return alpha
    return F.interpolate(alpha[None], scale_factor=scale, mode="bicubic")[0].clamp(0, 1)

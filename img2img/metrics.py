"""Super-resolution metrics in the BasicSR convention, so numbers compare with published tables.

PSNR and SSIM are computed on the Y channel of ITU-R BT.601 YCbCr (the 16..235 studio range
MATLAB's rgb2ycbcr gives), after cropping `border` pixels from every side (usually the scale:
the border is where an upscaler lacks context), on images rounded to 8 bits as they would be
written. SSIM is the Gaussian-window (11x11, sigma 1.5) SSIM of Wang et al. 2004, which is
what BasicSR and skimage's `structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)` compute. Inputs are NCHW RGB tensors in [0, 1]; results are
per-image values averaged over the batch.
"""

from __future__ import annotations

import torch

SSIM_WINDOW = 11


def rgb_to_y(rgb: torch.Tensor) -> torch.Tensor:
    """N3HW RGB in [0, 1] -> N1HW Y in [16/255, 235/255]."""
    weights = rgb.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return (16.0 + (rgb * weights).sum(dim=1, keepdim=True)) / 255.0


def prepare(image: torch.Tensor, border: int, quantize: bool, y_channel: bool = True) -> torch.Tensor:
    image = image.detach().float().clamp(0, 1)
    if quantize:  # what a written 8-bit file holds, and what BasicSR measures
        image = (image * 255.0).round() / 255.0
    if y_channel:
        image = rgb_to_y(image)
    if border > 0:
        image = image[..., border:-border, border:-border]
    return image


def _psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over the batch of each image's PSNR, in dB."""
    import kornia  # here: the CLI's start-up needs none of it

    return float(torch.stack([kornia.metrics.psnr(o, r, max_val=1.0) for o, r in zip(out, ref)]).mean())


def _ssim(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over the batch of each image's SSIM, per channel then averaged over the channels."""
    import kornia

    if min(out.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} px after the border crop, "
                         f"got {out.shape[-2]}x{out.shape[-1]}")
    # 'valid': only windows that lie inside the image, as skimage and BasicSR average them.
    ssim_map = kornia.metrics.ssim(out, ref, SSIM_WINDOW, max_val=1.0, padding="valid")
    return float(ssim_map.flatten(1).mean(dim=1).mean())


def psnr_y(output: torch.Tensor, target: torch.Tensor, border: int = 0, quantize: bool = True) -> float:
    """Mean over the batch of each image's PSNR on Y, in dB."""
    return _psnr(prepare(output, border, quantize), prepare(target, border, quantize))


def ssim_y(output: torch.Tensor, target: torch.Tensor, border: int = 0, quantize: bool = True) -> float:
    """Mean over the batch of each image's SSIM on Y."""
    return _ssim(prepare(output, border, quantize), prepare(target, border, quantize))


# ---- the same on all three RGB channels (BasicSR's test_y_channel=False) -----------------


def psnr_rgb(output: torch.Tensor, target: torch.Tensor, border: int = 0, quantize: bool = True) -> float:
    """Mean over the batch of each image's PSNR over all channels at once, in dB."""
    return _psnr(prepare(output, border, quantize, False), prepare(target, border, quantize, False))


def ssim_rgb(output: torch.Tensor, target: torch.Tensor, border: int = 0, quantize: bool = True) -> float:
    """Mean over the batch of each image's SSIM: per channel, then averaged over the channels
    (what BasicSR and skimage's `channel_axis` do)."""
    return _ssim(prepare(output, border, quantize, False), prepare(target, border, quantize, False))

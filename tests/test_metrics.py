"""PSNR/SSIM on Y in the BasicSR convention, checked against scikit-image on real photographs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from img2img.data.images import read_image
from img2img.demo import photo_paths
from img2img.metrics import psnr_y, rgb_to_y, ssim_y


def reference_y(image: torch.Tensor, border: int) -> np.ndarray:
    """BasicSR: round to uint8, then Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on 0..255."""
    u8 = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).round()
    y = 16.0 + u8 @ np.array([65.481, 128.553, 24.966]) / 255.0
    return y[border:-border, border:-border] if border else y


@pytest.fixture(scope="module")
def photo_pairs():
    """(distorted, original) batches: a bicubic x2 round trip, and the same with noise."""
    _, held_out = photo_paths()
    hr = torch.stack([read_image(p).rgb for p in held_out[:3]])
    lr = F.interpolate(hr, scale_factor=0.5, mode="bicubic", antialias=True)
    up = F.interpolate(lr, scale_factor=2, mode="bicubic").clamp(0, 1)
    noisy = (hr + 0.03 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return {"bicubic": (up, hr), "noisy": (noisy, hr)}


@pytest.mark.parametrize("kind", ["bicubic", "noisy"])
@pytest.mark.parametrize("border", [0, 2, 4])
def test_psnr_and_ssim_match_skimage_on_y(photo_pairs, kind, border):
    output, target = photo_pairs[kind]
    psnrs, ssims = [], []
    for out, ref in zip(output, target):
        y_out, y_ref = reference_y(out, border), reference_y(ref, border)
        psnrs.append(peak_signal_noise_ratio(y_ref, y_out, data_range=255))
        ssims.append(structural_similarity(y_ref, y_out, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=255))
    assert psnr_y(output, target, border) == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert ssim_y(output, target, border) == pytest.approx(np.mean(ssims), abs=1e-5)


def test_y_channel_spans_the_studio_range():
    black, white = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert float(rgb_to_y(black).mean()) == pytest.approx(16 / 255)
    assert float(rgb_to_y(white).mean()) == pytest.approx(235 / 255, abs=1e-4)


def test_identical_images_score_perfectly_and_worse_images_lower(photo_pairs):
    up, hr = photo_pairs["bicubic"]
    assert ssim_y(hr, hr) == pytest.approx(1.0)
    assert psnr_y(up, hr, 2) > psnr_y(photo_pairs["noisy"][0], hr, 2)


def test_ssim_refuses_images_smaller_than_its_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_y(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16), border=4)

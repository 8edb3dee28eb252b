"""LR images made on the fly: sizes, ranges, determinism under a seed, kernels, and the SR
datasets built on them (random patches, explicit LR/HR pairs, offending files named)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from img2img.config import ConfigError, make_config
from img2img.data import degrade as dg
from img2img.data.datasets import DataError
from img2img.data.images import read_image
from img2img.data.sr_data import SRDataset, scan_hr, scan_sr_pairs, scan_training
from img2img.demo import photo_paths
from img2img.metrics import psnr_y


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    train, _ = photo_paths()
    return [read_image(p).rgb.permute(1, 2, 0).numpy()[:96, :96] for p in train[::6]]


@pytest.mark.parametrize("kind", dg.DEGRADATIONS)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_lr_is_hr_over_scale_in_range_and_8_bit(photos, kind, scale):
    for seed, hr in enumerate(photos):
        lr = dg.degrade(hr, scale, kind, np.random.default_rng(seed))
        assert lr.shape == (96 // scale, 96 // scale, 3) and lr.dtype == np.float32
        assert 0.0 <= lr.min() and lr.max() <= 1.0
        assert np.allclose(lr * 255, np.round(lr * 255), atol=1e-4)


def test_same_seed_same_lr_and_other_seeds_differ(photos):
    hr = photos[0]
    first = dg.degrade(hr, 4, "realesrgan", np.random.default_rng(7))
    again = dg.degrade(hr, 4, "realesrgan", np.random.default_rng(7))
    assert np.array_equal(first, again)
    others = [dg.degrade(hr, 4, "realesrgan", np.random.default_rng(seed)) for seed in range(8, 12)]
    assert all(not np.array_equal(first, other) for other in others)


def test_bicubic_matches_an_antialiased_downscale_and_ignores_the_seed(photos):
    hr = photos[1]
    lr = dg.degrade(hr, 2, "bicubic", np.random.default_rng(0))
    assert np.array_equal(lr, dg.degrade(hr, 2, "bicubic", np.random.default_rng(1)))
    area = cv2.resize(hr, (48, 48), interpolation=cv2.INTER_AREA)
    assert np.abs(lr - area).mean() < 0.02  # the same picture at half size


@pytest.mark.parametrize("kind", dg.KERNEL_TYPES)
def test_every_kernel_type_is_normalised_and_centred(kind):
    rng = np.random.default_rng(3)
    for size in (7, 13, 21):
        kernel = dg.mixed_kernel(rng, kind, size, dg.KernelSettings())
        assert kernel.shape == (size, size) and kernel.sum() == pytest.approx(1.0, abs=1e-5)
        assert np.unravel_index(kernel.argmax(), kernel.shape) == (size // 2, size // 2)
        assert np.allclose(kernel, kernel[::-1, ::-1], atol=1e-6)  # point-symmetric


def test_anisotropic_kernels_are_elongated_and_isotropic_ones_round():
    iso = dg.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0)
    aniso = dg.generalized_gaussian_kernel(21, 3.0, 0.5, 0.0)
    assert np.allclose(iso, iso.T, atol=1e-7)
    assert aniso[10, 10 + 4] > 10 * aniso[10 + 4, 10]  # wide along x, narrow along y


def test_plateau_and_generalized_kernels_differ_from_the_gaussian():
    gauss = dg.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, beta=1.0)
    flat_top = dg.generalized_gaussian_kernel(21, 2.0, 2.0, 0.0, beta=4.0)
    plateau = dg.plateau_kernel(21, 2.0, 2.0, 0.0, beta=1.5)
    assert flat_top[10, 11] / flat_top[10, 10] > gauss[10, 11] / gauss[10, 10]
    assert plateau[10, 0] > gauss[10, 0]  # heavier tails


def test_sinc_kernel_is_a_circular_low_pass_with_ringing():
    kernel = dg.sinc_kernel(21, math.pi / 3)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(kernel, kernel.T, atol=1e-7) and np.allclose(kernel, kernel[::-1], atol=1e-7)
    assert kernel.min() < 0  # the negative lobes that make ringing
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(kernel, (64, 64))))
    low, high = spectrum[32, 32 + 3], spectrum[32, 32 + 20]  # 0.3 rad/px pass, 2 rad/px cut (cutoff 1.05)
    assert low > 0.9 and high < 0.1


def test_random_kernels_are_padded_to_21_and_normalised():
    rng = np.random.default_rng(0)
    settings = dg.KernelSettings(sinc_prob=0.5)
    for _ in range(30):
        kernel = dg.random_kernel(rng, settings)
        assert kernel.shape == (21, 21) and kernel.sum() == pytest.approx(1.0, abs=1e-5)


def test_second_order_degradation_is_visibly_worse_than_bicubic(photos):
    """Upscaled back with bicubic, the Real-ESRGAN LR is much further from the photo than the
    bicubic LR is, and it is not just shifted: it has lost detail (sharpness) or gained noise."""
    bicubic, realistic = [], []
    for seed, hr in enumerate(photos * 2):
        target = torch.from_numpy(hr).permute(2, 0, 1)[None]
        for kind, scores in (("bicubic", bicubic), ("realesrgan", realistic)):
            lr = torch.from_numpy(dg.degrade(hr, 4, kind, np.random.default_rng(seed))).permute(2, 0, 1)[None]
            up = F.interpolate(lr, scale_factor=4, mode="bicubic", antialias=True).clamp(0, 1)
            scores.append(psnr_y(up, target, 4))
    assert np.mean(realistic) < np.mean(bicubic) - 2.0


def test_each_noise_and_jpeg_step_changes_the_image(photos):
    hr = np.ascontiguousarray(photos[2])
    for gray in (False, True):
        noisy = dg.gaussian_noise(hr, 10 / 255, gray, seed=1)
        assert 5 / 255 < np.std(noisy - hr) < 15 / 255
        assert not np.array_equal(dg.poisson_noise(hr, 2.0, gray, seed=1), hr)
    gray_noise = dg.gaussian_noise(np.full((16, 16, 3), 0.5, np.float32), 0.05, True, seed=2) - 0.5
    assert np.allclose(gray_noise[..., 0], gray_noise[..., 2])  # one noise image for all channels
    compressed = dg.jpeg(hr, np.random.default_rng(0), (30, 30))
    assert compressed.shape == hr.shape and 0 < np.abs(compressed - hr).mean() < 0.05


# ---- datasets ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hr_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hr")
    train, _ = photo_paths()
    for path in train[:6]:
        cv2.imwrite(str(folder / f"{path.stem}.png"), cv2.imread(str(path)))
    return folder


@pytest.mark.parametrize("kind", dg.DEGRADATIONS)
def test_sr_dataset_is_deterministic_per_seed(hr_folder, kind):
    dataset = SRDataset(scan_hr(hr_folder, 64), size=64, scale=4, degradation=kind)
    first, again, other = dataset[(2, 11)], dataset[(2, 11)], dataset[(2, 12)]
    assert first["lr"].shape == (3, 16, 16) and first["hr"].shape == (3, 64, 64)
    assert torch.equal(first["lr"], again["lr"]) and torch.equal(first["hr"], again["hr"])
    assert not torch.equal(first["hr"], other["hr"])
    assert 0 <= float(first["lr"].min()) and float(first["lr"].max()) <= 1


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_training_patches_are_windows_of_the_whole_images_downscale(hr_folder, scale):
    """What translate and validation feed the network is the downscale of a whole image; a
    training patch made on the fly must be a window of it, edges included (a patch downscaled on
    its own gets resampling borders instead)."""
    size = 24 * scale
    items = scan_hr(hr_folder, size)
    dataset = SRDataset(items, size=size, scale=scale, degradation="bicubic", symmetry=False)
    hr_image = read_image(items[1].hr).rgb.permute(1, 2, 0).numpy()
    whole = torch.from_numpy(dg.degrade(hr_image, scale, "bicubic", np.random.default_rng(0))).permute(2, 0, 1)
    rows, cols = whole.shape[1] - 23, whole.shape[2] - 23
    for seed in range(8):
        sample = dataset[(1, seed)]
        patch = sample["hr"].permute(1, 2, 0).numpy()
        [(top, left)] = [(t, c) for t in range(rows) for c in range(cols)
                         if np.array_equal(hr_image[t * scale:t * scale + size, c * scale:c * scale + size], patch)]
        window = whole[:, top:top + 24, left:left + 24]
        assert torch.allclose(sample["lr"], window, atol=1e-6), f"seed {seed}: {float((sample['lr'] - window).abs().max())}"


def test_paired_folders_crop_the_same_scene(hr_folder, tmp_path):
    lr_folder = tmp_path / "lr"
    lr_folder.mkdir()
    for path in hr_folder.glob("*.png"):
        hr = cv2.imread(str(path))
        cv2.imwrite(str(lr_folder / path.name), cv2.resize(hr, (64, 64), interpolation=cv2.INTER_AREA))
    dataset = SRDataset(scan_sr_pairs(lr_folder, hr_folder, 3, 48), size=48, scale=3, degradation="bicubic")
    sample = dataset[(0, 5)]
    assert sample["lr"].shape == (3, 16, 16) and sample["hr"].shape == (3, 48, 48)
    down = F.interpolate(sample["hr"][None], size=(16, 16), mode="area")[0]
    assert float((down - sample["lr"]).abs().mean()) < 0.02  # the LR patch shows the HR patch's scene


def test_pairs_with_wrong_sizes_or_missing_partners_are_named(hr_folder, tmp_path):
    lr_folder = tmp_path / "lr"
    lr_folder.mkdir()
    names = sorted(p.name for p in hr_folder.glob("*.png"))
    for name in names[1:]:
        size = 96 if name == names[1] else 64  # names[1]: x2 size, not x3
        cv2.imwrite(str(lr_folder / name), np.zeros((size, size, 3), np.uint8))
    with pytest.raises(DataError) as err:
        scan_sr_pairs(lr_folder, hr_folder, 3, 48)
    text = str(err.value)
    assert f"{names[0]}: no partner" in text
    assert f"{names[1]} is 96x96" in text and "must be 64x64" in text


def test_images_smaller_than_the_patch_and_bad_sizes_are_refused(hr_folder, tmp_path):
    with pytest.raises(DataError, match="smaller than the 256 px HR patch"):
        scan_hr(hr_folder, 256)
    with pytest.raises(ConfigError, match="multiple of --scale 3"):
        make_config("srgan", {"hr": str(hr_folder), "scale": 3, "size": 64})
    with pytest.raises(ConfigError, match="no such folder"):
        scan_training(tmp_path / "missing", None, 2, 128)


# Real-ESRGAN's options/train_realesrgan_x4plus.yml, as published: (first round, second round).
PUBLISHED = {"blur_prob": (1.0, 0.8), "resize_probs": ((0.2, 0.7, 0.1), (0.3, 0.4, 0.3)),
             "resize_range": ((0.15, 1.5), (0.3, 1.2)), "gaussian_noise_prob": (0.5, 0.5),
             "noise_sigma": ((1, 30), (1, 25)), "poisson_scale": ((0.05, 3), (0.05, 2.5)),
             "gray_noise_prob": (0.4, 0.4), "jpeg_quality": ((30, 95), (30, 95))}


@pytest.mark.parametrize("setting", sorted(PUBLISHED))
def test_the_degradation_settings_are_real_esrgans(setting):
    from img2img.data.degrade import REALESRGAN

    assert (getattr(REALESRGAN.first, setting), getattr(REALESRGAN.second, setting)) == PUBLISHED[setting]
    assert REALESRGAN.final_sinc_prob == 0.8


def _matlab_imresize(image: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB's imresize (bicubic, antialiased), one axis at a time, written from its definition:
    the reference for our resize (BasicSR makes its LR images and baselines with it)."""
    def cubic(x):
        x = np.abs(x)
        return np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1, np.where(x <= 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0))

    def along(a, axis):
        size = a.shape[axis]
        out = int(round(size * scale))
        width = 4 / scale if scale < 1 else 4
        u = np.arange(1, out + 1) / scale + 0.5 * (1 - 1 / scale)
        left = np.floor(u - width / 2)
        taps = left[:, None] + np.arange(int(np.ceil(width)) + 2)[None]
        weights = cubic((u[:, None] - taps) * min(scale, 1)) * min(scale, 1)
        weights /= weights.sum(axis=1, keepdims=True)
        index = (taps - 1).astype(int) % (2 * size)  # 'symmetric' borders
        index = np.where(index < size, index, 2 * size - 1 - index)
        return np.moveaxis(np.einsum("ot,ot...->o...", weights, np.moveaxis(a, axis, 0)[index]), 0, axis)

    return along(along(image, 0), 1)


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("shrink", [True, False], ids=["down", "up"])
def test_the_bicubic_resize_is_matlabs_borders_included(scale, shrink):
    """PyTorch's kernel is cut short at the borders (8 grey levels from MATLAB's there, before)."""
    from img2img.data.degrade import matlab_bicubic

    rng = np.random.default_rng(scale)
    image = rng.random((12 * scale if shrink else 9, 15 * scale if shrink else 11, 3))
    ours = matlab_bicubic(torch.from_numpy(image).permute(2, 0, 1)[None].float(), scale, shrink)[0].permute(1, 2, 0)
    reference = _matlab_imresize(image, 1 / scale if shrink else scale)
    assert ours.shape == reference.shape
    assert np.abs(ours.numpy() - reference).max() < 1e-5

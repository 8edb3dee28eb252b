"""Low-resolution images made from high-resolution ones, one sample at a time on the CPU.

- `bicubic`: antialiased bicubic downscaling (PyTorch's, the same filter as PIL's and, away from
  the border, MATLAB's imresize, which made the LR images of the SR benchmarks).
- `realesrgan`: the second-order degradation of Real-ESRGAN (Wang et al. 2021, the
  `RealESRGANModel.feed_data` pipeline with the published `train_realesrgan_x4plus.yml`
  settings): blur (isotropic/anisotropic Gaussian, generalized Gaussian, plateau, or sinc
  kernels), random resize, Gaussian or Poisson noise (colour or gray), JPEG; the same again
  with weaker settings; then the final resize to HR/scale with a sinc filter and JPEG in random
  order. It runs here, per sample in the data loader workers, instead of on GPU batches: every
  random choice then comes from the sample's own seed, so a resumed run or any number of
  workers makes the same LR images. (Real-ESRGAN's unsharp-masking of the HR target is left out:
  it changes what "correct" means for the PSNR we report.)

Images are float32 HxWx3 arrays in [0, 1]; the LR comes back rounded to 8-bit levels, as LR
files are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

DEGRADATIONS = ("bicubic", "realesrgan")
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)
MAX_KERNEL = 21


@dataclass(frozen=True)
class KernelSettings:
    sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    type_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # in KERNEL_TYPES order
    sigma: tuple[float, float] = (0.2, 3.0)
    beta_generalized: tuple[float, float] = (0.5, 4.0)
    beta_plateau: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1


@dataclass(frozen=True)
class OrderSettings:
    """One blur-resize-noise-JPEG round."""

    kernel: KernelSettings = field(default_factory=KernelSettings)
    blur_prob: float = 1.0
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_sigma: tuple[float, float] = (1.0, 30.0)  # on the 0-255 scale
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)


@dataclass(frozen=True)
class RealESRGANSettings:
    first: OrderSettings = field(default_factory=OrderSettings)
    second: OrderSettings = field(default_factory=lambda: OrderSettings(
        kernel=KernelSettings(sigma=(0.2, 1.5)), blur_prob=0.8, resize_probs=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2),
        noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5)))
    final_sinc_prob: float = 0.8


REALESRGAN = RealESRGANSettings()


def degrade(hr: np.ndarray, scale: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """The LR partner of `hr` (size HR // scale), its randomness drawn from `rng` alone."""
    if kind == "bicubic":
        lr = bicubic_downscale(hr, scale)
    elif kind == "realesrgan":
        lr = realesrgan_degrade(hr, scale, rng)
    else:
        raise ValueError(f"unknown degradation {kind!r}; choose one of {', '.join(DEGRADATIONS)}")
    return quantize8(lr)


def quantize8(image: np.ndarray) -> np.ndarray:
    return (np.round(np.clip(image, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def bicubic_downscale(hr: np.ndarray, scale: int) -> np.ndarray:
    """H x W x C -> H // scale x W // scale x C, as MATLAB's imresize (BasicSR's LR images)."""
    x = torch.from_numpy(np.ascontiguousarray(hr, dtype=np.float32)).permute(2, 0, 1)[None]
    return matlab_bicubic(x, scale, shrink=True)[0].permute(1, 2, 0).clamp(0, 1).numpy()


def matlab_bicubic(x: torch.Tensor, scale: int, shrink: bool) -> torch.Tensor:
    """N x C x H x W resized by an integer `scale` as MATLAB's imresize does it (bicubic, a = -0.5,
    antialiased when shrinking; a shrunk image loses the rows and columns past a multiple of the
    scale). PyTorch's antialiased kernel is the same, but cut short at the borders, where MATLAB
    mirrors the image: padded by the kernel's reach first, the two agree everywhere."""
    if shrink:
        x = x[..., : x.shape[-2] // scale * scale, : x.shape[-1] // scale * scale]
    reach = 2 * scale if shrink else 2  # input pixels the kernel spans on each side
    padded = _mirrored(_mirrored(x, reach, -1), reach, -2)
    height, width = x.shape[-2:]
    size = (height // scale + 4, width // scale + 4) if shrink else ((height + 4) * scale, (width + 4) * scale)
    margin = 2 if shrink else 2 * scale  # output pixels made from the padding
    y = F.interpolate(padded, size=size, mode="bicubic", antialias=True, align_corners=False)
    return y[..., margin:-margin, margin:-margin]


def _mirrored(x: torch.Tensor, reach: int, dim: int) -> torch.Tensor:
    """`x` extended by `reach` on both sides of `dim`, mirrored with the edge repeated (MATLAB's
    'symmetric'), as often as needed when `reach` exceeds the image."""
    length = x.shape[dim]
    index = torch.arange(-reach, length + reach, device=x.device) % (2 * length)
    return x.index_select(dim, torch.where(index < length, index, 2 * length - 1 - index))


# ---- kernels ------------------------------------------------------------------------------


def mahalanobis_grid(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """x^T C^-1 x over a size x size grid centred on 0, C the covariance rotated by theta."""
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    covariance = rotation @ np.diag([sigma_x**2, sigma_y**2]) @ rotation.T
    axis = np.arange(size, dtype=np.float64) - (size - 1) / 2
    grid = np.stack(np.meshgrid(axis, axis), axis=-1)
    return np.einsum("hwi,ij,hwj->hw", grid, np.linalg.inv(covariance), grid)


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float,
                                beta: float = 1.0) -> np.ndarray:
    """exp(-0.5 d^beta): a Gaussian for beta 1, flatter-topped above, heavier-tailed below."""
    kernel = np.exp(-0.5 * mahalanobis_grid(size, sigma_x, sigma_y, theta) ** beta)
    return (kernel / kernel.sum()).astype(np.float32)


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    """1 / (1 + d^beta): a flat top with slowly decaying tails (out-of-focus-like blur)."""
    kernel = 1.0 / (1.0 + mahalanobis_grid(size, sigma_x, sigma_y, theta) ** beta)
    return (kernel / kernel.sum()).astype(np.float32)


def sinc_kernel(size: int, cutoff: float) -> np.ndarray:
    """The ideal circular low-pass filter (cutoff in radians per pixel): its ringing is what
    over-sharpened and JPEG-compressed images show around edges."""
    axis = np.arange(size, dtype=np.float64) - (size - 1) / 2
    radius = np.hypot(axis[None, :], axis[:, None])
    bessel = torch.special.bessel_j1(torch.from_numpy(cutoff * radius)).numpy()
    safe_radius = np.where(radius == 0, 1.0, radius)
    # The limit of cutoff * J1(cutoff r) / (2 pi r) at r = 0.
    kernel = np.where(radius == 0, cutoff**2 / (4 * np.pi), cutoff * bessel / (2 * np.pi * safe_radius))
    return (kernel / kernel.sum()).astype(np.float32)


def pad_kernel(kernel: np.ndarray, size: int = MAX_KERNEL) -> np.ndarray:
    pad = (size - kernel.shape[0]) // 2
    return np.pad(kernel, pad)


def random_beta(rng: np.random.Generator, low: float, high: float) -> float:
    # Half the draws below 1 and half above, as Real-ESRGAN does, so that narrow ranges on
    # one side of 1 are not swamped by the wide range on the other.
    return rng.uniform(low, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, high)


def mixed_kernel(rng: np.random.Generator, kind: str, size: int, settings: KernelSettings) -> np.ndarray:
    """One of the Gaussian-family kernels with Real-ESRGAN's parameter distributions."""
    sigma_x = rng.uniform(*settings.sigma)
    if kind.endswith("aniso"):
        sigma_y, theta = rng.uniform(*settings.sigma), rng.uniform(-math.pi, math.pi)
    else:
        sigma_y, theta = sigma_x, 0.0
    if kind.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, theta, random_beta(rng, *settings.beta_plateau))
    beta = random_beta(rng, *settings.beta_generalized) if kind.startswith("generalized") else 1.0
    return generalized_gaussian_kernel(size, sigma_x, sigma_y, theta, beta)


def random_kernel(rng: np.random.Generator, settings: KernelSettings) -> np.ndarray:
    size = int(rng.choice(settings.sizes))
    if rng.random() < settings.sinc_prob:
        # Wider kernels get lower cutoffs: a narrow kernel cannot represent them.
        cutoff = rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi)
        return pad_kernel(sinc_kernel(size, cutoff))
    kind = KERNEL_TYPES[rng.choice(len(KERNEL_TYPES), p=settings.type_probs)]
    return pad_kernel(mixed_kernel(rng, kind, size, settings))


def blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    # filter2D correlates; every kernel here is point-symmetric, so that equals convolution.
    return cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT_101)


# ---- resize, noise, JPEG ------------------------------------------------------------------


def resize(image: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    mode = RESIZE_MODES[rng.integers(len(RESIZE_MODES))]
    out = cv2.resize(image, (max(1, width), max(1, height)), interpolation=mode)
    return out if out.ndim == 3 else out[..., None]


def random_resize(image: np.ndarray, rng: np.random.Generator, settings: OrderSettings,
                  base: tuple[int, int]) -> np.ndarray:
    """Resize `base` (height, width) by a random factor: up, down or kept."""
    direction = rng.choice(3, p=settings.resize_probs)
    low, high = settings.resize_range
    factor = (rng.uniform(1.0, high), rng.uniform(low, 1.0), 1.0)[direction]
    return resize(image, int(base[0] * factor), int(base[1] * factor), rng)


def seed_of(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31 - 1))


def gaussian_noise(image: np.ndarray, sigma: float, gray: bool, seed: int) -> np.ndarray:
    import albumentations as A  # here: the CLI's start-up needs none of it

    # per_channel=False draws one noise image for all channels: Real-ESRGAN's "gray noise".
    transform = A.GaussNoise(std_range=(sigma, sigma), per_channel=not gray, p=1.0)
    transform.set_random_seed(seed)
    return transform(image=image)["image"]


def poisson_noise(image: np.ndarray, scale: float, gray: bool, seed: int) -> np.ndarray:
    import albumentations as A  # here: the CLI's start-up needs none of it

    # Real-ESRGAN counts 256 photons per unit intensity and multiplies the noise by `scale`,
    # so the variance per unit intensity is scale^2 / 256: ShotNoise's scale.
    transform = A.ShotNoise(scale_range=(scale**2 / 256, scale**2 / 256), p=1.0)
    transform.set_random_seed(seed)
    if not gray:
        return transform(image=image)["image"]
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    return np.clip(image + (transform(image=luma)["image"] - luma), 0.0, 1.0)


def add_noise(image: np.ndarray, rng: np.random.Generator, settings: OrderSettings) -> np.ndarray:
    gray = rng.random() < settings.gray_noise_prob
    if rng.random() < settings.gaussian_noise_prob:
        return gaussian_noise(image, rng.uniform(*settings.noise_sigma) / 255.0, gray, seed_of(rng))
    return poisson_noise(image, rng.uniform(*settings.poisson_scale), gray, seed_of(rng))


def jpeg(image: np.ndarray, rng: np.random.Generator, quality_range: tuple[int, int]) -> np.ndarray:
    import albumentations as A  # here: the CLI's start-up needs none of it

    quality = int(rng.integers(quality_range[0], quality_range[1] + 1))
    transform = A.ImageCompression(compression_type="jpeg", quality_range=(quality, quality), p=1.0)
    return transform(image=np.clip(image, 0.0, 1.0))["image"]


# ---- the pipeline -------------------------------------------------------------------------


def degrade_order(image: np.ndarray, rng: np.random.Generator, settings: OrderSettings,
                  base: tuple[int, int]) -> np.ndarray:
    """Blur, random resize relative to `base`, noise, JPEG: one order of the degradation."""
    if rng.random() < settings.blur_prob:
        image = blur(image, random_kernel(rng, settings.kernel))
    image = random_resize(image, rng, settings, base)
    image = add_noise(np.clip(image, 0.0, 1.0), rng, settings)
    return jpeg(image, rng, settings.jpeg_quality)


def final_stage(image: np.ndarray, rng: np.random.Generator, size: tuple[int, int],
                settings: RealESRGANSettings) -> np.ndarray:
    """Resize to the LR size with a sinc filter, and JPEG, in random order: either order leaves
    its own kind of artefact (ringing under or over the blocks)."""
    if rng.random() < settings.final_sinc_prob:
        kernel_size = int(rng.choice(settings.second.kernel.sizes))
        kernel = pad_kernel(sinc_kernel(kernel_size, rng.uniform(math.pi / 3, math.pi)))
    else:
        kernel = None
    quality = settings.second.jpeg_quality

    def resize_and_filter(x: np.ndarray) -> np.ndarray:
        x = resize(x, size[0], size[1], rng)
        return x if kernel is None else blur(x, kernel)

    if rng.random() < 0.5:
        return jpeg(resize_and_filter(image), rng, quality)
    return resize_and_filter(jpeg(image, rng, quality))


def realesrgan_degrade(hr: np.ndarray, scale: int, rng: np.random.Generator,
                       settings: RealESRGANSettings = REALESRGAN) -> np.ndarray:
    height, width = hr.shape[:2]
    lr_size = (height // scale, width // scale)
    image = degrade_order(np.ascontiguousarray(hr, dtype=np.float32), rng, settings.first, (height, width))
    # The second order's resize is relative to the final LR size, as in Real-ESRGAN.
    image = degrade_order(image, rng, settings.second, lr_size)
    return np.clip(final_stage(image, rng, lr_size, settings), 0.0, 1.0)

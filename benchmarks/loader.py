"""Milliseconds per training sample for large photographs: the loaders against their previous
versions, side by side, in one call.

    python benchmarks/loader.py [--megapixels 12] [--load-size 286] [--sr-size 128] [--repeats 7]

Writes one photograph (scikit-image's astronaut, upscaled and given film grain) as a JPEG and
as a PNG of the given size, then times, interleaved and on one thread:
  resize before  decode the whole file, convert it to floats, bicubic resize to load_size
                 (what the CycleGAN / pix2pix / CUT loaders did, as the reference does)
  resize after   img2img.data.images.read_rgb_resized: JPEGs decoded at a reduced scale, large
                 images shrunk by area while still bytes, then floats
  SR before      decode, convert the whole photograph to floats, cut a random --sr-size HR
                 patch and its bicubic x4 LR (what the srgan loader did)
  SR after       the same with only the patch (and its context) converted (sr_data.Lazy)
and prints the medians and their ratio per format.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from img2img.data.images import decode_image, read_image, read_rgb_resized
from img2img.data.sr_data import Lazy, degraded_patch


def before(path: Path, size: int) -> np.ndarray:
    rgb = read_image(path).rgb.permute(1, 2, 0).numpy()
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)


def after(path: Path, size: int) -> np.ndarray:
    return read_rgb_resized(path, size)[0]


def sr_before(path: Path, size: int) -> tuple:
    hr = read_image(path).rgb.permute(1, 2, 0).numpy()
    return degraded_patch(hr, 4, size, "bicubic", np.random.default_rng(0))


def sr_after(path: Path, size: int) -> tuple:
    return degraded_patch(Lazy(decode_image(path)), 4, size, "bicubic", np.random.default_rng(0))


def write_photos(folder: Path, megapixels: float) -> list[Path]:
    from skimage import data

    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = width * 3 // 4
    photo = cv2.resize(data.astronaut()[:, :, ::-1], (width, height), interpolation=cv2.INTER_CUBIC)
    grain = np.random.default_rng(0).normal(0, 6, photo.shape)
    photo = np.clip(photo + grain, 0, 255).astype(np.uint8)
    paths = [folder / "photo.jpg", folder / "photo.png"]
    cv2.imwrite(str(paths[0]), photo, [cv2.IMWRITE_JPEG_QUALITY, 92])
    cv2.imwrite(str(paths[1]), photo)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--load-size", type=int, default=286)
    parser.add_argument("--sr-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_photos(Path(tmp), args.megapixels):
            for what, size, pair in ((f"resize to {args.load_size} px", args.load_size, (before, after)),
                                     (f"SR x4 {args.sr_size} px patch", args.sr_size, (sr_before, sr_after))):
                times = {"before": [], "after": []}
                for _ in range(args.repeats):
                    for name, load in zip(times, pair):
                        start = time.perf_counter()
                        load(path, size)
                        times[name].append(time.perf_counter() - start)
                ms = {name: statistics.median(values) * 1000 for name, values in times.items()}
                print(f"{path.suffix[1:].upper():4} {args.megapixels:g} MP, {what}: before {ms['before']:.0f} ms, "
                      f"after {ms['after']:.0f} ms per image, {ms['before'] / ms['after']:.1f}x")


if __name__ == "__main__":
    main()

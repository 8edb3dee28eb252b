"""What each trainer learns from scratch on the bundled photographs, measured on held-out ones.

    python benchmarks/learning.py srgan [--netG srvgg] [--steps 800] [--photos skimage] [-- extra train flags]
    python benchmarks/learning.py cyclegan [--steps 600] [-- extra train flags]

srgan: `img2img train srgan --hr TRAIN --scale 4 --size 96 --batch-size 8 --steps N
--pretrain-steps N` with default flags otherwise (a pixel-loss run, what a user trains first),
then PSNR-Y / SSIM-Y of the exported generator against bicubic on the 8 held-out photographs
(4 px border crop at x4, BasicSR's Y convention; the run's own validation, --val-hr).
`--photos skimage` trains on ten of scikit-image's sample photographs at their own size
(0.24 to 2 Mpx, 5.0 Mpx in all, where the bundled 24 crops hold 0.9) and holds out the two
whose crops are held out above, chelsea and rocket, whole.

cyclegan: the small unpaired colour task of issue 11: A = 64 crops of 80 px from half of the
training photographs, B = a fixed colour mapping (channels rotated, then the negative) of 64
crops of the other half, `img2img train cyclegan --size 64 --netG resnet_6blocks --ngf 32
--ndf 32 --lambda-identity 0 --batch-size 4 --steps N`; the figure is the mean |G_AB(a) - f(a)|
over the held-out photographs (192 px) divided by the identity's |a - f(a)|.

Each run prints one line; the CPU minutes are wall-clock on this machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from img2img.data.images import Image, read_image, write_image
from img2img.demo import photo_paths
from img2img.gan.checkpoint import load_generator

CROPS, CROP_SIZE = 64, 80


def colour_map(rgb: np.ndarray) -> np.ndarray:
    """HxWx3 in [0, 1] -> B's colours: channels R,G,B <- B,R,G, then the negative."""
    return (1 - rgb[..., [2, 0, 1]]).astype(np.float32)


def hwc(path: Path) -> np.ndarray:
    return read_image(path).rgb.permute(1, 2, 0).numpy()


def write_png(path: Path, rgb: np.ndarray) -> None:
    chw = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    write_image(path, Image(rgb=chw, alpha=None, gray=False, bits=8))


def write_crops(folder: Path, photos: list[Path], seed: int, transform=None) -> None:
    rng = np.random.default_rng(seed)
    images = [hwc(p) for p in photos]
    for index in range(CROPS):
        rgb = images[index % len(images)]
        top, left = (int(rng.integers(0, side - CROP_SIZE + 1)) for side in rgb.shape[:2])
        crop = rgb[top:top + CROP_SIZE, left:left + CROP_SIZE]
        write_png(folder / f"{index:03d}.png", transform(crop) if transform else crop)


def train(task: str, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "img2img", "train", task, *args], check=True,
                   stdout=subprocess.DEVNULL)
    return (time.perf_counter() - start) / 60


# scikit-image's sample photographs at their own resolution (the gray ones
# as RGB), the held-out pair the same two subjects as the bundled crops'.
SKIMAGE_TRAIN = ("astronaut", "coffee", "hubble_deep_field", "immunohistochemistry", "stereo_motorcycle",
                 "retina", "camera", "brick", "grass", "gravel")
SKIMAGE_HELD_OUT = ("chelsea", "rocket")


def write_skimage(folder: Path, names: tuple[str, ...]) -> None:
    import skimage.data

    folder.mkdir()
    for name in names:
        pixels = getattr(skimage.data, name)()
        pixels = pixels[0] if isinstance(pixels, tuple) else pixels  # the stereo pair's left image
        rgb = np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels
        write_png(folder / f"{name}.png", rgb.astype(np.float32) / 255)


def srgan_data(photos: str, root: Path) -> None:
    if photos == "skimage":
        write_skimage(root / "train", SKIMAGE_TRAIN)
        write_skimage(root / "val", SKIMAGE_HELD_OUT)
        return
    train_photos, held_out = photo_paths()
    for name, paths in (("train", train_photos), ("val", held_out)):
        (root / name).mkdir()
        for path in paths:
            (root / name / path.name).write_bytes(path.read_bytes())


def srgan(opts, extra: list[str], root: Path) -> None:
    srgan_data(opts.photos, root)
    run = root / "run"
    minutes = train("srgan", ["--hr", str(root / "train"), "--val-hr", str(root / "val"), "--scale", "4",
                              "--netG", opts.netG, "--size", "96", "--batch-size", "8", "--steps", str(opts.steps),
                              "--pretrain-steps", str(opts.steps), "--out", str(run), *extra])
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["val"]["psnr_y"] - r["val"]["psnr_y_bicubic"]) for r in records if "val" in r]
    val = [r["val"] for r in records if "val" in r][-1]
    print("over bicubic by step: " + ", ".join(f"{step} {gain:+.2f}" for step, gain in curve))
    print(f"srgan {opts.netG} {opts.photos} photos {' '.join(extra)}: {opts.steps} steps, {minutes:.1f} min; held-out PSNR-Y "
          f"{val['psnr_y']:.2f} dB vs bicubic {val['psnr_y_bicubic']:.2f} "
          f"({val['psnr_y'] - val['psnr_y_bicubic']:+.2f} dB), SSIM-Y {val['ssim_y']:.4f} vs "
          f"{val['ssim_y_bicubic']:.4f}")


def cyclegan(opts, extra: list[str], root: Path) -> None:
    train_photos, held_out = photo_paths()
    write_crops(root / "A", [p for p in train_photos if p.stem.endswith(("_0", "_1"))], seed=1)
    write_crops(root / "B", [p for p in train_photos if p.stem.endswith(("_2", "_3"))], seed=2, transform=colour_map)
    run = root / "run"
    minutes = train("cyclegan", ["--a", str(root / "A"), "--b", str(root / "B"), "--size", "64",
                                 "--netG", "resnet_6blocks", "--ngf", "32", "--ndf", "32", "--lambda-identity", "0",
                                 "--batch-size", "4", "--steps", str(opts.steps), "--save-every", str(opts.steps),
                                 "--out", str(run), *extra])
    G_AB, _ = load_generator(run, "AtoB")
    learnt, identity = [], []
    with torch.no_grad():
        for path in held_out:
            a = hwc(path)
            target = torch.from_numpy(colour_map(a)).permute(2, 0, 1)[None]
            a = torch.from_numpy(a).permute(2, 0, 1)[None]
            learnt.append(float(((G_AB(a * 2 - 1) + 1) / 2 - target).abs().mean()))
            identity.append(float((a - target).abs().mean()))
    ratio = np.mean(learnt) / np.mean(identity)
    print(f"cyclegan {' '.join(extra)}: {opts.steps} steps, {minutes:.1f} min; held-out |G_AB(a) - f(a)| "
          f"{np.mean(learnt):.4f} vs identity {np.mean(identity):.4f}: ratio {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("srgan", "cyclegan"))
    parser.add_argument("--netG", default="srvgg", help="srgan generator")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--photos", choices=("bundled", "skimage"), default="bundled",
                        help="srgan data: the bundled 192 px crops, or scikit-image's photographs at full size")
    parser.add_argument("--keep", type=Path, default=None, help="keep the data and run in this folder")
    opts, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    opts.steps = opts.steps or (800 if opts.task == "srgan" else 600)
    with tempfile.TemporaryDirectory() as tmp:
        root = opts.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        (srgan if opts.task == "srgan" else cyclegan)(opts, extra, root)


if __name__ == "__main__":
    main()

"""CUT, FastCUT and CycleGAN at equal CPU time on an unpaired colour-mapping task.

    python benchmarks/unpaired.py [--out DIR] [--cut-steps 600] [--size 64] [--methods cut,fastcut,cyclegan]
                                  [--mapping negative|rotate]

The task: domain A = crops 0 and 1 of the bundled training photographs, domain B = a fixed,
invertible colour mapping f (channels R,G,B <- B,R,G, then the negative; `--mapping rotate`:
the channel rotation alone, which keeps each pixel's brightness order) of crops 2 and 3: the
same kind of scenes, no image with a partner. The answer is known, so the held-out
photographs (never trained on) measure it: mean |G(a) - f(a)| as a fraction of |a - f(a)|
(the error of leaving the image as it is; 1.0 = learnt nothing).

Every method: resnet_6blocks, ngf 32, ndf 32, batch 4, --size px crops, one thread, the task's
defaults otherwise (CycleGAN with --lambda-identity 0, which would otherwise ask G_AB to keep
colours). CUT runs --cut-steps steps; the others get the same CPU time: a short calibration run
measures each one's CPU seconds per step. Each run is its own process, so its peak resident
memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from img2img import api
from img2img.config import make_config
from img2img.data.images import Image, read_image, write_image
from img2img.demo import photo_paths
from img2img.gan.checkpoint import load_generator

METHODS = {"cut": ("cut", {"mode": "cut"}), "fastcut": ("cut", {"mode": "fastcut"}),
           "cyclegan": ("cyclegan", {"lambda_identity": 0.0})}
SHARED = {"netG": "resnet_6blocks", "ngf": 32, "ndf": 32, "batch_size": 4, "workers": 0, "device": "cpu", "seed": 0}


# f: channels R,G,B <- B,R,G, then the negative (issue 11's task), or the rotation alone.
MAPPINGS = {"negative": lambda rgb: (1 - rgb[..., [2, 0, 1]]).astype(np.float32),
            "rotate": lambda rgb: np.ascontiguousarray(rgb[..., [2, 0, 1]])}


def resized(path: Path, size: int) -> np.ndarray:
    return cv2.resize(read_image(path).rgb.permute(1, 2, 0).numpy(), (size, size), interpolation=cv2.INTER_AREA)


def write_task(root: Path, size: int, mapping: str = "negative") -> None:
    """Training domains at size * 9/8 (random crops of `size`), held-out photographs at `size`."""
    train, held_out = photo_paths()
    colour_map = MAPPINGS[mapping]
    folders = {"A": ([p for p in train if p.stem.endswith(("_0", "_1"))], None),
               "B": ([p for p in train if p.stem.endswith(("_2", "_3"))], colour_map),
               "val_A": (held_out, None), "val_B": (held_out, colour_map)}
    for name, (photos, transform) in folders.items():
        for path in photos:
            rgb = resized(path, size if name.startswith("val") else size + size // 8)
            rgb = transform(rgb) if transform else rgb
            chw = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
            write_image(root / name / f"{path.stem}.png", Image(rgb=chw, alpha=None, gray=False, bits=8))


def held_out_ratio(run: Path, root: Path) -> float:
    """mean |G(a) - f(a)| / mean |a - f(a)| over the held-out photographs."""
    generator, _ = load_generator(run, "AtoB")
    learnt, identity = [], []
    with torch.no_grad():
        for path in sorted((root / "val_A").iterdir()):
            a = read_image(path).rgb[None]
            target = read_image(root / "val_B" / path.name).rgb[None]
            fake = (generator(a * 2 - 1) + 1) / 2
            learnt.append(float((fake - target).abs().mean()))
            identity.append(float((a - target).abs().mean()))
    return float(np.mean(learnt) / np.mean(identity))


def run_one(method: str, steps: int, root: Path, out: Path, size: int) -> dict:
    """One training run in this process: CPU seconds, images/s of CPU time, peak memory, result."""
    torch.set_num_threads(1)
    task, values = METHODS[method]
    cfg = make_config(task, {**SHARED, **values, "a": str(root / "A"), "b": str(root / "B"), "out": str(out),
                             "steps": steps, "size": size, "load_size": size + size // 8,
                             "save_every": steps, "log_every": max(1, steps // 10)})
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    api.train(cfg)
    cpu = time.process_time() - start_cpu
    return {"method": method, "steps": steps, "cpu_s": cpu, "wall_s": time.perf_counter() - start_wall,
            "img_per_cpu_s": steps * SHARED["batch_size"] / cpu, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ratio": held_out_ratio(out, root)}


def child(method: str, steps: int, root: Path, out: Path, size: int) -> dict:
    command = [sys.executable, __file__, "--child", method, "--steps", str(steps), "--root", str(root),
               "--run", str(out), "--size", str(size)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-unpaired"))
    parser.add_argument("--cut-steps", type=int, default=600)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--calibrate", type=int, default=6, help="steps of the calibration runs")
    parser.add_argument("--methods", default="cut,fastcut,cyclegan")
    parser.add_argument("--mapping", choices=tuple(MAPPINGS), default="negative")
    parser.add_argument("--child"), parser.add_argument("--steps", type=int), parser.add_argument("--root", type=Path)
    parser.add_argument("--run", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child, args.steps, args.root, args.run, args.size)))
        return
    root = args.out / f"data_{args.mapping}"
    if not root.is_dir():
        write_task(root, args.size, args.mapping)
    methods = args.methods.split(",")
    per_step = {m: child(m, args.calibrate, root, args.out / f"calibrate_{m}", args.size)["cpu_s"] / args.calibrate
                for m in methods}
    budget = per_step["cut"] * args.cut_steps
    print(f"CPU budget: {budget:.0f} s ({args.cut_steps} CUT steps); CPU s/step: "
          + ", ".join(f"{m} {s:.2f}" for m, s in per_step.items()), flush=True)
    rows = []
    for method in methods:
        steps = args.cut_steps if method == "cut" else max(1, round(budget / per_step[method]))
        rows.append(child(method, steps, root, args.out / method, args.size))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| method | steps | CPU s | img/s (CPU) | peak RSS MB | held-out error / identity error |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['method']} | {r['steps']} | {r['cpu_s']:.0f} | {r['img_per_cpu_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['ratio']:.3f} |")


if __name__ == "__main__":
    main()

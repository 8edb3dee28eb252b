"""Peak memory of `img2img translate` on huge images: x4 SR with tiles, PNG output.

    python benchmarks/memory.py [--sizes 512,1536,4096] [--tile 128] [--model CKPT] [--compare SRC]

For each input size (square, smooth random content) it runs the CLI in a fresh process, once
as it is and once with --max-memory below the output's size, and prints each run's peak RSS
(the process's high-water mark, from the kernel) and wall time, then the growth per output
pixel between consecutive sizes: what memory the image itself costs, with the runtime and the
model (the same at every size) taken out. --compare SRC runs the same commands with another
checkout of img2img first on PYTHONPATH (e.g. the code before strip blending), side by side,
up to --compare-up-to.
The default model is the SRVGG x4 compat checkpoint of the project's fixtures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "compat" / "realesr_srvgg_c4_f16_x4.pth"


def make_input(path: Path, side: int) -> None:
    rng = np.random.default_rng(side)
    small = rng.integers(0, 256, (max(2, side // 8), max(2, side // 8), 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC))


def run(source: str | None, model: Path, image: Path, out: Path, tile: int, budget: str | None) -> tuple[int, float]:
    """(peak RSS in bytes, wall seconds) of one translate process."""
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = source
    command = [sys.executable, "-m", "img2img", "translate", "--model", str(model), str(image), str(out),
               "--tile", str(tile), "--overwrite"]
    if budget:
        command += ["--max-memory", budget]
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    errors = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        print(f"    failed ({os.waitstatus_to_exitcode(status)}): {errors.strip()[-300:]}")
        return -1, wall
    return usage.ru_maxrss * 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,1536,4096")
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--model", type=Path, default=FIXTURE)
    parser.add_argument("--compare", default=None, help="another img2img checkout to run first, side by side")
    parser.add_argument("--only-budget", action="store_true", help="run the --max-memory variant alone")
    parser.add_argument("--compare-up-to", type=int, default=1536,
                        help="largest size to run --compare on (the full-size blend needs ~70 B per output pixel)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = [("this code", None, False), ("this code --max-memory", None, True)]
    if args.only_budget:
        variants = variants[1:]
    if args.compare:
        variants.insert(0, ("compared", args.compare, False))
    here = str(Path(__file__).resolve().parents[1])
    peaks: dict[str, list[int]] = {name: [] for name, _, _ in variants}
    print(f"x4 SR, {args.model.name}, --tile {args.tile}, PNG output")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for side in sizes:
            image = root / f"in{side}.png"
            make_input(image, side)
            out_pixels = (side * 4) ** 2
            budget = f"{max(1, out_pixels * 3 // 4 // 2**20)}M"  # a quarter of the 8-bit output's size
            for name, source, limited in variants:
                if source and side > args.compare_up_to:
                    peaks[name].append(-1)
                    continue
                peak, wall = run(source or here, args.model, image, root / "out", args.tile, budget if limited else None)
                peaks[name].append(peak)
                shown = f"{peak / 2**30:6.2f} GiB" if peak >= 0 else "  failed  "
                print(f"{side:>5}^2 -> {side * 4}^2  {name:<24} {'--max-memory ' + budget if limited else '':<20}"
                      f"peak RSS {shown}  wall {wall:6.1f} s", flush=True)
            (root / "out" / image.name).unlink(missing_ok=True)
    print("growth per output pixel between sizes (peak RSS difference / output pixels difference):")
    for name, values in peaks.items():
        steps = []
        for (a, pa), (b, pb) in zip(zip(sizes, values), list(zip(sizes, values))[1:]):
            if pa >= 0 and pb >= 0:
                steps.append(f"{a}->{b}: {(pb - pa) / ((b * 4) ** 2 - (a * 4) ** 2):.2f} B/px")
        print(f"  {name:<24} " + ", ".join(steps))


if __name__ == "__main__":
    main()

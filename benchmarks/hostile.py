"""Stress: thousands of hostile files among good ones, through the real command line.

    python benchmarks/hostile.py [--files 5000] [--good 150] [--seed 0] [--devices cpu,cpu]

Builds tests/hostile.py's corpus (the bundled photographs in every supported format, truncated,
bit-flipped, forged, with broken chunks, garbage, empty and text files), then runs
`img2img translate --json` on it (a tiny random network: the decoding and the accounting are
what is measured), `img2img data check --decode`, `img2img eval --json` and the scan before
`img2img train`, and prints for each: files, written (or measured), refused, tracebacks,
codec-library lines on stderr, good files lost, and the time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import cv2  # noqa: E402

from helpers import save_tiny_generator  # noqa: E402
from hostile import build_corpus, photo_crops  # noqa: E402
from img2img.data.quiet import NOISE  # noqa: E402


def cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    process = subprocess.run([sys.executable, "-m", "img2img", *args], capture_output=True, text=True, env=env)
    return process, time.perf_counter() - start


def noise(stderr: str) -> int:
    return sum(1 for line in stderr.splitlines() if NOISE.match(line.encode()))


def row(what: str, files: int, done: int, refused: int, process, lost: int | None, seconds: float) -> None:
    """`lost`: good files not written (or named as bad); None where the output cannot tell."""
    tracebacks = process.stderr.count("Traceback")
    print(f"{what:<14} files {files:>6}  ok {done:>6}  refused {refused:>6}  accounted {done + refused == files!s:<5} "
          f" tracebacks {tracebacks}  codec lines {noise(process.stderr)}  good lost {'-' if lost is None else lost:>3}"
          f"  exit {process.returncode}  {seconds:6.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=5000, help="hostile files")
    parser.add_argument("--good", type=int, default=10, help="good files of each format variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--devices", default=None, help="also shard translate, e.g. cpu,cpu")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="img2img-hostile-"))
    start = time.perf_counter()
    corpus = build_corpus(root / "in", args.files, args.good, args.seed)
    files = len(corpus.files)
    print(f"corpus: {files} files ({len(corpus.good)} good, {len(corpus.forged)} forged sizes, "
          f"{len(corpus.damaged)} otherwise broken) in {time.perf_counter() - start:.1f} s, in {root}")
    model = save_tiny_generator(root / "g.safetensors")

    runs = [("translate", [])] + ([(f"translate x{len(args.devices.split(','))}", ["--devices", args.devices])]
                                  if args.devices else [])
    for what, extra in runs:
        out = root / f"out-{len(extra)}"
        process, seconds = cli("translate", "--model", str(model), "--json", *extra, str(corpus.folder), str(out))
        records = [json.loads(line) for line in process.stdout.splitlines()]
        by_name = {Path(r["input"]).name: r for r in records}
        written = sum(1 for r in records if r.get("output") and (out / Path(r["output"]).name).is_file())
        refused = sum(1 for r in records if r.get("error"))
        lost = sum(1 for p in corpus.good if not by_name.get(p.name, {}).get("output"))
        temporaries = len(list(out.rglob("*.img2img-tmp")))
        row(what, files, written, refused, process, lost + temporaries, seconds)

    process, seconds = cli("data", "check", "--decode", str(corpus.folder))
    named = {m.group(1) for m in re.finditer(r"^  (\S+?): ", process.stderr, re.M)}
    lost = sum(1 for p in corpus.good if str(p) in named)
    row("data check", files, files - len(named), len(named), process, lost, seconds)

    targets = root / "targets"
    targets.mkdir()
    crop = photo_crops(1)[0][:, :, ::-1]
    for path in corpus.files:
        cv2.imwrite(str(targets / f"{path.stem}.png"), crop)
    process, seconds = cli("eval", str(corpus.folder), str(targets), "--json", "--device", "cpu")
    report = json.loads(process.stdout)
    measured = {Path(image["pred"]).name for image in report["images"]}
    lost = sum(1 for p in corpus.good if p.name not in measured)
    row("eval", files, len(measured), len(report["failures"]), process, lost, seconds)

    process, seconds = cli("train", "cyclegan", "--a", str(corpus.folder), "--b", str(targets), "--out",
                           str(root / "run"), "--steps", "1", "--size", "32", "--netG", "resnet_1blocks", "--ngf", "4",
                           "--ndf", "4", "--workers", "0", "--device", "cpu")
    unusable = re.search(r"(\d+) unusable file\(s\)", process.stderr)
    refused = int(unusable.group(1)) if unusable else 0
    row("train scan", files, files - refused, refused, process, None, seconds)  # it names the first 20


if __name__ == "__main__":
    main()

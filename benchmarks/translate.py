"""Images/s of `img2img translate` against the reference test procedure, in one call.

    python benchmarks/translate.py [--images 24] [--size 256] [--device auto] [--batch-size N] [--repeats 5]

On one randomly initialised CycleGAN generator (resnet_9blocks, ngf 64: the architecture and
cost of a real one) and one folder of JPEG images, it runs, side by side, each in a fresh
process with its start-up (imports, model loading) counted:
  naive      the reference test procedure: one image after another, batch 1, fp32,
             PIL decode -> tensor -> model -> PIL encode
  translate  the `img2img translate` command (on a GPU: workers, size batches, autocast;
             on a CPU: decoding in line, writer threads)
  model      the network alone on a resident batch (bf16 on GPU, fp32 on CPU): the ceiling
interleaved for --repeats rounds, and prints images/s and the median ratio.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

from img2img import infer
from img2img.gan.checkpoint import GeneratorSpec, load_generator, save_generator
from img2img.nets import registry
from img2img.translator import Translator


def make_inputs(folder: Path, count: int, size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(count):
        pixels = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
        PILImage.fromarray(pixels).resize((size, size), PILImage.BICUBIC).save(folder / f"{i:04d}.jpg", quality=92)


NAIVE = """
import json, sys, time
from pathlib import Path
import numpy as np, torch
from PIL import Image as PILImage
from safetensors import safe_open
from safetensors.torch import load_file
from img2img.nets import registry
model, inputs, out, device = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), torch.device(sys.argv[4])
# As the reference's test.py: build the network (random init), load the weights into it, and
# normalise with torch's own InstanceNorm2d.
with safe_open(str(model), framework="pt") as handle:
    spec = json.loads(handle.metadata()["img2img"])
module = registry.build(spec["arch"], **spec["hparams"])
module.load_state_dict(load_file(str(model)))
for layer in module.modules():
    if isinstance(layer, torch.nn.InstanceNorm2d):
        layer.forward = torch.nn.InstanceNorm2d.forward.__get__(layer)
module = module.to(device).eval()
out.mkdir()
with torch.no_grad():
    for path in sorted(inputs.iterdir()):
        image = PILImage.open(path).convert("RGB")
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None].to(device)
        y = module(x * 2 - 1)
        pixels = ((y[0].clamp(-1, 1) + 1) / 2 * 255).round().byte().permute(1, 2, 0).cpu().numpy()
        PILImage.fromarray(pixels).save(out / path.name)
"""


def naive_loop(model_path: Path, inputs: Path, out: Path, device: torch.device) -> tuple[float, float]:
    """The reference test.py way in a fresh process: the network built and initialised, then
    loaded; batch 1, fp32, torch's InstanceNorm2d, PIL in and out, nothing overlapped. Returns (wall, CPU) seconds, start-up (imports, model loading) included."""
    return _timed([sys.executable, "-c", NAIVE, str(model_path), str(inputs), str(out), str(device)])


def pipeline(model_path: Path, inputs: Path, out: Path, device: torch.device, batch_size: int | None,
             amp: str, source: str | None = None) -> tuple[float, float]:
    """`img2img translate` as a user runs it: a fresh process, start-up included; `source`:
    another img2img checkout to run instead of this one."""
    command = [sys.executable, "-m", "img2img", "translate", "--model", str(model_path), str(inputs), str(out),
               "--device", str(device), "--amp", amp]
    return _timed(command + (["--batch-size", str(batch_size)] if batch_size else []), source)


def _timed(command: list[str], source: str | None = None) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": source or str(Path(__file__).resolve().parents[1])}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def model_only(model_path: Path, device: torch.device, size: int, batch: int, repeats: int, amp: str) -> float:
    module, spec = load_generator(model_path)
    translator = Translator(module, spec, device, amp=amp)
    x = torch.rand(batch, 3, size, size, device=device)
    translator.run(x)  # warm-up (cudnn autotuning, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        translator.run(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compare", default=None, help="another img2img checkout (e.g. before a change) to run too")
    parser.add_argument("--amp", default="auto", help="translate's --amp (e.g. bf16 on a CPU with bf16 instructions)")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hparams = {"in_ch": 3, "out_ch": 3, "ngf": 64, "n_blocks": 9, "norm": "instance", "use_dropout": False}
        save_generator(root / "g.safetensors", registry.build("resnet", **hparams),
                       GeneratorSpec(arch="resnet", hparams=hparams, pixel_range="-1,1", task="cyclegan"))
        make_inputs(root / "in", args.images, args.size)
        model = root / "g.safetensors"
        pipeline(model, root / "in", root / "warmup", device, args.batch_size, args.amp)  # disk cache, compiled kernels
        # Interleaved, the order swapped every round: load from other processes on the machine
        # falls on both sides alike. The ratio of each round's pair is what is reported.
        rounds = []
        for i in range(args.repeats):
            pair = [("naive", lambda: naive_loop(model, root / "in", root / f"naive{i}", device)),
                    ("ours", lambda: pipeline(model, root / "in", root / f"ours{i}", device, args.batch_size, args.amp))]
            if args.compare:
                pair.append(("compared", lambda: pipeline(model, root / "in", root / f"compared{i}", device,
                                                          args.batch_size, args.amp, args.compare)))
            timings = dict((name, run()) for name, run in (pair if i % 2 == 0 else pair[::-1]))
            rounds.append(timings)
            print(f"round {i + 1}: " + ", ".join(f"{name} {wall:6.1f} s ({timings['naive'][0] / wall:.2f}x)"
                                                 for name, (wall, _) in timings.items()), flush=True)
        batch = args.batch_size or infer.default_batch_size(device, None)
        ceiling = model_only(model, device, args.size, max(batch, 1), repeats=max(2, args.images // max(batch, 1)),
                              amp=args.amp)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; CycleGAN resnet_9blocks, {args.images} images of {args.size}x{args.size} px, "
          f"torch {torch.__version__}; translate --amp {args.amp}")
    naive_wall = statistics.median(r["naive"][0] for r in rounds)
    ours_wall = statistics.median(r["ours"][0] for r in rounds)
    ratio = statistics.median(r["naive"][0] / r["ours"][0] for r in rounds)
    cpu_ratio = statistics.median(r["naive"][1] / r["ours"][1] for r in rounds)
    print(f"{'naive loop':>12}: {args.images / naive_wall:8.2f} img/s   median {naive_wall:6.1f} s wall, start-up included")
    print(f"{'translate':>12}: {args.images / ours_wall:8.2f} img/s   median {ours_wall:6.1f} s wall; "
          f"median of the rounds' ratios {ratio:5.2f}x the naive loop (CPU time {cpu_ratio:5.2f}x)")
    if args.compare:
        compared = statistics.median(r["naive"][0] / r["compared"][0] for r in rounds)
        print(f"{'compared':>12}: median ratio {compared:5.2f}x the naive loop ({args.compare})")
    print(f"{'model only':>12}: {ceiling:8.2f} img/s   (no start-up, no files) translate reaches "
          f"{args.images / ours_wall / ceiling:5.1%} of it")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""Images/s of `img2img translate` against the reference test procedure, in one call.

    python benchmarks/translate.py [--images 16] [--size 256] [--device auto] [--batch-size N]

On one randomly initialised CycleGAN generator (resnet_9blocks, ngf 64: the architecture and
cost of a real one) and one folder of JPEG photographs, it runs, side by side:
  naive      the reference test procedure: one image after another, batch 1, fp32,
             PIL decode -> tensor -> model -> PIL encode
  translate  img2img's pipeline (workers, size batches, writer threads; autocast on GPU)
  model      the network alone on a resident batch (bf16 on GPU, fp32 on CPU): the ceiling
and prints images/s of each and the ratios.
"""

from __future__ import annotations

import argparse
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


def naive_loop(model_path: Path, inputs: Path, out: Path, device: torch.device) -> float:
    """The reference test.py way: batch 1, fp32, PIL in and out, nothing overlapped. Timed
    from loading the model, as `pipeline` is."""
    start = time.perf_counter()
    module, _ = load_generator(model_path)
    module = module.to(device).eval()
    out.mkdir()
    files = sorted(inputs.iterdir())
    with torch.no_grad():
        for path in files:
            image = PILImage.open(path).convert("RGB")
            x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)[None].to(device)
            y = module(x * 2 - 1)
            pixels = ((y[0].clamp(-1, 1) + 1) / 2 * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            PILImage.fromarray(pixels).save(out / path.name)
    return len(files) / (time.perf_counter() - start)


def pipeline(model_path: Path, inputs: Path, out: Path, device: torch.device, batch_size: int | None) -> float:
    start = time.perf_counter()
    results = infer.translate(model_path, str(inputs), out, options=infer.Options(device=device, batch_size=batch_size))
    assert not any(r.error for r in results)
    return len(results) / (time.perf_counter() - start)


def model_only(model_path: Path, device: torch.device, size: int, batch: int, repeats: int) -> float:
    module, spec = load_generator(model_path)
    translator = Translator(module, spec, device)
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
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
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
        pipeline(root / "g.safetensors", root / "in", root / "warmup", device, args.batch_size)
        # Alternate the two, best of --repeats each: what remains is the method, not the machine's noise.
        naive = ours = 0.0
        for i in range(args.repeats):
            naive = max(naive, naive_loop(root / "g.safetensors", root / "in", root / f"naive{i}", device))
            ours = max(ours, pipeline(root / "g.safetensors", root / "in", root / f"ours{i}", device, args.batch_size))
        batch = args.batch_size or infer.default_batch_size(device, None)
        ceiling = model_only(root / "g.safetensors", device, args.size, max(batch, 1), repeats=max(2, args.images // max(batch, 1)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; CycleGAN resnet_9blocks, {args.images} images of {args.size}x{args.size} px, "
          f"torch {torch.__version__}")
    print(f"{'naive loop':>12}: {naive:8.2f} img/s")
    print(f"{'translate':>12}: {ours:8.2f} img/s   {ours / naive:5.2f}x the naive loop")
    print(f"{'model only':>12}: {ceiling:8.2f} img/s   translate reaches {ours / ceiling:5.1%} of it")
    sys.stdout.flush()


if __name__ == "__main__":
    main()

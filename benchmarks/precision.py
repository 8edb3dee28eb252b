"""bf16 and fp16 outputs against fp32, per architecture, on real photographs (scikit-image's).

    python benchmarks/precision.py [--size 256] [--device cuda|cpu]

Every registered generator at its production width (random weights: no trained ones can be
downloaded here) and the reference-layout checkpoints of ../shared/fixtures/compat, each on the
same photographs through `Translator` (autocast, channels_last, the fp32 retry): PSNR of the
reduced-precision output against the fp32 one, the largest difference in 8-bit levels, and how
many batches needed the fp32 retry (black or NaN fp16 output is what that retry catches).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from img2img.device import autocast_dtype
from img2img.gan.checkpoint import GeneratorSpec, load_generator
from img2img.nets import registry
from img2img.translator import Translator

PRODUCTION = {
    "resnet": ({"in_ch": 3, "out_ch": 3, "ngf": 64, "n_blocks": 9, "norm": "instance", "use_dropout": False}, "-1,1", 1),
    "unet": ({"in_ch": 3, "out_ch": 3, "ngf": 64, "num_downs": 8, "norm": "batch", "use_dropout": False}, "-1,1", 1),
    "cut_resnet": ({"ngf": 64, "n_blocks": 9, "norm": "instance", "antialias": True, "antialias_up": True}, "-1,1", 1),
    "msrresnet": ({"num_feat": 64, "num_block": 16, "upscale": 4}, "0,1", 4),
    "rrdbnet": ({"num_feat": 64, "num_block": 23, "num_grow_ch": 32, "scale": 4}, "0,1", 4),
    "srvgg": ({"num_feat": 64, "num_conv": 32, "upscale": 4, "act_type": "prelu"}, "0,1", 4),
}
COMPAT = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "compat"


def photos(size: int) -> torch.Tensor:
    from skimage import data

    images = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    tensors = [torch.from_numpy(im).permute(2, 0, 1).float()[None] / 255 for im in images]
    return torch.cat([F.interpolate(t, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1) for t in tensors])


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def compare(name: str, module, spec: GeneratorSpec, x: torch.Tensor, device: torch.device) -> list[str]:
    reference = Translator(module, spec, device, amp="off").run(x).float()
    rows = []
    for amp in (amp for amp in ("bf16", "fp16") if autocast_dtype(device, amp) is not None):  # what the device takes
        translator = Translator(module, spec, device, amp=amp)
        y = translator.run(x).float()
        gap = (y - reference).abs()
        rows.append(f"| {name} | {amp} | {psnr(y, reference):.1f} | {float(gap.max()) * 255:.1f} | "
                    f"{float(gap.mean()) * 255:.3f} | {translator.fp32_retries} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256, help="input side for 1x models (SR: a quarter)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; 4 scikit-image photos")
    print("\n| model | precision | PSNR vs fp32 (dB) | max diff (8-bit levels) | mean diff | fp32 retries |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for arch, (hparams, pixel_range, scale) in PRODUCTION.items():
        module = registry.build(arch, **hparams)
        spec = GeneratorSpec(arch=arch, hparams=hparams, pixel_range=pixel_range, scale=scale)
        x = photos(args.size // scale)
        for row in compare(f"{arch} (random init)", module, spec, x, device):
            print(row, flush=True)
    for path in sorted(COMPAT.glob("*.pth")):
        module, spec = load_generator(path)
        for row in compare(f"{path.name} (reference layout)", module, spec, photos(args.size // spec.scale), device):
            print(row, flush=True)


if __name__ == "__main__":
    main()

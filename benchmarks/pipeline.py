"""Where `img2img translate`'s time goes, stage by stage, and its steady-state rate against the
naive loop in the same process (start-up excluded on both sides; benchmarks/translate.py
counts it).

    python benchmarks/pipeline.py [--images 2000] [--size 256] [--batch-sizes 8,32] [--sr]

Stages, each timed alone on the same files (CPU stages per thread; the pipeline runs decoding
in --workers processes and encoding in writer threads beside the device):
  decode   read + check + OpenCV decode + to float        encode   float -> 8-bit + cv2.imencode
  h2d      pinned float batch to the device               write    temp file + fsync + rename + folder fsync
  compute  the network on a resident batch (as translate) d2h      the float output back to the host
--sr adds the x4 SR models' network time (SRVGG 64x32, RRDBNet 64x23) on 640x480 inputs in
fp32 / bf16 / fp16, NCHW and channels_last, and with torch.compile.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from translate import make_inputs  # noqa: E402  (the same JPEGs as the start-up-included benchmark)

from img2img import infer  # noqa: E402
from img2img.data.images import decode_image, output_layout, stack_rgb, to_opencv, to_pixels, write_bytes_atomic  # noqa: E402
from img2img.device import compiled  # noqa: E402
from img2img.gan.checkpoint import GeneratorSpec, load_generator, save_generator  # noqa: E402
from img2img.nets import registry  # noqa: E402
from img2img.translator import Translator  # noqa: E402

import cv2  # noqa: E402


def per_item_ms(fn, items, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return (time.perf_counter() - start) * 1000 / (len(items) * repeat)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synced_ms(fn, count: int, per_call: int) -> float:
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(count):
        fn()
    sync()
    return (time.perf_counter() - start) * 1000 / (count * per_call)


def stage_table(model: Path, files: list[Path], out: Path, device: torch.device, batch: int) -> None:
    sample = files[:200]
    decode = per_item_ms(decode_image, sample)  # 8-bit files stay as stored until the batch
    decoded = [decode_image(p) for p in sample[:batch]]
    module, spec = load_generator(model)
    translator = Translator(module, spec, device)
    h2d = synced_ms(lambda: stack_rgb(decoded, device), 20, batch)
    resident = stack_rgb(decoded, device)
    compute = synced_ms(lambda: translator.run(resident), 10, batch)
    result = translator.run(resident)
    d2h = synced_ms(lambda: result.cpu(), 20, batch)
    layout = output_layout(".jpg", False, False, 8)
    outputs = [r for r in result.cpu()]
    quantise = per_item_ms(lambda r: to_pixels(r, None, layout), outputs, repeat=5)
    pixels = [to_pixels(r, None, layout) for r in outputs]
    encode = per_item_ms(lambda p: cv2.imencode(".jpg", to_opencv(p, layout)), pixels, repeat=5)
    data = cv2.imencode(".jpg", to_opencv(pixels[0], layout))[1].tobytes()
    out.mkdir(parents=True, exist_ok=True)
    names = iter(range(10**6))
    write = per_item_ms(lambda _: write_bytes_atomic(out / f"{next(names)}.jpg", data), range(100))
    plain = per_item_ms(lambda _: (out / f"p{next(names)}.jpg").write_bytes(data), range(100))
    rows = [("decode to 8 bit (per thread)", decode), ("stack, host -> device as 8 bit, to float", h2d), (f"compute (batch {batch}, {translator.dtype})", compute),
            ("device -> host", d2h), ("float -> 8 bit (per thread)", quantise), ("JPEG encode (per thread)", encode),
            ("atomic write, 2 fsyncs (per thread)", write), ("plain write, no fsync", plain)]
    if device.type == "cuda":
        rows += gpu_codec_rows(files[:batch], device)
    print("\n| stage | ms per image | images/s on one thread or stream |\n| --- | --- | --- |")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} | {1000 / ms:,.0f} |")


def gpu_codec_rows(files: list[Path], device: torch.device) -> list[tuple[str, float]]:
    """nvJPEG through torchvision.io, a batch at a time on the device: decode from the file
    bytes, encode from uint8 planes (the candidates for moving the codecs off the CPU)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in files]
    decode = synced_ms(lambda: decode_jpeg(data, device=device), 10, len(files))
    planes = decode_jpeg(data, device=device)
    encode = synced_ms(lambda: encode_jpeg(planes, quality=95), 10, len(files))
    return [(f"GPU JPEG decode, batch {len(files)} (nvJPEG)", decode), (f"GPU JPEG encode, batch {len(files)}", encode)]


def main_thread_breakdown(model: Path, inputs: Path, out: Path, device: torch.device) -> None:
    """Where translate's main thread spends its wall time: waiting for decoded batches, in the
    batch's own work (of which: waiting for a free writer slot), the rest; and its CPU time."""
    spent = {"waiting for decoded batches": 0.0, "translating batches": 0.0, "of which waiting for writers": 0.0}
    decoded_batches, translate_group, submit = infer._decoded_batches, infer._translate_group, infer.Writer.submit

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - start
        return wrapper

    def timed_batches(*args, **kwargs):
        batches = decoded_batches(*args, **kwargs)
        while (items := timed("waiting for decoded batches", next)(batches, None)) is not None:
            yield items

    infer._decoded_batches, infer._translate_group = timed_batches, timed("translating batches", translate_group)
    infer.Writer.submit = timed("of which waiting for writers", submit)
    try:
        cpu, start = time.thread_time(), time.perf_counter()
        rate = translate_in_process(model, inputs, out, device, None)
        wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
    finally:
        infer._decoded_batches, infer._translate_group, infer.Writer.submit = decoded_batches, translate_group, submit
    print(f"\ntranslate's main thread (default batch, {rate:.1f} img/s): wall {wall:.2f} s, its own CPU time {cpu:.2f} s")
    for key, seconds in spent.items():
        print(f"  {key}: {seconds:.2f} s")
    print(f"  the rest (start-up, collecting jobs, results): {wall - spent['waiting for decoded batches'] - spent['translating batches']:.2f} s")


def torch_profile(model: Path, inputs: Path, out: Path, device: torch.device) -> None:
    """torch.profiler over a whole translate: the host-side CUDA calls that wait (synchronize,
    host allocations, copies) show as self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        translate_in_process(model, inputs, out, device, None)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))


def naive_in_process(model: Path, files: list[Path], out: Path, device: torch.device) -> float:
    """The reference test.py loop: batch 1, fp32, PIL in and out; images/s, model loaded before."""
    module, spec = load_generator(model)
    module = module.to(device).eval()
    out.mkdir()
    start = time.perf_counter()
    with torch.no_grad():
        for path in files:
            x = torch.from_numpy(np.asarray(PILImage.open(path).convert("RGB"), dtype=np.float32) / 255)
            y = module(x.permute(2, 0, 1)[None].to(device) * 2 - 1)
            pixels = ((y[0].clamp(-1, 1) + 1) / 2 * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            PILImage.fromarray(pixels).save(out / path.name)
    return len(files) / (time.perf_counter() - start)


def translate_in_process(model: Path, inputs: Path, out: Path, device: torch.device, batch: int | None) -> float:
    """infer.translate as the CLI calls it, model loading included; images/s."""
    start = time.perf_counter()
    results = infer.translate(model, str(inputs), out, device=device, batch_size=batch)
    elapsed = time.perf_counter() - start
    assert all(r.error is None for r in results), [r.error for r in results if r.error][:3]
    return len(results) / elapsed


def in_layout(translator: Translator, layout: str, compile: bool, dynamic: bool = True) -> Translator:
    """`translator` with its network in `layout` (NCHW or channels_last), compiled or not
    (dynamic shapes, as translate compiles, unless told otherwise)."""
    translator.channels_last = layout == "channels_last"
    memory_format = torch.channels_last if translator.channels_last else torch.contiguous_format
    translator.module = translator.module.to(memory_format=memory_format)
    translator.forward = compiled(translator.module, dynamic=dynamic) if compile else translator.module
    return translator


def sr_model_times(device: torch.device) -> None:
    cases = {"SRVGG x4 (64, 32 convs)": ("srvgg", {"num_feat": 64, "num_conv": 32, "upscale": 4, "act_type": "prelu"}, 20, (1, 4)),
             "RRDBNet x4 (64, 23 blocks)": ("rrdbnet", {"num_feat": 64, "num_block": 23, "num_grow_ch": 32, "scale": 4}, 3, (1,))}
    print("\n| model, 640x480 -> x4 | precision | layout | compile | batch | frames/s |\n| --- | --- | --- | --- | --- | --- |")
    for name, (arch, hparams, repeats, batches) in cases.items():
        net = registry.build(arch, **hparams)
        spec = GeneratorSpec(arch=arch, hparams=hparams, pixel_range="0,1", scale=4)
        for amp, layout, compile in (("off", "NCHW", False), ("off", "channels_last", False),
                                     ("bf16", "NCHW", False), ("bf16", "channels_last", False),
                                     ("fp16", "channels_last", False), ("bf16", "channels_last", True)):
            for batch in batches:
                translator = in_layout(Translator(net, spec, device, amp=amp), layout, compile)
                x = torch.rand(batch, 3, 480, 640, device=device)
                try:
                    fps = 1000 / synced_ms(lambda: translator.run(x), repeats, batch)
                except Exception as err:  # e.g. compile failing: report it, go on
                    print(f"| {name} | {amp} | {layout} | {compile} | {batch} | failed: {str(err).splitlines()[0][:80]} |")
                    continue
                print(f"| {name} | {amp} | {layout} | {compile} | {batch} | {fps:.1f} |", flush=True)


def resnet_variants(device: torch.device, batch: int = 32) -> None:
    """resnet_9blocks' network time at 256 px, bf16, in each memory layout, with InstanceNorm
    as PyTorch's instance_norm or as group_norm, eager and compiled."""
    from img2img.nets import layers

    hparams = {"in_ch": 3, "out_ch": 3, "ngf": 64, "n_blocks": 9, "norm": "instance", "use_dropout": False}
    spec = GeneratorSpec(arch="resnet", hparams=hparams, pixel_range="-1,1")
    x = torch.rand(batch, 3, 256, 256, device=device)
    original = layers.InstanceNorm2d.forward
    group = lambda self, t: torch.nn.functional.group_norm(t, self.num_features, self.weight, self.bias, self.eps)
    print(f"\n| resnet_9blocks, 256 px, bf16, batch {batch} | layout | compile | img/s |\n| --- | --- | --- | --- |")
    for norm, forward in (("instance_norm", original), ("group_norm", group)):
        layers.InstanceNorm2d.forward = forward
        for layout, compile in (("NCHW", False), ("channels_last", False), ("NCHW", True), ("channels_last", True)):
            translator = in_layout(Translator(registry.build("resnet", **hparams), spec, device), layout, compile,
                                   dynamic=False)
            try:
                rate = 1000 / synced_ms(lambda: translator.run(x), 5, batch)
            except Exception as err:
                print(f"| {norm} | {layout} | {compile} | failed: {str(err).splitlines()[0][:80]} |")
                continue
            print(f"| {norm} | {layout} | {compile} | {rate:.0f} |", flush=True)
    layers.InstanceNorm2d.forward = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--sr", action="store_true")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-stages", action="store_true")
    parser.add_argument("--variants", action="store_true", help="resnet_9blocks' network time in layouts, norms, compiled")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--torch-profile", action="store_true", help="torch.profiler over one translate")
    parser.add_argument("--breakdown", action="store_true", help="where translate's main thread spends its time")
    parser.add_argument("--cudnn-benchmark", type=int, default=1, help="0: translate as the CLI runs it, without")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; "
          f"{args.images} JPEGs of {args.size}x{args.size}, CycleGAN resnet_9blocks ngf 64", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        hparams = {"in_ch": 3, "out_ch": 3, "ngf": 64, "n_blocks": 9, "norm": "instance", "use_dropout": False}
        model = root / "g.safetensors"
        save_generator(model, registry.build("resnet", **hparams),
                       GeneratorSpec(arch="resnet", hparams=hparams, pixel_range="-1,1", task="cyclegan"))
        make_inputs(root / "in", args.images, args.size)
        files = sorted((root / "in").iterdir())
        if not args.skip_stages:
            stage_table(model, files, root / "stages", device, max(int(b) for b in args.batch_sizes.split(",")))
        translate_in_process(model, root / "in", root / "warm", device, 8)  # page cache, cuDNN autotuning
        naive = None if args.skip_naive else naive_in_process(model, files, root / "naive", device)
        if naive:
            print(f"\nnaive loop (batch 1, fp32, PIL; model loaded): {naive:.1f} img/s", flush=True)
        for batch in [None] + [int(b) for b in args.batch_sizes.split(",")]:
            rate = translate_in_process(model, root / "in", root / f"ours{batch}", device, batch)
            ratio = f" = {rate / naive:.1f}x the naive loop" if naive else ""
            print(f"translate --batch-size {batch or 'default'}: {rate:.1f} img/s{ratio}", flush=True)
        if args.torch_profile:
            torch_profile(model, root / "in", root / "profiled", device)
        if args.breakdown:
            main_thread_breakdown(model, root / "in", root / "timed", device)
    if args.variants:
        resnet_variants(device)
    if args.sr:
        sr_model_times(device)


if __name__ == "__main__":
    main()

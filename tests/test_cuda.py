"""The CUDA-only paths: bf16 and fp16 autocast (with loss scaling), channels_last, fused Adam,
NCCL DDP through torchrun, torch.compile, the out-of-memory fallback and the fp32 retry.
They run on a machine with a CUDA GPU and skip elsewhere."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from img2img import infer
from img2img.config import make_config
from img2img.data.images import read_image
from img2img.gan.checkpoint import GeneratorSpec, load_generator, save_generator
from img2img.gan.loop import Trainer
from img2img.nets import registry
from img2img.progress import Silent
from img2img.tasks import TASKS
from img2img.translator import Translator
from test_distributed import img2img  # the CLI in a subprocess

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (these are the GPU-only paths)")

CUDA = torch.device("cuda")
SMALL = {"pix2pix": {"netG": "unet_64", "ngf": 16, "ndf": 16, "size": 64},
         "cyclegan": {"netG": "resnet_6blocks", "ngf": 16, "ndf": 16, "size": 64},
         "cut": {"ngf": 16, "ndf": 16, "size": 64},
         "srgan": {"ngf": 16, "n_blocks": 2, "perceptual": "none", "size": 128}}


def random_batch(task: str, size: int, batch: int = 2) -> dict:
    if task == "srgan":
        return {"lr": torch.rand(batch, 3, size // 4, size // 4), "hr": torch.rand(batch, 3, size, size)}
    return {"A": torch.rand(batch, 3, size, size) * 2 - 1, "B": torch.rand(batch, 3, size, size) * 2 - 1}


def trainer_for(task: str, amp: str, **extra) -> Trainer:
    cfg = make_config(task, {**SMALL[task], "device": "cuda", "amp": amp, "out": "/tmp/img2img-cuda", **extra})
    return Trainer(TASKS[task](cfg, CUDA, Silent(), data=False), cfg, CUDA, total_steps=100, reporter=Silent())


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
@pytest.mark.parametrize("task", list(TASKS))
def test_training_steps_on_cuda(task, amp):
    """Every family trains on CUDA in every precision: channels_last weights, fused Adam, loss
    scaling with fp16 alone, finite losses, and every trained network changed."""
    trainer = trainer_for(task, amp)
    assert trainer.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in trainer.raw.items()}
    batch = trainer.to_device(random_batch(task, trainer.cfg.size))
    # fp16's loss scaler skips steps while it halves its scale from 2**16: CUT's generator took
    # more than 6 on an H100 (2026-11-22); 24 leave room for 23 halvings.
    steps = 24 if amp == "fp16" else 6
    for _ in range(steps):
        trainer.train_step([batch])
    torch.cuda.synchronize()
    assert trainer.skipped_nonfinite == 0
    record = trainer.pop_metrics()
    losses = {k: v for k, v in record.items() if k.startswith("loss")}
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    for opt in trainer.optimizers.values():
        assert opt.defaults["fused"] is True
    for scaler in trainer.scalers.values():
        assert scaler.is_enabled() == (amp == "fp16")
    for name, net in trainer.raw.items():
        convs = [p for p in net.parameters() if p.ndim == 4]
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in convs), name
        trained = any(name in phase.nets for phase in trainer.task.phases if any(map(phase.active, range(steps))))
        changed = any(not torch.equal(a, p) for a, p in zip(before[name], net.parameters()))
        assert changed == trained, f"{task} {name}: trained {trained}, changed {changed}"


PIX2PIX = ["--size", "64", "--netG", "unet_64", "--ngf", "16", "--ndf", "16", "--steps", "6", "--save-every", "3",
           "--batch-size", "2", "--device", "cuda"]


@pytest.mark.parametrize("launch", ["plain", "nproc-per-node", "torchrun"])
def test_command_line_training_on_cuda_then_translate(paired_photos, tmp_path, launch):
    """The CLI on CUDA; `--nproc-per-node 1` and torchrun take the NCCL + DDP path with one GPU."""
    data = ["--a", paired_photos["a"], "--b", paired_photos["b"], "--out", tmp_path / "run", *PIX2PIX]
    if launch == "torchrun":
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                               "-m", "img2img", "train", "pix2pix", *map(str, data)],
                              capture_output=True, text=True, timeout=600)
    else:
        done = img2img("train", "pix2pix", *data, *(["--nproc-per-node", "1"] if launch == "nproc-per-node" else []))
    assert done.returncode == 0, done.stderr
    resumed = img2img("train", "pix2pix", *data[:-2], "--steps", "9", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    _, spec = load_generator(tmp_path / "run")
    assert spec.step == 9
    out = tmp_path / "out"
    done = img2img("translate", "--model", tmp_path / "run", paired_photos["test_a"], out, "--device", "cuda")
    assert done.returncode == 0, done.stderr
    assert len(list(out.iterdir())) == len(list(paired_photos["test_a"].iterdir()))


def test_nccl_process_group_under_torchrun(tmp_path):
    """One process under torchrun joins an NCCL group and wraps its networks in DDP."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from img2img.gan import distributed\n"
        "from img2img.gan.loop import Trainer\n"
        "from img2img.config import make_config\n"
        "from img2img.progress import Silent\n"
        "from img2img.tasks import TASKS\n"
        "world = distributed.from_environment()\n"
        "device = distributed.setup(world, torch.device('cuda'))\n"
        "cfg = make_config('pix2pix', {'netG': 'unet_64', 'ngf': 8, 'ndf': 8, 'size': 64, 'out': '/tmp/x'})\n"
        "trainer = Trainer(TASKS['pix2pix'](cfg, device, Silent(), data=False), cfg, device, 10, Silent(), world)\n"
        "batch = trainer.to_device({'A': torch.rand(2, 3, 64, 64), 'B': torch.rand(2, 3, 64, 64)})\n"
        "trainer.train_step([batch])\n"
        "print(dist.get_backend(), type(trainer.synced['G']).__name__, distributed.any_true(world, True))\n"
        "distributed.teardown()\n")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "nccl DistributedDataParallel True" in done.stdout


@pytest.mark.parametrize("task", ["pix2pix", "cyclegan"])
def test_compiled_training_matches_eager(task):
    """--compile trains: the same losses as eager in its first steps, within float tolerance
    (measured on an H100: within 2% for two steps; by the third, GAN dynamics amplify the
    fused kernels' rounding, 3% on CycleGAN's loss_G_AB)."""
    eager = trainer_for(task, "off", seed=2, dropout=False)
    compiled = trainer_for(task, "off", seed=2, dropout=False, compile=True)
    compiled.load_state_dict(eager.state_dict())
    batch = random_batch(task, 64)
    for step in range(2):
        losses = []
        for trainer in (eager, compiled):
            trainer.train_step([trainer.to_device(batch)])
            losses.append({k: v for k, v in trainer.pop_metrics().items() if k.startswith("loss")})
        assert losses[0].keys() == losses[1].keys()
        for key, value in losses[0].items():
            assert losses[1][key] == pytest.approx(value, rel=2e-2, abs=1e-3), (step, key, losses)


def resnet_file(path, ngf=16):
    hparams = {"in_ch": 3, "out_ch": 3, "ngf": ngf, "n_blocks": 6, "norm": "instance", "use_dropout": False}
    save_generator(path, registry.build("resnet", **hparams), GeneratorSpec(arch="resnet", hparams=hparams, pixel_range="-1,1"))
    return path


def test_compiled_translate_matches_eager(paired_photos, tmp_path):
    model = resnet_file(tmp_path / "g.safetensors")
    for name, compile in (("eager", False), ("compiled", True)):
        results = infer.translate(model, str(paired_photos["test_a"]), tmp_path / name, device=CUDA, compile=compile)
        assert all(r.error is None for r in results)
    for path in (tmp_path / "eager").iterdir():  # bf16 in both; fused kernels round differently (6 levels seen)
        gap = (read_image(path).rgb - read_image(tmp_path / "compiled" / path.name).rgb).abs()
        assert gap.max() <= 10 / 255 and gap.mean() <= 1 / 255


class Overflows(nn.Module):
    """Fine in fp32 and bf16, infinite in fp16: an intermediate of 1e5 (fp16 tops out at 65504)."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Conv2d(3, 3, 1, bias=False), nn.Conv2d(3, 3, 1, bias=False)
        nn.init.eye_(self.up.weight[:, :, 0, 0])
        nn.init.eye_(self.down.weight[:, :, 0, 0])
        with torch.no_grad():
            self.up.weight *= 1e5
            self.down.weight *= 1e-5

    def forward(self, x):
        return self.down(self.up(x))


def test_fp16_overflow_is_retried_in_fp32():
    translator = Translator(Overflows(), GeneratorSpec(arch="test", hparams={"in_ch": 3}, pixel_range="0,1"), CUDA, amp="fp16")
    x = torch.rand(2, 3, 16, 16)
    y = translator.run(x)
    assert translator.fp32_retries == 1
    assert torch.allclose(y.cpu(), x, atol=5e-3)  # TF32 convolutions


def test_out_of_memory_falls_back_to_smaller_batches(tmp_path):
    """Under a memory cap a batch of 8 does not fit: translate halves the batch (then tiles)
    until it does, says so, and writes what an uncapped run writes."""
    import numpy as np
    from PIL import Image as PILImage

    model = resnet_file(tmp_path / "g.safetensors", ngf=64)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        PILImage.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(inputs / f"{i}.png")
    free = infer.translate(model, str(inputs), tmp_path / "free", device=CUDA, batch_size=8)
    assert all(r.error is None for r in free)
    messages = []

    class Listen(Silent):
        def message(self, text):
            messages.append(text)

    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, 1.5e9 / total))
    try:
        capped = infer.translate(model, str(inputs), tmp_path / "capped", device=CUDA, batch_size=8, reporter=Listen())
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert all(r.error is None for r in capped), [r.error for r in capped]
    assert any("out of memory: retrying" in m for m in messages), messages
    for path in (tmp_path / "free").iterdir():  # other batch sizes may pick other kernels
        gap = (read_image(path).rgb - read_image(tmp_path / "capped" / path.name).rgb).abs()
        assert gap.max() <= 8 / 255 and gap.mean() <= 1 / 255  # measured on an H100: 7 and 0.59 levels


def test_translate_on_cuda_writes_what_the_cpu_writes_in_every_format(tmp_path):
    """8-bit outputs leave the GPU quantised, the others as floats: every kind of file comes
    out as on the CPU (same channels, bit depth and pixels within TF32 rounding)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    smooth = lambda channels, dtype, top: cv2.resize(rng.integers(0, top, (8, 8, channels), dtype=dtype), (48, 40))
    cv2.imwrite(str(inputs / "rgb.jpg"), smooth(3, np.uint8, 255))
    cv2.imwrite(str(inputs / "rgb.png"), smooth(3, np.uint8, 255))
    cv2.imwrite(str(inputs / "rgba.png"), smooth(4, np.uint8, 255))
    cv2.imwrite(str(inputs / "gray.png"), smooth(1, np.uint8, 255))
    cv2.imwrite(str(inputs / "rgb16.png"), smooth(3, np.uint16, 65535))
    model = resnet_file(tmp_path / "g.safetensors")
    for device in ("cpu", "cuda"):
        results = infer.translate(model, str(inputs), tmp_path / device, device=torch.device(device), amp="off")
        assert all(r.error is None for r in results), [r.error for r in results]
    for path in sorted((tmp_path / "cpu").iterdir()):
        cpu, gpu = read_image(path), read_image(tmp_path / "cuda" / path.name)
        assert (cpu.gray, cpu.bits, cpu.alpha is None) == (gpu.gray, gpu.bits, gpu.alpha is None), path.name
        gap = (cpu.rgb - gpu.rgb).abs()
        # a one-level change can move a JPEG block's rounding by several (H100: 8 max, 1.25 mean)
        lossy = path.suffix == ".jpg"
        assert gap.max() <= (12 if lossy else 3) / 255 and gap.mean() <= (2 if lossy else 1) / 255, path.name
        if cpu.alpha is not None:
            assert (cpu.alpha - gpu.alpha).abs().max() <= 1 / 255, path.name

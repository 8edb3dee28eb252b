"""Training images/s of img2img's loop against the reference's naive training step, in one call.

    python benchmarks/train.py [--task pix2pix|cyclegan|all] [--size 256] [--steps 5] [--batch-sizes 1,16,32] [--compile]

Both sides use the same networks at their reference sizes (pix2pix: unet_256 + 70x70 PatchGAN,
batch norm; CycleGAN: 2 x resnet_9blocks + 2 x PatchGAN, instance norm; SRGAN: MSRResNet x4 +
VGG-style D on 128 px HR patches, without the perceptual term, whose VGG19 weights cannot be
downloaded here) on batches already in memory, so the figures are of the training step itself:
  naive  the reference's optimize_parameters(): fp32, batch 1, plain Adam, NCHW
  ours   img2img's Trainer.train_step: autocast bf16/fp16 on CUDA, channels_last, fused Adam,
         cudnn.benchmark, at each of --batch-sizes (default 1 on CPU; 1, 8, 16, 32 on CUDA)
On CUDA each line also gives the peak memory torch allocated for the step.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F

from img2img.config import make_config
from img2img.gan.loop import Trainer, set_requires_grad
from img2img.progress import Silent
from img2img.tasks import TASKS


def batch_of(task: str, size: int, batch: int, device: torch.device) -> dict:
    if task == "srgan":  # x4: LR patches a quarter of the HR size, pixels in [0, 1]
        return {"lr": torch.rand(batch, 3, size // 4, size // 4, device=device),
                "hr": torch.rand(batch, 3, size, size, device=device)}
    return {"A": torch.rand(batch, 3, size, size, device=device) * 2 - 1,
            "B": torch.rand(batch, 3, size, size, device=device) * 2 - 1}


def naive_step_fn(task: str, nets: dict, lr: float):
    """The reference code's optimize_parameters for `task`, written plainly."""
    bce, mse = torch.nn.BCEWithLogitsLoss(), torch.nn.MSELoss()
    if task == "pix2pix":
        G, D = nets["G"], nets["D"]
        opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))

        def step(batch):
            a, b = batch["A"], batch["B"]
            fake = G(a)
            set_requires_grad({"D": D}, ("D",))
            opt_d.zero_grad()
            pred_fake, pred_real = D(torch.cat([a, fake.detach()], 1)), D(torch.cat([a, b], 1))
            loss_d = 0.5 * (bce(pred_fake, torch.zeros_like(pred_fake)) + bce(pred_real, torch.ones_like(pred_real)))
            loss_d.backward()
            opt_d.step()
            set_requires_grad({"D": D}, ())
            opt_g.zero_grad()
            pred = D(torch.cat([a, fake], 1))
            loss_g = bce(pred, torch.ones_like(pred)) + 100 * F.l1_loss(fake, b)
            loss_g.backward()
            opt_g.step()

        return step
    if task == "srgan":
        return naive_sr_step(nets, lr)
    g_ab, g_ba, d_a, d_b = nets["G_AB"], nets["G_BA"], nets["D_A"], nets["D_B"]
    opt_g = torch.optim.Adam(itertools.chain(g_ab.parameters(), g_ba.parameters()), lr=lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(itertools.chain(d_a.parameters(), d_b.parameters()), lr=lr, betas=(0.5, 0.999))
    ds = {"D_A": d_a, "D_B": d_b}

    def gan(pred, real):
        return mse(pred, torch.full_like(pred, 1.0 if real else 0.0))

    def step(batch):
        a, b = batch["A"], batch["B"]
        fake_b, fake_a = g_ab(a), g_ba(b)
        rec_a, rec_b = g_ba(fake_b), g_ab(fake_a)
        set_requires_grad(ds, ())
        opt_g.zero_grad()
        loss_g = (gan(d_b(fake_b), True) + gan(d_a(fake_a), True) + 10 * F.l1_loss(rec_a, a) + 10 * F.l1_loss(rec_b, b)
                  + 5 * F.l1_loss(g_ab(b), b) + 5 * F.l1_loss(g_ba(a), a))
        loss_g.backward()
        opt_g.step()
        set_requires_grad(ds, ("D_A", "D_B"))
        opt_d.zero_grad()
        loss_d = 0.5 * (gan(d_b(b), True) + gan(d_b(fake_b.detach()), False))
        loss_d = loss_d + 0.5 * (gan(d_a(a), True) + gan(d_a(fake_a.detach()), False))
        loss_d.backward()
        opt_d.step()

    return step


def naive_sr_step(nets: dict, lr: float):
    """BasicSR's SRGANModel.optimize_parameters (without the perceptual term): G on
    1e-2 L1 + 5e-3 GAN through a frozen D, then D on real and detached fake."""
    G, D = nets["G"], nets["D"]
    bce = torch.nn.BCEWithLogitsLoss()
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.9, 0.99))

    def step(batch):
        set_requires_grad({"D": D}, ())
        opt_g.zero_grad()
        sr = G(batch["lr"])
        pred = D(sr)
        (1e-2 * F.l1_loss(sr, batch["hr"]) + 5e-3 * bce(pred, torch.ones_like(pred))).backward()
        opt_g.step()
        set_requires_grad({"D": D}, ("D",))
        opt_d.zero_grad()
        real, fake = D(batch["hr"]), D(sr.detach())
        (bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))).backward()
        opt_d.step()

    return step


def timed(step, batch: dict, steps: int, device: torch.device) -> float:
    step(batch)  # warm-up: cuDNN autotuning, allocator, compilation
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * next(iter(batch.values())).shape[0] / (time.perf_counter() - start)


SR_SETTINGS = {"perceptual": "none", "size": 128}  # no VGG weights offline; VGG-style D takes 128 px


def ours(task: str, size: int, batch: int, steps: int, device: torch.device, compile: bool) -> float:
    extra = SR_SETTINGS if task == "srgan" else {"size": size}
    cfg = make_config(task, {**extra, "batch_size": batch, "device": str(device), "compile": compile,
                             "out": "/tmp/img2img-bench"})
    built = TASKS[task](cfg, device, Silent(), data=False)
    trainer = Trainer(built, cfg, device, total_steps=10**6, reporter=Silent())
    data = trainer.to_device(batch_of(task, cfg.size, batch, device))
    return timed(lambda b: trainer.train_step([b]), data, steps, device)


def naive(task: str, size: int, steps: int, device: torch.device) -> float:
    extra = SR_SETTINGS if task == "srgan" else {"size": size}
    cfg = make_config(task, {**extra, "device": str(device), "amp": "off", "out": "/tmp/img2img-bench"})
    nets = TASKS[task](cfg, device, Silent(), data=False).nets
    for net in nets.values():
        net.train()
    return timed(naive_step_fn(task, nets, cfg.lr), batch_of(task, cfg.size, 1, device), steps, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="all", choices=["pix2pix", "cyclegan", "srgan", "all"])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-sizes", default=None, help="comma-separated")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    torch.backends.cudnn.benchmark = True
    batches = [int(b) for b in (args.batch_sizes or ("1,8,16,32" if device.type == "cuda" else "1")).split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; {args.size} px; torch {torch.__version__}; {args.steps} timed steps after a warm-up")
    for task in (["pix2pix", "cyclegan", "srgan"] if args.task == "all" else [args.task]):
        base = naive(task, args.size, args.steps, device)
        print(f"{task:>9}: naive fp32 b1 {base:7.2f} img/s{peak_memory(device)}", flush=True)
        for batch in batches:
            try:
                rate = ours(task, args.size, batch, args.steps, device, args.compile)
            except torch.OutOfMemoryError:
                print(f"{task:>9}: ours b{batch:<3} out of memory", flush=True)
                torch.cuda.empty_cache()
                continue
            print(f"{task:>9}: ours b{batch:<3} {rate:7.2f} img/s ({rate / base:5.2f}x){peak_memory(device)}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()


def peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return ""
    return f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


if __name__ == "__main__":
    main()

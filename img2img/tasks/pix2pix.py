"""pix2pix (Isola et al. 2017): a conditional GAN on paired images.

D sees concat(A, B) or concat(A, G(A)); G minimises the GAN loss plus lambda_L1 * |G(A) - B|.
The step's order is the reference's: G(A) once, then a D update on the detached fake,
then a G update through the updated D.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from img2img.config import TrainConfig
from img2img.data import datasets
from img2img.gan import losses
from img2img.gan.loop import Phase, Task
from img2img.nets import registry
from img2img.progress import Reporter
from img2img.tasks.common import build_discriminator, generator_arch, generator_spec, to_unit

SAMPLE_COUNT = 4


def prepare_data(cfg: TrainConfig) -> tuple[datasets.PairedDataset, dict]:
    """(training set, a fixed batch for sample grids from the val split or the first pairs)."""
    data, a, b = (None if p is None else Path(p) for p in (cfg.data, cfg.a, cfg.b))
    pairs = datasets.scan_training_pairs(data, a, b)
    load_size = cfg.load_size or round(cfg.size * 286 / 256)
    train_set = datasets.PairedDataset(pairs, cfg.size, load_size, cfg.flip, cfg.direction)
    sample_pairs = datasets.scan_validation_pairs(data)[:SAMPLE_COUNT] or pairs[:SAMPLE_COUNT]
    sample_set = datasets.PairedDataset(sample_pairs, cfg.size, cfg.size, direction=cfg.direction, augment=False)
    items = [sample_set[i] for i in range(len(sample_set))]
    sample_batch = {"A": torch.stack([x["A"] for x in items]), "B": torch.stack([x["B"] for x in items])}
    return train_set, sample_batch


def build(cfg: TrainConfig, device: torch.device, reporter: Reporter) -> Task:
    arch, hparams, note = generator_arch(cfg)
    if note:
        reporter.message(note)
    # The loop swaps DDP wrappers in and out of `nets`: always call networks through it.
    nets = {"G": registry.build(arch, **hparams).to(device), "D": build_discriminator(cfg, in_ch=6).to(device)}
    kind = cfg.gan_loss

    def forward(batch: dict) -> dict:
        return {"A": batch["A"], "B": batch["B"], "fake": nets["G"](batch["A"])}

    def d_step(s: dict) -> tuple[torch.Tensor, dict]:
        real_ab = torch.cat([s["A"], s["B"]], 1)
        fake_ab = torch.cat([s["A"], s["fake"].detach()], 1)
        real, fake = nets["D"](real_ab), nets["D"](fake_ab)
        loss = losses.d_loss(kind, real, fake)
        if kind == "wgangp":
            loss = loss + losses.gradient_penalty(nets["D"], real_ab, fake_ab)
        return loss, {"loss_D": loss.item(), "D_real": losses.probability(real, kind),
                      "D_fake": losses.probability(fake, kind)}

    def g_step(s: dict) -> tuple[torch.Tensor, dict]:
        gan = losses.g_loss(kind, nets["D"](torch.cat([s["A"], s["fake"]], 1)))
        l1 = F.l1_loss(s["fake"], s["B"])
        return gan + cfg.lambda_l1 * l1, {"loss_G_GAN": gan.item(), "loss_G_L1": l1.item()}

    def sample_columns(batch: dict) -> list[torch.Tensor]:
        return [to_unit(batch["A"]), to_unit(nets["G"](batch["A"])), to_unit(batch["B"])]

    return Task(
        name="pix2pix",
        nets=nets,
        phases=[Phase("D", ("D",), d_step), Phase("G", ("G",), g_step)],
        forward=forward,
        sample_columns=sample_columns,
        exports={"generator": ("G", lambda: generator_spec(arch, hparams, cfg, cfg.direction))},
        ema_nets=("G",),
        forward_nets=("G",),
    )

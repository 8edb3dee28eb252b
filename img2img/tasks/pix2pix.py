"""pix2pix (Isola et al. 2017): a conditional GAN on paired images.

D sees concat(A, B) or concat(A, G(A)); G minimises the GAN loss plus lambda_L1 * |G(A) - B|.
The step's order is the reference's: G(A) once, then a D update on the detached fake,
then a G update through the updated D.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from img2img.config import ConfigError, TrainConfig
from img2img.data import datasets
from img2img.gan import losses
from img2img.gan.loop import Phase, Task
from img2img.metrics import psnr_rgb
from img2img.nets import registry
from img2img.progress import Reporter
from img2img.tasks.common import build_discriminator, generator_arch, generator_spec, penalty_phases, to_unit

SAMPLE_COUNT = 4
VAL_COUNT = 64  # validation pairs measured; enough for a stable mean, cheap on a CPU


def prepare_data(cfg: TrainConfig) -> tuple[datasets.PairedDataset, dict]:
    """(training set, a fixed batch for sample grids from the val split or the first pairs)."""
    data, a, b = (None if p is None else Path(p) for p in (cfg.data, cfg.a, cfg.b))
    pairs = datasets.scan_training_pairs(data, a, b)
    load_size = cfg.load_size or round(cfg.size * 286 / 256)
    train_set = datasets.PairedDataset(pairs, cfg.size, load_size, cfg.flip, cfg.direction)
    sample_pairs = validation_pairs(cfg)[:SAMPLE_COUNT] or pairs[:SAMPLE_COUNT]
    return train_set, fixed_batch(sample_pairs, cfg)


def validation_pairs(cfg: TrainConfig) -> list[datasets.Pair]:
    """--val-a/--val-b, else the aligned data's val/ (or test/) split, else none."""
    if cfg.val_a or cfg.val_b:
        if not (cfg.val_a and cfg.val_b):
            raise ConfigError("give both --val-a and --val-b")
        return datasets.scan_paired(Path(cfg.val_a), Path(cfg.val_b))
    return datasets.scan_validation_pairs(None if cfg.data is None else Path(cfg.data))


def fixed_batch(pairs: list[datasets.Pair], cfg: TrainConfig) -> dict:
    """Pairs resized to the training crop, without augmentation: the same images every time."""
    items = datasets.PairedDataset(pairs, cfg.size, cfg.size, direction=cfg.direction, augment=False)
    rows = [items[i] for i in range(len(items))]
    return {"A": torch.stack([x["A"] for x in rows]), "B": torch.stack([x["B"] for x in rows])}


def make_validate(cfg: TrainConfig, device: torch.device):
    """L1 and PSNR of G(A) against B on the validation pairs, next to those of A itself."""
    pairs = validation_pairs(cfg)[:VAL_COUNT]
    if not pairs:
        return None
    batch = fixed_batch(pairs, cfg)

    def validate(export_module) -> dict[str, float]:
        generator = export_module("G")
        a, b = to_unit(batch["A"]), to_unit(batch["B"])
        fakes = torch.cat([to_unit(generator(batch["A"][i : i + 8].to(device))).float().cpu().clamp(0, 1)
                           for i in range(0, len(a), 8)])
        return {"val_l1": float((fakes - b).abs().mean()), "val_psnr": psnr_rgb(fakes, b, quantize=False),
                "val_l1_identity": float((a - b).abs().mean()), "val_psnr_identity": psnr_rgb(a, b, quantize=False)}

    return validate


def build(cfg: TrainConfig, device: torch.device, reporter: Reporter) -> Task:
    arch, hparams, note = generator_arch(cfg)
    if note:
        reporter.message(note)
    # The loop swaps DDP wrappers in and out of `nets`: always call networks through it.
    nets = {"G": registry.build(arch, **hparams).to(device), "D": build_discriminator(cfg, in_ch=6).to(device)}
    kind = cfg.gan_loss
    losses.check_gan_loss(kind, task="pix2pix")

    def forward(batch: dict) -> dict:
        return {"A": batch["A"], "B": batch["B"], "fake": nets["G"](batch["A"])}

    def d_inputs(s: dict) -> dict:
        """D judges the input with its real target and with the (detached) fake."""
        return {"D": (torch.cat([s["A"], s["B"]], 1), torch.cat([s["A"], s["fake"].detach()], 1))}

    def d_step(s: dict) -> tuple[torch.Tensor, dict]:
        return losses.discriminator_step(kind, nets["D"], *d_inputs(s)["D"])

    def g_step(s: dict) -> tuple[torch.Tensor, dict]:
        gan = losses.generator_adversarial(kind, nets["D"], torch.cat([s["A"], s["fake"]], 1),
                                           torch.cat([s["A"], s["B"]], 1))
        l1 = F.l1_loss(s["fake"], s["B"])
        return gan + cfg.lambda_l1 * l1, {"loss_G_GAN": gan.item(), "loss_G_L1": l1.item()}

    def sample_columns(batch: dict) -> list[torch.Tensor]:
        return [to_unit(batch["A"]), to_unit(nets["G"](batch["A"])), to_unit(batch["B"])]

    return Task(
        name="pix2pix",
        nets=nets,
        phases=[Phase("D", ("D",), d_step), *penalty_phases(cfg, nets, d_inputs), Phase("G", ("G",), g_step)],
        forward=forward,
        sample_columns=sample_columns,
        exports={"generator": ("G", lambda: generator_spec(arch, hparams, cfg, cfg.direction))},
        validate=make_validate(cfg, device),
        default_best_metric="val_l1",
        ema_nets=("G",),
        forward_nets=("G",),
    )

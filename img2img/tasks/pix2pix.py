"""pix2pix (Isola et al. 2017): a conditional GAN on paired images.

D sees concat(A, B) or concat(A, G(A)); G minimises the GAN loss plus lambda_L1 * |G(A) - B|.
The step's order is the reference's: G(A) once, then a D update on the detached fake,
then a G update through the updated D.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from img2img.config import ConfigError, opt
from img2img.data import datasets
from img2img.gan import losses
from img2img.gan.loop import Nets, Phase, Task
from img2img.metrics import psnr_rgb
from img2img.nets import registry
from img2img.progress import Reporter
from img2img.tasks import register
from img2img.tasks.common import (TranslationConfig, build_discriminator, generator_arch, generator_spec, load_size,
                                  penalty_phases, to_unit, validation_note)

SAMPLE_COUNT = 4
VAL_COUNT = 64  # validation pairs measured; enough for a stable mean, cheap on a CPU


@dataclass
class Pix2PixConfig(TranslationConfig):
    data: str | None = opt(None, "Aligned layout: each file holds A|B side by side; train/ val/ test/ subfolders.",
                           panel="Data", path=True)
    a: str | None = opt(None, "Folder of inputs, paired with --b by relative path and file stem.", panel="Data", path=True)
    b: str | None = opt(None, "Folder of targets.", panel="Data", path=True)
    direction: str = opt("AtoB", "AtoB, or BtoA to swap inputs and targets.", panel="Data", choices=("AtoB", "BtoA"),
                         kept=True)
    netG: str = opt("unet_256", "unet_256, unet_128 (unet_N), resnet_9blocks, resnet_6blocks.", panel="Networks")
    # LSGAN, not the paper's vanilla GAN (the recipes keep vanilla): measured on held-out photos
    # after 300 steps, U-Net 0.89 of the identity's L1 against 0.95, ResNet 0.96 against 1.10
    # (0.90 against 1.07 after 600); the demo: 9.0 against 16.1 grey levels after 400.
    gan_loss: str = opt("lsgan", "lsgan, vanilla (non-saturating; the paper's), minimax, hinge, wgangp, ragan, "
                        "rpgan (relativistic pairing).", panel="Losses",
                        choices=("vanilla", "minimax", "lsgan", "hinge", "wgangp", "ragan", "rpgan"), kept=True)
    lambda_l1: float = opt(100.0, "Weight of the L1 loss.", panel="Losses", min=0)
    val_a: str | None = opt(None, "Validation inputs.", panel="Validation", path=True,
                            default_text="the --data folder's val/ split")
    val_b: str | None = opt(None, "Validation targets, paired with --val-a by name.", panel="Validation", path=True)

    def check(self) -> None:
        super().check()
        if bool(self.val_a) != bool(self.val_b):
            raise ConfigError("give both --val-a and --val-b")


@register
class Pix2Pix(Task):
    """Paired translation (pix2pix): U-Net generator, PatchGAN discriminator, L1 + GAN loss."""

    name = "pix2pix"
    Config = Pix2PixConfig
    example = "img2img train pix2pix --recipe facades --data facades/ --set lambda_l1=50"
    ema_nets = forward_nets = ("G",)
    default_best_metric = "val_l1"
    metrics = ("val_l1", "val_psnr", "val_l1_identity", "val_psnr_identity")

    def __init__(self, cfg: Pix2PixConfig, device: torch.device, reporter: Reporter, data: bool = True):
        self.cfg, self.device = cfg, device
        self.arch, self.hparams, note = generator_arch(cfg)
        if note:
            reporter.message(note)
        self.nets = {"G": registry.build(self.arch, **self.hparams).to(device),
                     "D": build_discriminator(cfg, in_ch=6).to(device)}
        self.phases = [Phase("D", ("D",), self.d_loss), *penalty_phases(cfg, ("D",), self.d_inputs),
                       Phase("G", ("G",), self.g_loss)]
        if data:  # after the networks: bad network flags fail before the data scan
            self.load_data(reporter)

    def load_data(self, reporter: Reporter) -> None:
        cfg = self.cfg
        folder = lambda value: None if value is None else Path(value)  # noqa: E731
        pairs = datasets.scan_training_pairs(folder(cfg.data), folder(cfg.a), folder(cfg.b))
        self.dataset = datasets.PairedDataset(pairs, cfg.size, load_size(cfg), cfg.flip, cfg.direction)
        if cfg.val_a:
            val_pairs = datasets.scan_paired(Path(cfg.val_a), Path(cfg.val_b), ("--val-a", "--val-b"))
        else:
            val_pairs = datasets.scan_validation_pairs(folder(cfg.data))
        self.sample_batch = self.fixed_batch(val_pairs or pairs, SAMPLE_COUNT, "the sample grid")
        self.val_batch = self.fixed_batch(val_pairs, VAL_COUNT, "validation")
        self.validates = self.val_batch is not None
        if self.validates:
            source = cfg.val_a if cfg.val_a else f"{cfg.data}'s {datasets.validation_split(Path(cfg.data))}/"
            reporter.message(validation_note("L1 and PSNR against the targets", len(self.val_batch["A"]),
                                             len(val_pairs), source, cfg.size))

    def fixed_batch(self, pairs: list[datasets.Pair], count: int, what: str) -> dict | None:
        """The first `count` readable pairs resized to the training crop, without augmentation:
        the same images every time (None: none reads)."""
        items = datasets.PairedDataset(pairs, self.cfg.size, self.cfg.size, direction=self.cfg.direction, augment=False)
        rows = datasets.first_readable(items.__getitem__, range(len(items)), count, self.unreadable, what)
        return {"A": torch.stack([x["A"] for x in rows]), "B": torch.stack([x["B"] for x in rows])} if rows else None

    # ---- the step ----------------------------------------------------------------------------

    def forward(self, nets: Nets, batch: dict) -> dict:
        return {"A": batch["A"], "B": batch["B"], "fake": nets["G"](batch["A"])}

    def d_inputs(self, s: dict) -> dict:
        """D judges the input with its real target and with the (detached) fake."""
        return {"D": (torch.cat([s["A"], s["B"]], 1), torch.cat([s["A"], s["fake"].detach()], 1))}

    def d_loss(self, nets: Nets, s: dict) -> tuple[torch.Tensor, dict]:
        return losses.discriminator_step(self.cfg.gan_loss, nets["D"], *self.d_inputs(s)["D"])

    def g_loss(self, nets: Nets, s: dict) -> tuple[torch.Tensor, dict]:
        gan = losses.generator_adversarial(self.cfg.gan_loss, nets["D"], torch.cat([s["A"], s["fake"]], 1),
                                           torch.cat([s["A"], s["B"]], 1))
        l1 = F.l1_loss(s["fake"], s["B"])
        return gan + self.cfg.lambda_l1 * l1, {"loss_G_GAN": gan.item(), "loss_G_L1": l1.item()}

    # ---- what the recorder shows and keeps ------------------------------------------------------

    def sample_columns(self, nets: Nets, batch: dict) -> list[torch.Tensor]:
        return [to_unit(batch["A"]), to_unit(nets["G"](batch["A"])), to_unit(batch["B"])]

    def exports(self) -> dict:
        return {"generator": ("G", generator_spec(self.arch, self.hparams, self.cfg, self.cfg.direction))}

    def validate(self, nets: Nets) -> dict[str, float]:
        """L1 and PSNR of G(A) against B on the validation pairs, next to those of A itself."""
        batch, generator = self.val_batch, nets["G"]
        a, b = to_unit(batch["A"]), to_unit(batch["B"])
        fakes = torch.cat([to_unit(generator(batch["A"][i : i + 8].to(self.device))).float().cpu().clamp(0, 1)
                           for i in range(0, len(a), 8)])
        return dict(zip(self.metrics, (float((fakes - b).abs().mean()), psnr_rgb(fakes, b, quantize=False),
                                       float((a - b).abs().mean()), psnr_rgb(a, b, quantize=False))))

"""CycleGAN (Zhu et al. 2017): unpaired translation with two generators and two discriminators.

Naming: G_AB maps A -> B (the reference's netG_A), G_BA maps B -> A (netG_B); D_B judges
domain B, i.e. real B against G_AB(A) (the reference's netD_A), and D_A judges domain A.

    G loss = gan(D_B(G_AB(A))) + gan(D_A(G_BA(B)))
             + lambda_cycle * (|G_BA(G_AB(A)) - A| + |G_AB(G_BA(B)) - B|)
             + lambda_cycle * lambda_identity * (|G_AB(B) - B| + |G_BA(A) - A|)
    D_B loss = 0.5 * (gan_real(D_B(B)) + gan_fake(D_B(pool_B.query(G_AB(A))))), D_A likewise

The step's order is the reference's: the generators update first (through the discriminators
of the previous step), then the discriminators on the fakes made before that update, drawn
through an image pool of past fakes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from img2img.config import ConfigError, opt
from img2img.data.unpaired import UnpairedDataset, scan_domains, stack_samples
from img2img.gan import losses
from img2img.gan.loop import Nets, Phase, Task
from img2img.gan.pool import ImagePool
from img2img.nets import registry
from img2img.progress import Reporter
from img2img.tasks import register
from img2img.tasks.common import (TranslationConfig, build_discriminator, generator_arch, generator_spec, load_size,
                                  penalty_phases, to_unit, validation_note)

SAMPLE_COUNT = 3  # per domain
VAL_COUNT = 16  # held-out images per domain for the validation metrics


def unpaired_gan_loss():
    """--gan-loss of the unpaired families (CycleGAN, CUT): LSGAN by default, as their references."""
    return opt("lsgan", "lsgan, vanilla (non-saturating), minimax, hinge, wgangp, ragan, rpgan (relativistic pairing).",
               panel="Losses", choices=("lsgan", "vanilla", "minimax", "hinge", "wgangp", "ragan", "rpgan"), kept=True)


@dataclass
class CycleGANConfig(TranslationConfig):
    a: str | None = opt(None, "Folder of domain A images (searched recursively).", panel="Data", path=True)
    b: str | None = opt(None, "Folder of domain B images; no pairing with --a.", panel="Data", path=True)
    data: str | None = opt(None, "The reference layout instead: trainA/ trainB/ (and testA/ testB/ for samples "
                           "and validation).", panel="Data", path=True)
    serial: bool = opt(False, "Take B images in order instead of at random.", panel="Data")
    netG: str = opt("resnet_9blocks", "resnet_9blocks, resnet_6blocks (resnet_Nblocks), unet_256, unet_128.",
                    panel="Networks")
    norm: str = "instance"
    dropout: bool = False
    gan_loss: str = unpaired_gan_loss()
    lambda_cycle: float = opt(10.0, "Cycle loss weight, both directions.", panel="Losses", min=0)
    lambda_identity: float = opt(0.5, "Identity loss, as a fraction of --lambda-cycle; 0 disables.", panel="Losses", min=0)
    pool_size: int = opt(50, "Past fakes kept per discriminator; 0 disables the pool.", panel="Losses", min=0)
    val_a: str | None = opt(None, "Held-out A images for validation.", panel="Validation", path=True,
                            default_text="--data's testA/")
    val_b: str | None = opt(None, "Held-out B images for validation.", panel="Validation", path=True,
                            default_text="--data's testB/")

    def check(self) -> None:
        super().check()
        if bool(self.val_a) != bool(self.val_b):
            raise ConfigError("give both --val-a and --val-b (held-out images of each domain)")

    def folders(self) -> tuple[tuple[Path, Path], tuple[Path, Path] | None]:
        """((A folder, B folder), (held-out A, held-out B) or None) from --a/--b or --data."""
        if self.data is not None:
            root = Path(self.data)
            if not (root / "trainA").is_dir() or not (root / "trainB").is_dir():
                raise ConfigError(f"--data {root}: expected trainA/ and trainB/ subfolders (the reference "
                                  "CycleGAN layout); or give the two folders as --a DIR --b DIR")
            tests = (root / "testA", root / "testB")
            return (root / "trainA", root / "trainB"), tests if all(p.is_dir() for p in tests) else None
        if self.a is None or self.b is None:
            raise ConfigError("give both --a DIR and --b DIR (two folders of unpaired images), "
                              "or --data DIR with trainA/ and trainB/")
        return (Path(self.a), Path(self.b)), None


def unpaired_training_data(cfg: CycleGANConfig) -> tuple[list[Path], list[Path], tuple | None, UnpairedDataset]:
    """The two training domains (each scanned once), the held-out folders (--data's testA/ and
    testB/, or None), and the training set over both domains: what CycleGAN and CUT share."""
    (root_a, root_b), held_out = cfg.folders()
    train_a, train_b = scan_domains((root_a, "--a"), (root_b, "--b"))
    return train_a, train_b, held_out, UnpairedDataset(train_a, train_b, cfg.size, load_size(cfg), cfg.flip, cfg.serial)


@register
class CycleGAN(Task):
    """Unpaired translation (CycleGAN): two ResNet generators (A->B, B->A), two PatchGANs,
    LSGAN + cycle + identity loss."""

    name = "cyclegan"
    Config = CycleGANConfig
    example = "img2img train cyclegan --recipe horse2zebra --a horses/ --b zebras/ --set lambda_identity=0"
    ema_nets = forward_nets = ("G_AB", "G_BA")
    sample_caption = ("each row: real | translated | reconstructed; the rows of A (A to B and back) first, "
                      "then those of B (B to A and back)")
    metrics = ("val_cycle_A", "val_cycle_B", "val_change_A", "val_change_B")

    def __init__(self, cfg: CycleGANConfig, device: torch.device, reporter: Reporter, data: bool = True):
        self.cfg, self.device = cfg, device
        self.arch, self.hparams, note = generator_arch(cfg)
        if note:
            reporter.message(note)
        # Created in the reference's order (netG_A, netG_B, netD_A, netD_B).
        nets = {"G_AB": registry.build(self.arch, **self.hparams), "G_BA": registry.build(self.arch, **self.hparams),
                "D_B": build_discriminator(cfg, in_ch=3), "D_A": build_discriminator(cfg, in_ch=3)}
        self.nets = {name: net.to(device) for name, net in nets.items()}
        self.pools = {"A": ImagePool(cfg.pool_size), "B": ImagePool(cfg.pool_size)}  # past fakes of each domain
        self.phases = [Phase("G", ("G_AB", "G_BA"), self.g_loss), Phase("D", ("D_A", "D_B"), self.d_loss),
                       *penalty_phases(cfg, ("D_A", "D_B"), self.d_inputs)]
        if data:
            self.load_data(reporter)

    def load_data(self, reporter: Reporter) -> None:
        cfg = self.cfg
        train_a, train_b, held_out, self.dataset = unpaired_training_data(cfg)
        if held_out is not None:  # --data's testA/ and testB/: samples and validation
            held_out = scan_domains((held_out[0], "--data"), (held_out[1], "--data"))
        shown = held_out or (train_a, train_b)
        self.sample_batch = stack_samples(UnpairedDataset(*shown, cfg.size, cfg.size, augment=False), SAMPLE_COUNT,
                                          self.unreadable)
        if cfg.val_a:
            held_out = scan_domains((Path(cfg.val_a), "--val-a"), (Path(cfg.val_b), "--val-b"))
        self.val_batch = None
        if held_out is not None:
            self.val_batch = stack_samples(UnpairedDataset(*held_out, cfg.size, cfg.size, augment=False), VAL_COUNT,
                                           self.unreadable, "validation")
        self.validates = self.val_batch is not None
        if self.validates:
            source = f"{cfg.val_a} and {cfg.val_b}" if cfg.val_a else f"{cfg.data}'s testA/ and testB/"
            reporter.message(validation_note("the cycle error and the change", len(self.val_batch["A"]),
                                             max(map(len, held_out)), source, cfg.size))
            if not cfg.best_metric:  # no target to measure a translation against: no default
                reporter.message(f"no best_G_AB/best_G_BA are kept unless --best-metric names one of "
                                 f"{', '.join(self.metrics)}")

    # ---- the step ----------------------------------------------------------------------------

    def forward(self, nets: Nets, batch: dict) -> dict:
        """The fakes, made with the generators before their update (as in the reference): the G
        phase back-propagates through them, the D phase judges them detached."""
        return {"A": batch["A"], "B": batch["B"], "fake_B": nets["G_AB"](batch["A"]), "fake_A": nets["G_BA"](batch["B"])}

    def g_loss(self, nets: Nets, s: dict) -> tuple[torch.Tensor, dict]:
        A, B, fake_A, fake_B = s["A"], s["B"], s["fake_A"], s["fake_B"]
        gan_AB = losses.generator_adversarial(self.cfg.gan_loss, nets["D_B"], fake_B, B)
        gan_BA = losses.generator_adversarial(self.cfg.gan_loss, nets["D_A"], fake_A, A)
        cycle_A, cycle_B = F.l1_loss(nets["G_BA"](fake_B), A), F.l1_loss(nets["G_AB"](fake_A), B)
        lambda_cycle, lambda_idt = self.cfg.lambda_cycle, self.cfg.lambda_cycle * self.cfg.lambda_identity
        loss = gan_AB + gan_BA + lambda_cycle * (cycle_A + cycle_B)
        metrics = {"loss_G_AB": gan_AB.item(), "loss_G_BA": gan_BA.item(),
                   "loss_cycle_A": cycle_A.item(), "loss_cycle_B": cycle_B.item()}
        if lambda_idt > 0:  # both domains are RGB, so each generator can be asked to keep its own domain
            idt_A, idt_B = F.l1_loss(nets["G_AB"](B), B), F.l1_loss(nets["G_BA"](A), A)
            loss = loss + lambda_idt * (idt_A + idt_B)
            metrics |= {"loss_idt_A": idt_A.item(), "loss_idt_B": idt_B.item()}
        return loss, metrics

    def d_loss(self, nets: Nets, s: dict) -> tuple[torch.Tensor, dict]:
        kind = self.cfg.gan_loss
        # Pool B first, as in the reference, so the pools consume random numbers in its order.
        loss_B, metrics_B = losses.discriminator_step(kind, nets["D_B"], s["B"], self.pools["B"].query(s["fake_B"]), "D_B")
        loss_A, metrics_A = losses.discriminator_step(kind, nets["D_A"], s["A"], self.pools["A"].query(s["fake_A"]), "D_A")
        return loss_A + loss_B, metrics_A | metrics_B

    def d_inputs(self, s: dict) -> dict:
        """R1 on each domain's reals, R2 on this step's fakes (not the pool's)."""
        return {"D_B": (s["B"], s["fake_B"].detach()), "D_A": (s["A"], s["fake_A"].detach())}

    # ---- what the recorder shows and keeps ------------------------------------------------------

    def sample_columns(self, nets: Nets, batch: dict) -> list[torch.Tensor]:
        """Rows real A | fake B | reconstructed A, then real B | fake A | reconstructed B."""
        fake_B, fake_A = nets["G_AB"](batch["A"]), nets["G_BA"](batch["B"])
        columns = [(batch["A"], batch["B"]), (fake_B, fake_A), (nets["G_BA"](fake_B), nets["G_AB"](fake_A))]
        return [to_unit(torch.cat(pair)) for pair in columns]

    def exports(self) -> dict:
        return {"G_AB": ("G_AB", generator_spec(self.arch, self.hparams, self.cfg, "AtoB")),
                "G_BA": ("G_BA", generator_spec(self.arch, self.hparams, self.cfg, "BtoA"))}

    def validate(self, nets: Nets) -> dict[str, float]:
        """Unpaired data has no targets: measure how well each image survives the round trip
        (cycle L1), and how far the translation moves it (a translation that changes nothing
        would have a perfect cycle)."""
        g_ab, g_ba = nets["G_AB"], nets["G_BA"]
        a, b = self.val_batch["A"].to(self.device), self.val_batch["B"].to(self.device)
        fake_b, fake_a = g_ab(a), g_ba(b)
        return dict(zip(self.metrics, (float((g_ba(fake_b) - a).abs().mean() / 2),
                                       float((g_ab(fake_a) - b).abs().mean() / 2),
                                       float((fake_b - a).abs().mean() / 2), float((fake_a - b).abs().mean() / 2))))

    def state_dict(self) -> dict:
        return {f"pool_{name}": pool.state_dict() for name, pool in self.pools.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, pool in self.pools.items():
            pool.load_state_dict(state[f"pool_{name}"])

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

from pathlib import Path

import torch
import torch.nn.functional as F

from img2img.config import ConfigError, TrainConfig
from img2img.data.unpaired import UnpairedDataset, scan_domain, stack_samples
from img2img.gan import losses
from img2img.gan.loop import Phase, Task
from img2img.gan.pool import ImagePool
from img2img.nets import registry
from img2img.progress import Reporter
from img2img.tasks.common import build_discriminator, generator_arch, generator_spec, penalty_phases, to_unit

SAMPLE_COUNT = 3  # per domain
VAL_COUNT = 16  # held-out images per domain for the validation metrics


def domain_folders(cfg: TrainConfig) -> tuple[tuple[Path, Path], tuple[Path, Path] | None]:
    """((A folder, B folder), (sample A, sample B) folders or None) from --a/--b or --data."""
    if cfg.data is not None:
        root = Path(cfg.data)
        if not (root / "trainA").is_dir() or not (root / "trainB").is_dir():
            raise ConfigError(f"--data {root}: expected trainA/ and trainB/ subfolders (the reference "
                              "CycleGAN layout); or give the two folders as --a DIR --b DIR")
        tests = (root / "testA", root / "testB")
        return (root / "trainA", root / "trainB"), tests if all(p.is_dir() for p in tests) else None
    if cfg.a is None or cfg.b is None:
        raise ConfigError("give both --a DIR and --b DIR (two folders of unpaired images), "
                          "or --data DIR with trainA/ and trainB/")
    return (Path(cfg.a), Path(cfg.b)), None


def prepare_data(cfg: TrainConfig) -> tuple[UnpairedDataset, dict]:
    """(training set, a fixed batch of both domains for sample grids)."""
    (root_a, root_b), sample_roots = domain_folders(cfg)
    files_a, files_b = scan_domain(root_a, "--a"), scan_domain(root_b, "--b")
    load_size = cfg.load_size or round(cfg.size * 286 / 256)
    train_set = UnpairedDataset(files_a, files_b, cfg.size, load_size, cfg.flip, cfg.serial)
    if sample_roots is not None:
        files_a, files_b = scan_domain(sample_roots[0], "--data"), scan_domain(sample_roots[1], "--data")
    sample_set = UnpairedDataset(files_a, files_b, cfg.size, cfg.size, augment=False)
    return train_set, stack_samples(sample_set, SAMPLE_COUNT)


def validation_batch(cfg: TrainConfig) -> dict | None:
    """Held-out images of both domains: --val-a/--val-b, else --data's testA/ and testB/."""
    if cfg.val_a or cfg.val_b:
        if not (cfg.val_a and cfg.val_b):
            raise ConfigError("give both --val-a and --val-b (held-out images of each domain)")
        roots = (Path(cfg.val_a), Path(cfg.val_b))
    else:
        roots = domain_folders(cfg)[1] if cfg.data is not None else None
    if roots is None:
        return None
    files_a, files_b = scan_domain(roots[0], "--val-a"), scan_domain(roots[1], "--val-b")
    return stack_samples(UnpairedDataset(files_a, files_b, cfg.size, cfg.size, augment=False), VAL_COUNT)


def make_validate(cfg: TrainConfig, device: torch.device):
    """Unpaired data has no targets: measure how well each image survives the round trip
    (cycle L1), and how far the translation moves it (a translation that changes nothing
    would have a perfect cycle)."""
    batch = validation_batch(cfg)
    if batch is None:
        return None

    def validate(export_module) -> dict[str, float]:
        g_ab, g_ba = export_module("G_AB"), export_module("G_BA")
        a, b = batch["A"].to(device), batch["B"].to(device)
        fake_b, fake_a = g_ab(a), g_ba(b)
        return {"val_cycle_A": float((g_ba(fake_b) - a).abs().mean() / 2),
                "val_cycle_B": float((g_ab(fake_a) - b).abs().mean() / 2),
                "val_change_A": float((fake_b - a).abs().mean() / 2),
                "val_change_B": float((fake_a - b).abs().mean() / 2)}

    return validate


def build(cfg: TrainConfig, device: torch.device, reporter: Reporter) -> Task:
    kind = cfg.gan_loss
    losses.check_gan_loss(kind, task="cyclegan")
    arch, hparams, note = generator_arch(cfg)
    if note:
        reporter.message(note)
    # Created in the reference's order (netG_A, netG_B, netD_A, netD_B). The loop swaps DDP
    # wrappers in and out of `nets`, so the networks are always called through it.
    nets = {"G_AB": registry.build(arch, **hparams), "G_BA": registry.build(arch, **hparams),
            "D_B": build_discriminator(cfg, in_ch=3), "D_A": build_discriminator(cfg, in_ch=3)}
    nets = {name: net.to(device) for name, net in nets.items()}
    pools = {"A": ImagePool(cfg.pool_size), "B": ImagePool(cfg.pool_size)}  # past fakes of each domain
    lambda_cycle, lambda_idt = cfg.lambda_cycle, cfg.lambda_cycle * cfg.lambda_identity

    def adversarial(D: str, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return losses.generator_adversarial(kind, nets[D], fake, real)

    def g_step(s: dict) -> tuple[torch.Tensor, dict]:
        # The fakes are made here, not in `forward`: the loop enables gradients per phase, and
        # the generators come out of the previous step's D phase frozen.
        A, B = s["A"], s["B"]
        s["fake_B"], s["fake_A"] = fake_B, fake_A = nets["G_AB"](A), nets["G_BA"](B)
        gan_AB, gan_BA = adversarial("D_B", fake_B, B), adversarial("D_A", fake_A, A)
        cycle_A, cycle_B = F.l1_loss(nets["G_BA"](fake_B), A), F.l1_loss(nets["G_AB"](fake_A), B)
        loss = gan_AB + gan_BA + lambda_cycle * (cycle_A + cycle_B)
        metrics = {"loss_G_AB": gan_AB.item(), "loss_G_BA": gan_BA.item(),
                   "loss_cycle_A": cycle_A.item(), "loss_cycle_B": cycle_B.item()}
        if lambda_idt > 0:  # both domains are RGB, so each generator can be asked to keep its own domain
            idt_A, idt_B = F.l1_loss(nets["G_AB"](B), B), F.l1_loss(nets["G_BA"](A), A)
            loss = loss + lambda_idt * (idt_A + idt_B)
            metrics |= {"loss_idt_A": idt_A.item(), "loss_idt_B": idt_B.item()}
        return loss, metrics

    def fakes(s: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The G phase's fakes (made before the G update, as in the reference); with gradient
        accumulation the loop hands each phase a fresh forward, so they are made again."""
        if "fake_B" in s:
            return s["fake_B"].detach(), s["fake_A"].detach()
        with torch.no_grad():
            return nets["G_AB"](s["A"]), nets["G_BA"](s["B"])

    def d_step(s: dict) -> tuple[torch.Tensor, dict]:
        fake_B, fake_A = fakes(s)
        # Pool B first, as in the reference, so the pools consume random numbers in its order.
        loss_B, metrics_B = losses.discriminator_step(kind, nets["D_B"], s["B"], pools["B"].query(fake_B), "D_B")
        loss_A, metrics_A = losses.discriminator_step(kind, nets["D_A"], s["A"], pools["A"].query(fake_A), "D_A")
        return loss_A + loss_B, metrics_A | metrics_B

    def d_inputs(s: dict) -> dict:
        """R1 on each domain's reals, R2 on this step's fakes (not the pool's)."""
        fake_B, fake_A = fakes(s)
        return {"D_B": (s["B"], fake_B), "D_A": (s["A"], fake_A)}

    def sample_columns(batch: dict) -> list[torch.Tensor]:
        """Rows real A | fake B | reconstructed A, then real B | fake A | reconstructed B."""
        fake_B, fake_A = nets["G_AB"](batch["A"]), nets["G_BA"](batch["B"])
        columns = [(batch["A"], batch["B"]), (fake_B, fake_A), (nets["G_BA"](fake_B), nets["G_AB"](fake_A))]
        return [to_unit(torch.cat(pair)) for pair in columns]

    def extra_state() -> dict:
        return {f"pool_{name}": pool.state_dict() for name, pool in pools.items()}

    def load_extra_state(state: dict) -> None:
        for name, pool in pools.items():
            pool.load_state_dict(state[f"pool_{name}"])

    return Task(
        name="cyclegan",
        nets=nets,
        phases=[Phase("G", ("G_AB", "G_BA"), g_step), Phase("D", ("D_A", "D_B"), d_step),
                *penalty_phases(cfg, nets, d_inputs)],
        forward=dict,  # a copy of the batch, which g_step extends with the fakes d_step reads
        sample_columns=sample_columns,
        exports={"G_AB": ("G_AB", lambda: generator_spec(arch, hparams, cfg, "AtoB")),
                 "G_BA": ("G_BA", lambda: generator_spec(arch, hparams, cfg, "BtoA"))},
        ema_nets=("G_AB", "G_BA"),
        validate=make_validate(cfg, device),
        extra_state=extra_state,
        load_extra_state=load_extra_state,
    )

"""CUT and FastCUT (Park et al. 2020, "Contrastive Learning for Unpaired Image-to-Image
Translation"): unpaired translation with one generator, one discriminator and a patchwise
contrastive loss in place of CycleGAN's second generator and cycle.

    G loss = lambda_GAN * gan(D(G(A)))
             + PatchNCE(A, G(A))                            (FastCUT)
             + (PatchNCE(A, G(A)) + PatchNCE(B, G(B))) / 2  (CUT: with the identity term on B)
    PatchNCE(x, y) = lambda_NCE * mean over layers l of InfoNCE(H_l(E_l(y)), H_l(E_l(x)))

E_l are the generator's own encoder layers (`--nce-layers`, indices into its `model`), H_l
small MLP heads (the net "F"), and InfoNCE asks each of `--num-patches` output patches to pick
the input patch at its own position among the other positions of the same image (temperature
`--nce-t`). FastCUT drops the identity term, weighs NCE 10x and adds flip equivariance: half
the steps translate the mirrored batch and mirror its features back before comparing.

The step's order is the reference's: G's outputs once, a D update on them (detached), then a
G + F update through the updated D. Defaults are the reference's: anti-aliased ResNet with 9
blocks, instance norm, LSGAN, 70x70 PatchGAN (ours, without the blur pooling of the reference
D), Adam 2e-4 with beta1 0.5, no image pool.
"""

from __future__ import annotations

from pathlib import Path

import torch

from img2img.config import ConfigError, TrainConfig
from img2img.data import datasets
from img2img.data.unpaired import UnpairedDataset, scan_domain, stack_samples
from img2img.gan import losses
from img2img.gan.checkpoint import GeneratorSpec
from img2img.gan.loop import Phase, Task
from img2img.nets.cut import CutResnetGenerator, PatchHeads, patch_nce
from img2img.progress import Reporter
from img2img.tasks.common import build_discriminator, penalty_phases, to_unit
from img2img.tasks.cyclegan import domain_folders, prepare_data  # noqa: F401  (the same unpaired data)

MODES = {"cut": {"lambda_nce": 1.0, "nce_idt": True, "flip_equivariance": False},
         "fastcut": {"lambda_nce": 10.0, "nce_idt": False, "flip_equivariance": True}}
VAL_COUNT = 16


def mode_settings(cfg: TrainConfig) -> dict:
    """lambda_nce, nce_idt and flip_equivariance: the flags where given, else the mode's."""
    if cfg.mode not in MODES:
        raise ConfigError(f"unknown --mode {cfg.mode!r}; choose cut or fastcut")
    return {key: default if getattr(cfg, key) is None else getattr(cfg, key) for key, default in MODES[cfg.mode].items()}


def generator_hparams(cfg: TrainConfig) -> dict:
    name = cfg.netG.removeprefix("resnet_").removesuffix("blocks")
    if not cfg.netG.startswith("resnet_") or not name.isdigit():
        raise ConfigError(f"--netG {cfg.netG}: CUT's PatchNCE layers index the ResNet generator; "
                          "use resnet_9blocks or resnet_6blocks (resnet_Nblocks)")
    if cfg.size % 4:
        raise ConfigError(f"--netG {cfg.netG} needs --size to be a multiple of 4, got {cfg.size}")
    return {"in_ch": 3, "out_ch": 3, "ngf": cfg.ngf, "n_blocks": int(name), "norm": cfg.norm,
            "use_dropout": cfg.dropout, "antialias": cfg.antialias, "antialias_up": cfg.antialias}


def nce_layers(cfg: TrainConfig, generator: CutResnetGenerator) -> tuple[int, ...]:
    try:
        layers = tuple(sorted({int(part) for part in cfg.nce_layers.split(",") if part.strip()}))
    except ValueError:
        layers = ()
    last = len(generator.model) - 1
    if not layers or layers[0] < 0 or layers[-1] > last:
        raise ConfigError(f"--nce-layers {cfg.nce_layers!r}: give comma-separated indices of the generator's layers, "
                          f"0 to {last} (the paper's: 0,4,8,12,16)")
    if cfg.num_patches < 1 or cfg.nce_t <= 0 or cfg.netf_nc < 1:
        raise ConfigError("--num-patches and --netf-nc take a positive count, --nce-t a positive temperature")
    return layers


def validation_batch(cfg: TrainConfig) -> dict | None:
    """Held-out A images (--val-a, else --data's testA/), with their targets when --val-b holds
    partners paired by relative path and stem (a task with a known answer)."""
    if cfg.val_b and not cfg.val_a:
        raise ConfigError("--val-b holds the targets of --val-a: give --val-a too")
    if cfg.val_a and cfg.val_b:
        pairs = datasets.scan_paired(Path(cfg.val_a), Path(cfg.val_b))[:VAL_COUNT]
        items = datasets.PairedDataset(pairs, cfg.size, cfg.size, augment=False)
        rows = [items[i] for i in range(len(items))]
        return {"A": torch.stack([r["A"] for r in rows]), "target": torch.stack([r["B"] for r in rows])}
    if cfg.val_a:
        root = Path(cfg.val_a)
    else:
        tests = domain_folders(cfg)[1] if cfg.data is not None else None
        if tests is None:
            return None
        root = tests[0]
    files = scan_domain(root, "--val-a")
    return {"A": stack_samples(UnpairedDataset(files, files, cfg.size, cfg.size, augment=False), VAL_COUNT)["A"]}


def make_validate(cfg: TrainConfig, device: torch.device):
    """How far G moves held-out A images (val_change, 0-1 scale); with targets, its error
    (val_l1) next to the error of leaving the image as it is (val_l1_identity)."""
    batch = validation_batch(cfg)
    if batch is None:
        return None

    def validate(export_module) -> dict[str, float]:
        generator = export_module("G")
        a = batch["A"].to(device)
        fake = torch.cat([generator(a[i : i + 8]).float() for i in range(0, len(a), 8)]).clamp(-1, 1)
        metrics = {"val_change": float((fake - a).abs().mean() / 2)}
        if "target" in batch:
            target = batch["target"].to(device)
            metrics |= {"val_l1": float((fake - target).abs().mean() / 2),
                        "val_l1_identity": float((a - target).abs().mean() / 2)}
        return metrics

    return validate


def build(cfg: TrainConfig, device: torch.device, reporter: Reporter) -> Task:
    kind, settings, hparams = cfg.gan_loss, mode_settings(cfg), generator_hparams(cfg)
    losses.check_gan_loss(kind, task="cut")
    generator = CutResnetGenerator(**hparams)
    layers = nce_layers(cfg, generator)
    # The heads' widths come from the generator's layers, not from a first batch (the
    # reference builds them lazily): every process builds the same modules from the same
    # seed before DDP wraps them.
    heads = PatchHeads(generator.feature_channels(layers), cfg.netf_nc)
    nets = {"G": generator, "F": heads, "D": build_discriminator(cfg, in_ch=3)}
    nets = {name: net.to(device) for name, net in nets.items()}  # called through `nets`: the loop routes DDP
    lambda_nce, with_idt, flip = settings["lambda_nce"], settings["nce_idt"], settings["flip_equivariance"]

    def forward(batch: dict) -> dict:
        A, B = batch["A"], batch["B"]
        real = torch.cat([A, B]) if with_idt else A
        flipped = flip and bool(torch.rand(()) < 0.5)
        fake = nets["G"](real.flip(3) if flipped else real)
        return {"A": A, "B": B, "fake_B": fake[: len(A)], "idt_B": fake[len(A):], "flipped": flipped}

    def patch_nce_loss(source: torch.Tensor, output: torch.Tensor, flipped: bool) -> torch.Tensor:
        queries = nets["G"](output, layers=layers)
        if flipped:  # the output came from the mirrored input: mirror its features back
            queries = [q.flip(3) for q in queries]
        keys = nets["G"](source, layers=layers)
        key_patches, ids = nets["F"](keys, cfg.num_patches)
        query_patches, _ = nets["F"](queries, cfg.num_patches, ids)
        per_layer = [patch_nce(q, k, len(source), cfg.nce_t).mean() for q, k in zip(query_patches, key_patches)]
        return lambda_nce * torch.stack(per_layer).mean()

    def d_step(s: dict) -> tuple[torch.Tensor, dict]:
        return losses.discriminator_step(kind, nets["D"], s["B"], s["fake_B"])

    def g_step(s: dict) -> tuple[torch.Tensor, dict]:
        gan = losses.generator_adversarial(kind, nets["D"], s["fake_B"], s["B"])
        nce = patch_nce_loss(s["A"], s["fake_B"], s["flipped"])
        metrics = {"loss_G_GAN": gan.item(), "loss_NCE": nce.item()}
        if with_idt:
            nce_idt = patch_nce_loss(s["B"], s["idt_B"], s["flipped"])
            metrics["loss_NCE_Y"] = nce_idt.item()
            nce = (nce + nce_idt) / 2
        return cfg.lambda_gan * gan + nce, metrics

    def sample_columns(batch: dict) -> list[torch.Tensor]:
        """real A | G(A) | real B | G(B) (what the identity term keeps close to B)."""
        return [to_unit(x) for x in (batch["A"], nets["G"](batch["A"]), batch["B"], nets["G"](batch["B"]))]

    spec = lambda: GeneratorSpec(arch="cut_resnet", hparams=hparams, pixel_range="-1,1", task="cut",
                                 direction="AtoB", config=cfg.to_dict())
    validate = make_validate(cfg, device)
    d_inputs = lambda s: {"D": (s["B"], s["fake_B"].detach())}
    return Task(
        name="cut",
        nets=nets,
        phases=[Phase("D", ("D",), d_step), *penalty_phases(cfg, nets, d_inputs), Phase("G", ("G", "F"), g_step)],
        forward=forward,
        sample_columns=sample_columns,
        exports={"generator": ("G", spec)},
        ema_nets=("G",),
        forward_nets=("G",),
        validate=validate,
        default_best_metric="val_l1" if cfg.val_b else None,
    )

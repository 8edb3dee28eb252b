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
D), Xavier init with gain 0.02 for G, F and D, Adam 2e-4 with beta1 0.5, no image pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from img2img.config import ConfigError, opt, with_absolute_paths
from img2img.data import datasets
from img2img.data.unpaired import UnpairedDataset, scan_domains, stack_samples
from img2img.gan import losses
from img2img.gan.checkpoint import GeneratorSpec
from img2img.gan.loop import Nets, Phase, Task
from img2img.nets.cut import CutResnetGenerator, PatchHeads, patch_nce
from img2img.nets.layers import init_weights
from img2img.progress import Reporter
from img2img.tasks import register
from img2img.tasks.common import TranslationConfig, build_discriminator, penalty_phases, to_unit, validation_note
from img2img.tasks.cyclegan import CycleGANConfig, unpaired_gan_loss, unpaired_training_data

MODES = {"cut": {"lambda_nce": 1.0, "nce_idt": True, "flip_equivariance": False},
         "fastcut": {"lambda_nce": 10.0, "nce_idt": False, "flip_equivariance": True}}
SAMPLE_COUNT = 3
VAL_COUNT = 16


@dataclass
class CUTConfig(TranslationConfig):
    a: str | None = opt(None, "Folder of domain A images (searched recursively).", panel="Data", path=True)
    b: str | None = opt(None, "Folder of domain B images; no pairing with --a.", panel="Data", path=True)
    data: str | None = opt(None, "The reference layout instead: trainA/ trainB/ (and testA/ for validation).",
                           panel="Data", path=True)
    serial: bool = opt(False, "Take B images in order instead of at random.", panel="Data")
    mode: str = opt("cut", "cut (identity PatchNCE on B, lambda_NCE 1) or fastcut (lambda_NCE 10, flip "
                    "equivariance).", panel="Losses", choices=("cut", "fastcut"), kept=True)
    netG: str = opt("resnet_9blocks", "resnet_9blocks, resnet_6blocks (resnet_Nblocks).", panel="Networks")
    antialias: bool = opt(True, "Blur-pool down/up-sampling in G, as the reference.", panel="Networks")
    norm: str = "instance"
    dropout: bool = False
    gan_loss: str = unpaired_gan_loss()
    lambda_gan: float = opt(1.0, "GAN loss weight.", panel="Losses", min=0)
    lambda_nce: float | None = opt(None, "PatchNCE weight.", panel="Losses", min=0, default_text="1 cut, 10 fastcut")
    nce_idt: bool | None = opt(None, "Identity PatchNCE on B images.", panel="Losses", default_text="on for cut")
    flip_equivariance: bool | None = opt(None, "Mirror half the batches and ask for mirrored features.",
                                         panel="Losses", default_text="on for fastcut")
    nce_layers: str = opt("0,4,8,12,16", "Generator layers PatchNCE compares.", panel="Losses")
    num_patches: int = opt(256, "Patches sampled per layer.", panel="Losses", min=1)
    nce_t: float = opt(0.07, "PatchNCE temperature.", panel="Losses", min=1e-6)
    netf_nc: int = opt(256, "Width of the projection heads.", panel="Networks", min=1)
    val_a: str | None = opt(None, "Held-out A images for validation.", panel="Validation", path=True,
                            default_text="--data's testA/")
    val_b: str | None = opt(None, "Their targets, paired with --val-a by name, where the answer is known: adds "
                            "val_l1.", panel="Validation", path=True)

    folders = CycleGANConfig.folders  # the same unpaired data

    def check(self) -> None:
        super().check()
        if self.val_b and not self.val_a:
            raise ConfigError("--val-b holds the targets of --val-a: give --val-a too")
        for key, default in MODES[self.mode].items():  # resolved here, so config.yaml says what ran
            if getattr(self, key) is None:
                setattr(self, key, default)


@register
class CUT(Task):
    """Unpaired translation (CUT / FastCUT): one ResNet generator, a PatchGAN, PatchNCE between
    input and output patches."""

    name = "cut"
    sample_caption = ("each row: real A | translated | a real B (no target: the data are unpaired) | that B "
                      "through G (what the identity term keeps close to B)")
    Config = CUTConfig
    example = "img2img train cut --recipe horse2zebra_cut --data horse2zebra/"
    ema_nets = forward_nets = ("G",)

    def __init__(self, cfg: CUTConfig, device: torch.device, reporter: Reporter, data: bool = True):
        self.cfg, self.device = cfg, device
        self.hparams = generator_hparams(cfg)
        generator = CutResnetGenerator(**self.hparams)
        self.layers = nce_layers(cfg, generator)
        # The heads' widths come from the generator's layers, not from a first batch (the
        # reference builds them lazily): every process builds the same modules from the same
        # seed before DDP wraps them.
        heads = PatchHeads(generator.feature_channels(self.layers), cfg.netf_nc)
        nets = {"G": generator, "F": heads, "D": init_weights(build_discriminator(cfg, in_ch=3), "xavier")}
        self.nets = {name: net.to(device) for name, net in nets.items()}
        self.lambda_nce, self.with_idt, self.flip = cfg.lambda_nce, cfg.nce_idt, cfg.flip_equivariance
        self.phases = [Phase("D", ("D",), self.d_loss), *penalty_phases(cfg, ("D",), self.d_inputs),
                       Phase("G", ("G", "F"), self.g_loss)]
        if data:
            self.load_data(reporter)

    def load_data(self, reporter: Reporter) -> None:
        cfg = self.cfg
        train_a, train_b, held_out, self.dataset = unpaired_training_data(cfg)
        self.sample_batch = stack_samples(UnpairedDataset(train_a, train_b, cfg.size, cfg.size, augment=False),
                                          SAMPLE_COUNT, self.unreadable)
        self.val_batch, available = self.validation_batch(held_out)
        self.validates = self.val_batch is not None
        self.default_best_metric = "val_l1" if cfg.val_b else None
        self.metrics = ("val_change", "val_l1", "val_l1_identity") if cfg.val_b else ("val_change",)
        if self.validates:
            source = cfg.val_a or f"{cfg.data}'s testA/"
            measures = "the change and the L1 error against --val-b" if cfg.val_b else "the change"
            reporter.message(validation_note(measures, len(self.val_batch["A"]), available, source, cfg.size))

    def validation_batch(self, held_out) -> tuple[dict | None, int]:
        """Held-out A images (--val-a, else --data's testA/), with their targets when --val-b
        holds partners paired by relative path and stem (a task with a known answer); and how
        many there are."""
        cfg = self.cfg
        if cfg.val_a and cfg.val_b:
            pairs = datasets.scan_paired(Path(cfg.val_a), Path(cfg.val_b), ("--val-a", "--val-b"))
            items = datasets.PairedDataset(pairs, cfg.size, cfg.size, augment=False)
            rows = datasets.first_readable(items.__getitem__, range(len(items)), VAL_COUNT, self.unreadable,
                                           "validation")
            if not rows:
                return None, len(pairs)
            return {"A": torch.stack([r["A"] for r in rows]), "target": torch.stack([r["B"] for r in rows])}, len(pairs)
        root = Path(cfg.val_a) if cfg.val_a else (held_out[0] if held_out else None)
        if root is None:
            return None, 0
        (files,) = scan_domains((root, "--val-a"))
        batch = stack_samples(UnpairedDataset(files, files, cfg.size, cfg.size, augment=False), VAL_COUNT,
                              self.unreadable, "validation")
        return (None if batch is None else {"A": batch["A"]}), len(files)

    # ---- the step ----------------------------------------------------------------------------

    def forward(self, nets: Nets, batch: dict) -> dict:
        A, B = batch["A"], batch["B"]
        real = torch.cat([A, B]) if self.with_idt else A
        flipped = self.flip and bool(torch.rand(()) < 0.5)
        fake = nets["G"](real.flip(3) if flipped else real)
        return {"A": A, "B": B, "fake_B": fake[: len(A)], "idt_B": fake[len(A):], "flipped": flipped}

    def patch_nce(self, nets: Nets, source: torch.Tensor, output: torch.Tensor, flipped: bool) -> torch.Tensor:
        cfg = self.cfg
        queries = nets["G"](output, layers=self.layers)  # through forward: a DDP wrapper sees the call
        if flipped:  # the output came from the mirrored input: mirror its features back
            queries = [q.flip(3) for q in queries]
        with torch.no_grad():  # the keys are targets (the loss detaches them): no graph to keep
            key_patches, ids = nets["F"](nets["G"](source, layers=self.layers), cfg.num_patches)
        query_patches, _ = nets["F"](queries, cfg.num_patches, ids)
        per_layer = [patch_nce(q, k, len(source), cfg.nce_t).mean() for q, k in zip(query_patches, key_patches)]
        return self.lambda_nce * torch.stack(per_layer).mean()

    def d_inputs(self, s: dict) -> dict:
        return {"D": (s["B"], s["fake_B"].detach())}

    def d_loss(self, nets: Nets, s: dict) -> tuple[torch.Tensor, dict]:
        return losses.discriminator_step(self.cfg.gan_loss, nets["D"], s["B"], s["fake_B"])

    def g_loss(self, nets: Nets, s: dict) -> tuple[torch.Tensor, dict]:
        gan = losses.generator_adversarial(self.cfg.gan_loss, nets["D"], s["fake_B"], s["B"])
        nce = self.patch_nce(nets, s["A"], s["fake_B"], s["flipped"])
        metrics = {"loss_G_GAN": gan.item(), "loss_NCE": nce.item()}
        if self.with_idt:
            nce_idt = self.patch_nce(nets, s["B"], s["idt_B"], s["flipped"])
            metrics["loss_NCE_Y"] = nce_idt.item()
            nce = (nce + nce_idt) / 2
        return self.cfg.lambda_gan * gan + nce, metrics

    # ---- what the recorder shows and keeps ------------------------------------------------------

    def sample_columns(self, nets: Nets, batch: dict) -> list[torch.Tensor]:
        """real A | G(A) | real B | G(B) (what the identity term keeps close to B)."""
        return [to_unit(x) for x in (batch["A"], nets["G"](batch["A"]), batch["B"], nets["G"](batch["B"]))]

    def exports(self) -> dict:
        spec = GeneratorSpec(arch="cut_resnet", hparams=self.hparams, pixel_range="-1,1", task="cut",
                             direction="AtoB", config=with_absolute_paths(self.cfg))
        return {"generator": ("G", spec)}

    def validate(self, nets: Nets) -> dict[str, float]:
        """How far G moves held-out A images (val_change, 0-1 scale); with targets, its error
        (val_l1) next to the error of leaving the image as it is (val_l1_identity)."""
        a = self.val_batch["A"].to(self.device)
        fake = torch.cat([nets["G"](a[i : i + 8]).float() for i in range(0, len(a), 8)]).clamp(-1, 1)
        metrics = {"val_change": float((fake - a).abs().mean() / 2)}
        if "target" in self.val_batch:
            target = self.val_batch["target"].to(self.device)
            metrics |= {"val_l1": float((fake - target).abs().mean() / 2),
                        "val_l1_identity": float((a - target).abs().mean() / 2)}
        return metrics


def generator_hparams(cfg: CUTConfig) -> dict:
    blocks = cfg.netG.removeprefix("resnet_").removesuffix("blocks")
    if not cfg.netG.startswith("resnet_") or not blocks.isdigit():
        raise ConfigError(f"--netG {cfg.netG}: CUT's PatchNCE layers index the ResNet generator; "
                          "use resnet_9blocks or resnet_6blocks (resnet_Nblocks)")
    if cfg.size % 4:
        raise ConfigError(f"--netG {cfg.netG} needs --size to be a multiple of 4, got {cfg.size}")
    return {"in_ch": 3, "out_ch": 3, "ngf": cfg.ngf, "n_blocks": int(blocks), "norm": cfg.norm,
            "use_dropout": cfg.dropout, "antialias": cfg.antialias, "antialias_up": cfg.antialias}


def nce_layers(cfg: CUTConfig, generator: CutResnetGenerator) -> tuple[int, ...]:
    try:
        layers = tuple(sorted({int(part) for part in cfg.nce_layers.split(",") if part.strip()}))
    except ValueError:
        layers = ()
    last = len(generator.model) - 1
    if not layers or layers[0] < 0 or layers[-1] > last:
        raise ConfigError(f"--nce-layers {cfg.nce_layers!r}: give comma-separated indices of the generator's layers, "
                          f"0 to {last} (the paper's: 0,4,8,12,16)")
    return layers

"""Adversarial losses on discriminator logits, the gradient penalties (WGAN-GP; zero-centred
R1 on reals and R2 on fakes), and the discriminator step every task shares.

Names follow the literature; `vanilla` is the reference code's default, which is the
non-saturating generator loss (it maximises log D(G(x)) rather than minimising
log(1 - D(G(x))), whose gradient vanishes when D confidently rejects the fakes).
`rpgan` is the relativistic pairing loss of R3GAN (Huang et al. 2024): each real is paired
with a fake and D judges the difference of their logits, softplus(-(D(real) - D(fake))); with
R1 and R2 it trains stably without other tricks. On PatchGAN maps the pairs are made patch by
patch (real i's patch at (y, x) against fake i's at the same place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from img2img.config import ConfigError

GAN_LOSSES = ("vanilla", "nonsaturating", "minimax", "lsgan", "hinge", "wgangp", "ragan", "rpgan")
RELATIVISTIC = ("ragan", "rpgan")  # the generator loss needs D's logits on reals too


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss from its logits on real and on (detached) fake samples."""
    if kind in ("vanilla", "nonsaturating", "minimax"):
        return 0.5 * (_bce(real, 1.0) + _bce(fake, 0.0))
    if kind == "lsgan":
        return 0.5 * (F.mse_loss(real, torch.ones_like(real)) + F.mse_loss(fake, torch.zeros_like(fake)))
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "wgangp":
        return fake.mean() - real.mean()
    if kind == "ragan":
        return 0.5 * (_bce(real - fake.mean(), 1.0) + _bce(fake - real.mean(), 0.0))
    if kind == "rpgan":
        return F.softplus(fake - real).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(GAN_LOSSES)}")


def g_loss(kind: str, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """Generator loss from D's logits on fakes (and on reals, for the relativistic loss)."""
    if kind in ("vanilla", "nonsaturating"):
        return _bce(fake, 1.0)
    if kind == "minimax":
        return -_bce(fake, 0.0)  # minimise log(1 - D(G(x))): saturates when D wins
    if kind == "lsgan":
        return F.mse_loss(fake, torch.ones_like(fake))
    if kind in ("hinge", "wgangp"):
        return -fake.mean()
    if kind == "ragan":
        if real is None:
            raise ValueError("the relativistic loss needs D's logits on real samples")
        return 0.5 * (_bce(real - fake.mean(), 0.0) + _bce(fake - real.mean(), 1.0))
    if kind == "rpgan":
        if real is None:
            raise ValueError("the relativistic pairing loss needs D's logits on real samples")
        return F.softplus(real - fake).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(GAN_LOSSES)}")


def gradient_penalty(discriminator, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """WGAN-GP: (||grad D(x_hat)|| - 1)^2 on random interpolates of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = discriminator(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def squared_gradient_norm(discriminator, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||d D(x) / dx||^2 per sample, differentiable for a penalty's own gradient; D's logits).
    A PatchGAN's map is summed first, as StyleGAN2 and R3GAN sum their logits."""
    x = x.detach().requires_grad_(True)
    logits = discriminator(x)
    (grad,) = torch.autograd.grad(logits.float().sum(), x, create_graph=True)
    return grad.float().square().flatten(1).sum(1), logits


def zero_centred_penalties(discriminator, real: torch.Tensor, fake: torch.Tensor, r1: float, r2: float,
                           every: int = 1, name: str = "D") -> tuple[torch.Tensor, dict[str, float]]:
    """gamma/2 E||grad D(real)||^2 (R1, Mescheder et al. 2018) + gamma/2 E||grad D(fake)||^2 (R2).
    Lazy when every > 1 (StyleGAN2): run once per `every` steps, scaled by `every`, so the
    average strength is the same as every step's."""
    total, metrics = real.new_zeros(()).float(), {}
    for label, gamma, x in (("r1", r1, real), ("r2", r2, fake)):
        if gamma > 0:
            norms, logits = squared_gradient_norm(discriminator, x)
            penalty = norms.mean()
            # + 0 * logits: the last layer's bias has no say in D's input gradient, and DDP
            # waits for a gradient of every parameter (StyleGAN2-ADA adds the same zero).
            total = total + gamma / 2 * penalty + 0 * logits.float().mean()
            metrics[f"{name}_{label}"] = penalty.item()
    return total * every, metrics


def discriminator_step(kind: str, discriminator, real: torch.Tensor, fake: torch.Tensor,
                       name: str = "D") -> tuple[torch.Tensor, dict[str, float]]:
    """The D update every task shares: its loss on real and (detached) fake inputs, the WGAN-GP
    penalty where that loss asks for it, and D(real)/D(fake) as probabilities for the log."""
    fake = fake.detach()
    real_logits, fake_logits = discriminator(real), discriminator(fake)
    loss = d_loss(kind, real_logits, fake_logits)
    if kind == "wgangp":
        loss = loss + gradient_penalty(discriminator, real, fake)
    return loss, {f"loss_{name}": loss.item(), f"{name}_real": probability(real_logits, kind),
                  f"{name}_fake": probability(fake_logits, kind)}


def generator_adversarial(kind: str, discriminator, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """The generator's GAN loss on its fakes; the relativistic losses also judge the reals."""
    real_logits = discriminator(real).detach() if kind in RELATIVISTIC else None
    return g_loss(kind, discriminator(fake), real_logits)


def check_gan_loss(kind: str, allowed: tuple[str, ...] = GAN_LOSSES, task: str = "") -> None:
    if kind not in allowed:
        where = f" for {task}" if task else ""
        raise ConfigError(f"--gan-loss {kind!r} is not offered{where}; choose one of {', '.join(allowed)}")


def probability(logits: torch.Tensor, kind: str) -> float:
    """D's output read as P(real), for the log: sigmoid of logits for the logistic losses,
    the raw score for lsgan (trained towards 0/1), and sigmoid otherwise as a monotone proxy."""
    if kind == "lsgan":
        return float(logits.detach().float().mean().clamp(0, 1))
    return float(torch.sigmoid(logits.detach().float()).mean())

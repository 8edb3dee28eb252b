"""Adversarial losses on discriminator logits, the WGAN-GP penalty, and the L1 pixel loss.

Names follow the literature; `vanilla` is the reference code's default, which is the
non-saturating generator loss (it maximises log D(G(x)) rather than minimising
log(1 - D(G(x))), whose gradient vanishes when D confidently rejects the fakes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GAN_LOSSES = ("vanilla", "nonsaturating", "minimax", "lsgan", "hinge", "wgangp", "ragan")


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
    raise ValueError(f"unknown GAN loss {kind!r}; choose one of {', '.join(GAN_LOSSES)}")


def gradient_penalty(discriminator, real: torch.Tensor, fake: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """WGAN-GP: (||grad D(x_hat)|| - 1)^2 on random interpolates of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = discriminator(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return weight * ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def probability(logits: torch.Tensor, kind: str) -> float:
    """D's output read as P(real), for the log: sigmoid of logits for the logistic losses,
    the raw score for lsgan (trained towards 0/1), and sigmoid otherwise as a monotone proxy."""
    if kind == "lsgan":
        return float(logits.detach().float().mean().clamp(0, 1))
    return float(torch.sigmoid(logits.detach().float()).mean())


def discriminator_step(kind: str, D, real: torch.Tensor, fake: torch.Tensor, name: str = "D") -> tuple[torch.Tensor, dict]:
    """The discriminator update every task shares: D's loss on real and (detached) fake
    inputs, plus the WGAN-GP penalty with `wgangp`; logged as loss_<name> and D's outputs
    as probabilities, <name>_real and <name>_fake."""
    fake = fake.detach()
    real_logits, fake_logits = D(real), D(fake)
    loss = d_loss(kind, real_logits, fake_logits)
    if kind == "wgangp":
        loss = loss + gradient_penalty(D, real, fake)
    return loss, {f"loss_{name}": loss.item(), f"{name}_real": probability(real_logits, kind),
                  f"{name}_fake": probability(fake_logits, kind)}

"""Adversarial losses: the non-saturating trick, and that each loss ranks real over fake."""

from __future__ import annotations

import pytest
import torch

from img2img.gan import losses


def generator_gradient(kind: str, logit: float) -> float:
    fake = torch.tensor([logit], requires_grad=True)
    losses.g_loss(kind, fake).backward()
    return float(fake.grad)


def test_non_saturating_loss_keeps_its_gradient_when_the_discriminator_wins():
    # D(G(x)) = sigmoid(-8) ~ 3e-4: D confidently rejects the fake.
    non_saturating = generator_gradient("vanilla", -8.0)
    saturating = generator_gradient("minimax", -8.0)
    assert non_saturating == pytest.approx(-1.0, abs=1e-3)  # d/dl -log sigmoid(l) = sigmoid(l) - 1
    assert abs(saturating) < 1e-3  # d/dl log(1 - sigmoid(l)) = -sigmoid(l)
    assert abs(non_saturating) > 1000 * abs(saturating)
    # Both push the fake logit up (towards "real").
    assert non_saturating < 0 and saturating < 0


@pytest.mark.parametrize("kind", ["vanilla", "minimax", "lsgan", "hinge", "wgangp", "ragan"])
def test_discriminator_loss_is_lower_when_it_separates_real_from_fake(kind):
    real, fake = torch.full((4, 1, 3, 3), 2.0), torch.full((4, 1, 3, 3), -2.0)
    assert losses.d_loss(kind, real, fake) < losses.d_loss(kind, fake, real)


@pytest.mark.parametrize("kind", ["vanilla", "minimax", "lsgan", "hinge", "wgangp", "ragan"])
def test_generator_loss_is_lower_when_fakes_look_real(kind):
    real = torch.zeros(4, 1, 3, 3)
    assert losses.g_loss(kind, torch.full_like(real, 2.0), real) < losses.g_loss(kind, torch.full_like(real, -2.0), real)


def test_gradient_penalty_is_zero_for_a_unit_gradient_critic():
    weight = torch.zeros(1, 3, 2, 2)
    weight[0, 0, 0, 0] = 1.0  # a linear critic whose gradient has norm 1 everywhere
    critic = lambda x: (x * weight).sum(dim=(1, 2, 3))
    real, fake = torch.rand(4, 3, 2, 2), torch.rand(4, 3, 2, 2)
    assert losses.gradient_penalty(critic, real, fake) == pytest.approx(0.0, abs=1e-6)
    assert losses.gradient_penalty(lambda x: 3 * critic(x), real, fake) == pytest.approx(40.0, rel=1e-4)

"""Adversarial losses: the non-saturating trick, and that each loss ranks real over fake."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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


@pytest.mark.parametrize("kind", ["vanilla", "minimax", "lsgan", "hinge", "wgangp", "ragan", "rpgan"])
def test_discriminator_loss_is_lower_when_it_separates_real_from_fake(kind):
    real, fake = torch.full((4, 1, 3, 3), 2.0), torch.full((4, 1, 3, 3), -2.0)
    assert losses.d_loss(kind, real, fake) < losses.d_loss(kind, fake, real)


@pytest.mark.parametrize("kind", ["vanilla", "minimax", "lsgan", "hinge", "wgangp", "ragan", "rpgan"])
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


class Quadratic(nn.Module):
    """D(x) = sum_ij w_ij x_ij^2 / 2 per image, as a 1 x 1 map: grad_x D = w * x."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Parameter(torch.rand(shape) + 0.5)

    def forward(self, x):
        return (self.w * x.square()).sum(dim=(1, 2, 3)).div(2).view(-1, 1, 1, 1)


def test_r1_and_r2_are_the_hand_computed_penalties_and_their_gradients():
    torch.manual_seed(0)
    D = Quadratic((2, 3, 3))
    real, fake = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    w = D.w.detach()
    norms, _ = losses.squared_gradient_norm(D, real)
    assert torch.allclose(norms, (w * real).square().flatten(1).sum(1), rtol=1e-5)

    penalty, metrics = losses.zero_centred_penalties(D, real, fake, r1=0.3, r2=0.2, every=4)
    r1 = (w * real).square().flatten(1).sum(1).mean()
    r2 = (w * fake).square().flatten(1).sum(1).mean()
    assert penalty.item() == pytest.approx(4 * (0.15 * r1 + 0.1 * r2).item(), rel=1e-5)  # lazy: scaled by `every`
    assert metrics == pytest.approx({"D_r1": r1.item(), "D_r2": r2.item()}, rel=1e-5)
    # d/dw of gamma/2 * mean_i sum (w x_i)^2 = gamma * w * mean_i x_i^2: the penalty trains D's weights.
    penalty.backward()
    expected = 4 * (0.3 * w * real.square().mean(0) + 0.2 * w * fake.square().mean(0))
    assert torch.allclose(D.w.grad, expected, rtol=1e-4)


def test_penalties_are_zero_where_d_is_flat_and_off_when_gamma_is_zero():
    flat = lambda x: (x * 0).sum(dim=(1, 2, 3))
    x = torch.randn(2, 3, 4, 4)
    assert losses.zero_centred_penalties(flat, x, x, 1.0, 1.0)[0].item() == 0
    penalty, metrics = losses.zero_centred_penalties(Quadratic((3, 4, 4)), x, x, 0.0, 0.0)
    assert penalty.item() == 0 and metrics == {}


def test_relativistic_pairing_judges_each_real_against_its_own_fake():
    real = torch.tensor([3.0, -1.0]).view(2, 1, 1, 1)
    fake = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    softplus = lambda t: torch.log1p(torch.exp(t))
    expected_d = (softplus(torch.tensor(-2.0)) + softplus(torch.tensor(1.0))) / 2  # pairs (3, 1) and (-1, 0)
    assert losses.d_loss("rpgan", real, fake).item() == pytest.approx(expected_d.item(), rel=1e-6)
    assert losses.g_loss("rpgan", fake, real).item() == pytest.approx(
        ((softplus(torch.tensor(2.0)) + softplus(torch.tensor(-1.0))) / 2).item(), rel=1e-6)
    with pytest.raises(ValueError, match="real"):
        losses.g_loss("rpgan", fake)

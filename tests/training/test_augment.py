"""The training tricks in ``simpsonize.training.augment``: each one small function, tested on its own and where it is wired in."""

import pytest
import torch
from torch import nn

from simpsonize.model.networks import GeneratorConfig
from simpsonize.training.augment import cycle_noise, diff_augment
from simpsonize.training.train import Generators


def test_cycle_noise_off_returns_the_translation_unchanged():
    fake = torch.rand(2, 3, 16, 16)
    assert cycle_noise(fake, 0.0) is fake


def test_cycle_noise_adds_zero_mean_noise_of_the_given_sigma_and_passes_gradients():
    torch.manual_seed(0)
    fake = torch.zeros(4, 3, 64, 64, requires_grad=True)
    noisy = cycle_noise(fake, 0.1)
    assert noisy.std().item() == pytest.approx(0.1, rel=0.03)
    assert abs(noisy.mean().item()) < 0.005
    noisy.sum().backward()
    assert torch.equal(fake.grad, torch.ones_like(fake))  # the generator still learns through the cycle


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_generators_reconstruct_from_the_noisy_translation_only_in_the_cycle(sigma):
    """With identity generators, whatever separates rec from real is the cycle noise; fakes stay clean."""
    torch.manual_seed(0)
    generators = Generators(GeneratorConfig(ngf=4, n_blocks=1), cycle_noise=sigma)
    generators.G_A, generators.G_B = nn.Identity(), nn.Identity()
    real_A, real_B = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    out = generators(real_A, real_B, identity=True)
    assert torch.equal(out["fake_B"], real_A) and torch.equal(out["fake_A"], real_B)
    assert torch.equal(out["idt_A"], real_B) and torch.equal(out["idt_B"], real_A)
    for rec, real in ((out["rec_A"], real_A), (out["rec_B"], real_B)):
        assert (rec - real).std().item() == pytest.approx(sigma, abs=0.02)


def test_diff_augment_changes_every_image_and_keeps_shape_and_gradients():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    y = diff_augment(x, "color,translation,cutout")
    assert y.shape == x.shape
    assert all(not torch.allclose(a, b) for a, b in zip(x.detach(), y.detach()))
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

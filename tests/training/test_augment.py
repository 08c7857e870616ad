"""DiffAugment (``simpsonize.training.augment``), tested on its own; tests/training/test_train.py trains with it."""

import torch

from simpsonize.training.augment import diff_augment


def test_diff_augment_changes_every_image_and_keeps_shape_and_gradients():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32, requires_grad=True)
    y = diff_augment(x, "color,translation,cutout")
    assert y.shape == x.shape
    assert all(not torch.allclose(a, b) for a, b in zip(x.detach(), y.detach()))
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0

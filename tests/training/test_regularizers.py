"""The flatness measure that `simpsonize test` reports (training/regularizers.py)."""

import torch

from simpsonize.training.regularizers import flat_share


def test_flat_share_counts_the_flat_neighbours():
    flat = torch.zeros(2, 3, 8, 8)
    assert flat_share(flat) == 1.0
    stripes = flat.clone()
    stripes[..., :, ::2] = 1.0  # every horizontal pair differs, every vertical pair is flat
    assert flat_share(stripes) == 0.5
    assert flat_share(flat + torch.rand_like(flat)) < 0.2

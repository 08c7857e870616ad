"""How flat a drawing is: the share of neighbouring pixels that keep one colour, which `simpsonize test` reports.

The show's faces are flat colour fields cut by sharp outlines: at 128 px, about 72 % of neighbouring pixel pairs in
the Simpsons crops differ by less than 0.04 (in [-1, 1]), against 19 % in the first shipped model's translations.
What once stood here beside it (a total-variation prior, the R1 penalty, face-weighted cycles) lost its ablations
and left the trainer in issue 29 (docs/experiments.md; commit f6bafa5 still has them).
"""

from __future__ import annotations

import torch


def neighbour_differences(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute differences between vertically and between horizontally neighbouring pixels of (N, C, H, W) images."""
    return ((images[..., 1:, :] - images[..., :-1, :]).abs(), (images[..., :, 1:] - images[..., :, :-1]).abs())


def flat_share(images: torch.Tensor, step: float = 0.04) -> float:
    """Share of horizontally and vertically neighbouring pixel pairs whose largest channel difference is below
    ``step`` (in [-1, 1]): how much of an image is flat colour. The Simpsons crops score about 0.7 at 128 px."""
    vertical, horizontal = (d.amax(dim=1) for d in neighbour_differences(images))
    flat = (vertical < step).float().sum() + (horizontal < step).float().sum()
    return float(flat / (vertical.numel() + horizontal.numel()))

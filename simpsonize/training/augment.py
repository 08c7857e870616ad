"""Differentiable augmentation for the discriminators (DiffAugment; Zhao et al., NeurIPS 2020).

With about 1,200 Simpsons faces the discriminator memorises its real set within a few thousand steps, and its
gradients then stop teaching the generator. DiffAugment applies the *same family* of random transforms to every
image a discriminator sees, real and fake alike, in both the discriminator and the generator steps. Because the
transforms are differentiable, the generator still gets gradients through them, and because fakes are augmented too,
the augmentations do not leak into what the generator learns to draw.

``diff_augment(x, "color,translation,cutout")`` is the whole API. Randomness comes from torch's global generator,
which the trainer checkpoints, so resumed runs stay exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse_policy(policy: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {', '.join(unknown)}: choose from {', '.join(POLICIES)}")
    return names


def diff_augment(x: torch.Tensor, policy: str) -> torch.Tensor:
    """Randomly transform a batch of images in [-1, 1] (N, C, H, W); each image gets its own draw."""
    for name in parse_policy(policy):
        x = _TRANSFORMS[name](x)
    return x


def _color(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    shape = (n, 1, 1, 1)
    x = x + (torch.rand(shape, device=x.device, dtype=x.dtype) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (torch.rand(shape, device=x.device, dtype=x.dtype) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(shape, device=x.device, dtype=x.dtype) + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its side, filling with zeros (grey in [-1, 1])."""
    n, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1, 1), device=x.device)
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    src_y = (rows - dy + 1).clamp(0, h + 1)  # +1: index into the 1-pixel zero border below
    src_x = (cols - dx + 1).clamp(0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # gather pixel (src_y, src_x) of each image for every channel: (n, h, w, c) -> (n, c, h, w)
    return (
        padded.permute(0, 2, 3, 1)[batch, src_y, src_x]
        .permute(0, 3, 1, 2)
        .contiguous(
            memory_format=torch.channels_last
            if x.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
    )


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a square of ``ratio`` of the side in each image, centred anywhere (so it may be partly outside)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h, (n, 1, 1), device=x.device) - ch // 2
    left = torch.randint(0, w, (n, 1, 1), device=x.device) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_TRANSFORMS = {"color": _color, "translation": _translation, "cutout": _cutout}

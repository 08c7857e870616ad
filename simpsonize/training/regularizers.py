"""Priors on what the served generator draws, each one small function switched on by a `train` flag.

``total_variation`` (`train --lambda-tv`): the show's faces are flat colour fields cut by sharp outlines. Measured on
200 faces at 128 px, 72 % of neighbouring pixel pairs in the Simpsons crops differ by less than 0.04 (in [-1, 1]),
against 19 % in the shipped model's translations: its rainbow noise and fine checkerboard are exactly what a fresh
classifier finds. The L1 norm of the image gradient (anisotropic total variation; Rudin, Osher & Fatemi, 1992) is the
classic prior for that: it is zero on flat regions and charges an edge by its height only, not its sharpness, so it
flattens texture while outlines survive. Cartoonisation networks use it for the same reason (Wang & Yu, "White-box
cartoonization", CVPR 2020).

``r1_penalty`` (`train --r1-gamma`): every long CPU run before it drifted away from the show while the Simpsons-side
discriminator's loss fell towards 0 (0.28 at step 500 to 0.06 by step 3,750): with 1,183 Simpsons faces it learns
them by heart, and the generator then chases its quirks. R1 (Mescheder, Geiger & Nowozin, "Which training methods
for GANs do actually converge?", ICML 2018) charges the discriminator for the steepness of its score at real images,
so it cannot carve a sharp boundary around each of them; StyleGAN2 (Karras et al., 2020) applies it lazily, every N
steps with N times the weight. With γ 10 a CPU long run held its quality for 1,500 steps longer than without it,
but drifted in the end (weights/README.md).

``face_region_weights`` (`train --cycle-surround`): the photo -> cartoon -> photo cycle asks the cartoon to carry
the photo back, pixel for pixel, including the background's texture and every strand of hair. A cartoon has no
flat way to carry that, so the generator paints it in as rainbow noise, which a fresh classifier finds at once
(weights/README.md: the surroundings alone separate our faces from the show's). The real crops are aligned, so the
face sits at the same place in every one: weighting the cycle's L1 by a soft ellipse around the eyes, nose and mouth
keeps the person (whom the cycle is there to keep) and lets the surroundings be drawn flat.
"""

from __future__ import annotations

import math

import torch

from simpsonize.model.face import Framing


def neighbour_differences(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absolute differences between vertically and between horizontally neighbouring pixels of (N, C, H, W) images."""
    return ((images[..., 1:, :] - images[..., :-1, :]).abs(), (images[..., :, 1:] - images[..., :, :-1]).abs())


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertically and horizontally neighbouring pixels of (N, C, H, W) images."""
    vertical, horizontal = neighbour_differences(images)
    return (vertical.mean() + horizontal.mean()) / 2


def flat_share(images: torch.Tensor, step: float = 0.04) -> float:
    """Share of horizontally and vertically neighbouring pixel pairs whose largest channel difference is below
    ``step`` (in [-1, 1]): how much of an image is flat colour. The diagnostic that ``total_variation`` acts on; the
    Simpsons crops score about 0.7 at 128 px."""
    vertical, horizontal = (d.amax(dim=1) for d in neighbour_differences(images))
    flat = (vertical < step).float().sum() + (horizontal < step).float().sum()
    return float(flat / (vertical.numel() + horizontal.numel()))


def r1_penalty(judge, real: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the squared gradient norm, at ``real`` images, of ``judge``'s score: the mean logit of
    each of the tensors it returns (one per discriminator scale), summed over the scales. Differentiable, so the
    discriminator's step can descend it (the graph of the gradient is kept)."""
    real = real.detach().requires_grad_(True)
    logits = judge(real)
    score = sum(l.float().flatten(1).mean(dim=1).sum() for l in logits)
    (gradient,) = torch.autograd.grad(score, real, create_graph=True)
    return gradient.float().pow(2).flatten(1).sum(dim=1).mean()


def face_region_weights(size: int, framing: dict | None, surround: float, load_size: int | None = None,
                        edge: float = 0.2, eyes: float = 1.0) -> torch.Tensor:
    """(1, 1, size, size) weights for the photo cycle's L1: 1 on the face, ``surround`` around it, ``eyes`` on two
    discs where the crop puts the eyes.

    The face is an ellipse placed from the crop's framing (``simpsonize.model.face.Framing``: the side is ``scale`` times the
    mean of the eye distance and the eye-to-mouth distance, the eyes sit at ``eye_line`` of the height): the eyes'
    width either side of the centre and from the brows to below the mouth. ``load_size``: training resizes the crop to
    this before its random crop of ``size`` (the reference recipe's jitter), so the face sits, on average, where the
    centre crop of that resize puts it. The weight falls from 1 to ``surround`` over ``edge`` of the face's unit
    (the eye distance), so the jitter never puts a hard step across the face.
    """
    frame = Framing.from_dict(framing)
    load = load_size or size
    unit = load / frame.scale  # eye distance ~ eye-to-mouth distance, in pixels of the resized crop
    offset = (load - size) / 2  # the mean random-crop offset
    centre_x = load / 2 - offset
    centre_y = frame.eye_line * load + 0.4 * unit - offset  # between the eyes and the mouth
    half_width, half_height = 0.85 * unit, 1.05 * unit
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    # distance from the ellipse's edge in units of ``unit`` (0 on the edge, negative inside)
    radius = torch.sqrt(((x - centre_x) / half_width) ** 2 + ((y - centre_y) / half_height) ** 2)
    outside = ((radius - 1) * min(half_width, half_height) / unit / edge).clamp(0, 1)
    ramp = 0.5 - 0.5 * torch.cos(math.pi * outside)  # smooth: 0 inside, 1 at ``edge`` beyond the ellipse
    weights = 1 - ramp * (1 - surround)
    if eyes != 1.0:
        # the eyes sit half an eye distance either side of the centre, on the eye line; a disc of 0.22 units covers
        # the eye and its lids, and its weight falls off as smoothly as the face's
        eye_y = frame.eye_line * load - offset
        for eye_x in (centre_x - 0.5 * unit, centre_x + 0.5 * unit):
            distance = torch.sqrt((x - eye_x) ** 2 + (y - eye_y) ** 2) / unit
            beyond = ((distance - 0.22) / edge).clamp(0, 1)
            inside = 0.5 + 0.5 * torch.cos(math.pi * beyond)  # 1 on the disc, 0 at ``edge`` beyond it
            weights = weights * (1 + inside * (eyes - 1))
    return weights.view(1, 1, size, size)


def weighted_l1(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean absolute error with per-pixel ``weights`` (broadcast); plain L1 when ``weights`` is None. Not
    renormalised: where the weight is 1 a pixel costs what it does in the published loss."""
    error = (prediction - target).abs()
    return error.mean() if weights is None else (error * weights).mean()

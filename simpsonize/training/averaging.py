"""`train --ema-decay`: an exponential moving average of the generators' weights, kept beside the trained ones.

Why: every measured CPU run of the published objective reached its best C2ST only in the last quarter of its
learning-rate decay (weights/README.md: 0.95-0.97 at steps 5,000-5,750 of ref24, 0.91 at the end). At a constant
learning rate the weights of a batch-1 GAN generator wander around a good region rather than settling in it; an
average over the last few hundred steps sits nearer its middle. Averaging the generator's weights is standard in GAN
training for that reason (Karras et al., ProGAN 2018; Yazici et al., "The unusual effectiveness of averaging in GAN
training", ICLR 2019; StarGAN v2 serves its EMA generator with decay 0.999). It costs one lerp over the generators'
weights per step and changes nothing in training itself: the trained weights and the average come from the same
run, so the two can be compared exactly, at equal CPU time.

The average starts with a warm-up, min(decay, (1 + n) / (10 + n)) after n updates (as TensorFlow's
ExponentialMovingAverage with ``num_updates``), so that early snapshots are not dominated by the random weights of
step 0. torch's ``AveragedModel`` holds the copy and its update count (a buffer, so the checkpoint carries it). The
generators have no buffers (instance norm keeps no running statistics), so only parameters are averaged.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


def ema_decay_at(updates: int, decay: float) -> float:
    """The decay used for the update that follows ``updates`` earlier ones: warm-up first, then ``decay``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def check_decay(decay: float) -> None:
    """0 is off; anything else must be a decay strictly between 0 and 1."""
    if not (decay == 0 or 0.0 < decay < 1.0):
        raise ValueError(f"--ema-decay must be 0 (off) or between 0 and 1, such as 0.999, not {decay:g}.")


def warm_ema(decay: float):
    """A ``multi_avg_fn`` for ``AveragedModel``: average <- average + (1 - d) * (current - average)."""
    check_decay(decay)

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], updates: torch.Tensor | int) -> None:
        torch._foreach_lerp_(averaged, current, 1.0 - ema_decay_at(int(updates), decay))

    return update


def generator_average(generators: nn.Module, decay: float) -> AveragedModel:
    """A moving average of ``generators``' parameters. Call ``update_parameters`` after each step."""
    return AveragedModel(generators, multi_avg_fn=warm_ema(decay))

"""The published CycleGAN objective and schedule (Zhu et al., 2017), as small functions the trainer calls.

Least-squares GAN targets (Mao et al., 2017): a discriminator pulls real images' logits to 1 and fakes' to 0, and a
generator pulls its fakes' logits to 1. Cycle L1 both ways, weighted by ``lambda_cycle``; identity L1 weighted by
``lambda_identity * lambda_cycle``. Adam's learning rate is constant for ``epochs`` and then falls linearly to 0
over ``epochs_decay``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# The loss log's columns (losses.csv), in this order; the trainer's ``train_step`` returns one value for each.
LOSS_NAMES = (
    "D_A",
    "G_A",
    "cycle_A",
    "idt_A",
    "D_B",
    "G_B",
    "cycle_B",
    "idt_B",
    "D_B_proj",
    "G_B_proj",
)


def lsgan(prediction: torch.Tensor, is_real: bool) -> torch.Tensor:
    """Mean squared distance of the logits from 1 (``is_real``) or 0, in fp32 (a bf16 mean over many patches would
    round small differences away)."""
    target = torch.ones_like(prediction) if is_real else torch.zeros_like(prediction)
    return nn.functional.mse_loss(prediction.float(), target.float())


def discriminator_lsgan(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """A discriminator's loss: half on real images (target 1), half on fakes (target 0), as in the paper."""
    return 0.5 * (lsgan(real, True) + lsgan(fake, False))


def cycle_and_identity(
    out: dict[str, torch.Tensor],
    real_A: torch.Tensor,
    real_B: torch.Tensor,
    lambda_cycle: float,
    lambda_identity: float,
) -> dict[str, torch.Tensor]:
    """The weighted L1 terms: each reconstruction against its original, and (when ``out`` has them) each identity
    map against its input; 0 for identity terms that are off."""
    l1 = nn.functional.l1_loss
    losses = {
        "cycle_A": l1(out["rec_A"].float(), real_A) * lambda_cycle,
        "cycle_B": l1(out["rec_B"].float(), real_B) * lambda_cycle,
    }
    if "idt_A" in out:
        losses["idt_A"] = l1(out["idt_A"].float(), real_B) * lambda_cycle * lambda_identity
        losses["idt_B"] = l1(out["idt_B"].float(), real_A) * lambda_cycle * lambda_identity
    else:
        losses["idt_A"] = losses["idt_B"] = torch.zeros((), device=real_A.device)
    return losses


def linear_decay(epochs: int, epochs_decay: int, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate's factor at a step: 1 for ``epochs``, then falling linearly to 0 over ``epochs_decay``."""

    def factor(step: int) -> float:
        epoch = step / steps_per_epoch
        if epoch < epochs or epochs_decay == 0:
            return 1.0
        return max(0.0, 1.0 - (epoch - epochs) / epochs_decay)

    return factor

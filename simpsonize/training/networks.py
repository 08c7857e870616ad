"""The networks a run trains, grouped so that DDP sees exactly one forward per backward on each side.

A = Simpsons, B = real. ``Generators``: G_A (A->B) and G_B (B->A, the one the service runs). ``Discriminators``: D_A
judges domain B, D_B domain A, and the optional Projected GAN judge (`--d-projected`) judges domain A too.
"""

from __future__ import annotations

import torch
from torch import nn

from simpsonize.model.networks import (
    DiscriminatorConfig,
    GeneratorConfig,
    NLayerDiscriminator,
    ResnetGenerator,
    init_weights,
)
from simpsonize.training.projected import DEFAULT_POLICY, ProjectedDiscriminator


class Generators(nn.Module):
    """Both generators in one forward pass: the translations, their cycles and (optionally) the identity maps."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.G_A = init_weights(ResnetGenerator(config))
        self.G_B = init_weights(ResnetGenerator(config))

    def forward(self, real_A: torch.Tensor, real_B: torch.Tensor, identity: bool) -> dict[str, torch.Tensor]:
        fake_B = self.G_A(real_A)
        fake_A = self.G_B(real_B)
        out = {"fake_B": fake_B, "rec_A": self.G_B(fake_B), "fake_A": fake_A, "rec_B": self.G_A(fake_A)}
        if identity:
            out["idt_A"] = self.G_A(real_B)  # G_A should leave a real face alone
            out["idt_B"] = self.G_B(real_A)
        return out


class Discriminators(nn.Module):
    def __init__(
        self,
        config: DiscriminatorConfig,
        projected: str = "off",
        image_size: int = 128,
        projected_policy: str = DEFAULT_POLICY,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.D_A = init_weights(NLayerDiscriminator(config))
        self.D_B = init_weights(NLayerDiscriminator(config))
        self.augment = lambda x: x  # the trainer swaps in DiffAugment when asked
        # The Projected GAN judge: built last and from its own seed, so every other network starts as without it.
        # It augments what it judges by itself (always: the paper's judge is never without DiffAugment).
        self.D_B_projected = nn.ModuleList()
        if projected != "off":
            from simpsonize.training import projected as projected_module  # looked up now, so tests can swap features

            self.D_B_projected.append(
                ProjectedDiscriminator(
                    projected_module.pretrained_features(), image_size, policy=projected_policy, seed=seed
                )
            )

    def judge_simpsons(self, images: torch.Tensor) -> torch.Tensor:
        """D_B's logits on (augmented) images."""
        return self.D_B(self.augment(images))

    def judge_projected(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The Projected GAN judge's logits, one map per feature scale, finest first (none when it is off)."""
        return [p for judge in self.D_B_projected for p in judge(images)]

    def forward(self, real_A, real_B, fake_A, fake_B) -> tuple:
        """D_A on real and fake B, D_B on real and fake A, and the projected judge's logits on real and fake A (empty
        lists when off). The order is that of the augmentations' random draws."""
        patch = self.judge_simpsons(real_A), self.judge_simpsons(fake_A)
        projected = self.judge_projected(real_A), self.judge_projected(fake_A)
        a = self.augment
        return (self.D_A(a(real_B)), self.D_A(a(fake_B)), *patch, *projected)

"""The history pool of generated images (Shrivastava et al., 2017; CycleGAN keeps 50 per discriminator).

A discriminator that sees only the newest fakes chases the generator's latest move; half the time it sees an older
fake instead, so it keeps judging what the generator drew before too.
"""

from __future__ import annotations

import random

import torch


class ImagePool:
    """Below ``size`` every new image is stored and passed through. Once full, each new image has probability 1/2 of
    being swapped for a stored one (which it replaces in the pool), else it passes through and the pool is unchanged.
    The draws come from the pool's own seeded RNG, which the checkpoint carries."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() > 0.5:
                i = self.rng.randrange(self.size)
                out.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {"images": [im.cpu() for im in self.images], "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.images = [im.to(device) for im in state["images"]]
        self.rng.setstate(state["rng"])

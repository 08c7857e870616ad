"""Classifier two-sample test (C2ST; Lopez-Paz & Oquab, ICLR 2017): can a fresh classifier tell two image sets apart?

A small CNN is trained from scratch on half of each set and scored on the other half. Its held-out accuracy is the
measure: 0.5 means the sets cannot be told apart, 1.0 means they trivially can. Run with several seeds (a new split,
initialisation and batch order each); report the mean and the spread.

Unlike a classifier trained once on the train splits and then asked "is this Simpsons?", a fresh classifier looks
for *whatever* separates our translations from the show: colour, outlines, eyes, noise, framing. The old domain
score read 100 % for faces that a fresh classifier told apart 95 % of the time.

The sanity rows (:func:`sanity_sets`) check that the measure works: Simpsons against other Simpsons must score
about 0.5; untranslated and yellow-tinted photos about 1.0; Simpsons faces zoomed in (less head and hair in the
crop) in between, because framing is part of looking like the show.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import torch
from torch import nn

C2ST_SIZE = 64  # pixels the classifier sees: eyes, outlines and shading survive, and it trains in seconds
SEEDS = (0, 1, 2)
ZOOM_KEEP = 0.75  # the sanity row's tighter framing: the central 75 % of each side
STEPS = 200  # classifier training steps per seed (tests lower it: they check the plumbing, not the figures)


class TwoSampleClassifier(nn.Module):
    """Five stride-2 conv blocks in colour, global average pool, one logit (> 0: 'first set')."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, width * 2, width * 4, width * 4, width * 4):
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.LeakyReLU(0.2, True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).squeeze(1)


@dataclass
class C2STResult:
    accuracies: list[float]  # held-out accuracy per seed
    n: int  # images per set used (half train, half test)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def spread(self) -> float:
        """Standard deviation over seeds (0 with a single seed)."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    def to_dict(self) -> dict:
        return {
            "c2st": round(self.mean, 4),
            "c2st_std": round(self.spread, 4),
            "c2st_per_seed": [round(a, 4) for a in self.accuracies],
            "n_per_set": self.n,
        }

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.spread:.3f} (n={self.n} per set, {len(self.accuracies)} seeds)"


def resize(images: torch.Tensor, size: int = C2ST_SIZE) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3, size, size), antialiased so no set keeps sharper high frequencies."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    ).clamp(-1, 1)


def two_sample_accuracy(
    first: torch.Tensor, second: torch.Tensor, seed: int, steps: int | None = None, batch: int = 64
) -> float:
    """Train a fresh classifier on half of each set (balanced, random flips) and return its held-out accuracy."""
    steps = STEPS if steps is None else steps
    n = min(len(first), len(second))
    if n < 2:
        raise ValueError(f"a two-sample test needs at least 2 images per set, got {n}")
    generator = torch.Generator().manual_seed(seed)
    first = first[torch.randperm(len(first), generator=generator)[:n]]
    second = second[torch.randperm(len(second), generator=generator)[:n]]
    half = n // 2
    train_x = torch.cat([first[:half], second[:half]])
    train_y = torch.cat([torch.ones(half), torch.zeros(half)])
    test_x = torch.cat([first[half:], second[half:]])
    test_y = torch.cat([torch.ones(n - half), torch.zeros(n - half)])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TwoSampleClassifier()
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        model.train()
        per_side = min(batch // 2, half)
        for _ in range(steps):
            pick_a = torch.randint(half, (per_side,), generator=generator)
            pick_b = torch.randint(half, (per_side,), generator=generator) + half
            idx = torch.cat([pick_a, pick_b])
            x, y = train_x[idx].clone(), train_y[idx]
            flip = torch.rand(len(x), generator=generator) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(test_x[i : i + 256]) for i in range(0, len(test_x), 256)])
    return float(((logits > 0).float() == test_y).float().mean())


def c2st(first: torch.Tensor, second: torch.Tensor, seeds=SEEDS, steps: int | None = None) -> C2STResult:
    """Held-out accuracy of fresh classifiers separating ``first`` from ``second`` ((N, 3, H, W) in [-1, 1])."""
    a, b = resize(first), resize(second)
    return C2STResult([two_sample_accuracy(a, b, seed, steps) for seed in seeds], min(len(a), len(b)))


def jitter_placement(images: torch.Tensor, seed: int, shift: float = 0.08, scale: float = 0.15) -> torch.Tensor:
    """Move and scale each image at random (up to ``shift`` of the side, ``scale`` of the size; reflected borders).

    Our crops are aligned: every translated face has its eyes on the same two pixels, while the Simpsons crops vary.
    A classifier learns that set-level regularity, which no single picture shows. Comparing both sets jittered alike
    (``c2st_placement_blind``) tells how much of a C2ST is placement rather than drawing.
    """
    generator = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    factor = 1 + (torch.rand(n, generator=generator) * 2 - 1) * scale
    offset = (torch.rand(n, 2, generator=generator) * 2 - 1) * shift * 2  # affine_grid spans [-1, 1]: side = 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = factor
    theta[:, :, 2] = offset
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return nn.functional.grid_sample(images, grid, padding_mode="reflection", align_corners=False)


def c2st_placement_blind(first: torch.Tensor, second: torch.Tensor, seeds=SEEDS) -> C2STResult:
    """The C2ST with both sets' placement jittered alike (different draws per set)."""
    return c2st(jitter_placement(first, 1), jitter_placement(second, 2), seeds=seeds)


# --------------------------------------------------------------------------------------- sanity sets
def yellow_tint(images: torch.Tensor, strength: float = 0.6) -> torch.Tensor:
    """Photos pushed towards Simpsons yellow (255, 217, 15): what a colour filter app would do, not a drawing."""
    yellow = torch.tensor([1.0, 0.70, -0.88]).view(1, 3, 1, 1)  # (255, 217, 15) in [-1, 1]
    luminance = 0.299 * images[:, 0:1] + 0.587 * images[:, 1:2] + 0.114 * images[:, 2:3]
    tinted = (luminance + 1) / 2 * (yellow + 1) - 1  # yellow, shaded by the photo's own brightness
    return (strength * tinted + (1 - strength) * images).clamp(-1, 1)


SANITY_EXPECTED = {  # row -> (low, high): outside this band the measure is broken
    "Simpsons faces (other than the reference set)": (0.0, 0.62),
    "Simpsons faces zoomed to 75 % of their crop": (0.55, 1.0),
    "untranslated photos": (0.9, 1.0),
    "yellow-tinted photos": (0.9, 1.0),
}


def sanity_sets(
    other_simpsons: torch.Tensor, photos: torch.Tensor, zoomed_simpsons: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Rows that tell whether the measure works: name -> images to compare with the reference Simpsons.

    The zoomed row must differ from the reference in framing only, not in sharpness: ``zoomed_simpsons`` are the
    other Simpsons faces cropped to ``ZOOM_KEEP`` from their stored images before the one resize
    (``load_fixed(..., keep=ZOOM_KEEP)``). Zooming the resized images instead is an upscale, whose blur the
    classifier sees at 64 px.
    """
    names = list(SANITY_EXPECTED)
    return {names[0]: other_simpsons, names[1]: zoomed_simpsons, names[2]: photos, names[3]: yellow_tint(photos)}

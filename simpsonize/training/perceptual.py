"""`train --cycle-perceptual SHARE`: part of the photo cycle's pixel L1 measured on frozen ImageNet features instead.

The photo cycle (photo -> drawing -> photo, ``cycle_B``) compares the reconstruction with the photo pixel by pixel.
That pins the drawing to the photo's pixel positions: to give the photo's eyes back exactly, G_B must keep them where
and how big they were, which fights the show's big disc eyes (issue 27 names this). A distance on pretrained features
still asks for the same person back, but forgives small shifts and the exact colour of each pixel (the perceptual
losses of Johnson et al., 2016; LPIPS, Zhang et al., 2018).

The distance: EfficientNet-Lite0's ImageNet features (training/lite0.py, the network the projected judge looks
through) at strides 4, 8, 16 and 32, at the training side (no resize to 224: a cycle compares two images of the same
size, and 128 px costs a third of 224 px), each scale's mean absolute difference divided by the photo's mean absolute
feature (detached), so that every scale weighs about as much whatever its activations' size; the average over the
scales. With ``share`` s, the photo cycle becomes ``lambda_cycle * ((1 - s) * L1 + s * distance)``; the drawing cycle
(Simpsons -> photo -> Simpsons) keeps its pixel L1.

The feature network is frozen (buffers, eval mode, as in training/projected.py) and injectable, so tests use a tiny
random one; ``pretrained_distance()`` is the one training uses.
"""

from __future__ import annotations

import torch
from torch import nn

from simpsonize.training.projected import freeze

EPS = 1e-6


class FeatureDistance(nn.Module):
    """``forward(image, target) -> scalar``: the scale-normalised mean absolute difference of their features, in fp32.
    Gradients flow to ``image``; the target's features are computed without them."""

    def __init__(self, features: nn.Module) -> None:
        super().__init__()
        self.features = freeze(features)
        self.eval()

    def train(self, mode: bool = True) -> FeatureDistance:
        return super().train(False)  # always eval: the pretrained batch norms keep their ImageNet statistics

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            wanted = [f.float() for f in self.features(target)]
        got = [f.float() for f in self.features(image)]
        terms = [(g - w).abs().mean() / (w.abs().mean() + EPS) for g, w in zip(got, wanted)]
        return sum(terms) / len(terms)


def pretrained_distance() -> FeatureDistance:
    """Lite0's ImageNet features at the images' own side (tests replace this function)."""
    from simpsonize.training.lite0 import Lite0Features

    return FeatureDistance(Lite0Features(input_size=None))


def mixed_cycle(
    reconstruction: torch.Tensor, original: torch.Tensor, share: float, distance: FeatureDistance | None
) -> torch.Tensor:
    """(1 - share) * pixel L1 + share * feature distance, unweighted (the caller applies lambda_cycle). At share 0 it
    is the pixel L1 alone, to the bit."""
    pixels = nn.functional.l1_loss(reconstruction.float(), original)
    if not share:
        return pixels
    if distance is None:
        raise ValueError("a perceptual cycle share needs a feature distance")
    return (1.0 - share) * pixels + share * distance(reconstruction, original)

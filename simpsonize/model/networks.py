"""CycleGAN networks: the ResNet generator and the 70x70 PatchGAN discriminator.

The generator's ``state_dict()`` matches the layout saved by the reference CycleGAN code
(``ResnetGenerator`` with instance norm, no dropout), so its ``latest_net_G_B.pth`` loads as is.
Module indices inside ``model`` are therefore part of the file format: do not reorder layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

Upsampling = Literal["transpose", "resize_conv"]
ARCHITECTURE = "resnet_generator"


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything needed to rebuild a generator; stored in the weights' metadata."""

    ngf: int = 64
    n_blocks: int = 9
    upsampling: Upsampling = "transpose"
    input_nc: int = 3
    output_nc: int = 3

    def __post_init__(self) -> None:
        if self.ngf < 1 or self.n_blocks < 0:
            raise ValueError(f"invalid generator size: ngf={self.ngf}, n_blocks={self.n_blocks}")
        if self.upsampling not in ("transpose", "resize_conv"):
            raise ValueError(f"unknown upsampling {self.upsampling!r}: use 'transpose' or 'resize_conv'")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GeneratorConfig:
        known = {k: data[k] for k in ("ngf", "n_blocks", "upsampling", "input_nc", "output_nc") if k in data}
        for key in ("ngf", "n_blocks", "input_nc", "output_nc"):
            if key in known:
                known[key] = int(known[key])
        return cls(**known)


class InstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` whose incoming gradient is made contiguous before its backward.

    Why: torch 2.14.1's CPU backward of instance norm, at batch 1, reads a channels_last gradient's memory as if it
    were NCHW (``tests/training/test_precision.py`` keeps a canary of it). The convolutions of a channels_last network
    hand back exactly such gradients, so every channels_last run at batch 1 on a CPU (the trainer's bf16 default until
    2026-12-06) trained on scrambled gradients. Not a tensor hook: the in-place ReLU after the norm would silence it.
    A contiguous gradient passes unchanged, so contiguous runs do not change by a bit; no parameters, so state dicts
    and the reference checkpoints are unchanged; without gradients (serving) nothing is added.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        return _ContiguousGradient.apply(out) if out.requires_grad else out


class _ContiguousGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()  # a tensor of its own: the in-place activation after the norm modifies it

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def instance_norm(channels: int) -> nn.InstanceNorm2d:
    """Instance norm as the reference code builds it: no affine parameters, no running stats."""
    return InstanceNorm2d(channels, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """Two 3x3 convolutions with reflection padding and a skip connection (``conv_block`` keys)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            instance_norm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(dim, dim, kernel_size=3, bias=True),
            instance_norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResizeConv(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 convolution.

    A drop-in for the stride-2 transposed convolution that avoids its checkerboard artefacts
    (Odena et al., 2016). It occupies the same index in ``model`` so the rest of the layout is unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(self.upsample(x)))


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d2ngf, d4ngf, n_blocks x R4ngf, u2ngf, ungf, c7s1-3 with tanh output in [-1, 1].

    Input height and width must be multiples of 4.
    """

    def __init__(self, config: GeneratorConfig = GeneratorConfig()) -> None:
        super().__init__()
        self.config = config
        ngf = config.ngf
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(config.input_nc, ngf, kernel_size=7, bias=True),
            instance_norm(ngf),
            nn.ReLU(True),
        ]
        for i in range(2):  # downsampling
            mult = 2**i
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True),
                instance_norm(ngf * mult * 2),
                nn.ReLU(True),
            ]
        layers += [ResnetBlock(ngf * 4) for _ in range(config.n_blocks)]
        for i in range(2):  # upsampling
            mult = 2 ** (2 - i)
            if config.upsampling == "transpose":
                up: nn.Module = nn.ConvTranspose2d(
                    ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=True
                )
            else:
                up = ResizeConv(ngf * mult, ngf * mult // 2)
            layers += [up, instance_norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, config.output_nc, kernel_size=7),
            nn.Tanh(),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@dataclass(frozen=True)
class DiscriminatorConfig:
    ndf: int = 64
    n_layers: int = 3
    input_nc: int = 3


class NLayerDiscriminator(nn.Module):
    """PatchGAN: with 3 layers each output logit sees a 70x70 patch of the input."""

    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()) -> None:
        super().__init__()
        ndf = config.ndf
        layers: list[nn.Module] = [
            nn.Conv2d(config.input_nc, ndf, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, config.n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=2, padding=1, bias=True),
                instance_norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**config.n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kernel_size=4, stride=1, padding=1, bias=True),
            instance_norm(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1),
        ]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The CycleGAN paper's init: conv weights ~ N(0, 0.02), biases 0."""

    def init(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, gain)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    net.apply(init)
    return net

"""MediaPipe's TFLite graphs, run op by op with torch (no TFLite at run time), so they batch, run on a GPU and pass
gradients like any torch network.

``tools/convert_mediapipe.py`` writes each graph as safetensors (its weights, plus the op list as JSON metadata under
``METADATA_KEY``); ``load_graph`` reads one back as a ``TfliteGraph``. The networks that use them:
``simpsonize.model.landmarks``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simpsonize.model.errors import MissingWeights, WeightsError
from simpsonize.resources import MEDIAPIPE_DIR

METADATA_KEY = "mediapipe_graph"
FORMAT_VERSION = 1


# TFLite graphs are NHWC; here every 4-D tensor is NCHW and each op converts its attributes once, in the converter.
# "same" padding is TFLite's (and TensorFlow's): total = max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0), with
# the odd pixel after (right/bottom), unlike torch's symmetric ``padding=``.


def _same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "hard_swish": F.hardswish,  # TFLite's HARD_SWISH: x * relu6(x + 3) / 6
}


class Conv2d(nn.Module):
    """CONV_2D and DEPTHWISE_CONV_2D (``groups`` = input channels), with TFLite's padding and fused activation."""

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        stride: list[int],
        padding: str,
        dilation: list[int],
        groups: int,
        activation: str,
    ):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)
        self.stride, self.padding, self.dilation = tuple(stride), padding, tuple(dilation)
        self.groups, self.activation = groups, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padding: tuple[int, int] = (0, 0)
        if self.padding == "same":
            kh, kw = self.weight.shape[2:]
            top, bottom = _same_pads(x.shape[2], kh, self.stride[0], self.dilation[0])
            left, right = _same_pads(x.shape[3], kw, self.stride[1], self.dilation[1])
            if (top, left) == (bottom, right):
                padding = (top, left)
            else:
                x = F.pad(x, (left, right, top, bottom))
        x = F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)
        return _ACTIVATIONS[self.activation](x)


class ConvTranspose2d(nn.Module):
    """MediaPipe's custom ``Convolution2DTransposeBias`` (TRANSPOSE_CONV with a bias)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: list[int], padding: str):
        super().__init__()
        self.weight = nn.Parameter(weight)  # in, out, kh, kw
        self.bias = nn.Parameter(bias)
        self.stride, self.padding = tuple(stride), padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.weight.shape[2:]
        y = F.conv_transpose2d(x, self.weight, self.bias, self.stride)
        if self.padding == "same":  # output n * s; the full result is (n - 1) * s + k, cropped as TFLite pads
            height, width = x.shape[2] * self.stride[0], x.shape[3] * self.stride[1]
        else:
            height, width = y.shape[2], y.shape[3]
        top = max((x.shape[2] - 1) * self.stride[0] + kh - height, 0) // 2
        left = max((x.shape[3] - 1) * self.stride[1] + kw - width, 0) // 2
        return y[:, :, top : top + height, left : left + width]


class PReLU(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.prelu(x, self.weight)


class Pool(nn.Module):
    """MAX_POOL_2D and AVERAGE_POOL_2D with "valid" padding (the only kind these graphs use)."""

    def __init__(self, kind: str, kernel: list[int], stride: list[int], activation: str):
        super().__init__()
        self.kind, self.kernel, self.stride, self.activation = kind, tuple(kernel), tuple(stride), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool2d if self.kind == "max" else F.avg_pool2d
        return _ACTIVATIONS[self.activation](pool(x, self.kernel, self.stride))


class Pad(nn.Module):
    """PAD with zeros; ``pads`` in ``F.pad``'s order for NCHW (the channel padding of the mesh's residual blocks)."""

    def __init__(self, pads: list[int]):
        super().__init__()
        self.pads = tuple(pads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads)


class ResizeBilinear(nn.Module):
    """RESIZE_BILINEAR; half-pixel centres are torch's ``align_corners=False``."""

    def __init__(self, size: list[int], align_corners: bool):
        super().__init__()
        self.size, self.align_corners = tuple(size), align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=self.align_corners)


class Elementwise(nn.Module):
    """ADD and MUL of two tensors (broadcast as TFLite does: the NHWC and NCHW shapes broadcast alike)."""

    def __init__(self, kind: str, activation: str):
        super().__init__()
        self.kind, self.activation = kind, activation

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _ACTIVATIONS[self.activation](a + b if self.kind == "add" else a * b)


class Activation(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ACTIVATIONS[self.kind](x)


class Reshape(nn.Module):
    """RESHAPE in NHWC terms (``shape`` after the batch); a 4-D result goes back to NCHW."""

    def __init__(self, shape: list[int]):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            x = x.permute(0, 2, 3, 1)
        y = x.reshape(x.shape[0], *self.shape)
        return y.permute(0, 3, 1, 2) if y.dim() == 4 else y


def _build_op(spec: dict[str, Any], weights: dict[str, torch.Tensor]) -> nn.Module:
    kind, key = spec["op"], spec["output"]
    if kind == "conv2d":
        return Conv2d(
            weights[f"{key}.weight"],
            weights[f"{key}.bias"],
            spec["stride"],
            spec["padding"],
            spec["dilation"],
            spec["groups"],
            spec["activation"],
        )
    if kind == "conv_transpose2d":
        return ConvTranspose2d(weights[f"{key}.weight"], weights[f"{key}.bias"], spec["stride"], spec["padding"])
    if kind == "prelu":
        return PReLU(weights[f"{key}.weight"])
    if kind in ("max_pool", "avg_pool"):
        return Pool(kind.removesuffix("_pool"), spec["kernel"], spec["stride"], spec["activation"])
    if kind == "pad":
        return Pad(spec["pads"])
    if kind == "resize_bilinear":
        return ResizeBilinear(spec["size"], spec["align_corners"])
    if kind in ("add", "mul"):
        return Elementwise(kind, spec["activation"])
    if kind in ("relu", "relu6", "sigmoid", "hard_swish"):
        return Activation(kind)
    if kind == "reshape":
        return Reshape(spec["shape"])
    raise WeightsError(f"The MediaPipe graph has an op this runtime does not know: {kind!r}.")


class TfliteGraph(nn.Module):
    """A converted TFLite graph: its ops in TFLite's order (a topological one), each a module named after the tensor
    it writes (so the weights keep the names Netron shows for the ``.tflite`` file).

    ``forward`` takes the graph's inputs as NCHW float tensors (batched) and returns its outputs in order: NCHW for
    4-D ones, as the graph shapes them otherwise.
    """

    def __init__(self, graph: dict[str, Any], weights: dict[str, torch.Tensor]):
        super().__init__()
        if graph.get("format_version") != FORMAT_VERSION:
            raise WeightsError(
                f"MediaPipe graph format {graph.get('format_version')!r} is not the one this code "
                f"reads ({FORMAT_VERSION}); rerun tools/convert_mediapipe.py."
            )
        self.graph = graph
        self.input_names = [tensor["name"] for tensor in graph["inputs"]]
        self.output_names = list(graph["outputs"])
        self.wiring = [(spec["output"], tuple(spec["inputs"])) for spec in graph["ops"]]
        weights = {name: tensor.float() for name, tensor in weights.items()}
        self.ops = nn.ModuleDict({spec["output"]: _build_op(spec, weights) for spec in graph["ops"]})

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = dict(zip(self.input_names, inputs, strict=True))
        for output, names in self.wiring:
            values[output] = self.ops[output](*(values[name] for name in names))
        return tuple(values[name] for name in self.output_names)


def load_graph(name_or_path: str | Path, device: str | torch.device = "cpu") -> TfliteGraph:
    """A converted graph in eval mode with frozen weights: a shipped one by name (``face_landmark``,
    ``selfie_segmentation``, ``iris_landmark``) or a ``.safetensors`` path."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(name_or_path)
    if path.suffix != ".safetensors":
        path = MEDIAPIPE_DIR / f"{name_or_path}.safetensors"
    if not path.is_file():
        raise MissingWeights(f"The MediaPipe network {path} is missing; tools/convert_mediapipe.py writes it.")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise WeightsError(f"{path} is not a converted MediaPipe graph (no {METADATA_KEY!r} metadata).")
    graph = TfliteGraph(json.loads(metadata[METADATA_KEY]), load_file(str(path)))
    graph.requires_grad_(False)
    graph = graph.eval().to(device)
    if torch.device(device).type == "cpu":
        # Channels-last weights make the convolutions hand channels-last tensors on, which torch's CPU kernels (max
        # pooling above all) run faster: with one thread the mesh took ~5 ms instead of ~7, the segmenter ~7 instead
        # of ~14 (best of 40 runs on a busy 2-core machine), with the same outputs to 1e-4.
        graph = graph.to(memory_format=torch.channels_last)
    return graph

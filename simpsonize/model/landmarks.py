"""MediaPipe's face mesh, iris and person-mask networks, run by torch.

The networks come from the ``mediapipe==0.10.21`` wheel (Apache-2.0): ``tools/convert_mediapipe.py`` reads its
``.tflite`` files and writes each graph as safetensors into ``simpsonize/weights/mediapipe/`` (weights, plus the
op list as JSON metadata). This module runs those graphs op by op with torch (no TFLite at run time), so they batch,
run on a GPU and pass gradients like any torch network. ``tests/model/test_landmarks.py`` holds them to the official
TFLite interpreter's outputs (a fixture) and to MTCNN on a real photo.

- :class:`FaceMesh`: a face crop -> 468 landmarks (x, y in the crop's pixels; z, depth, on the x scale, smaller is
  nearer the camera) and the face-present score. MediaPipe feeds it a square crop about 1.5x the face box, eyes
  level; :data:`MESH_FRAMING` asks ``face.align_crop`` for about that.
- :class:`PersonSegmenter`: any photo -> person probability per pixel (MediaPipe's selfie segmentation).
- :class:`IrisLandmarks`: an eye crop -> 71 eye-contour and brow points and 5 iris points (centre first).

Face mesh indices (MediaPipe's, from ``face_mesh_connections.py``; "left" and "right" are the person's own, so the
right eye is on the left of an unmirrored photo, where MTCNN's first, "left eye", point is):

- :data:`RIGHT_EYE_CONTOUR`, :data:`LEFT_EYE_CONTOUR`: each eye's lid outline as a closed loop, outer corner first
  (33 and 263 are the outer corners, 133 and 362 the inner ones; 159/145 and 386/374 the lids' middles).
- :data:`FOREHEAD_TOP` (10): the top of the face oval, mid-forehead below the hairline; :data:`CHIN` (152): the
  bottom of the chin; :data:`NOSE_TIP` (1); :data:`MOUTH_CORNERS` (61, 291).
- :data:`FACE_OVAL`: the face's outline as a closed loop from the forehead top, clockwise in the photo.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from simpsonize.model.errors import MissingWeights, WeightsError
from simpsonize.model.framing import Framing
from simpsonize.resources import MEDIAPIPE_DIR

METADATA_KEY = "mediapipe_graph"
FORMAT_VERSION = 1

# -- landmark indices ------------------------------------------------------------------------------------------------
RIGHT_EYE_CONTOUR = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE_CONTOUR = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
RIGHT_EYE_CORNERS = (33, 133)  # outer, inner
LEFT_EYE_CORNERS = (263, 362)  # outer, inner
FOREHEAD_TOP = 10
CHIN = 152
NOSE_TIP = 1
MOUTH_CORNERS = (61, 291)  # the person's right, left
FACE_OVAL = (
    10,
    338,
    297,
    332,
    284,
    251,
    389,
    356,
    454,
    323,
    361,
    288,
    397,
    365,
    379,
    378,
    400,
    377,
    152,
    148,
    176,
    149,
    150,
    136,
    172,
    58,
    132,
    93,
    234,
    127,
    162,
    21,
    54,
    103,
    67,
    109,
)
NUM_FACE_LANDMARKS = 468

# ``face.align_crop``'s framing for the mesh, close to MediaPipe's own input: a square 1.5x the landmarks' box, centred
# on it (so the mesh spans 2/3 of the side). Fitted on the astronaut (skimage.data): the mesh spans 0.59 x 0.67 of
# the crop, centred within 1 %. In the generator's tighter crop (scale 2.3) it spans 0.93 of the side: no margin.
MESH_FRAMING = Framing(scale=4.0, eye_line=0.37)


# -- the graph runtime -----------------------------------------------------------------------------------------------
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


# -- the user-facing helpers -----------------------------------------------------------------------------------------


def _as_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"Expected an HxW or HxWx3 uint8 array, got {image.dtype} of shape {image.shape}.")
        image = Image.fromarray(image)
    return image.convert("RGB")


def _to_tensor(image: Image.Image, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """The photo stretched to ``size`` (width, height), as a 1x3xHxW tensor in [0, 1] (MediaPipe's input range for
    all three networks)."""
    if image.size != size:
        image = image.resize(size, Image.BILINEAR)
    array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device)


@dataclass(frozen=True)
class MeshResult:
    landmarks: np.ndarray  # (468, 3) float32: x, y in the input image's pixels; z on the x scale
    score: float  # face present, sigmoid of the network's logit (MediaPipe drops a face below 0.5)


class FaceMesh:
    """MediaPipe's 468-point face mesh (``face_landmark.tflite``, 192x192 input in [0, 1])."""

    input_size = 192

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path = "face_landmark"):
        self.device = torch.device(device)
        self.net = load_graph(weights, self.device)

    def predict(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``crops``: Bx3x192x192 in [0, 1] -> (Bx468x3 landmarks in those 192 pixels, B face-present logits).
        Differentiable, for training losses."""
        landmarks, logits = self.net(crops)
        return landmarks.reshape(-1, NUM_FACE_LANDMARKS, 3), logits.reshape(-1)

    @torch.no_grad()
    def __call__(self, image: Image.Image | np.ndarray) -> MeshResult:
        image = _as_rgb(image)
        landmarks, logits = self.predict(_to_tensor(image, (self.input_size,) * 2, self.device))
        scale = torch.tensor([image.width, image.height, image.width], dtype=torch.float32) / self.input_size
        return MeshResult(landmarks=(landmarks[0].cpu() * scale).numpy(), score=float(torch.sigmoid(logits[0])))


class PersonSegmenter:
    """MediaPipe's selfie segmentation (``selfie_segmentation.tflite``, the square general model): the photo is
    stretched to 256x256, as MediaPipe does, and the mask stretched back."""

    input_size = 256

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path = "selfie_segmentation"):
        self.device = torch.device(device)
        self.net = load_graph(weights, self.device)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: Bx3x256x256 in [0, 1] -> Bx1x256x256 person probabilities. Differentiable."""
        return self.net(images)[0]

    @torch.no_grad()
    def __call__(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """The person probability of each pixel, an HxW float32 array at the image's size."""
        image = _as_rgb(image)
        mask = self.predict(_to_tensor(image, (self.input_size,) * 2, self.device))
        mask = F.interpolate(mask, size=(image.height, image.width), mode="bilinear", align_corners=False)
        return mask[0, 0].clamp(0, 1).cpu().numpy()


@dataclass(frozen=True)
class IrisResult:
    contour: np.ndarray  # (71, 3): eyelids and brow, in the eye crop's pixels
    iris: np.ndarray  # (5, 3): the iris centre, then four points on its rim


class IrisLandmarks:
    """MediaPipe's iris network (``iris_landmark.tflite``, 64x64 input in [0, 1]). It was trained on the person's
    left eye: a right-eye crop is mirrored going in and its points mirrored back, as MediaPipe does. MediaPipe's eye
    crop is a square 2.3x the eye's corner-to-corner width, eye corners level."""

    input_size = 64

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path = "iris_landmark"):
        self.device = torch.device(device)
        self.net = load_graph(weights, self.device)

    def predict(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``crops``: Bx3x64x64 left-eye crops in [0, 1] -> (Bx71x3 contour, Bx5x3 iris) in those 64 pixels."""
        contour, iris = self.net(crops)
        return contour.reshape(-1, 71, 3), iris.reshape(-1, 5, 3)

    @torch.no_grad()
    def __call__(self, eye: Image.Image | np.ndarray, right_eye: bool) -> IrisResult:
        eye = _as_rgb(eye)
        tensor = _to_tensor(eye, (self.input_size,) * 2, self.device)
        if right_eye:
            tensor = tensor.flip(3)
        contour, iris = (points[0].cpu().numpy() for points in self.predict(tensor))
        scale = np.array([eye.width, eye.height, eye.width], dtype=np.float32) / self.input_size
        if right_eye:
            contour[:, 0], iris[:, 0] = self.input_size - contour[:, 0], self.input_size - iris[:, 0]
        return IrisResult(contour=contour * scale, iris=iris * scale)


def eye_centres(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean of each eye's lid contour (x, y): the person's right eye first, as MTCNN's points come."""
    return (landmarks[list(RIGHT_EYE_CONTOUR), :2].mean(axis=0), landmarks[list(LEFT_EYE_CONTOUR), :2].mean(axis=0))

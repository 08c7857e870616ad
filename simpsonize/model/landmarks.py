"""MediaPipe's face mesh, iris and person-mask networks, run by torch.

The networks come from the ``mediapipe==0.10.21`` wheel (Apache-2.0): ``tools/convert_mediapipe.py`` reads its
``.tflite`` files and writes each graph as safetensors into ``simpsonize/weights/mediapipe/`` (weights, plus the
op list as JSON metadata). ``simpsonize.model.tflite_graph`` runs those graphs op by op with torch (no TFLite at run
time), so they batch, run on a GPU and pass gradients like any torch network; this module wraps them for their
inputs and outputs. ``tests/model/test_landmarks.py`` holds them to the official TFLite interpreter's outputs (a
fixture) and to MTCNN on a real photo.

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

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from simpsonize.model.framing import Framing
from simpsonize.model.tflite_graph import load_graph

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

"""The whole-head framing (``Framing(mode="head")``): where the hair's top and the chin are, from MediaPipe's networks.

For one detected face, two crops are cut the usual way (eyes levelled, ``face.align_crop``): MediaPipe's own framing
for the face mesh, and a wider one for the person mask. Everything is measured in the face's own frame: eyes level,
their midpoint at the origin, lengths in units of MTCNN's scale reference (the mean of the eye distance and the
eye-to-mouth distance), so the result is the ``scale`` and ``eye_line`` of an ordinary eyes framing.

- The chin is the mesh's point 152.
- The hair's top is where the person mask ends above the forehead (mesh point 10), over the middle of the face's
  width (the median of the columns, so a raised hand or a neighbour's shoulder does not move it).
- When the photo ends before the hair does (the top of the head cut off, or a tight crop such as UTKFace's), the mask
  stops at the photo's edge. The head's top is then placed from the mesh instead, half the forehead-to-chin length
  above the forehead point (a common hair height), and the crop runs past the photo, filled as crops always were.
- When the mesh does not see a face (a cartoon, a profile; its score under 0.5), the face gets the eyes framing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from simpsonize.model.framing import Framing
from simpsonize.model.landmarks import CHIN, FACE_OVAL, FOREHEAD_TOP, MESH_FRAMING, FaceMesh, PersonSegmenter

# The mask's crop: wide enough to hold tall hair above a face (its top is 4.2 scale units above the eyes).
MASK_FRAMING = Framing(scale=7.0, eye_line=0.6)
MASK_SIZE = 256
MIN_MESH_SCORE = 0.5
HAIR_ABOVE_FOREHEAD = 0.5  # head top estimate when the photo cuts it: forehead point - this x (chin - forehead point)
SCALE_LIMITS = (2.0, 9.0)  # a head framing never zooms past these (an eyes framing's scale is 2.3)

_networks: dict[str, object] = {}
_networks_lock = threading.Lock()


@dataclass(frozen=True)
class HeadMeasure:
    """One face's head in its own frame (eyes level, their midpoint at 0, units of the scale reference)."""

    chin: float  # y of the chin
    forehead: float  # y of the mesh's forehead point
    top: float  # y of the hair's top (negative: above the eyes)
    top_in_photo: bool  # False: the photo cut the head, and ``top`` is the mesh's estimate
    mesh_score: float


def networks() -> tuple[FaceMesh, PersonSegmenter]:
    """The mesh and the mask networks, loaded once per process (CPU; ~2.5 MB of weights)."""
    with _networks_lock:
        if not _networks:
            _networks["mesh"], _networks["mask"] = FaceMesh("cpu"), PersonSegmenter("cpu")
    return _networks["mesh"], _networks["mask"]


def _to_frame(points: np.ndarray, framing: Framing, size: int) -> np.ndarray:
    """Crop pixels (x, y) of a ``size`` crop cut at ``framing`` -> the face's frame."""
    return np.stack(
        [
            (points[..., 0] - size / 2) / size * framing.scale,
            (points[..., 1] - framing.eye_line * size) / size * framing.scale,
        ],
        axis=-1,
    )


def _to_pixels(y: float, framing: Framing, size: int) -> float:
    return y / framing.scale * size + framing.eye_line * size


def _inside_photo(image: Image.Image, face, framing: Framing, size: int) -> np.ndarray:
    """Which pixels of the ``size`` crop at ``framing`` lie in the photo (the rest is fill), as a size x size bool."""
    left_eye, right_eye, _nose, mouth_left, mouth_right = (np.asarray(p, dtype=np.float64) for p in face.landmarks)
    eyes, mouth = (left_eye + right_eye) / 2, (mouth_left + mouth_right) / 2
    reference = (np.linalg.norm(right_eye - left_eye) + np.linalg.norm(mouth - eyes)) / 2
    angle = np.arctan2(*(right_eye - left_eye)[::-1])
    grid = np.arange(size) + 0.5
    u, v = np.meshgrid(grid, grid)
    frame = _to_frame(np.stack([u, v], axis=-1), framing, size) * max(reference, 8.0 / framing.scale)
    cos, sin = np.cos(angle), np.sin(angle)
    x = eyes[0] + cos * frame[..., 0] - sin * frame[..., 1]
    y = eyes[1] + sin * frame[..., 0] + cos * frame[..., 1]
    return (x >= 0) & (y >= 0) & (x < image.width) & (y < image.height)


def measure_head(image: Image.Image, face, crop: Callable) -> HeadMeasure | None:
    """The chin, forehead and hair's top of ``face`` in its own frame; None when the mesh finds no face there.
    ``crop`` is ``face.align_crop`` (passed in, so that this module does not import ``face``, which imports it)."""
    mesh_net, mask_net = networks()
    mesh = mesh_net(crop(image, face, FaceMesh.input_size, framing=MESH_FRAMING).image)
    if mesh.score < MIN_MESH_SCORE:
        return None
    points = _to_frame(mesh.landmarks[:, :2], MESH_FRAMING, FaceMesh.input_size)
    chin, forehead = float(points[CHIN, 1]), float(points[FOREHEAD_TOP, 1])
    oval_x = points[list(FACE_OVAL), 0]
    if not chin > 0 > forehead:  # the mesh put the chin above the eyes: not a face we can frame
        return None

    mask = mask_net(crop(image, face, MASK_SIZE, framing=MASK_FRAMING).image) >= 0.5
    inside = _inside_photo(image, face, MASK_FRAMING, MASK_SIZE)
    # Columns over the middle 60 % of the face's width; in each, walk up from the forehead while the mask holds.
    left, right = np.percentile(oval_x, [0, 100])
    middle = (left + right) / 2
    half = 0.3 * (right - left)
    columns = range(
        int(np.floor((middle - half) / MASK_FRAMING.scale * MASK_SIZE + MASK_SIZE / 2)),
        int(np.ceil((middle + half) / MASK_FRAMING.scale * MASK_SIZE + MASK_SIZE / 2)) + 1,
    )
    start = int(min(max(_to_pixels(forehead, MASK_FRAMING, MASK_SIZE), 0), MASK_SIZE - 1))
    tops, cut = [], 0
    for column in columns:
        if not 0 <= column < MASK_SIZE or not mask[start, column]:
            continue
        row = start
        while row > 0 and mask[row - 1, column] and inside[row - 1, column]:
            row -= 1
        tops.append(row)
        cut += int(row == 0 or not inside[max(row - 2, 0), column])  # stopped by the photo's (or the crop's) edge
    estimate = forehead - HAIR_ABOVE_FOREHEAD * (chin - forehead)
    if not tops or cut > len(tops) / 2:
        return HeadMeasure(
            chin=chin, forehead=forehead, top=min(estimate, forehead), top_in_photo=False, mesh_score=mesh.score
        )
    top = float(_to_frame(np.array([[0.0, float(np.median(tops))]]), MASK_FRAMING, MASK_SIZE)[0, 1])
    return HeadMeasure(chin=chin, forehead=forehead, top=min(top, forehead), top_in_photo=True, mesh_score=mesh.score)


def head_framing(image: Image.Image, face, framing: Framing, crop: Callable) -> Framing:
    """The eyes framing (``scale``, ``eye_line``) that frames this face's whole head as ``framing`` (a head framing)
    asks; the default eyes framing when the mesh finds no face."""
    head = measure_head(image, face, crop)
    if head is None:
        return Framing()
    scale = (head.chin - head.top) / (framing.chin_line - framing.top_margin)
    scale = float(np.clip(scale, *SCALE_LIMITS))
    eye_line = framing.top_margin + (0.0 - head.top) / scale
    return Framing(scale=scale, eye_line=float(np.clip(eye_line, 0.1, 0.9)))

"""The drawn heads back in the photo: invert ``simpsonize.model.face.align_crop`` and paste each drawing through a
soft mask.

``align_crop`` maps crop pixel (u, v) of an ``S``-pixel crop to the photo by rotating about the eye midpoint and
scaling by ``k = side / S``; the crop's centre lands on ``FaceCrop.center``. So, with ``t`` = the crop's angle:

    x = cx + k (cos t (u - S/2) - sin t (v - S/2))
    y = cy + k (sin t (u - S/2) + cos t (v - S/2))

``paste_face`` uses that map (as PIL's affine transform, which reads it output -> input, like ``align_crop`` did) to
lay the drawing back where its face was. The mask (``head_mask``) is, until landmark/segmentation work lands, a
feathered ellipse around the face box, grown upwards and sideways to take in the hair as far as the square reaches
(feathered to 0 at its sides): the generator redraws the whole square, but outside the head its background has
nothing to do with the photo's. Parts of the square that lie past the photo's edge (the crop filled them with a flat
border colour) get no weight at all.

The pasting itself is numpy and PIL: no torch call, so it costs the same wherever the generator ran.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from simpsonize.model.detection import Face
from simpsonize.model.face import FaceCrop

# The head ellipse, in units of the (axis-aligned) MTCNN face box, which covers brows to chin and cheek to cheek:
# wider by HAIR_WIDTH and taller by HAIR_HEIGHT, its centre raised by HAIR_RAISE of the box height (hair grows
# above the brows, not below the chin). Chosen by eye on the astronaut and cameraman photos: the whole hairline goes,
# the shoulders stay.
HAIR_WIDTH = 1.35
HAIR_HEIGHT = 1.55
HAIR_RAISE = 0.17
FEATHER = 0.12  # the mask ramps from 1 to 0 across this share of the ellipse's radius, on both sides of its rim
# The crop is tight (the training framing: the eyes at a third of its height, the brows near its top), so the grown
# ellipse runs past the square; near the square's sides the mask ramps to 0 across this share of the side, or the
# square's straight edge would show in the photo.
SQUARE_FEATHER = 0.08
EDGE_MARGIN = 1.0  # crop pixels whose source is within this many photo pixels of the edge count as outside


@dataclass(frozen=True)
class FaceSelection:
    """Which faces of a photo get drawn: boxes of at least ``min_face`` pixels on their shorter side, at most
    ``max_faces`` of them, the largest first. The largest face is always drawn, however small: a small selfie must
    still work (the service's settings pass ``SIMPSONIZE_MIN_FACE`` / ``SIMPSONIZE_MAX_FACES``; the model never reads
    them itself)."""

    min_face: float = 64.0
    max_faces: int = 8

    def pick(self, faces: list[Face]) -> list[Face]:
        """``faces`` largest first (as ``detect_faces`` returns them) -> the ones to draw, largest first."""
        if not faces:
            return []
        ordered = sorted(faces, key=lambda f: f.area, reverse=True)
        rest = [f for f in ordered[1:] if min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= self.min_face]
        return [ordered[0], *rest][: max(1, self.max_faces)]


def crop_to_photo(crop: FaceCrop, size: int) -> tuple[float, ...]:
    """The affine map (a, b, c, d, e, f) from pixel (u, v) of the crop drawn at ``size`` px to the photo:
    x = a u + b v + c, y = d u + e v + f."""
    k = crop.side / size
    t = math.radians(crop.angle)
    cos, sin = math.cos(t), math.sin(t)
    cx, cy = crop.center
    half = size / 2
    a, b, d, e = k * cos, -k * sin, k * sin, k * cos
    return a, b, cx - a * half - b * half, d, e, cy - d * half - e * half


def photo_to_crop(crop: FaceCrop, size: int) -> tuple[float, ...]:
    """The inverse of ``crop_to_photo``: photo (x, y) -> crop pixel (u, v)."""
    a, b, c, d, e, f = crop_to_photo(crop, size)
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    return ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f)


def head_mask(crop: FaceCrop, size: int, photo_size: tuple[int, int]) -> np.ndarray:
    """Float32 (size, size) weights in [0, 1] over the crop drawn at ``size`` px: 1 on the head, feathered to 0
    around it, and 0 wherever the crop's source lies outside the ``photo_size`` photo (its flat border fill)."""
    a, b, c, d, e, f = crop_to_photo(crop, size)
    grid = np.arange(size, dtype=np.float32) + 0.5
    u, v = np.meshgrid(grid, grid)
    x, y = a * u + b * v + c, d * u + e * v + f  # every crop pixel's place in the photo
    x0, y0, x1, y1 = crop.face.box
    box_w, box_h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    # The ellipse follows the face's tilt: its axes are the crop's (the eyes level), so measure in crop units.
    k = crop.side / size
    inverse = photo_to_crop(crop, size)
    pu, pv = inverse[0:3], inverse[3:6]
    bx, by = (x0 + x1) / 2, (y0 + y1) / 2
    centre_u = pu[0] * bx + pu[1] * by + pu[2]
    centre_v = pv[0] * bx + pv[1] * by + pv[2] - HAIR_RAISE * box_h / k
    radius_u, radius_v = HAIR_WIDTH * box_w / 2 / k, HAIR_HEIGHT * box_h / 2 / k
    r = np.sqrt(((u - centre_u) / radius_u) ** 2 + ((v - centre_v) / radius_v) ** 2)
    ramp = np.clip((1 + FEATHER - r) / (2 * FEATHER), 0.0, 1.0)
    edge = np.minimum(np.minimum(u, size - u), np.minimum(v, size - v))
    ramp = ramp * np.clip(edge / (SQUARE_FEATHER * size), 0.0, 1.0)
    mask = ramp * ramp * (3 - 2 * ramp)  # smoothstep: no visible rim where the ramp starts and ends
    width, height = photo_size
    inside = (x >= EDGE_MARGIN) & (y >= EDGE_MARGIN) & (x <= width - EDGE_MARGIN) & (y <= height - EDGE_MARGIN)
    return (mask * inside).astype(np.float32)


def paste_face(photo: np.ndarray, drawing: Image.Image, crop: FaceCrop) -> None:
    """Blend ``drawing`` (the translated crop, any square size) into ``photo`` (H x W x 3 uint8, changed in place)
    where ``crop`` was cut from, through ``head_mask``. Only the square's bounding box is touched, in float: a 12 MP
    photo is never copied to floats whole."""
    height, width = photo.shape[:2]
    size = drawing.width
    mask = head_mask(crop, size, (width, height))
    # PIL's affine transform samples without antialiasing: a drawing bigger than its place in the photo is first
    # shrunk to about that place's size (a small face in a big group photo), then mapped.
    target = max(8, math.ceil(crop.side))
    if target < size:
        drawing = drawing.resize((target, target), Image.LANCZOS)
        mask = np.asarray(Image.fromarray(mask, mode="F").resize((target, target), Image.BILINEAR))
        size = target
    a, b, c, d, e, f = crop_to_photo(crop, size)
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    xs, ys = a * corners[:, 0] + b * corners[:, 1] + c, d * corners[:, 0] + e * corners[:, 1] + f
    x0, y0 = max(0, math.floor(xs.min())), max(0, math.floor(ys.min()))
    x1, y1 = min(width, math.ceil(xs.max())), min(height, math.ceil(ys.max()))
    if x1 <= x0 or y1 <= y0:
        return
    # Photo pixel (x, y) of the region -> crop pixel: the inverse map, shifted to the region's origin.
    ia, ib, ic, id_, ie, if_ = photo_to_crop(crop, size)
    coefficients = (ia, ib, ia * x0 + ib * y0 + ic, id_, ie, id_ * x0 + ie * y0 + if_)
    box = (x1 - x0, y1 - y0)
    placed = np.asarray(
        drawing.convert("RGB").transform(box, Image.AFFINE, coefficients, resample=Image.BICUBIC), dtype=np.float32
    )
    weight = np.asarray(
        Image.fromarray(mask, mode="F").transform(
            box, Image.AFFINE, coefficients, resample=Image.BILINEAR, fillcolor=0.0
        )
    )
    weight = np.clip(weight, 0.0, 1.0)[..., None]
    region = photo[y0:y1, x0:x1].astype(np.float32)
    region += (placed - region) * weight
    photo[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def composite(photo: Image.Image, faces: Iterable[tuple[Image.Image, FaceCrop]]) -> Image.Image:
    """``photo`` with each (drawing, crop) pasted back, from the back to the front: the smallest face first and the
    largest last, so that where heads overlap the nearest (usually the largest) one is on top."""
    ordered = sorted(faces, key=lambda pair: pair[1].face.area)
    if not ordered:
        return photo.copy()
    canvas = np.array(photo.convert("RGB"), dtype=np.uint8)  # a copy: the caller's photo stays as it was
    for drawing, crop in ordered:
        paste_face(canvas, drawing, crop)
    return Image.fromarray(canvas)

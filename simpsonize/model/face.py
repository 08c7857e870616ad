"""Eye-level alignment and the square crop the generator sees, of the faces MTCNN finds
(``simpsonize.model.detection``).

Training (``simpsonize prepare``) and serving both crop real faces with :func:`crop_face`, so the generator
sees the same framing in both. Measured with MTCNN on 150 of UTKFace's tight crops: eye distance and
eye-to-mouth distance are each ~0.45 of the crop side, the eyes sit at ~0.22 of its height. The Simpsons
crops are as tight (the face fills the frame) but their eyes sit lower, so we keep UTKFace's scale
(side = 2.3 x the mean of those two distances) and put the eyes at 0.33 of the height. A looser crop was
tried first: the face then filled only ~60 % of the frame, unlike the Simpsons side, and UTKFace crops
gained flat borders where the crop ran past their edges. ``Framing`` (``simpsonize.model.framing``) says how much
of the head a crop shows; its ``head`` mode frames the whole head (``simpsonize.model.head``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from simpsonize.model.detection import Face, detect_faces, find_faces, open_searchable
from simpsonize.model.errors import NoFaceFound, SimpsonizeError
from simpsonize.model.framing import CROP_SCALE, EYE_LINE, Framing  # noqa: F401 (re-exported)
from simpsonize.model.imaging import ImageSource


@dataclass(frozen=True)
class FaceCrop:
    """The aligned square crop and where it came from, so a result can be placed back."""

    image: Image.Image
    face: Face
    center: tuple[float, float]  # crop centre in the input image
    side: float  # crop side in input pixels
    angle: float  # degrees the face was rotated (counter-clockwise) to level the eyes
    other_faces: tuple[Face, ...] = field(default=())
    outside: float = 0.0  # share of the crop that lies outside the photo (filled with its border colour)

    def to_dict(self) -> dict:
        return {
            "face": self.face.to_dict(),
            "center": [round(c, 1) for c in self.center],
            "side": round(self.side, 1),
            "angle": round(self.angle, 2),
            "other_faces": [f.to_dict() for f in self.other_faces],
        }


def crop_face(source: ImageSource, size: int = 256, device: str = "cpu", framing: Framing = Framing()) -> FaceCrop:
    """Find the largest confident face, level its eyes and cut the square the generator expects.

    Raises ``NoFaceFound`` when there is none.
    """
    image = open_searchable(source)
    faces = detect_faces(image, device=device)
    if not faces:
        raise NoFaceFound()
    face = faces[0]
    return align_crop(image, face, size, other_faces=tuple(faces[1:]), framing=framing)


def align_crop(
    image: Image.Image, face: Face, size: int, other_faces: tuple[Face, ...] = (), framing: Framing = Framing()
) -> FaceCrop:
    if framing.mode == "head":  # this face's own scale and eye line, from the face mesh and the person mask
        from simpsonize.model.head import head_framing  # lazy: those networks load on first use

        framing = head_framing(image, face, framing, crop=align_crop)
    left_eye, right_eye, _nose, mouth_left, mouth_right = (np.asarray(p, dtype=np.float64) for p in face.landmarks)
    eyes = (left_eye + right_eye) / 2
    mouth = (mouth_left + mouth_right) / 2
    dx, dy = right_eye - left_eye
    angle = math.degrees(math.atan2(dy, dx))
    scale_ref = (np.linalg.norm(right_eye - left_eye) + np.linalg.norm(mouth - eyes)) / 2
    side = max(float(scale_ref) * framing.scale, 8.0)

    # Shrink huge photos first so the affine resampling below never decimates by more than ~2x. Only the region the
    # crop samples is shrunk: resizing a whole 12 MP photo cost more than finding the face in it. ``box`` keeps the
    # region on the whole-photo shrink's pixel grid, so its pixels are the ones a whole-photo shrink would give.
    shrink = max(1.0, side / (2 * size))
    width, height = image.size  # of the (shrunk) photo the affine maps into
    if shrink > 1.0:
        width, height = max(1, round(image.width / shrink)), max(1, round(image.height / shrink))
    eyes_s, side_s = eyes / shrink, side / shrink

    # Output pixel (u, v) -> input pixel: rotate by the eye angle about the eye midpoint.
    theta = math.radians(angle)
    cos, sin = math.cos(theta), math.sin(theta)
    k = side_s / size
    ou, ov = size / 2, framing.eye_line * size  # where the eye midpoint lands in the crop
    a, b = k * cos, -k * sin
    d, e = k * sin, k * cos
    c = eyes_s[0] - a * ou - b * ov
    f = eyes_s[1] - d * ou - e * ov
    border = _border_colour(image)
    x0, y0, x1, y1 = _sampled_region((a, b, c, d, e, f), size, width, height)
    scale_x, scale_y = image.width / width, image.height / height
    # reducing_gap: a box reduction by a whole factor first, then bilinear over the last >= 1.1x only (the affine
    # below resamples again, so a sharper filter here was not worth its 8 ms on a 12 MP photo).
    region = image.resize(
        (x1 - x0, y1 - y0),
        Image.BILINEAR if shrink > 1.0 else Image.NEAREST,
        box=(x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y),
        reducing_gap=1.1 if shrink > 1.0 else None,
    )
    # A crop that runs past the photo is filled with the border colour, as it always was (``fillcolor`` fills what
    # lies outside ``region``, so the region must hold all of the photo that the crop sees).
    crop = region.transform(
        (size, size), Image.AFFINE, (a, b, c - x0, d, e, f - y0), resample=Image.BICUBIC, fillcolor=border
    )
    grid = (np.arange(16) + 0.5) * size / 16
    u, v = np.meshgrid(grid, grid)
    x, y = a * u + b * v + c, d * u + e * v + f
    outside = float(np.mean((x < 0) | (y < 0) | (x >= width) | (y >= height)))

    # Crop centre in original coordinates (for placing results back).
    cu, cv = size / 2, size / 2
    center = (float((a * cu + b * cv + c) * shrink), float((d * cu + e * cv + f) * shrink))
    return FaceCrop(
        image=crop, face=face, center=center, side=side, angle=angle, other_faces=other_faces, outside=outside
    )


def _sampled_region(coefficients: tuple[float, ...], size: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixel box of a ``width`` x ``height`` photo that the affine crop ``coefficients`` reads (bicubic: 2 px
    around each sample), clipped to the photo; at least one pixel."""
    a, b, c, d, e, f = coefficients
    corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64)
    xs = a * corners[:, 0] + b * corners[:, 1] + c
    ys = d * corners[:, 0] + e * corners[:, 1] + f
    x0 = min(max(0, math.floor(xs.min()) - 3), width - 1)
    y0 = min(max(0, math.floor(ys.min()) - 3), height - 1)
    x1 = max(min(width, math.ceil(xs.max()) + 3), x0 + 1)
    y1 = max(min(height, math.ceil(ys.max()) + 3), y0 + 1)
    return x0, y0, x1, y1


def _border_colour(image: Image.Image) -> tuple[int, int, int]:
    """Median colour of the photo's outermost pixels (read as four 1-pixel strips: no copy of a big photo)."""
    w, h = image.size
    strips = [image.crop(box) for box in ((0, 0, w, 1), (0, h - 1, w, h), (0, 0, 1, h), (w - 1, 0, w, h))]
    edges = np.concatenate([np.asarray(strip.convert("RGB")).reshape(-1, 3) for strip in strips])
    return tuple(int(v) for v in np.median(edges, axis=0))


def crop_faces(
    sources: list[ImageSource], size: int = 256, device: str = "cpu", framing: Framing = Framing()
) -> tuple[list[FaceCrop | SimpsonizeError], list[float]]:
    """``crop_face`` for each photo, with MTCNN batched over the photos of one size.

    Returns each photo's crop, or in its place the ``SimpsonizeError`` that ``crop_face`` would raise (unreadable, no
    face), and the seconds spent on it (its share of its group's detection, plus its own decoding and alignment).
    """
    found, seconds = find_faces(sources, device=device)
    results: list[FaceCrop | SimpsonizeError] = []
    for i, item in enumerate(found):
        if isinstance(item, SimpsonizeError):
            results.append(item)
            continue
        started = time.perf_counter()
        image, faces = item
        results.append(align_crop(image, faces[0], size, other_faces=tuple(faces[1:]), framing=framing))
        seconds[i] += time.perf_counter() - started
    return results, seconds

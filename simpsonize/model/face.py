"""Face detection (MTCNN from facenet-pytorch), eye-level alignment and the square crop the generator sees.

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
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from simpsonize.model.errors import NoFaceFound, SimpsonizeError
from simpsonize.model.framing import CROP_SCALE, EYE_LINE, Framing  # noqa: F401 (re-exported)
from simpsonize.model.imaging import ImageSource, open_image

MIN_CONFIDENCE = 0.90
# Detection costs what it needs. The full search runs MTCNN on a copy up to DETECT_MAX_SIDE px, for faces down to
# MTCNN_MIN_FACE px: an image pyramid from 12/20 of that copy down to 12 px. Selfies have big faces, which only the
# pyramid's coarse levels find, so a quick search first runs just those levels, the ones for faces of at least
# FAST_MIN_FACE of the shorter side, from a copy FAST_SIDE px long: the same levels as in the full search, so it finds
# the same faces at the same places (the landmarks decide the crop). Only when it finds none (group photos, small or
# distant faces) does the full search run. Either way the crop is cut from the full-resolution image.
DETECT_MAX_SIDE = 1024  # MTCNN's cost grows with pixels; faces stay detectable at this size
MTCNN_MIN_FACE = 20  # pixels of the full search's copy (facenet-pytorch's default)
FAST_SIDE = 640  # 480 was quicker, but its landmarks tilted the crop by over a degree against the full search's
FAST_MIN_FACE = 0.15  # selfies' faces are 30-60 % of the shorter side; 0.15 halves the search against 0.10

_detectors: dict[str, object] = {}
_detectors_lock = threading.Lock()


@dataclass(frozen=True)
class Face:
    """One detected face, in the coordinates of the upright input image."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    confidence: float
    landmarks: tuple[tuple[float, float], ...]  # left eye, right eye, nose, mouth left, mouth right

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def to_dict(self) -> dict:
        return {
            "box": [round(v, 1) for v in self.box],
            "confidence": round(self.confidence, 4),
            "landmarks": [[round(x, 1), round(y, 1)] for x, y in self.landmarks],
        }


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


def get_detector(device: str = "cpu"):
    """One MTCNN per device per process: building it loads three small networks from the wheel."""
    with _detectors_lock:
        if device not in _detectors:
            import torch
            from facenet_pytorch import MTCNN

            detector = MTCNN(keep_all=True, device=device)
            if torch.device(device).type == "cpu":
                # On CPU, torch's max-pool is 3-7x faster on channels-last tensors, and MTCNN pools after every
                # convolution: the search took 40 ms instead of 57 (one thread, 12 MP photo), with the same boxes.
                # Channels-last weights make every convolution hand channels-last outputs to the pools.
                for net in (detector.pnet, detector.rnet, detector.onet):
                    net.to(memory_format=torch.channels_last)
            _detectors[device] = detector
        return _detectors[device]


def detect_faces(image: Image.Image, device: str = "cpu") -> list[Face]:
    """All faces MTCNN finds with confidence >= ``MIN_CONFIDENCE``, largest first, in ``image``'s coordinates.

    The quick search for big faces first; the full search only when it finds none (see ``FAST_SIDE``).
    """
    full_side = min(max(image.size), DETECT_MAX_SIDE)
    quick = _quick_search(image, full_side, device)
    if quick is not None:
        return quick
    return _search(image, _downscaled(image, full_side), MTCNN_MIN_FACE, device)


def _quick_search(image: Image.Image, full_side: int, device: str) -> list[Face] | None:
    """The faces of at least ``FAST_MIN_FACE`` of the shorter side, or None when that finds none or would be no
    quicker than the full search.

    The full search's pyramid levels are (12 / MTCNN_MIN_FACE) x factor^k of its copy, k = 0, 1, ...; the level
    k finds faces from MTCNN_MIN_FACE / factor^k px. The quick search skips the first ``skip`` levels: the ones for
    faces under FAST_MIN_FACE of the shorter side, and the ones finer than its smaller copy holds.
    """
    small, min_face = _quick_plan(image, full_side, device)
    if min_face is None:
        return None
    faces = _search(image, small, min_face, device)
    return faces if _quick_enough(image, faces) else None


def _quick_enough(image: Image.Image, faces: list[Face]) -> bool:
    """Whether the quick search's faces can stand for the photo's: some, and all of at least ``FAST_MIN_FACE`` of the
    shorter side. Its floor is soft: MTCNN also finds faces under it, and of several such faces of one size (a group
    photo: 4 faces of 5.7 % of a 12 MP photo's shorter side) it found only one. A face under the floor means there may
    be more of its size, which only the full search finds (it found all 4, and all 8)."""
    floor = FAST_MIN_FACE * min(image.size)
    return bool(faces) and all(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= floor for f in faces)


def _quick_plan(image: Image.Image, full_side: int, device: str) -> tuple[Image.Image, float | None]:
    """The quick search's copy of ``image`` and the smallest face it looks for (in the copy's pixels); None instead
    of that size when no level would be skipped. Photos of one size get the same size (``detect_faces_many``)."""
    factor = get_detector(device).factor
    full_scale = full_side / max(image.size)
    # A copy hardly smaller than the full search's would only add resampling jitter: then the levels are skipped alone.
    small = _downscaled(image, FAST_SIDE if full_side > 1.5 * FAST_SIDE else full_side)
    ratio = max(small.size) / full_side  # the small copy's size relative to the full search's
    by_face = math.floor(math.log(FAST_MIN_FACE * min(image.size) * full_scale / MTCNN_MIN_FACE, 1 / factor))
    by_detail = math.ceil(math.log(12 / MTCNN_MIN_FACE / ratio, 1 / factor) - 1e-9)
    skip = max(by_face, by_detail, 0)
    if skip == 0:
        return small, None
    return small, MTCNN_MIN_FACE * ratio / factor**skip


def _downscaled(image: Image.Image, max_side: int) -> Image.Image:
    if max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    # reducing_gap: first a box reduction by the largest whole factor that leaves >= 1x (cheap: it reads each
    # pixel once and averages, so it does not alias), then bilinear for the rest. Reading a 12 MP photo through the
    # bilinear filter alone cost as much as MTCNN itself; a gap of 3 still cost 25 ms, a gap of 1 costs 11 ms.
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR, reducing_gap=1.0
    )


def _search(image: Image.Image, small: Image.Image, min_face: float, device: str) -> list[Face]:
    """MTCNN on ``small`` (a downscaled copy of ``image``) for faces of at least ``min_face`` of its pixels; the boxes
    and landmarks mapped back to ``image``."""
    import torch
    from facenet_pytorch.models.utils.detect_face import detect_face

    mtcnn = get_detector(device)
    if min(small.size) * 12.0 / min_face < 12:  # MTCNN's pyramid would be empty (it raises a bare ValueError)
        return []
    with torch.no_grad():
        boxes, points = detect_face(
            small, min_face, mtcnn.pnet, mtcnn.rnet, mtcnn.onet, mtcnn.thresholds, mtcnn.factor, mtcnn.device
        )
    return _mapped(image, small, boxes[0], points[0])


def _mapped(image: Image.Image, small: Image.Image, boxes, points) -> list[Face]:
    """One image's MTCNN boxes and landmarks (found in ``small``) as confident faces in ``image``, largest first."""
    boxes, points = np.asarray(boxes), np.asarray(points)
    if len(boxes) == 0:
        return []
    sx, sy = image.width / small.width, image.height / small.height
    faces = [
        Face(
            box=(float(b[0]) * sx, float(b[1]) * sy, float(b[2]) * sx, float(b[3]) * sy),
            confidence=float(b[4]),
            landmarks=tuple((float(x) * sx, float(y) * sy) for x, y in pts),
        )
        for b, pts in zip(boxes, points)
        if b[4] >= MIN_CONFIDENCE
    ]
    return sorted(faces, key=lambda f: f.area, reverse=True)


def crop_face(source: ImageSource, size: int = 256, device: str = "cpu", framing: Framing = Framing()) -> FaceCrop:
    """Find the largest confident face, level its eyes and cut the square the generator expects.

    Raises ``NoFaceFound`` when there is none.
    """
    image = open_image(source)
    if min(image.size) < MTCNN_MIN_FACE:
        width, height = image.size
        raise NoFaceFound(
            f"The photo is too small ({width}x{height} pixels) to find a face in: it needs at least "
            f"{MTCNN_MIN_FACE} pixels on each side. Please use a bigger photo."
        )
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


# -- several photos at once (the worker's batches) -------------------------------------------------------------------
# MTCNN takes a batch only of images of one size (facenet-pytorch stacks them into one tensor), so photos are grouped
# by size. A group runs the searches ``detect_faces`` runs, the quick one and then the full one for the photos it found
# nothing in, with one MTCNN call per search for the whole group. A photo alone in its group takes the single-photo
# search, ``detect_faces``, unchanged.


def detect_faces_many(images: list[Image.Image], device: str = "cpu") -> list[list[Face]]:
    """``[detect_faces(image) for image in images]`` for images of one size, one MTCNN call per search."""
    if len(images) == 1:
        return [detect_faces(images[0], device=device)]
    size = images[0].size
    if any(image.size != size for image in images):
        raise ValueError("detect_faces_many takes images of one size; crop_faces groups them.")
    full_side = min(max(size), DETECT_MAX_SIDE)
    found: list[list[Face]] = [[] for _ in images]
    plans = [_quick_plan(image, full_side, device) for image in images]
    min_face = plans[0][1]  # the same for every image of this size
    if min_face is not None:
        found = _search_many(images, [small for small, _ in plans], min_face, device)
    rest = [i for i, faces in enumerate(found) if not _quick_enough(images[i], faces)]
    if rest:
        full = _search_many(
            [images[i] for i in rest], [_downscaled(images[i], full_side) for i in rest], MTCNN_MIN_FACE, device
        )
        for i, faces in zip(rest, full):
            found[i] = faces
    return found


def _search_many(
    images: list[Image.Image], smalls: list[Image.Image], min_face: float, device: str
) -> list[list[Face]]:
    """``_search`` for several images whose copies ``smalls`` share one size: one MTCNN call."""
    import torch
    from facenet_pytorch.models.utils.detect_face import detect_face

    if min(smalls[0].size) * 12.0 / min_face < 12:  # MTCNN's pyramid would be empty (it raises a bare ValueError)
        return [[] for _ in images]
    mtcnn = get_detector(device)
    with torch.no_grad():
        boxes, points = detect_face(
            list(smalls), min_face, mtcnn.pnet, mtcnn.rnet, mtcnn.onet, mtcnn.thresholds, mtcnn.factor, mtcnn.device
        )
    return [_mapped(image, small, b, p) for image, small, b, p in zip(images, smalls, boxes, points)]


def find_faces(
    sources: list[ImageSource], device: str = "cpu"
) -> tuple[list[tuple[Image.Image, list[Face]] | SimpsonizeError], list[float]]:
    """Each photo decoded (upright RGB) with all its confident faces, largest first, MTCNN batched over the photos of
    one size; in place of a photo, the ``SimpsonizeError`` that ``crop_face`` would raise (unreadable, too small, no
    face). Also the seconds spent on each (its share of its group's detection, plus its own decoding)."""
    results: list[tuple[Image.Image, list[Face]] | SimpsonizeError | None] = [None] * len(sources)
    seconds = [0.0] * len(sources)
    groups: dict[tuple[int, int], list[tuple[int, Image.Image]]] = {}
    for i, source in enumerate(sources):
        started = time.perf_counter()
        try:
            image = open_image(source)
            if min(image.size) < MTCNN_MIN_FACE:
                width, height = image.size
                raise NoFaceFound(
                    f"The photo is too small ({width}x{height} pixels) to find a face in: it needs at "
                    f"least {MTCNN_MIN_FACE} pixels on each side. Please use a bigger photo."
                )
        except SimpsonizeError as exc:
            results[i] = exc
        else:
            groups.setdefault(image.size, []).append((i, image))
        seconds[i] += time.perf_counter() - started
    for members in groups.values():
        started = time.perf_counter()
        found = detect_faces_many([image for _, image in members], device=device)
        share = (time.perf_counter() - started) / len(members)
        for (i, image), faces in zip(members, found):
            results[i] = (image, faces) if faces else NoFaceFound()
            seconds[i] += share
    return results, seconds  # type: ignore[return-value]


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

"""Face detection with MTCNN (facenet-pytorch): every confident face in a photo, largest first, with its five
landmarks, for one photo (``detect_faces``) or several (``detect_faces_many``, ``find_faces``);
``simpsonize.model.face`` levels and crops them."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from simpsonize.model.errors import NoFaceFound, SimpsonizeError
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


def open_searchable(source: ImageSource) -> Image.Image:
    """The photo as upright RGB, or ``NoFaceFound`` with a sentence when it is too small for MTCNN to search."""
    image = open_image(source)
    if min(image.size) < MTCNN_MIN_FACE:
        width, height = image.size
        raise NoFaceFound(
            f"The photo is too small ({width}x{height} pixels) to find a face in: it needs at least "
            f"{MTCNN_MIN_FACE} pixels on each side. Please use a bigger photo."
        )
    return image


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
            image = open_searchable(source)
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

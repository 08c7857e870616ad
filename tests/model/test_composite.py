"""The drawn head back in the photo (model/composite.py): the geometry of pasting back, rotation, which faces are
drawn, and a group photo through the Simpsonizer (tiny untrained generator: only places and counts are checked)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from simpsonize.model.composite import FaceSelection, composite, head_mask, paste_face
from simpsonize.model.detection import Face
from simpsonize.model.face import align_crop, crop_face

ASTRONAUT_FACE_CENTRE = (225, 120)


def synthetic_face(eyes=((170.0, 140.0), (230.0, 140.0)), mouth_y=200.0) -> Face:
    """A face given by its landmarks alone: eyes level, 60 px apart, mouth 60 px below them."""
    (lx, ly), (rx, ry) = eyes
    landmarks = ((lx, ly), (rx, ry), ((lx + rx) / 2, ly + 30), (lx + 10, mouth_y), (rx - 10, mouth_y))
    return Face(box=(lx - 30, ly - 40, rx + 30, mouth_y + 25), confidence=1.0, landmarks=landmarks)


def gradient_photo(width=600, height=400) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, (x + y) / 2], axis=-1).astype(np.uint8))


def test_flat_drawing_changes_the_head_and_leaves_a_far_corner_alone():
    photo = gradient_photo()
    face = synthetic_face()
    crop = align_crop(photo, face, 64)
    drawing = Image.new("RGB", (256, 256), (255, 0, 255))
    out = np.asarray(composite(photo, [(drawing, crop)]), dtype=np.int16)
    before = np.asarray(photo, dtype=np.int16)
    # From the eyes to the mouth the drawing's colour; the far corners as they were.
    assert (out[140:200, 170:230] == (255, 0, 255)).all()
    changed = np.abs(out - before).max(axis=-1) > 1
    assert changed[110:200, 150:250].all()  # the brows and above, cheek to cheek
    assert np.abs(out[-40:, -40:] - before[-40:, -40:]).max() <= 1
    assert np.abs(out[:20, :20] - before[:20, :20]).max() <= 1


def test_pasting_the_crop_back_gives_the_photo_back():
    """The crop's own pixels pasted back land where they came from: the inverse of align_crop's map."""
    photo = gradient_photo()
    crop = align_crop(photo, synthetic_face(), 256)
    out = np.asarray(composite(photo, [(crop.image, crop)]), dtype=np.int16)
    before = np.asarray(photo, dtype=np.int16)
    assert np.abs(out - before)[100:220, 150:250].max() <= 3


def test_a_tilted_face_comes_back_in_place(astronaut):
    """A tilted head: a marker at its centre, cut out with the crop and pasted back, lands within 2 px of where it
    was."""
    angle = 25
    tilted = astronaut.rotate(angle, resample=Image.BICUBIC, center=ASTRONAUT_FACE_CENTRE)
    clean = crop_face(tilted, size=256)
    assert abs(abs(clean.angle) - angle) < 6  # the crop really is rotated
    head = clean.face
    centre = ((head.box[0] + head.box[2]) / 2, (head.box[1] + head.box[3]) / 2)
    marked = tilted.copy()
    ImageDraw.Draw(marked).ellipse((centre[0] - 4, centre[1] - 4, centre[0] + 4, centre[1] + 4), fill=(0, 255, 0))
    crop = align_crop(marked, head, 256)  # the same face, the marker in its crop
    canvas = np.array(tilted)
    paste_face(canvas, crop.image, crop)
    green = (canvas[..., 1] > 200) & (canvas[..., 0] < 80) & (canvas[..., 2] < 80)
    ys, xs = np.nonzero(green)
    assert len(xs) > 20
    assert math.dist((xs.mean() + 0.5, ys.mean() + 0.5), centre) <= 2.0


def test_mask_is_zero_past_the_photo_edge():
    """A face at the photo's edge: the part of the square past it (the crop's flat fill) gets no weight."""
    photo = gradient_photo(300, 300)
    face = synthetic_face(eyes=((10.0, 150.0), (70.0, 150.0)))
    crop = align_crop(photo, face, 64)
    assert crop.outside > 0.1
    mask = head_mask(crop, 64, photo.size)
    # Crop column u maps to photo x = crop's left + u * side / 64; the columns left of x = 0 are the fill.
    left = crop.center[0] - crop.side / 2
    outside_columns = int(-left / (crop.side / 64))
    assert outside_columns > 2
    assert mask[:, : outside_columns - 1].max() == 0.0
    assert mask.max() == pytest.approx(1.0)


def test_composite_draws_the_largest_face_last():
    photo = gradient_photo()
    big, small = synthetic_face(), synthetic_face(eyes=((200.0, 150.0), (240.0, 150.0)), mouth_y=190.0)
    crop_big, crop_small = align_crop(photo, big, 64), align_crop(photo, small, 64)
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    for order in ([(red, crop_big), (blue, crop_small)], [(blue, crop_small), (red, crop_big)]):
        out = np.asarray(composite(photo, order))
        assert tuple(out[155, 220]) == (255, 0, 0)  # where both heads lie, the larger one is on top


def test_selection_keeps_big_faces_up_to_the_limit_largest_first_and_always_one():
    def face(side):
        return Face(box=(0.0, 0.0, float(side), float(side)), confidence=1.0, landmarks=((0, 0),) * 5)

    faces = [face(s) for s in (30, 200, 70, 63, 100)]
    assert [f.box[2] for f in FaceSelection(min_face=64, max_faces=8).pick(faces)] == [200, 100, 70]
    assert [f.box[2] for f in FaceSelection(min_face=64, max_faces=2).pick(faces)] == [200, 100]
    assert [f.box[2] for f in FaceSelection(min_face=64).pick([face(30), face(20)])] == [30]  # a small selfie
    assert FaceSelection().pick([]) == []


# -- a group photo through the Simpsonizer ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simpsonizer(tiny_weights):
    from simpsonize.model.pipeline import Simpsonizer

    return Simpsonizer(weights=tiny_weights, device="cpu", num_threads=1)


def test_two_faces_give_two_drawings_and_two_pasted_heads(simpsonizer, astronaut):
    from skimage import data

    camera = Image.fromarray(data.camera()).convert("RGB")
    pair = Image.new("RGB", (1536, 768))
    pair.paste(astronaut.resize((768, 768), Image.LANCZOS), (0, 0))
    pair.paste(camera.resize((768, 768), Image.LANCZOS), (768, 0))
    result = simpsonizer(pair)
    assert result.face_count == 2 and len(result.faces) == 2
    assert result.faces[0].image.tobytes() != result.faces[1].image.tobytes()
    assert result.composite.size == pair.size
    assert result.to_dict()["face_count"] == 2
    changed = np.abs(np.asarray(result.composite, np.int16) - np.asarray(pair, np.int16)).max(axis=-1) > 8
    for face in result.faces:
        x0, y0, x1, y1 = (round(v) for v in face.crop.face.box)
        assert changed[y0:y1, x0:x1].mean() > 0.5  # each head was pasted
    assert {face.crop.face.box[0] < 768 for face in result.faces} == {True, False}  # one on each side
    assert not changed[-60:, :].any()  # the bottom (shoulders and below) is left alone


def test_nine_faces_give_eight(simpsonizer, astronaut):
    tile = astronaut.resize((448, 448), Image.LANCZOS)  # faces of about 80 px: all over 64
    grid = Image.new("RGB", (3 * 448, 3 * 448))
    for i in range(9):
        grid.paste(tile, ((i % 3) * 448, (i // 3) * 448))
    result = simpsonizer(grid)
    assert len(result.crop.other_faces) == 8  # all nine were found...
    assert result.face_count == 8  # ... and eight drawn
    assert result.to_dict()["faces_found"] == 9
    assert len({(round(f.crop.center[0]), round(f.crop.center[1])) for f in result.faces}) == 8

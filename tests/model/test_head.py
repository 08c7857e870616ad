"""The whole-head framing: hair to chin from the face mesh and the person mask, on a real photo."""

from __future__ import annotations

import numpy as np
import pytest

from simpsonize.model.detection import Face, detect_faces
from simpsonize.model.face import align_crop
from simpsonize.model.framing import Framing
from simpsonize.model.head import head_framing, measure_head
from simpsonize.model.landmarks import CHIN, FaceMesh, PersonSegmenter

HEAD = Framing(mode="head")


@pytest.fixture(scope="module")
def astronaut_face(astronaut) -> Face:
    return detect_faces(astronaut)[0]


def test_head_crop_runs_from_the_hair_to_the_chin(astronaut, astronaut_face):
    crop = align_crop(astronaut, astronaut_face, 192, framing=HEAD)
    eyes_crop = align_crop(astronaut, astronaut_face, 192)
    assert crop.side > 1.6 * eyes_crop.side  # the eyes framing cuts the head at the hairline; this one holds it all
    assert crop.outside == 0  # the astronaut's whole head is in the photo

    chin = FaceMesh()(crop.image).landmarks[CHIN, 1] / 192
    assert chin == pytest.approx(HEAD.chin_line, abs=0.04)
    mask = PersonSegmenter()(crop.image) >= 0.5
    middle = mask[:, 96 - 20 : 96 + 20]  # the columns over the middle of the face
    hair_top = np.argmax(middle.any(axis=1)) / 192
    assert hair_top == pytest.approx(HEAD.top_margin, abs=0.04)
    assert not mask[:4, :20].any() and not mask[:4, -20:].any()  # background above the head's shoulders


def test_a_photo_that_cuts_the_head_falls_back_to_the_mesh_estimate(astronaut, astronaut_face):
    """The hair's top is outside this photo: the person mask stops at the edge, so the mesh places the head's top,
    and the crop runs past the photo (filled), rather than zooming in until the edge looks like the hair's top."""
    top = 75  # cuts through the astronaut's hair, above her eyebrows (the eyes are at y ~ 110-120)
    cut = astronaut.crop((0, top, astronaut.width, astronaut.height))
    face = Face(box=(0, 0, 1, 1), confidence=1.0, landmarks=tuple((x, y - top) for x, y in astronaut_face.landmarks))
    whole = measure_head(astronaut, astronaut_face, align_crop)
    measured = measure_head(cut, face, align_crop)
    assert whole.top_in_photo and not measured.top_in_photo
    assert measured.chin == pytest.approx(whole.chin, abs=0.05)
    assert measured.top < measured.forehead
    assert abs(measured.top - whole.top) < 0.5 * (whole.chin - whole.top) / 4  # within an eighth of the head
    assert align_crop(cut, face, 128, framing=HEAD).outside > 0.05


def test_no_face_for_the_mesh_means_the_eyes_framing(coffee):
    """A detection where the mesh sees no face (a cup, here) gets the framing every model used before."""
    face = Face(
        box=(200, 100, 300, 200),
        confidence=0.99,
        landmarks=((220, 130), (280, 130), (250, 155), (225, 180), (275, 180)),
    )
    assert head_framing(coffee, face, HEAD, crop=align_crop) == Framing()


def test_framing_round_trips_and_eyes_framings_keep_their_stored_form():
    assert Framing().to_dict() == {"scale": 2.3, "eye_line": 0.33}  # what every model so far stored
    assert Framing.from_dict(HEAD.to_dict()) == HEAD
    assert Framing.from_dict(Framing(3.0, 0.42).to_dict()) == Framing(3.0, 0.42)
    assert Framing.from_dict(None) == Framing()
    with pytest.raises(ValueError, match="Unknown framing mode"):
        Framing(mode="shoulders")
    with pytest.raises(ValueError, match="top_margin < chin_line"):
        Framing(mode="head", top_margin=0.5, chin_line=0.4)


def test_serving_crops_the_whole_head_when_the_weights_were_trained_so(tmp_path, astronaut):
    from simpsonize.model.networks import GeneratorConfig, ResnetGenerator
    from simpsonize.model.pipeline import Simpsonizer
    from simpsonize.model.weights import save_generator

    generator = ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=1))
    head = save_generator(tmp_path / "head.safetensors", generator, input_size=64, extra={"framing": HEAD.to_dict()})
    eyes = save_generator(tmp_path / "eyes.safetensors", generator, input_size=64)
    head_result = Simpsonizer(weights=head, device="cpu", num_threads=1)(astronaut)
    eyes_result = Simpsonizer(weights=eyes, device="cpu", num_threads=1)(astronaut)
    assert head_result.crop.side > 1.6 * eyes_result.crop.side

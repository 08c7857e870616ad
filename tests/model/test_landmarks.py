"""MediaPipe's networks in torch (simpsonize/model/landmarks.py) beside the official TFLite interpreter, and on a photo.

The reference outputs (tests/fixtures/mediapipe_reference.json) come from ai-edge-litert via
tools/mediapipe_reference.py; the converter's own test needs the mediapipe wheel's .tflite files, which CI lacks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from simpsonize.model.composite import crop_to_photo
from simpsonize.model.detection import detect_faces
from simpsonize.model.errors import MissingWeights, WeightsError
from simpsonize.model.face import align_crop
from simpsonize.model.landmarks import (
    CHIN,
    FOREHEAD_TOP,
    MESH_FRAMING,
    MOUTH_CORNERS,
    FaceMesh,
    IrisLandmarks,
    PersonSegmenter,
    eye_centres,
)
from simpsonize.model.tflite_graph import METADATA_KEY, load_graph
from simpsonize.resources import MEDIAPIPE_DIR
from tools.mediapipe_reference import CASES, FIXTURE, block_means, case_input, digest

MEDIAPIPE_SOURCE_ENV = "SIMPSONIZE_MEDIAPIPE_DIR"  # the wheel, or where it is unpacked (tools/convert_mediapipe.py)
REQUIRE_SOURCE_ENV = "SIMPSONIZE_REQUIRE_MEDIAPIPE"  # "1": the converter test fails, not skips, without the files


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(FIXTURE.read_text())["cases"]


@pytest.fixture(scope="module")
def mesh() -> FaceMesh:
    return FaceMesh()


@pytest.fixture(scope="module")
def segmenter() -> PersonSegmenter:
    return PersonSegmenter()


def _pixels(name: str, reference: dict) -> np.ndarray:
    pixels = case_input(CASES[name])
    assert digest(pixels) == reference[name]["input_sha256"], (
        f"{name}: this Pillow/scikit-image makes other input pixels than the reference run saw; rerun "
        "tools/mediapipe_reference.py (its docstring says how) to refresh tests/fixtures/mediapipe_reference.json."
    )
    return pixels


# -- the same numbers as TFLite ----------------------------------------------------------------------------------------


def test_fixture_covers_every_case(reference):
    assert set(reference) == set(CASES)


@pytest.mark.parametrize("name", ["face_astronaut", "face_cameraman"])
def test_face_mesh_matches_tflite(name, reference, mesh):
    result = mesh(_pixels(name, reference))  # already 192x192: the landmarks are in the network's own pixels
    expected = np.asarray(reference[name]["landmarks"])
    assert result.landmarks.shape == (468, 3)
    assert np.abs(result.landmarks - expected).max() < 0.5  # pixels of 192, x, y and z
    assert np.abs(result.landmarks - expected).mean() < 0.1
    assert result.score == pytest.approx(1 / (1 + np.exp(-reference[name]["face_logit"])), abs=1e-3)


def test_face_present_score_tells_a_face_from_a_cat(reference, mesh):
    cat = mesh(_pixels("face_cat", reference))
    astronaut = mesh(_pixels("face_astronaut", reference))
    assert cat.score == pytest.approx(1 / (1 + np.exp(-reference["face_cat"]["face_logit"])), abs=1e-3)
    assert cat.score < 0.1 < 0.99 < astronaut.score


@pytest.mark.parametrize("name", ["mask_astronaut", "mask_cameraman"])
def test_person_mask_matches_tflite(name, reference, segmenter):
    mask = segmenter(_pixels(name, reference))  # 256x256: no resizing either side
    expected = np.asarray(reference[name]["mask_block_means"])
    got = block_means(mask)
    assert np.abs(got - expected).mean() < 0.02
    assert np.abs(got - expected).max() < 0.1
    assert 0.1 < expected.mean() < 0.9  # the photo holds person and background, so the comparison means something


@pytest.mark.parametrize("name", ["iris_astronaut_right", "iris_astronaut_left"])
def test_iris_matches_tflite(name, reference):
    case = CASES[name]
    eye = Image.fromarray(_pixels(name, reference))
    if case.mirrored:  # the reference fed the network the mirrored right eye; the helper mirrors it itself
        eye = eye.transpose(Image.FLIP_LEFT_RIGHT)
    result = IrisLandmarks()(eye, right_eye=case.mirrored)
    contour, iris = np.asarray(reference[name]["contour"]), np.asarray(reference[name]["iris"])
    if case.mirrored:  # and it hands back points in the unmirrored crop, as MediaPipe does (x -> 64 - x)
        contour[:, 0], iris[:, 0] = 64 - contour[:, 0], 64 - iris[:, 0]
    assert np.abs(result.contour - contour).max() < 0.5
    assert np.abs(result.iris - iris).max() < 0.5


# -- on a real photo, beside MTCNN -------------------------------------------------------------------------------------


def test_mesh_eyes_land_on_mtcnn_eyes_and_the_face_runs_forehead_to_chin(astronaut, mesh):
    face = detect_faces(astronaut)[0]
    crop = align_crop(astronaut, face, 192, framing=MESH_FRAMING)
    result = mesh(crop.image)
    assert result.score > 0.99
    assert result.landmarks[:, :2].min() > 0 and result.landmarks[:, :2].max() < 192  # the framing holds the mesh
    a, b, c, d, e, f = crop_to_photo(crop, 192)
    u, v = result.landmarks[:, 0], result.landmarks[:, 1]
    photo = np.stack([a * u + b * v + c, d * u + e * v + f], axis=1)  # in the astronaut's pixels

    mtcnn_right_eye, mtcnn_left_eye = (np.asarray(p) for p in face.landmarks[:2])  # MTCNN's image-left eye first
    eye_distance = np.linalg.norm(mtcnn_left_eye - mtcnn_right_eye)
    right_eye, left_eye = eye_centres(photo)
    assert np.linalg.norm(right_eye - mtcnn_right_eye) < 0.1 * eye_distance  # measured: 0.04
    assert np.linalg.norm(left_eye - mtcnn_left_eye) < 0.1 * eye_distance  # measured: 0.02
    mouth_y = np.mean([face.landmarks[3][1], face.landmarks[4][1]])
    assert photo[FOREHEAD_TOP, 1] < min(right_eye[1], left_eye[1]) - 0.5 * eye_distance
    assert photo[CHIN, 1] > mouth_y + 0.5 * (mouth_y - right_eye[1])
    mouth_corners = photo[list(MOUTH_CORNERS)]
    for mesh_corner, mtcnn_corner in zip(mouth_corners, face.landmarks[3:]):
        assert np.linalg.norm(mesh_corner - np.asarray(mtcnn_corner)) < 0.2 * eye_distance


def test_person_mask_covers_face_and_hair_but_not_the_background(astronaut, segmenter):
    mask = segmenter(astronaut)
    assert mask.shape == (512, 512) and mask.dtype == np.float32

    def region(x0, y0, x1, y1):
        return float(mask[y0:y1, x0:x1].mean())

    assert region(195, 80, 255, 160) > 0.95  # the face (its box is x 181-268, y 62-172)
    assert region(185, 28, 265, 55) > 0.9  # the hair above it
    assert region(0, 0, 48, 48) < 0.05 and region(464, 0, 512, 48) < 0.05  # the top corners: flag, wall
    assert region(380, 40, 440, 200) < 0.05  # the shuttle model beside her


def test_mask_follows_the_photo_size(astronaut, segmenter):
    wide = astronaut.resize((300, 200))
    assert segmenter(wide).shape == (200, 300)


# -- torch behaviour -------------------------------------------------------------------------------------------------


def test_batches_give_what_single_crops_give_and_gradients_reach_the_pixels(reference, mesh):
    crops = torch.stack(
        [
            torch.tensor(_pixels(name, reference)).permute(2, 0, 1).float() / 255
            for name in ("face_astronaut", "face_cameraman")
        ]
    )
    crops.requires_grad_(True)
    landmarks, logits = mesh.predict(crops)
    assert landmarks.shape == (2, 468, 3) and logits.shape == (2,)
    alone, _ = mesh.predict(crops[1:].detach())
    assert torch.allclose(landmarks[1], alone[0], atol=1e-3)
    landmarks[:, FOREHEAD_TOP, 1].sum().backward()  # e.g. a training loss on the head's top
    assert crops.grad is not None and crops.grad.abs().sum() > 0


def test_a_float_array_is_refused_with_a_sentence(mesh):
    with pytest.raises(ValueError, match="uint8"):
        mesh(np.zeros((192, 192, 3), dtype=np.float32))


def test_missing_or_foreign_weights_are_clear_errors(tmp_path, tiny_weights):
    with pytest.raises(MissingWeights, match="convert_mediapipe"):
        load_graph(tmp_path / "absent.safetensors")
    with pytest.raises(WeightsError, match="not a converted MediaPipe graph"):
        load_graph(tiny_weights)  # a generator's weights


# -- the converter -----------------------------------------------------------------------------------------------------


def _mediapipe_source() -> Path:
    """The mediapipe 0.10.21 wheel's files, or a skip (a failure when ``SIMPSONIZE_REQUIRE_MEDIAPIPE=1``)."""
    from tools.convert_mediapipe import DEFAULT_SOURCE, NETWORKS, WHEEL_NAME

    source = Path(os.environ.get(MEDIAPIPE_SOURCE_ENV, DEFAULT_SOURCE))
    if source.is_file() or (source / NETWORKS[0].member).is_file() or (source / WHEEL_NAME).is_file():
        return source
    message = (
        f"the mediapipe 0.10.21 wheel's .tflite files are not at {source} (set {MEDIAPIPE_SOURCE_ENV} to the "
        f"wheel or the folder it is unpacked into)"
    )
    if os.environ.get(REQUIRE_SOURCE_ENV) == "1":
        pytest.fail(f"{REQUIRE_SOURCE_ENV}=1 but {message}")
    pytest.skip(message)


def test_converter_rebuilds_the_shipped_networks(tmp_path):
    source = _mediapipe_source()
    from tools.convert_mediapipe import main

    assert main(["--source", str(source), "--out", str(tmp_path)]) == 0
    for name in ("face_landmark", "selfie_segmentation", "iris_landmark"):
        with (
            safe_open(str(tmp_path / f"{name}.safetensors"), "pt") as new,
            safe_open(str(MEDIAPIPE_DIR / f"{name}.safetensors"), "pt") as shipped,
        ):
            assert json.loads(new.metadata()[METADATA_KEY]) == json.loads(shipped.metadata()[METADATA_KEY])
            assert sorted(new.keys()) == sorted(shipped.keys())
            for key in new.keys():
                assert torch.equal(new.get_tensor(key), shipped.get_tensor(key)), key
    for name in ("LICENSE", "NOTICE.md"):
        assert (tmp_path / name).read_text() == (MEDIAPIPE_DIR / name).read_text()
    assert "Apache License" in (tmp_path / "LICENSE").read_text()


def test_converter_says_which_files_it_lacks(tmp_path, capsys):
    from tools.convert_mediapipe import main

    assert main(["--source", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--source", str(tmp_path), "--out", str(tmp_path / "out")]) == 1  # a folder without the files
    assert "unpack" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

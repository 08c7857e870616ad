"""The face-weighted photo cycle (training/regularizers.py: face_region_weights, `train --cycle-surround`)."""

import torch

from simpsonize.cli import main
from tests.training.conftest import TINY_TRAIN, tiny_trainer
from simpsonize.training.regularizers import face_region_weights, weighted_l1

SHIPPED_FRAMING = {"scale": 2.3, "eye_line": 0.33}


def test_the_face_keeps_the_full_weight_and_the_surroundings_get_the_surround_weight():
    weights = face_region_weights(128, SHIPPED_FRAMING, 0.1)[0, 0]
    assert weights.shape == (128, 128)
    assert weights.min() >= 0.1 - 1e-6 and weights.max() <= 1 + 1e-6
    eyes_y, mouth_y = round(0.33 * 128), round(0.33 * 128 + 128 / 2.3)  # where the crop puts them
    for y in (eyes_y, (eyes_y + mouth_y) // 2, mouth_y):
        assert weights[y, 64] == 1  # eyes, nose and mouth: the person, whom the cycle is there to keep
    for y, x in ((0, 0), (0, 127), (127, 0), (127, 127), (64, 0), (64, 127)):
        assert torch.isclose(weights[y, x], torch.tensor(0.1))  # corners and the sides beside the face
    assert torch.equal(weights, weights.flip(-1))  # left-right symmetric, as the flipped training crops are
    # the fall from 1 to the surround weight is gradual: no hard step for the random crop to jitter across the face
    row = weights[eyes_y]
    assert (row[:64].diff() >= 0).all() and (row[:64].diff() < 0.5).all()


def test_the_ellipse_follows_the_framing_and_the_training_resize():
    low_eyes = face_region_weights(128, {"scale": 2.3, "eye_line": 0.45}, 0.0)[0, 0]
    shipped = face_region_weights(128, SHIPPED_FRAMING, 0.0)[0, 0]
    assert low_eyes[127, 64] > shipped[127, 64]  # the face moved down with the eyes
    assert low_eyes[8, 64] < shipped[8, 64]
    wide = face_region_weights(128, {"scale": 3.4, "eye_line": 0.33}, 0.0)[0, 0]
    assert wide.mean() < shipped.mean()  # a wider crop: a smaller face, more surroundings
    resized = face_region_weights(128, SHIPPED_FRAMING, 0.0, load_size=143)[0, 0]
    assert resized.mean() > shipped.mean()  # training's 143 px resize before the 128 crop enlarges the face
    assert torch.equal(face_region_weights(64, SHIPPED_FRAMING, 1.0), torch.ones(1, 1, 64, 64))


def test_weighted_l1_charges_nothing_where_the_weight_is_zero():
    target = torch.zeros(2, 3, 8, 8)
    prediction = target.clone()
    prediction[..., :, :4] = 1.0  # wrong on the left half only
    left_free = torch.ones(1, 1, 8, 8)
    left_free[..., :, :4] = 0
    assert weighted_l1(prediction, target, left_free) == 0
    assert weighted_l1(prediction, target, None) == torch.nn.functional.l1_loss(prediction, target) == 0.5
    assert weighted_l1(prediction, target, torch.ones(1, 1, 8, 8)) == 0.5  # weight 1: the published loss


def _trainer(tiny_dataset, tmp_path, **options):
    return tiny_trainer(tiny_dataset, tmp_path / "t", **options)


def test_the_trainer_weights_only_the_photo_cycle(tiny_dataset, tmp_path):
    uniform, weighted = _trainer(tiny_dataset, tmp_path), _trainer(tiny_dataset, tmp_path, cycle_surround=0.0)
    assert uniform.cycle_weights_B is None
    expected = face_region_weights(32, weighted.dataset.framing, 0.0, load_size=weighted.dataset.load_size)
    assert torch.equal(weighted.cycle_weights_B, expected)
    # same seed, same networks, same images: the first step differs only in the photo cycle's weights
    a = uniform.train_step(uniform.sample_A[:1], uniform.sample_B[:1])
    b = weighted.train_step(weighted.sample_A[:1], weighted.sample_B[:1])
    assert b["cycle_B"] < a["cycle_B"]
    assert b["cycle_A"] == a["cycle_A"]  # the Simpsons crops are not aligned: their cycle stays uniform


def test_cycle_surround_from_the_command_line_reaches_the_checkpoint(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(run), *TINY_TRAIN, "--cycle-surround", "0.1",
                 "--max-steps", "1"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=False)["config"]["cycle_surround"] == 0.1
    for value in ("-0.5", "2"):
        assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "bad"), *TINY_TRAIN,
                     "--cycle-surround", value]) == 2
        assert "--cycle-surround must be between 0 and 1" in capsys.readouterr().out
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_cycle_eyes_weights_two_discs_where_the_crop_puts_the_eyes():
    plain = face_region_weights(128, SHIPPED_FRAMING, 0.1)[0, 0]
    weights = face_region_weights(128, SHIPPED_FRAMING, 0.1, eyes=5.0)[0, 0]
    eyes_y, half = round(0.33 * 128), 128 / 2.3 / 2  # eye line; half an eye distance
    for x in (round(64 - half), round(64 + half)):
        assert torch.isclose(weights[eyes_y, x], torch.tensor(5.0))  # on each eye: five times the face's weight
    mouth_y = round(0.33 * 128 + 128 / 2.3)
    for y, x in ((eyes_y, 64), (mouth_y, 64), (0, 0), (127, 127)):
        assert torch.isclose(weights[y, x], plain[y, x])  # between the eyes, the mouth and the corners: unchanged
    assert torch.equal(weights, weights.flip(-1))
    assert (weights[eyes_y, :64].diff().abs() < 2.5).all()  # no hard step for the random crop to jitter across
    assert torch.equal(face_region_weights(64, SHIPPED_FRAMING, 1.0, eyes=1.0), torch.ones(1, 1, 64, 64))


def test_cycle_eyes_reaches_the_trainer_and_the_checkpoint_and_refuses_less_than_one(tiny_dataset, tmp_path, capsys):
    eyes = _trainer(tiny_dataset, tmp_path, cycle_eyes=4.0)
    expected = face_region_weights(32, eyes.dataset.framing, 1.0, load_size=eyes.dataset.load_size, eyes=4.0)
    assert torch.equal(eyes.cycle_weights_B, expected)
    uniform = _trainer(tiny_dataset, tmp_path)
    a = uniform.train_step(uniform.sample_A[:1], uniform.sample_B[:1])
    b = eyes.train_step(eyes.sample_A[:1], eyes.sample_B[:1])
    assert b["cycle_B"] > a["cycle_B"] and b["cycle_A"] == a["cycle_A"]  # only the photo cycle weighs the eyes more
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(run), *TINY_TRAIN, "--cycle-eyes", "3",
                 "--max-steps", "1"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=False)["config"]["cycle_eyes"] == 3
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "bad"), *TINY_TRAIN,
                 "--cycle-eyes", "0.5"]) == 2
    assert "--cycle-eyes must be at least 1" in capsys.readouterr().out

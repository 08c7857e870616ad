"""The show's eye locator and `train --eye-consistency` (training/eye_locator.py).

The locator's trunk is TinyFeatures (tests/training/conftest.py), a tiny random stand-in for Lite0, everywhere here;
tests/training/test_lite0.py is the one that loads the real weights."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import simpsonize.training.eye_locator as eye_locator
from simpsonize.cli import main
from simpsonize.training.data import UnpairedFaces
from simpsonize.training.eye_locator import (
    LOCATOR_FILE,
    EyeLocator,
    LabelledImages,
    LocatorConfig,
    agreement,
    fit,
    gaussian_maps,
    load_locator,
    map_loss,
    peaks,
    save_locator,
    to_crop,
)
from tests.training.conftest import TinyFeatures, tiny_trainer


def fixed_tiny_trunk() -> TinyFeatures:
    """TinyFeatures, the same every time (its conv biases come from the global RNG): like Lite0's, whose weights come
    from a file."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return TinyFeatures().eval()


@pytest.fixture(autouse=True)
def tiny_trunk(monkeypatch):
    monkeypatch.setattr(eye_locator, "lite0_trunk", fixed_tiny_trunk)


def test_a_map_peaks_at_its_centres_and_peaks_finds_them_again():
    maps = gaussian_maps([[(10.0, 18.0), (50.0, 18.0)], []], side=16)
    assert maps.shape == (2, 1, 16, 16)
    assert maps[1].max() == 0  # no eyes: an all-negative map
    # cell j's centre is at 4j + 2 px: (10, 18) is cell (row 4, col 2) exactly
    assert maps[0, 0, 4, 2] == pytest.approx(1.0) and maps[0, 0, 4, 12] == pytest.approx(1.0)
    assert maps[0, 0, 4, 3] == pytest.approx(math.exp(-0.5), rel=1e-5)  # one cell (one SIGMA) away
    assert sorted(peaks(maps)[0]) == [(10.0, 18.0), (50.0, 18.0)] and peaks(maps)[1] == []


def test_the_loss_is_low_only_when_the_logits_match_the_map():
    target = gaussian_maps([[(10.0, 18.0)]], side=16)
    right = torch.logit(target.clamp(1e-4, 1 - 1e-4))
    shifted = torch.roll(right, shifts=3, dims=-1)  # the eye drawn 12 px off
    nothing = torch.full_like(right, -9.0)  # no eye drawn
    assert 3 * map_loss(right, target) < min(map_loss(shifted, target), map_loss(nothing, target))


def test_the_persons_eyes_follow_the_crop_and_the_flip(tmp_path):
    """A dot drawn at a known place of a stored real photo is, in the training crop the dataset returns, where
    ``to_crop`` puts that place, for every draw (crops and flips); so the targets follow the augmentation."""
    for split in ("trainA", "trainB"):
        (tmp_path / split).mkdir()
    Image.new("RGB", (40, 40), (200, 200, 0)).save(tmp_path / "trainA" / "0.png")
    photo = np.zeros((80, 80, 3), np.uint8)
    photo[22:26, 14:18] = 255  # a white dot centred at (16, 24) px = (0.2, 0.3) of the side
    Image.fromarray(photo).save(tmp_path / "trainB" / "0.png")
    data = UnpairedFaces(tmp_path, size=32, seed=3, positions=True)
    flips = set()
    for k in range(12):
        sample = data[k]
        crop = sample["B_crop"]
        flips.add(int(crop[2]))
        u, v = to_crop(0.2, 0.3, crop, data.load_size, data.size)
        bright = sample["B"].mean(0) > 0
        rows, cols = torch.nonzero(bright, as_tuple=True)
        assert abs(cols.float().mean().item() + 0.5 - u) < 1.0 and abs(rows.float().mean().item() + 0.5 - v) < 1.0
    assert flips == {0, 1}


def test_positions_leave_the_images_and_draws_as_they_were(tiny_dataset):
    plain = UnpairedFaces(tiny_dataset, size=32, seed=1)
    placed = UnpairedFaces(tiny_dataset, size=32, seed=1, positions=True)
    for k in range(4):
        a, b = plain[k], placed[k]
        assert torch.equal(a["A"], b["A"]) and torch.equal(a["B"], b["B"]) and "B_index" not in a


def eye_image(pupil: bool, x: int, y: int, side: int = 64) -> torch.Tensor:
    """A yellow face with a show eye (white disc, black outline, and a black pupil or none) centred at (x, y)."""
    yy, xx = np.mgrid[:side, :side]
    image = np.zeros((side, side, 3), np.float32) + np.array([0.95, 0.85, 0.1], np.float32)
    distance = np.hypot(xx - x, yy - y)
    image[distance <= 9] = 0.0
    image[distance <= 8] = 1.0
    if pupil:
        image[distance <= 4] = 0.0
    return torch.from_numpy(image).permute(2, 0, 1) * 2 - 1


def eye_sets(count: int, seed: int) -> list[LabelledImages]:
    rng = np.random.default_rng(seed)
    sets = []
    for kind, pupil in (("with pupils", True), ("blank", False)):
        places = [(int(rng.integers(14, 50)), int(rng.integers(14, 50))) for _ in range(count)]
        images = torch.stack([eye_image(pupil, x, y) for x, y in places])
        sets.append(LabelledImages(kind, images, [[(x + 0.5, y + 0.5)] if pupil else [] for x, y in places]))
    return sets


def test_the_locator_learns_to_find_pupilled_eyes_and_not_blank_ones():
    """Fitted on the finder's labels, the head finds held-out eyes with pupils where they are, and (the point of the
    hard negatives) does not call a blank white disc an eye."""
    torch.manual_seed(0)
    locator = EyeLocator(LocatorConfig(hidden=16, size=64))
    before = [agreement(locator, s) for s in eye_sets(16, seed=1)]
    history = fit(locator, eye_sets(48, seed=0), epochs=25, batch=16, lr=3e-3)
    assert history[-1] < 0.5 * history[0]
    with_pupils, blank = (agreement(locator, s) for s in eye_sets(16, seed=1))
    assert with_pupils["hit"] >= 0.8 and with_pupils["false"] <= 0.2
    assert blank["false"] <= 0.2
    assert before[0]["hit"] < 0.8 or before[1]["false"] > 0.2  # the random head could not do it


def test_a_saved_locator_loads_the_same_and_is_frozen(tmp_path):
    torch.manual_seed(0)
    locator = EyeLocator(LocatorConfig(hidden=8, size=64))
    sha = save_locator(locator, tmp_path / LOCATOR_FILE, {"note": "test"})
    again = load_locator(tmp_path / LOCATOR_FILE)
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.equal(locator.eval()(images), again(images)) and len(sha) == 64
    assert not any(p.requires_grad for p in again.parameters())
    with pytest.raises(FileNotFoundError, match="simpsonize eye-locator"):
        load_locator(tmp_path / "missing" / LOCATOR_FILE)


def locator_for(data, size: int = 32) -> None:
    torch.manual_seed(0)
    save_locator(EyeLocator(LocatorConfig(hidden=8, size=size)), data / LOCATOR_FILE, {})


@pytest.fixture
def dataset_with_locator(tiny_dataset, tmp_path):
    """The tiny dataset (copied: the locator and the eye cache are written into it) with a random locator."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    locator_for(data)
    return data


def test_the_term_pushes_g_b_only_and_is_an_exact_zero_when_off(dataset_with_locator, tmp_path):
    on = tiny_trainer(dataset_with_locator, tmp_path / "on", eye_consistency=1.0)
    off = tiny_trainer(dataset_with_locator, tmp_path / "off")
    batch = next(iter(torch.utils.data.DataLoader(on.dataset, batch_size=1)))
    targets = on.eye_consistency.targets(batch["B_index"], batch["B_crop"])
    assert targets.shape == (1, 1, 8, 8) and len(peaks(targets)[0]) == 2  # the person's two eyes
    losses_on = on.train_step(batch["A"], batch["B"], targets)
    losses_off = off.train_step(batch["A"], batch["B"])
    assert losses_on["G_B_eyes"] > 0 and losses_off["G_B_eyes"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(on.G.G_B.parameters(), off.G.G_B.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(on.G.G_A.parameters(), off.G.G_A.parameters()))
    # the locator points and never learns
    state = {k: v.clone() for k, v in on.eye_consistency.locator.state_dict().items()}
    on.train_step(batch["A"], batch["B"], targets)
    assert all(torch.equal(v, on.eye_consistency.locator.state_dict()[k]) for k, v in state.items())


def test_a_run_with_the_term_trains_resumes_exactly_and_refuses_a_refitted_locator(dataset_with_locator, tmp_path):
    from tests.training.conftest import TINY_TRAIN

    def train(out, *extra):
        return main(["train", "--data", str(dataset_with_locator), "--out", str(out), *TINY_TRAIN, *extra])

    straight, halves = tmp_path / "straight", tmp_path / "halves"
    assert train(straight, "--eye-consistency", "0.5") == 0
    assert train(halves, "--eye-consistency", "0.5", "--max-steps", "2") == 0
    assert train(halves, "--resume") == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(halves / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for key in a["G_B"]:
        assert torch.equal(a["G_B"][key], b["G_B"][key])
    with (straight / "losses.csv").open() as handle:
        assert all(float(row["G_B_eyes"]) > 0 for row in csv.DictReader(handle))
    torch.manual_seed(1)  # fitted again: another head
    save_locator(EyeLocator(LocatorConfig(hidden=8, size=32)), dataset_with_locator / LOCATOR_FILE, {})
    with pytest.raises(ValueError, match="eye locator"):
        from simpsonize.training.config import TrainConfig
        from simpsonize.training.trainer import Trainer

        state = torch.load(halves / "checkpoint.pt", weights_only=False)
        Trainer(TrainConfig.from_dict(state["config"]), device="cpu", num_workers=0).load_state_dict(state)


def test_clear_errors(dataset_with_locator, tmp_path, capsys):
    with pytest.raises(ValueError, match="locator was fitted|fitted on 32 px"):
        tiny_trainer(dataset_with_locator, tmp_path / "a", size=36, eye_consistency=1.0)
    (dataset_with_locator / LOCATOR_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="simpsonize eye-locator --data"):
        tiny_trainer(dataset_with_locator, tmp_path / "b", eye_consistency=1.0)
    (dataset_with_locator / "dataset.json").write_text(json.dumps({"framing": {"mode": "head"}}))
    assert main(["eye-locator", "--data", str(dataset_with_locator)]) == 2
    assert "eyes framing" in capsys.readouterr().out
    assert main(["eye-locator", "--data", str(tmp_path / "nothing")]) == 2
    assert "simpsonize prepare" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--eye-consistency must be 0"):
        tiny_trainer(dataset_with_locator, tmp_path / "c", eye_consistency=-1.0)

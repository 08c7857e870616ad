"""`train --landmark-maps`: G_B (real -> Simpsons) trains on face-part heatmaps it draws itself
(`simpsonize/model/landmark_maps.py`); its snapshots, checkpoint, average, `test` and `export` carry that through, a
resume continues exactly, and without the flag nothing changes.

The tiny dataset's noise images give the mesh no face (all-zero maps): enough for the plumbing. Where real maps
matter, the astronaut's face is used."""

import json
import shutil

import numpy as np
import pytest
import torch

from simpsonize.cli import main
from simpsonize.model.landmark_maps import GROUPS, MAP_CHANNELS, LandmarkGuidedGenerator
from simpsonize.model.networks import GeneratorConfig, ResnetGenerator
from simpsonize.model.weights import load_generator, read_metadata
from tests.training.conftest import TINY_TRAIN, assert_same_networks, tiny_trainer

OPTIONS = ["--landmark-maps", "--ema-decay", "0.9", "--snapshot-every", "2"]
TINY = GeneratorConfig(ngf=4, n_blocks=1)


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, *OPTIONS, *extra])


def loss_rows(run):
    import csv

    with (run / "losses.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def first_conv(state: dict) -> torch.Tensor:
    return next(v for v in state.values() if v.dim() == 4)


@pytest.fixture(scope="module")
def landmark_run(tiny_dataset, tmp_path_factory):
    """2 of the tiny schedule's 4 steps with --landmark-maps (and the average, and a snapshot at step 2)."""
    run = tmp_path_factory.mktemp("landmarks") / "run"
    assert train(tiny_dataset, run, "--max-steps", "2") == 0
    return run


def test_the_run_saves_a_landmark_guided_g_b_without_the_mesh(landmark_run):
    state = torch.load(landmark_run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and state["config"]["landmark_maps"] is True
    assert json.loads((landmark_run / "config.json").read_text())["landmark_maps"] is True
    # G_B's first convolution takes the photo and its maps; G_A is unchanged
    assert first_conv(state["G_B"]).shape[1] == 3 + MAP_CHANNELS and first_conv(state["G_A"]).shape[1] == 3
    # exactly a generator's weights, nothing of the face mesh, in the checkpoint and the average alike
    generator_keys = set(ResnetGenerator(TINY).state_dict())
    assert set(state["G_B"]) == set(state["G_A"]) == generator_keys
    assert {key for key in state["G_ema"] if key != "n_averaged"} == {
        f"module.{name}.{key}" for name in ("G_A", "G_B") for key in generator_keys
    }

    for folder in ("step_0000002", "step_0000002_ema"):  # the trained weights and their average
        path = landmark_run / "snapshots" / folder / "G_B.safetensors"
        assert read_metadata(path)["landmark_maps"] == list(GROUPS)
        g_b, _ = load_generator(path)
        assert isinstance(g_b, LandmarkGuidedGenerator) and g_b.config.input_nc == 3 + MAP_CHANNELS
        assert g_b(torch.rand(1, 3, 32, 32) * 2 - 1).shape == (1, 3, 32, 32)  # called on photos alone
        g_a, meta = load_generator(path.with_name("G_A.safetensors"))
        assert type(g_a) is ResnetGenerator and "landmark_maps" not in meta
    snapshot, _ = load_generator(landmark_run / "snapshots" / "step_0000002" / "G_B.safetensors")
    for key, value in state["G_B"].items():
        assert torch.equal(snapshot.state_dict()[key], value)


def test_test_and_export_run_on_it(landmark_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(landmark_run, run)
    assert main(["test", "--run", str(run), "--direction", "both", "--no-sanity"]) == 0  # from checkpoint.pt
    metrics = json.loads((run / "test" / "step_0000002" / "metrics.json").read_text())
    assert metrics["BtoA"]["count"] == 3 and 0 < metrics["BtoA"]["cycle_l1"] < 1
    assert main(["test", "--run", str(run), "--all-snapshots", "--no-sanity"]) == 0  # from the snapshots' files

    out = tmp_path / "weights" / "lmk.safetensors"
    assert main(["export", "--run", str(run), "--out", str(out), "--precision", "auto"]) == 0
    meta = read_metadata(out)
    assert meta["landmark_maps"] == list(GROUPS) and meta["training"]["config"]["landmark_maps"] is True
    assert meta["fp16_psnr_db"] is not None  # measured on a copy of the same kind: landmark-guided
    served, _ = load_generator(out)
    assert isinstance(served, LandmarkGuidedGenerator)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    for key, value in state["G_B"].items():
        assert torch.allclose(served.state_dict()[key], value, atol=1e-2)

    from simpsonize.training.checkpoint import load_run_generators

    g_a, g_b, info = load_run_generators(run)
    assert isinstance(g_b, LandmarkGuidedGenerator) and type(g_a) is ResnetGenerator and info["step"] == 2


def test_a_resumed_landmark_run_continues_exactly(landmark_run, tiny_dataset, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(tiny_dataset, straight) == 0
    shutil.copytree(landmark_run, resumed)
    assert main(["train", "--out", str(resumed), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0
    a = torch.load(straight / "checkpoint.pt", weights_only=False)
    b = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4 and b["config"]["landmark_maps"] is True
    assert_same_networks(a, b, ("G_A", "G_B", "D_A", "D_B", "G_ema"))
    assert loss_rows(resumed) == loss_rows(straight)


def test_init_from_refuses_a_run_whose_g_b_takes_other_inputs(landmark_run, tiny_dataset, tmp_path):
    from simpsonize.training.checkpoint import read_source

    plain = tiny_trainer(tiny_dataset, tmp_path / "plain").config
    with pytest.raises(ValueError, match="landmark_maps True \\(this run False\\)"):
        read_source(landmark_run, plain)
    guided = tiny_trainer(tiny_dataset, tmp_path / "guided", landmark_maps=True).config
    assert read_source(landmark_run, guided)["step"] == 2


def test_g_b_translates_each_batch_on_its_own_maps_and_learns_from_them(astronaut):
    from simpsonize.model.detection import detect_faces
    from simpsonize.model.face import align_crop
    from simpsonize.training.networks import Generators

    pixels = np.asarray(align_crop(astronaut, detect_faces(astronaut)[0], 128).image.convert("RGB"), np.float32)
    photo = torch.from_numpy(pixels / 127.5 - 1).permute(2, 0, 1)[None]
    torch.manual_seed(0)
    G = Generators(TINY, landmark_maps=True)
    assert type(G.G_A) is ResnetGenerator and isinstance(G.G_B, LandmarkGuidedGenerator)
    drawn = G.G_B.maps_on(photo.device)(photo)
    assert drawn.amax() > 0.5  # the mesh found the astronaut's face
    out = G(torch.rand_like(photo) * 2 - 1, photo, identity=True)
    plain = ResnetGenerator(G.G_B.config)
    plain.load_state_dict(G.G_B.state_dict())
    torch.testing.assert_close(out["fake_A"], plain(torch.cat([photo, drawn], dim=1)))
    out["fake_A"].abs().mean().backward()
    assert first_conv(dict(G.G_B.named_parameters())).grad[:, 3:].abs().sum() > 0  # the map channels' weights learn


def test_off_nothing_changes(tiny_dataset, tmp_path):
    """The default: both generators plain, their weights files without maps (that such a run trains to the bit as
    before the flag existed is test_train.py's test of a run folder of an earlier trainer)."""
    from simpsonize.training.config import TrainConfig

    assert TrainConfig(data="", out="").landmark_maps is False
    assert TrainConfig.from_dict({"data": "", "out": ""}).landmark_maps is False  # a run from before the flag
    t = tiny_trainer(tiny_dataset, tmp_path / "run")
    assert type(t.G.G_A) is type(t.G.G_B) is ResnetGenerator
    assert t.G.G_B.config == t.config.generator_config() and t.G.G_B.config.input_nc == 3
    folder = t.save_snapshot()
    assert "landmark_maps" not in read_metadata(folder / "G_B.safetensors")

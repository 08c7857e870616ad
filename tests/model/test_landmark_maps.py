"""Landmark heatmaps as generator input (`simpsonize/model/landmark_maps.py`): where they land on a real face, what a
face the mesh does not find gets, and that a weights file trained with them serves them itself."""

import numpy as np
import pytest
import torch
from PIL import Image

from simpsonize.model.detection import detect_faces
from simpsonize.model.face import align_crop
from simpsonize.model.framing import EYE_LINE
from simpsonize.model.landmark_maps import GROUPS, MAP_CHANNELS, LandmarkGuidedGenerator, LandmarkMaps, with_maps
from simpsonize.model.networks import GeneratorConfig, ResnetGenerator
from simpsonize.model.weights import load_generator, read_metadata, save_generator

SIZE = 128
TINY = GeneratorConfig(ngf=4, n_blocks=1, upsampling="resize_conv", input_nc=3 + MAP_CHANNELS)


def as_input(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def maps():
    return LandmarkMaps()


@pytest.fixture(scope="module")
def astronaut_crop(astronaut):
    """The generator's own crop of the astronaut: eyes level on the eye line, face edge to edge."""
    return as_input(align_crop(astronaut, detect_faces(astronaut)[0], SIZE).image)


def centroid(heat: torch.Tensor) -> tuple[float, float]:
    ys, xs = torch.meshgrid(torch.arange(heat.shape[0]) + 0.5, torch.arange(heat.shape[1]) + 0.5, indexing="ij")
    return float((heat * xs).sum() / heat.sum()), float((heat * ys).sum() / heat.sum())


def test_each_part_lands_where_it_is_in_the_generators_crop(maps, astronaut_crop):
    drawn = maps(astronaut_crop)
    assert drawn.shape == (1, MAP_CHANNELS, SIZE, SIZE) and 0 <= drawn.min() and drawn.max() <= 1
    parts = {name: centroid(drawn[0, k]) for k, name in enumerate(GROUPS)}
    # the crop puts the eyes on its eye line, one each side of the middle (measured: 42.0 px against 42.2)
    assert parts["eyes"][1] == pytest.approx(EYE_LINE * SIZE, abs=2)
    right_eye, left_eye = centroid(drawn[0, 0, :, : SIZE // 2]), centroid(drawn[0, 0, :, SIZE // 2 :])
    assert right_eye[0] + SIZE // 2 + left_eye[0] == pytest.approx(SIZE, abs=4)  # symmetric about the middle
    assert left_eye[0] + SIZE // 2 - right_eye[0] > 0.35 * SIZE  # two eyes apart, not one blob
    assert right_eye[1] == pytest.approx(left_eye[1], abs=2)
    # top to bottom, as on a face, and all near the middle column
    heights = [parts[name][1] for name in ("brows", "eyes", "nose", "mouth")]
    assert heights == sorted(heights) and heights[-1] - heights[0] > 0.4 * SIZE
    assert all(abs(x - SIZE / 2) < 0.05 * SIZE for x, _ in parts.values())


def test_a_face_the_mesh_does_not_find_gets_blank_maps(maps, coffee):
    cup = as_input(coffee.resize((SIZE, SIZE)))
    assert maps.points(cup)[1].item() < 0.5
    assert maps(cup).abs().sum() == 0


def test_a_batch_gives_what_each_crop_gives_alone_and_no_gradient_flows_through_the_maps(maps, astronaut_crop, coffee):
    batch = torch.cat([astronaut_crop, as_input(coffee.resize((SIZE, SIZE)))])
    together = maps(batch)
    alone = torch.cat([maps(batch[:1]), maps(batch[1:])])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)
    crops = batch.clone().requires_grad_(True)
    joined = with_maps(crops, maps)
    assert joined.shape == (2, 3 + MAP_CHANNELS, SIZE, SIZE)
    joined.sum().backward()
    assert torch.equal(crops.grad, torch.ones_like(crops))  # only the photo's own channels pass a gradient back


def test_weights_trained_with_maps_serve_them_and_refuse_another_set_of_parts(maps, astronaut_crop, tmp_path):
    torch.manual_seed(0)
    guided = LandmarkGuidedGenerator(TINY, maps).eval()
    # a generator's parameters and state dict, nothing of the mesh: it is not trained, saved or averaged
    assert guided.state_dict().keys() == ResnetGenerator(TINY).state_dict().keys()
    path = save_generator(tmp_path / "g.safetensors", guided, input_size=SIZE)
    assert read_metadata(path)["landmark_maps"] == list(GROUPS)
    served, _ = load_generator(path)
    assert isinstance(served, LandmarkGuidedGenerator)
    plain = ResnetGenerator(TINY).eval()
    plain.load_state_dict(guided.state_dict())
    with torch.no_grad():
        expected = plain(torch.cat([astronaut_crop, maps(astronaut_crop)], dim=1))
        torch.testing.assert_close(served(astronaut_crop), expected)
        # the maps matter: the same generator on blank maps draws something else
        blank = plain(torch.cat([astronaut_crop, torch.zeros(1, MAP_CHANNELS, SIZE, SIZE)], 1))
        assert (blank - expected).abs().max() > 1e-3

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no iterator)
        meta = handle.metadata()
    meta["simpsonize"] = meta["simpsonize"].replace('"face_oval"', '"ears"')
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata=meta)
    from simpsonize.model.errors import WeightsError

    with pytest.raises(WeightsError, match="landmark maps"):
        load_generator(tmp_path / "other.safetensors")


def test_the_simpsonizer_serves_such_weights_in_fp32_and_bf16(maps, astronaut, tmp_path):
    from simpsonize.model.pipeline import Simpsonizer

    path = save_generator(tmp_path / "g.safetensors", LandmarkGuidedGenerator(TINY, maps), input_size=SIZE)
    for precision in ("fp32", "auto"):
        result = Simpsonizer(weights=path, device="cpu", precision=precision)(astronaut)
        assert result.face_count == 1 and result.faces[0].image.mode == "RGB"

import json
from pathlib import Path

import pytest
import torch

from simpsonize.model.errors import MissingWeights, WeightsError
from simpsonize.model.networks import GeneratorConfig, ResnetGenerator, init_weights
from simpsonize.model.weights import infer_config, load_generator, read_metadata, save_generator

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "reference_cyclegan_generator_keys.json"


def small_generator(seed=0, **kw):
    torch.manual_seed(seed)
    return init_weights(
        ResnetGenerator(GeneratorConfig(ngf=kw.pop("ngf", 4), n_blocks=kw.pop("n_blocks", 2), **kw))
    ).eval()


@pytest.mark.parametrize("upsampling", ["transpose", "resize_conv"])
def test_safetensors_round_trip_gives_identical_outputs(tmp_path, upsampling):
    generator = small_generator(upsampling=upsampling)
    path = save_generator(tmp_path / "g.safetensors", generator, input_size=64, extra={"training": {"steps": 7}})
    loaded, metadata = load_generator(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(generator(x), loaded(x))
    assert metadata["generator"]["upsampling"] == upsampling
    assert metadata["input_size"] == 64 and metadata["training"] == {"steps": 7}
    assert read_metadata(path)["architecture"] == "resnet_generator"


def test_fp16_storage_is_half_the_size_and_close(tmp_path):
    generator = small_generator(ngf=8)
    full = save_generator(tmp_path / "f.safetensors", generator, input_size=64)
    half = save_generator(tmp_path / "h.safetensors", generator, input_size=64, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, metadata = load_generator(half)
    assert metadata["dtype"] == "float16"
    assert next(loaded.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (generator(x) - loaded(x)).abs().max() < 0.01


def reference_state(variant: str, running_stats: bool, prefix: str = "") -> dict:
    shapes = json.loads(FIXTURE.read_text())[variant]
    torch.manual_seed(1)
    state = {prefix + k: torch.randn(shape) * 0.02 for k, shape in shapes.items()}
    if running_stats:  # what PyTorch < 0.4 saved for InstanceNorm layers
        for key, shape in shapes.items():
            if key.endswith(".bias") and len(shape) == 1 and "conv_block.1" in key:
                norm = prefix + key.replace("conv_block.1.bias", "conv_block.2")
                state[f"{norm}.running_mean"] = torch.zeros(shape)
                state[f"{norm}.running_var"] = torch.ones(shape)
                state[f"{norm}.num_batches_tracked"] = torch.tensor(0)
    return state


@pytest.mark.parametrize("running_stats", [False, True])
@pytest.mark.parametrize("variant,ngf,n_blocks", [("resnet_9blocks_ngf64", 64, 9), ("resnet_6blocks_ngf32", 32, 6)])
def test_reference_pth_loads_with_inferred_config(tmp_path, variant, ngf, n_blocks, running_stats):
    state = reference_state(variant, running_stats)
    path = tmp_path / "latest_net_G_B.pth"
    torch.save(state, path)
    generator, metadata = load_generator(path)
    assert (generator.config.ngf, generator.config.n_blocks, generator.config.upsampling) == (
        ngf,
        n_blocks,
        "transpose",
    )
    assert torch.equal(generator.state_dict()["model.1.weight"], state["model.1.weight"])
    assert "reference" in metadata["source"]


def test_reference_pth_saved_from_dataparallel_loads(tmp_path):
    path = tmp_path / "latest_net_G.pth"
    torch.save(reference_state("resnet_6blocks_ngf32", False, prefix="module."), path)
    generator, _ = load_generator(path)
    assert generator.config.n_blocks == 6


def test_infer_config_recognises_resize_conv():
    state = small_generator(ngf=4, n_blocks=3, upsampling="resize_conv").state_dict()
    assert infer_config(state) == GeneratorConfig(ngf=4, n_blocks=3, upsampling="resize_conv")


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(MissingWeights, match="nothere.safetensors does not exist"):
        load_generator(tmp_path / "nothere.safetensors")


@pytest.mark.parametrize(
    "name,content", [("bad.safetensors", b"\x00garbage" * 10), ("bad.pth", b"not a zip file at all")]
)
def test_corrupt_file_gives_a_clear_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError) as info:
        load_generator(path)
    assert name in str(info.value)


def test_truncated_safetensors_is_reported(tmp_path):
    path = save_generator(tmp_path / "t.safetensors", small_generator(), input_size=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="t.safetensors"):
        load_generator(path)


def test_state_dict_of_another_network_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(WeightsError, match="not a ResNet generator"):
        load_generator(path)


def test_weights_trained_with_landmark_maps_are_refused_in_a_sentence(tmp_path):
    """`train --landmark-maps` left after its ablation lost: a G_B that took five face-part heatmaps beside the photo
    (3 + 5 input channels) is refused, not served as a plain generator."""
    parts = ["eyes", "brows", "nose", "mouth", "face_oval"]  # what such files recorded
    path = save_generator(
        tmp_path / "G_B.safetensors", small_generator(input_nc=8), input_size=64, extra={"landmark_maps": parts}
    )
    with pytest.raises(WeightsError) as refused:
        load_generator(path)
    assert str(refused.value) == (
        f"{path} was trained with --landmark-maps, removed after its ablation lost (docs/experiments.md); "
        "commit e674807 still serves it."
    )

import numpy as np
import pytest

import simpsonize.model.pipeline as pipeline
from simpsonize.model.errors import MissingWeights, NoFaceFound
from simpsonize.model.pipeline import Simpsonizer


@pytest.fixture(scope="module")
def simpsonizer(tiny_weights):
    return Simpsonizer(weights=tiny_weights, device="cpu", num_threads=1)


def test_result_is_at_least_256_with_crop_and_timings(simpsonizer, astronaut):
    result = simpsonizer(astronaut)
    assert result.image.size == (256, 256) and result.image.mode == "RGB"
    assert result.face_crop.size == (256, 256)
    assert set(result.timings) == {"detect", "generate", "composite", "total"}
    assert all(v >= 0 for v in result.timings.values())
    summary = result.to_dict()
    assert summary["face"]["face"]["box"] and summary["size"] == [256, 256]


def test_generator_output_differs_from_the_input(simpsonizer, astronaut):
    result = simpsonizer(astronaut)
    assert result.image.tobytes() != result.face_crop.tobytes()


def test_batch_reports_failures_in_place(simpsonizer, astronaut, coffee):
    results = simpsonizer.simpsonize_batch([astronaut, coffee, astronaut])
    assert isinstance(results[1], NoFaceFound)
    assert results[0].image.tobytes() == results[2].image.tobytes()


def test_weights_are_loaded_once_not_per_call(tiny_weights, astronaut, monkeypatch):
    calls = []
    real = pipeline.load_generator
    monkeypatch.setattr(pipeline, "load_generator", lambda *a, **k: calls.append(a) or real(*a, **k))
    s = Simpsonizer(weights=tiny_weights, device="cpu", num_threads=1)
    for _ in range(3):
        s(astronaut)
    assert len(calls) == 1


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(MissingWeights, match="does not exist"):
        Simpsonizer(weights=tmp_path / "none.safetensors", device="cpu")


def test_warm_up_runs_detector_and_generator(tiny_weights, monkeypatch):
    s = Simpsonizer(weights=tiny_weights, device="cpu", num_threads=1)
    detected, batches = [], []
    real_detect = pipeline.detect_faces
    monkeypatch.setattr(
        pipeline, "detect_faces", lambda image, *a, **k: detected.append(image.size) or real_detect(image, *a, **k)
    )
    hook = s.generator.register_forward_hook(
        lambda module, inputs, output: batches.append((tuple(inputs[0].shape), tuple(output.shape)))
    )
    try:
        s.warm_up()  # a blank image has no face: warming up must not raise
    finally:
        hook.remove()
    size = s.input_size
    assert detected == [(size, size)]  # MTCNN ran once, on an image of the generator's input size
    assert batches and batches[0] == ((1, 3, size, size), (1, 3, size, size))  # the generator ran on one image
    assert all(shape[1:] == (3, size, size) for shape, _ in batches)


def test_serving_crops_with_the_framing_the_weights_were_trained_with(tmp_path, astronaut):
    """Train and serve must crop alike: the framing travels in the weights' metadata."""
    from simpsonize.model.face import Framing
    from simpsonize.model.networks import GeneratorConfig, ResnetGenerator
    from simpsonize.model.weights import save_generator

    generator = ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=1))
    loose = tmp_path / "loose.safetensors"
    save_generator(loose, generator, input_size=64, extra={"framing": {"scale": 3.0, "eye_line": 0.42}})
    plain = tmp_path / "plain.safetensors"
    save_generator(plain, generator, input_size=64)
    with_framing = Simpsonizer(weights=loose, device="cpu", num_threads=1)
    without = Simpsonizer(weights=plain, device="cpu", num_threads=1)
    assert with_framing.framing == Framing(3.0, 0.42) and without.framing == Framing()
    assert with_framing(astronaut).crop.side == pytest.approx(without(astronaut).crop.side * 3.0 / 2.3, rel=1e-6)


def test_many_photos_at_once_match_one_by_one_and_keep_failures_in_place(simpsonizer, astronaut, coffee):
    """MTCNN runs batched over photos of one size and the generator over all crops; each slot is its own photo's."""
    from PIL import ImageOps

    photos = [astronaut, coffee.resize(astronaut.size), ImageOps.mirror(astronaut), coffee]
    results = simpsonizer.simpsonize_many(photos)
    assert isinstance(results[1], NoFaceFound) and isinstance(results[3], NoFaceFound)
    for photo, result in ((photos[0], results[0]), (photos[2], results[2])):
        alone = simpsonizer(photo)
        assert set(result.timings) == {"detect", "generate", "composite", "total"}
        assert result.crop.face.box == pytest.approx(alone.crop.face.box, abs=1e-3)
        for batched, single in ((result.face_crop, alone.face_crop), (result.image, alone.image)):
            difference = np.abs(np.asarray(batched, dtype=int) - np.asarray(single, dtype=int))
            assert difference.max() <= 4 and difference.mean() < 0.1  # batched MTCNN: landmarks move ~1e-4 px


def test_the_generator_gives_each_crop_the_same_output_in_a_batch(simpsonizer, astronaut):
    from PIL import ImageOps

    crop = simpsonizer(astronaut).crop.image
    crops = [crop, ImageOps.mirror(crop), crop.rotate(5)]
    batched = simpsonizer.translate(crops)
    for crop_batched, crop_alone in zip(batched, [simpsonizer.translate([c])[0] for c in crops]):
        # Not bit-exact: oneDNN picks other kernels for a batch of 3 than for 1 on some CPUs (AMX Xeon: one level,
        # in 0.02 % of the values). Any leak between the crops of a batch moves whole regions by many levels.
        difference = np.abs(np.asarray(crop_batched, dtype=int) - np.asarray(crop_alone, dtype=int))
        assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())


def test_psnr_is_measured_on_the_generators_range():
    import math

    import torch

    a = torch.zeros(1, 3, 4, 4)
    assert pipeline.psnr(a, a) == math.inf
    # [-1, 1] is a range of 2: an error of 1 % of it (0.02) is 40 dB, whichever side it is measured from
    assert pipeline.psnr(a, a + 0.02) == pytest.approx(40.0, abs=0.01)
    assert pipeline.psnr(a + 0.02, a) == pytest.approx(40.0, abs=0.01)


def test_bf16_is_served_only_within_40_db_of_fp32(tiny_weights, monkeypatch):
    import math

    from simpsonize.model.errors import SimpsonizeError

    x = pipeline.check_input(64)
    assert x.shape == (2, 3, 64, 64) and x.min() >= -1 and x.max() <= 1
    assert pipeline.psnr(x, x) == math.inf and 0 < pipeline.psnr(x, x * 0.9) < 40
    assert Simpsonizer(tiny_weights, device="cpu", num_threads=1, precision="auto").bf16_psnr is None  # CPU: fp32
    checked = Simpsonizer(tiny_weights, device="cpu", num_threads=1, precision="bf16")
    assert checked.precision == ("bf16" if checked.bf16_psnr >= 40 else "fp32")
    if checked.precision == "bf16":  # what it serves stays within the promise
        fp32 = checked.generator(x)
        assert pipeline.psnr(fp32, checked.generate(x)) >= 40
    monkeypatch.setattr(pipeline, "BF16_MIN_PSNR", math.inf)  # a generator no bf16 run is close enough for
    assert Simpsonizer(tiny_weights, device="cpu", num_threads=1, precision="bf16").precision == "fp32"
    with pytest.raises(SimpsonizeError, match="precision"):
        Simpsonizer(tiny_weights, device="cpu", precision="fp16")


def test_detector_runs_on_the_generators_own_gpu():
    # A worker started with --device cuda:1 used to build MTCNN on cuda:0, beside another worker's model.
    import torch

    assert pipeline.detector_device_for(torch.device("cuda:1")) == "cuda:1"
    assert pipeline.detector_device_for(torch.device("cuda")) == "cuda"
    assert pipeline.detector_device_for(torch.device("cpu")) == "cpu"

"""The worker's PNGs are cheap to encode but stay lossless: the download is exactly the model's output."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def test_the_result_png_holds_exactly_the_models_pixels(tiny_weights, astronaut_jpeg):
    from model.pipeline import Simpsonizer
    from worker.jobs import simpsonize_bytes

    model = Simpsonizer(tiny_weights, device="cpu", num_threads=1)
    expected = model.simpsonize(astronaut_jpeg)
    output = simpsonize_bytes(astronaut_jpeg, model)
    for png, image in ((output.image_png, expected.image), (output.face_png, expected.face_crop)):
        decoded = Image.open(io.BytesIO(png))
        assert decoded.format == "PNG"
        assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(image))


def test_the_encode_benchmark_compares_lossless_and_lossy_formats(astronaut):
    from benchmarks.encode_formats import measure

    rows = {name: (seconds, size, lossless) for name, seconds, size, lossless in measure(astronaut.resize((64, 64)), 1)}
    assert all(rows[f"PNG level {level}"][2] for level in range(1, 7))
    assert rows["WebP lossless"][2] and not rows["JPEG q90"][2]
    assert rows["JPEG q90"][1] < rows["PNG level 6"][1] <= rows["PNG level 1"][1]

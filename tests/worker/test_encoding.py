"""The worker's result PNG is cheap to encode but stays lossless: the download is exactly the model's output. The
face crop, a preview, is a JPEG close to the crop."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def test_the_result_png_holds_exactly_the_models_pixels(tiny_weights, astronaut_jpeg):
    from simpsonize.imaging import png_bytes
    from simpsonize.model.pipeline import Simpsonizer
    from simpsonize.worker.jobs import simpsonize_bytes

    model = Simpsonizer(tiny_weights, device="cpu", num_threads=1)
    expected = model.simpsonize(astronaut_jpeg)
    output = simpsonize_bytes(astronaut_jpeg, model)
    decoded = Image.open(io.BytesIO(output.image_png))
    assert decoded.format == "PNG"
    assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(expected.image))
    crop = Image.open(io.BytesIO(output.face_jpeg))
    assert crop.format == "JPEG" and crop.size == expected.face_crop.size
    error = np.asarray(crop.convert("RGB"), dtype=np.float64) - np.asarray(expected.face_crop, dtype=np.float64)
    psnr = 10 * np.log10(255**2 / np.mean(error**2))
    assert psnr > 38, psnr  # 45.9 dB with the shipped model (README "Capacity"); a broken encode is far below
    assert len(output.face_jpeg) < len(png_bytes(expected.face_crop, 1)) / 3


def test_the_encode_benchmark_compares_lossless_and_lossy_formats(astronaut):
    from simpsonize.bench.encode_formats import measure

    rows = {name: (seconds, size, lossless) for name, seconds, size, lossless in measure(astronaut.resize((64, 64)), 1)}
    assert all(rows[f"PNG level {level}"][2] for level in range(1, 7))
    assert rows["WebP lossless"][2] and not rows["JPEG q90"][2]
    assert rows["JPEG q90"][1] < rows["PNG level 6"][1] <= rows["PNG level 1"][1]

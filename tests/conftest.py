"""Fixtures shared by every test folder: real photos that ship with scikit-image, tiny generator weights."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

TINY_INPUT_SIZE = 64


@pytest.fixture(scope="session")
def astronaut() -> Image.Image:
    """Eileen Collins, public domain; one face, box around x 181-268, y 62-172 in the 512x512 image."""
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="session")
def coffee() -> Image.Image:
    """A cup of coffee: no face."""
    from skimage import data

    return Image.fromarray(data.coffee())


@pytest.fixture(scope="session")
def astronaut_jpeg(astronaut) -> bytes:
    buffer = io.BytesIO()
    astronaut.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def coffee_jpeg(coffee) -> bytes:
    buffer = io.BytesIO()
    coffee.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A real (untrained, seeded) generator small enough for fast tests: ngf 4, 1 block, 64x64 input."""
    import torch

    from simpsonize.model.networks import GeneratorConfig, ResnetGenerator, init_weights
    from simpsonize.model.weights import save_generator

    torch.manual_seed(0)
    generator = init_weights(ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=1, upsampling="resize_conv")))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    return save_generator(path, generator, input_size=TINY_INPUT_SIZE, extra={"note": "untrained test weights"})

"""The weights `make run` serves: present, documented, and they really Simpsonize (yellow skin)."""

import numpy as np
import pytest

from simpsonize.cli import main
from simpsonize.model.weights import DEFAULT_WEIGHTS, read_metadata


def test_default_weights_ship_with_a_model_card():
    assert DEFAULT_WEIGHTS.is_file()
    assert DEFAULT_WEIGHTS.stat().st_size < 25 * 1024 * 1024
    meta = read_metadata(DEFAULT_WEIGHTS)
    assert meta["direction"] == "BtoA"
    assert "non-commercial" in meta["licence"]
    assert meta["metrics"]["BtoA"]["domain_score"] >= 0.9
    card = (DEFAULT_WEIGHTS.parent / "README.md").read_text()
    assert "non-commercial" in card and str(meta["training"]["steps"]) in card.replace(",", "")


@pytest.mark.timeout(300)
def test_predict_without_weights_flag_uses_the_shipped_model(astronaut, tmp_path):
    from PIL import Image

    photo = tmp_path / "astronaut.jpg"
    astronaut.save(photo)
    out = tmp_path / "simpson.png"
    assert main(["predict", str(photo), "--output", str(out), "--device", "cpu"]) == 0
    result = np.asarray(Image.open(out).convert("RGB"), dtype=float)
    assert result.shape == (256, 256, 3)
    centre = result[64:192, 64:192].reshape(-1, 3).mean(axis=0)
    red, green, blue = centre
    # Simpsons yellow: strong red and green, little blue (the real skin has blue close to green)
    assert red > 150 and green > 130 and blue < 0.6 * green, centre

"""The C2ST must be able to fail: same-distribution sets score ~0.5, clearly different sets ~1.0."""

import pytest
import torch

from simpsonize.training.c2st import c2st, sanity_sets, two_sample_accuracy, yellow_tint


def blobs(n, colour, seed, size=32):
    """Noisy images around one colour; a disc in the middle if ``colour`` says so."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor(colour).view(1, 3, 1, 1).float()
    return (base + 0.3 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)


def test_same_distribution_is_near_chance_and_different_is_near_one():
    same = c2st(blobs(40, (0.5, 0.3, -0.8), 0), blobs(40, (0.5, 0.3, -0.8), 1), seeds=(0, 1), steps=40)
    different = c2st(blobs(40, (0.5, 0.3, -0.8), 0), blobs(40, (-0.2, -0.2, -0.2), 1), seeds=(0, 1), steps=40)
    assert same.mean < 0.7
    assert different.mean > 0.95
    assert len(different.accuracies) == 2 and different.n == 40


def test_result_reports_mean_and_spread():
    result = c2st(blobs(20, (0, 0, 0), 0), blobs(20, (0.9, 0.9, 0.9), 1), seeds=(0, 1, 2), steps=20)
    row = result.to_dict()
    assert row["c2st"] == pytest.approx(sum(row["c2st_per_seed"]) / 3, abs=1e-3)
    assert row["c2st_std"] >= 0 and row["n_per_set"] == 20


def test_too_few_images_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2"):
        two_sample_accuracy(blobs(1, (0, 0, 0), 0), blobs(5, (0, 0, 0), 1), seed=0)


def test_yellow_tint_turns_photos_yellow_but_keeps_their_shading():
    grey = torch.linspace(-1, 1, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16).clone()
    tinted = yellow_tint(grey, strength=1.0)
    bright = tinted[0, :, 0, -1]
    assert bright[0] > bright[2] + 1.0 and bright[1] > bright[2] + 1.0  # red and green high, blue low
    assert tinted[0, 0, 0, -1] > tinted[0, 0, 0, 0]  # brighter photo pixels stay brighter


def test_sanity_rows_cover_the_four_checks():
    others, photos = blobs(4, (0.8, 0.6, -0.8), 0, 64), blobs(4, (0.2, 0.0, -0.1), 1, 64)
    rows = sanity_sets(others, photos, blobs(4, (0.8, 0.6, -0.8), 2, 64))
    assert len(rows) == 4
    assert any("zoomed" in name for name in rows) and any("yellow" in name for name in rows)
    assert all(images.shape == (4, 3, 64, 64) for images in rows.values())


def test_jitter_placement_moves_each_image_its_own_way_and_repeats_per_seed():
    from simpsonize.training.c2st import jitter_placement

    images = torch.zeros(4, 3, 32, 32)
    images[:, :, 14:18, 14:18] = 1.0  # a dot at the same place in every image
    assert torch.allclose(jitter_placement(images, 0, shift=0.0, scale=0.0), images, atol=1e-5)
    moved = jitter_placement(images, 0)
    assert torch.equal(moved, jitter_placement(images, 0)) and not torch.equal(moved, jitter_placement(images, 1))
    centres = [(m[0] > 0.5).nonzero().float().mean(0) for m in moved]
    assert len({tuple(c.round().tolist()) for c in centres}) > 1  # no longer all in one place
    assert all(((c - 15.5).abs() <= 0.08 * 32 + 1).all() for c in centres)  # within the shift asked for


def test_zoomed_sanity_row_is_cropped_from_the_stored_faces_so_it_keeps_their_sharpness(tmp_path):
    """At a 64 px model the zoomed row used to be a zoom of 64 px images, an upscale: the classifier saw its blur
    (0.98 instead of about 0.75). Cropped from the stored image before the one resize, it is as sharp as the
    reference, and it still shows less of the crop."""
    import numpy as np
    from PIL import Image

    from simpsonize.training.quality_pool import QualityPool

    files = []
    for i in range(3):
        face = np.zeros((256, 256, 3), np.uint8)
        face[:, 128:] = 255  # one sharp vertical edge through the centre
        face[:8, :8] = (255, 0, 0)  # a red corner mark, outside the central 75 %
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(face).save(files[-1])
    pool = QualityPool(files, files, files, tmp_path)

    def steepest(x):
        return float((x[..., 1:] - x[..., :-1]).abs().amax())

    for size in (64, 128):
        reference, zoomed = pool.others(size), pool.others_zoomed(size)
        assert zoomed.shape == reference.shape
        assert steepest(zoomed) >= 0.95 * steepest(reference)
        centre = reference[..., size // 8 : size - size // 8, size // 8 : size - size // 8]
        upscaled = torch.nn.functional.interpolate(centre, size=(size, size), mode="bilinear", align_corners=False)
        assert steepest(upscaled) < 0.85 * steepest(reference)  # why: zooming the resized faces blurs the edge

        def red(x):
            return float((x[:, 0] - x[:, 1]).amax())  # red minus green: only the corner mark is red

        assert red(reference) > 1.0 and red(zoomed) < 0.1  # the corner is cropped away
    rows = sanity_sets(pool.others(64), pool.photos(64), pool.others_zoomed(64))
    assert torch.equal(rows["Simpsons faces zoomed to 75 % of their crop"], pool.others_zoomed(64))

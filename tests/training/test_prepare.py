import json

import numpy as np
from PIL import Image

from simpsonize.cli import main
from simpsonize.training.prepare import split_count


def test_split_rule_is_ten_percent_capped_at_25():
    assert split_count(1208, 0.1, 25) == 25
    assert split_count(120, 0.1, 25) == 12
    assert split_count(10, 0.1, 25) == 1
    assert split_count(1, 0.1, 25) == 0  # never the whole domain
    assert split_count(100, 0.3, 50) == 30


def test_prepare_crops_real_faces_skips_faceless_and_duplicates(tmp_path, astronaut, coffee):
    simpsons = tmp_path / "simpsons" / "cropped"
    simpsons.mkdir(parents=True)
    for i in range(12):
        colour = (255, 217, 15 + i * 10)
        Image.new("RGB", (200 if i % 2 else 180, 200), colour).save(simpsons / f"{i}.png")
    real = tmp_path / "real"
    real.mkdir()
    for i, angle in enumerate((0, 4, -4, 8)):  # four distinct photos of one face
        astronaut.rotate(angle, resample=Image.BICUBIC).save(real / f"face{i}.jpg", quality=92)
    (real / "copy.jpg").write_bytes((real / "face0.jpg").read_bytes())  # exact duplicate
    coffee.save(real / "coffee.jpg")  # no face

    out = tmp_path / "dataset"
    code = main(
        [
            "prepare",
            "--simpsons",
            str(tmp_path / "simpsons"),
            "--real",
            str(real),
            "--out",
            str(out),
            "--size",
            "64",
            "--test-fraction",
            "0.25",
            "--test-max",
            "2",
        ]
    )
    assert code == 0
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["real"] == {"found": 6, "duplicates": 1, "unreadable": 0, "no_face": 1, "outside": 0, "kept": 4}
    assert summary["counts"] == {"trainA": 10, "testA": 2, "trainB": 3, "testB": 1}
    crops = sorted((out / "trainB").iterdir()) + sorted((out / "testB").iterdir())
    for path in crops:
        with Image.open(path) as im:
            assert im.size == (64, 64)
            # a tight face crop is mostly skin, not the photo's dark background and suit
            assert np.asarray(im, float).mean() > 90
    preview = Image.open(out / "preview.png")
    assert preview.width > 0 and preview.height > 0


def test_prepare_refuses_a_missing_folder(tmp_path, capsys):
    assert (
        main(["prepare", "--simpsons", str(tmp_path / "nope"), "--real", str(tmp_path), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "is not a folder" in capsys.readouterr().out


def test_test_photos_can_be_cropped_again_at_another_framing(tmp_path, astronaut):
    """Models trained on different framings are measured on the same photos, each cropped as it was trained."""
    from simpsonize.model.face import Framing
    from simpsonize.training.quality_pool import load_pool

    simpsons, real = tmp_path / "simpsons", tmp_path / "real"
    simpsons.mkdir()
    real.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 64), (255, 217, 15 + 20 * i)).save(simpsons / f"{i}.png")
        astronaut.rotate(3 * i, resample=Image.BICUBIC).save(real / f"face{i}.jpg", quality=92)
    out = tmp_path / "dataset"
    assert (
        main(
            [
                "prepare",
                "--simpsons",
                str(simpsons),
                "--real",
                str(real),
                "--out",
                str(out),
                "--size",
                "64",
                "--test-fraction",
                "0.5",
                "--test-max",
                "2",
            ]
        )
        == 0
    )
    info = json.loads((out / "dataset.json").read_text())
    assert len(info["test_sources"]["testB"]) == 2 and info["framing"] == Framing().to_dict()
    pool = load_pool(out)
    same = pool.photos_framed(Framing().to_dict(), 64)
    assert same.shape == (2, 3, 64, 64) and (same - pool.photos(64)).abs().max() < 1e-6
    loose = pool.photos_framed(Framing(3.0, 0.42).to_dict(), 64)
    assert loose.shape == same.shape and (loose - same).abs().mean() > 0.05


def test_hold_out_from_keeps_the_earlier_test_photos_when_the_data_grows(tmp_path, astronaut):
    """More Simpsons faces must not move the real test pool: both datasets' models are scored on the same faces."""
    simpsons, real = tmp_path / "simpsons", tmp_path / "real"
    simpsons.mkdir()
    real.mkdir()
    for i in range(8):
        Image.new("RGB", (64, 64), (255, 217, 15 + 20 * i)).save(simpsons / f"{i}.png")
    for i in range(4):
        astronaut.rotate(3 * i, resample=Image.BICUBIC).save(real / f"face{i}.jpg", quality=92)
    old = tmp_path / "old"
    assert (
        main(
            [
                "prepare",
                "--simpsons",
                str(simpsons),
                "--real",
                str(real),
                "--out",
                str(old),
                "--size",
                "64",
                "--test-fraction",
                "0.5",
                "--test-max",
                "2",
            ]
        )
        == 0
    )
    for i in range(8, 20):  # the data grows: the seeded shuffle alone would now hold out other photos
        Image.new("RGB", (64, 64), (200, 100, 5 * i)).save(simpsons / f"{i}.png")
    new = tmp_path / "new"
    assert (
        main(
            [
                "prepare",
                "--simpsons",
                str(simpsons),
                "--real",
                str(real),
                "--out",
                str(new),
                "--size",
                "64",
                "--faces-from",
                str(old / "faces.json"),
                "--hold-out-from",
                str(old),
            ]
        )
        == 0
    )
    before = json.loads((old / "dataset.json").read_text())["test_sources"]
    after = json.loads((new / "dataset.json").read_text())
    assert sorted(after["test_sources"]["testB"]) == sorted(before["testB"])
    assert sorted(after["test_sources"]["testA"]) == sorted(before["testA"])
    assert after["counts"] == {"trainA": 18, "testA": 2, "trainB": 2, "testB": 2}


def test_hold_out_from_refuses_a_folder_without_a_dataset(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    assert (
        main(
            [
                "prepare",
                "--simpsons",
                str(tmp_path / "s"),
                "--real",
                str(tmp_path / "s"),
                "--out",
                str(tmp_path / "o"),
                "--hold-out-from",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "dataset.json" in capsys.readouterr().out

"""`simpsonize predict` as a user runs it: real exit codes and messages. Three tests run it as a subprocess, the way a
user does; the other failure paths call `simpsonize.cli.main` in this process, where a fresh torch import does not
cost each of them three seconds."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def predict(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "simpsonize.cli", "predict", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def predict_here(capsys):
    """`simpsonize predict ARGS` through `main` in this process: the exit code (argparse's SystemExit included) and
    what it printed, shaped like `subprocess.run`'s answer."""
    from simpsonize.cli import main

    def run(*args):
        try:
            code = main(["predict", *map(str, args)])
        except SystemExit as exit_:
            code = exit_.code
        printed = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=printed.out, stderr=printed.err)

    return run


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut, coffee):
    folder = tmp_path_factory.mktemp("photos")
    astronaut.save(folder / "astronaut.jpg")
    coffee.save(folder / "coffee.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    return folder


def test_one_photo_writes_one_png(photos, tiny_weights, tmp_path):
    out = tmp_path / "me.png"
    done = predict(photos / "astronaut.jpg", "--output", out, "--weights", tiny_weights, "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert Image.open(out).size == (256, 256)
    assert "wrote" in done.stdout


def test_no_face_exits_non_zero_with_the_reason(predict_here, photos, tiny_weights, tmp_path):
    done = predict_here(photos / "coffee.jpg", "--output", tmp_path / "x.png", "--weights", tiny_weights)
    assert done.returncode == 1
    assert "coffee.jpg: No face found" in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_unreadable_file_is_named(predict_here, photos, tiny_weights, tmp_path):
    done = predict_here(photos / "broken.png", "--output", tmp_path / "x.png", "--weights", tiny_weights)
    assert done.returncode == 1
    assert "broken.png" in done.stderr and "not a readable image" in done.stderr


def test_folder_writes_the_good_ones_and_names_each_failure(photos, tiny_weights, tmp_path):
    out = tmp_path / "out"
    done = predict(photos, "--output", out, "--weights", tiny_weights)
    assert done.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png"]
    assert "coffee.jpg" in done.stderr and "broken.png" in done.stderr
    assert "simpsonized 1 of 3 photos" in done.stdout


def test_missing_weights_is_one_sentence_and_exit_2(photos, tmp_path):
    done = predict(photos / "astronaut.jpg", "--output", tmp_path / "x.png", "--weights", tmp_path / "none.safetensors")
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_corrupt_weights_exit_2_without_traceback(predict_here, photos, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk" * 100)
    done = predict_here(photos / "astronaut.jpg", "--output", tmp_path / "x.png", "--weights", bad)
    assert done.returncode == 2 and "bad.safetensors" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("size", [(3, 3), (2000, 30)], ids=["3x3", "2000x30"])
def test_a_photo_too_small_for_the_detector_is_a_sentence_not_a_traceback(predict_here, tiny_weights, tmp_path, size):
    """MTCNN raised a bare ValueError (torch.cat of an empty pyramid) on photos a few pixels wide."""
    photo = tmp_path / "tiny.png"
    Image.new("RGB", size, (120, 100, 90)).save(photo)
    done = predict_here(photo, "--output", tmp_path / "x.png", "--weights", tiny_weights, "--device", "cpu")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "ValueError" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"failed: {photo}: ") and line.endswith(".")
    assert ("too small" in line) == (min(size) < 20)
    assert not (tmp_path / "x.png").exists()


def test_composite_writes_the_photo_and_each_face_beside_it(astronaut, tiny_weights, tmp_path, capsys):
    """In this process (simpsonize.cli.main), not a subprocess: the exit paths are covered above, and a fresh torch
    import would cost this test most of its time."""
    from skimage import data

    from simpsonize.cli import main

    pair = Image.new("RGB", (1536, 768))
    pair.paste(astronaut.resize((768, 768), Image.LANCZOS), (0, 0))
    pair.paste(Image.fromarray(data.camera()).convert("RGB").resize((768, 768), Image.LANCZOS), (768, 0))
    pair.save(tmp_path / "pair.jpg", quality=92)
    out = tmp_path / "out" / "pair_simpson.png"
    assert (
        main(
            [
                "predict",
                str(tmp_path / "pair.jpg"),
                "--output",
                str(out),
                "--composite",
                "--weights",
                str(tiny_weights),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert Image.open(out).size == (1536, 768)
    assert [Image.open(out.with_name(f"pair_simpson_face{n}.png")).size for n in (1, 2)] == [(256, 256)] * 2
    assert "2 faces" in capsys.readouterr().out

"""Every documented error exit of `simpsonize predict/train/test/export/prepare`: a non-zero code and one sentence
starting with "error:" (or, for a photo that fails among others, "failed: PATH: ..."), never a traceback.

In-process through ``simpsonize.cli.main`` (a raised exception fails the test, so "no traceback" is checked too); the
predict subprocess tests are in tests/model/test_predict_cli.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simpsonize.cli import main

TINY = [
    "--size",
    "32",
    "--ngf",
    "4",
    "--n-blocks",
    "1",
    "--ndf",
    "4",
    "--epochs",
    "1",
    "--epochs-decay",
    "0",
    "--steps-per-epoch",
    "1",
    "--device",
    "cpu",
    "--num-workers",
    "0",
    "--precision",
    "fp32",
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for split in ("trainA", "trainB", "testA", "testB"):
        (root / split).mkdir()
        for i in range(2):
            Image.fromarray(np.full((40, 40, 3), 60 + 80 * i, np.uint8)).save(root / split / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def run(dataset, tmp_path_factory) -> Path:
    """A one-step run without snapshots."""
    folder = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--data", str(dataset), "--out", str(folder), *TINY]) == 0
    return folder


def one_error(text: str) -> str:
    """The single `error: ...` line of ``text``, which must be a sentence."""
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    assert lines[0].rstrip().endswith("."), lines[0]
    assert "Traceback" not in text
    return lines[0]


def check(argv: list[str], capsys, code: int, *words: str, stream: str = "out") -> str:
    assert main(argv) == code
    captured = capsys.readouterr()
    line = one_error(getattr(captured, stream))
    for word in words:
        assert word in line, line
    return line


# -- predict: 2 when nothing can run, 1 when a photo fails -----------------------------------------------------------


def test_predict_without_images_exits_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    check(
        ["predict", str(tmp_path / "empty"), "--output", str(tmp_path / "out")],
        capsys,
        2,
        "no images found",
        stream="err",
    )


def test_predict_of_several_photos_into_one_png_exits_2(tmp_path, capsys):
    check(
        ["predict", str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "--output", str(tmp_path / "o.png")],
        capsys,
        2,
        "--output to be a folder",
        stream="err",
    )
    assert not (tmp_path / "o.png").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_predict_on_cuda_without_a_gpu_exits_2(tmp_path, tiny_weights, capsys):
    check(
        [
            "predict",
            str(tmp_path / "a.jpg"),
            "--output",
            str(tmp_path / "o.png"),
            "--weights",
            str(tiny_weights),
            "--device",
            "cuda",
        ],
        capsys,
        2,
        "CUDA was requested",
        "--device cpu",
        stream="err",
    )


def test_predict_of_a_missing_photo_exits_1_naming_it(tmp_path, tiny_weights, capsys):
    missing = tmp_path / "nowhere.jpg"
    assert (
        main(
            [
                "predict",
                str(missing),
                "--output",
                str(tmp_path / "o.png"),
                "--weights",
                str(tiny_weights),
                "--device",
                "cpu",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"failed: {missing}: {missing} does not exist." in err and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


# -- train -----------------------------------------------------------------------------------------------------------


def test_train_resume_without_a_checkpoint_exits_2(tmp_path, capsys):
    check(["train", "--out", str(tmp_path / "r"), "--resume"], capsys, 2, "--resume", "checkpoint.pt does not exist")


def test_train_a_new_run_without_data_exits_2(tmp_path, capsys):
    check(["train", "--out", str(tmp_path / "r")], capsys, 2, "--data is required")


def test_train_with_a_size_not_a_multiple_of_4_exits_2(dataset, tmp_path, capsys):
    check(
        ["train", "--data", str(dataset), "--out", str(tmp_path / "r"), *TINY[2:], "--size", "30"],
        capsys,
        2,
        "multiple of 4",
    )


def test_train_on_a_folder_without_images_exits_2(tmp_path, capsys):
    check(
        ["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "r"), *TINY],
        capsys,
        2,
        "no images",
        "simpsonize prepare",
    )
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_train_with_an_unknown_diff_augment_policy_exits_2(dataset, tmp_path, capsys):
    """This was a ValueError traceback."""
    check(
        ["train", "--data", str(dataset), "--out", str(tmp_path / "r"), *TINY, "--diff-augment", "color,blur"],
        capsys,
        2,
        "--diff-augment",
        "blur",
        "color, translation, cutout",
    )


def test_train_over_an_existing_run_exits_2_and_leaves_it(dataset, run, capsys):
    before = (run / "checkpoint.pt").read_bytes()
    check(["train", "--data", str(dataset), "--out", str(run), *TINY], capsys, 2, "already holds a run", "--resume")
    assert (run / "checkpoint.pt").read_bytes() == before


# -- test ------------------------------------------------------------------------------------------------------------


def test_test_without_run_or_weights_exits_2(capsys):
    check(["test"], capsys, 2, "--run", "--weights")


def test_test_of_a_folder_that_is_no_run_exits_2(tmp_path, capsys):
    check(["test", "--run", str(tmp_path)], capsys, 2, "not a training run")


def test_test_on_data_without_test_splits_exits_2(run, tmp_path, capsys):
    check(["test", "--run", str(run), "--data", str(tmp_path)], capsys, 2, "no testA/ testB/ splits")


def test_test_all_snapshots_without_snapshots_exits_2(run, capsys):
    check(["test", "--run", str(run), "--all-snapshots"], capsys, 2, "no snapshots", "--snapshot-every")


def test_test_of_a_missing_snapshot_exits_2(run, capsys):
    """This was a MissingWeights traceback."""
    check(["test", "--run", str(run), "--snapshot", "step_0000009"], capsys, 2, "step_0000009", "does not exist")


def test_test_weights_without_data_or_file_exits_2(dataset, tmp_path, capsys):
    check(["test", "--weights", str(tmp_path / "w.safetensors")], capsys, 2, "--weights needs --data")
    check(
        ["test", "--weights", str(tmp_path / "w.safetensors"), "--data", str(dataset)],
        capsys,
        2,
        "w.safetensors does not exist",
    )


# -- export ----------------------------------------------------------------------------------------------------------


def test_export_to_a_file_that_is_not_safetensors_exits_2(run, tmp_path, capsys):
    check(["export", "--run", str(run), "--out", str(tmp_path / "w.pt")], capsys, 2, ".safetensors")
    assert not (tmp_path / "w.pt").exists()


@pytest.mark.parametrize("sources", [[], ["--run", "R", "--from-reference", "R"]], ids=["neither", "both"])
def test_export_needs_exactly_one_source(run, tmp_path, capsys, sources):
    argv = [str(run) if part == "R" else part for part in sources]
    check(["export", *argv, "--out", str(tmp_path / "w.safetensors")], capsys, 2, "exactly one of")


def test_export_of_a_folder_that_is_no_run_exits_2(tmp_path, capsys):
    """This said "[Errno 2] No such file or directory: '.../config.json'"."""
    check(
        ["export", "--run", str(tmp_path / "nothing"), "--out", str(tmp_path / "w.safetensors")],
        capsys,
        2,
        "not a training run",
    )


def test_export_of_a_missing_snapshot_or_unranked_best_exits_2(run, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    check(["export", "--run", str(run), "--snapshot", "step_0000009", "--out", str(out)], capsys, 2, "does not exist")
    check(["export", "--run", str(run), "--best", "--out", str(out)], capsys, 2, "--all-snapshots")
    assert not out.exists()


def test_export_from_a_reference_folder_without_weights_exits_2(tmp_path, capsys):
    check(
        ["export", "--from-reference", str(tmp_path), "--out", str(tmp_path / "w.safetensors")],
        capsys,
        2,
        "latest_net_G_B.pth",
    )


# -- prepare ---------------------------------------------------------------------------------------------------------


def prepare_args(tmp_path: Path, *extra: str, simpsons: Path | None = None) -> list[str]:
    for name in ("simpsons", "real"):
        (tmp_path / name).mkdir(exist_ok=True)
    return [
        "prepare",
        "--simpsons",
        str(simpsons or tmp_path / "simpsons"),
        "--real",
        str(tmp_path / "real"),
        "--out",
        str(tmp_path / "out"),
        *extra,
    ]


def test_prepare_of_a_missing_folder_exits_2(tmp_path, capsys):
    check(prepare_args(tmp_path, simpsons=tmp_path / "nope"), capsys, 2, "nope is not a folder")


def test_prepare_with_a_test_fraction_out_of_range_exits_2(tmp_path, capsys):
    check(prepare_args(tmp_path, "--test-fraction", "1"), capsys, 2, "--test-fraction")


def test_prepare_with_missing_cached_faces_exits_2(tmp_path, capsys):
    check(prepare_args(tmp_path, "--faces-from", str(tmp_path / "faces.json")), capsys, 2, "faces.json does not exist")


def test_prepare_with_a_domain_left_empty_exits_1(tmp_path, capsys):
    check(prepare_args(tmp_path), capsys, 1, "no training images")
    assert not [p for split in ("trainA", "trainB") for p in (tmp_path / "out" / split).glob("*") if p.is_file()]

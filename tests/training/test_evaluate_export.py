import json

import pytest
import torch

from simpsonize.cli import main
from simpsonize.model.weights import load_generator, read_metadata
from simpsonize.training.snapshot_ranking import pick_best, read_snapshot_table, write_snapshot_table
from tests.training.conftest import TINY_TRAIN


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", str(tiny_dataset), "--out", str(run), *TINY_TRAIN, "--snapshot-every", "2"]) == 0
    return run


def test_test_writes_gallery_grids_and_metrics(trained_run, capsys):
    assert main(["test", "--run", str(trained_run), "--direction", "both"]) == 0
    out = trained_run / "test" / "step_0000004"
    metrics = json.loads((out / "metrics.json").read_text())
    for direction in ("AtoB", "BtoA"):
        assert metrics[direction]["count"] == 3
        assert 0 < metrics[direction]["cycle_l1"] < 1
        assert 0 <= metrics[direction]["domain_score"] <= 1
        assert 0 <= metrics[direction]["domain_score_colour"] <= 1
        assert len(list((out / direction).glob("*.png"))) == 3
    # the two tiny domains differ in colour, so even this classifier separates them
    assert metrics["classifier_test_accuracy"] >= 0.8 and metrics["classifier_colour_test_accuracy"] >= 0.8
    index = (out / "index.html").read_text()
    assert "BtoA/0.png" in index and "domain score" in index
    assert "classifier accuracy" in capsys.readouterr().out


def test_one_direction_only(trained_run):
    assert main(["test", "--run", str(trained_run), "--direction", "BtoA"]) == 0
    metrics = json.loads((trained_run / "test" / "step_0000004" / "metrics.json").read_text())
    assert "BtoA" in metrics and "AtoB" not in metrics


def test_all_snapshots_ranks_by_c2st_with_a_gallery_of_the_same_faces(trained_run, capsys):
    assert main(["test", "--run", str(trained_run), "--all-snapshots"]) == 0
    best = json.loads((trained_run / "test" / "best_snapshot.json").read_text())
    assert best["snapshot"] in ("step_0000002", "step_0000004")
    assert 0 <= best["c2st"] <= 1 and len(best["c2st_per_seed"]) == 3 and best["cycle_l1"] > 0
    out = capsys.readouterr().out
    assert "C2ST" in out and "untranslated photos" in out  # the sanity rows are in the same report
    index = (trained_run / "test" / "index.html").read_text()
    assert "snapshots_gallery.png" in index and "Sanity rows" in index
    table = read_snapshot_table(trained_run / "test" / "snapshots.csv")
    assert [row["snapshot"] for row in table] == ["step_0000002", "step_0000004"]
    assert next(row for row in table if row["snapshot"] == best["snapshot"]) == best  # the CSV holds the numbers
    from PIL import Image

    grid = Image.open(trained_run / "test" / "snapshots_gallery.png")
    assert grid.height == 3 * 32  # the test faces, then one row per snapshot


def test_snapshot_table_holds_numbers_and_one_column_per_seed(tmp_path):
    import csv

    rows = [
        {
            "snapshot": "step_0000002",
            "step": 2,
            "c2st": 0.8125,
            "c2st_std": 0.0123,
            "c2st_per_seed": [0.8, 0.81, 0.8275],
            "n_per_set": 40,
            "flat": 0.25,
            "cycle_l1": 0.0712,
        },
        {
            "snapshot": "step_0000004",
            "step": None,
            "c2st": 1.0,
            "c2st_std": 0.0,
            "c2st_per_seed": [1.0, 1.0, 1.0],
            "n_per_set": 40,
            "flat": 0.5,
        },
    ]  # no G_A: no cycle L1
    path = write_snapshot_table(tmp_path / "snapshots.csv", rows)
    with path.open(newline="") as handle:
        header, first, second = list(csv.reader(handle))
    assert "c2st_per_seed" not in header and header[-3:] == ["c2st_seed_1", "c2st_seed_2", "c2st_seed_3"]
    assert first[header.index("c2st_seed_2")] == "0.81" and "[" not in ",".join(first)  # no Python list repr
    assert second[header.index("cycle_l1")] == "" and second[header.index("step")] == ""
    assert read_snapshot_table(path) == [rows[0], {**rows[1], "cycle_l1": None}]


def test_pick_best_takes_lowest_c2st_then_cycle_loss_and_keeps_the_person_recoverable():
    rows = [
        {"snapshot": "a", "c2st": 0.80, "cycle_l1": 0.05},
        {"snapshot": "b", "c2st": 0.705, "cycle_l1": 0.07},
        {"snapshot": "c", "c2st": 0.70, "cycle_l1": 0.075},
        {"snapshot": "d", "c2st": 0.60, "cycle_l1": 0.20},
    ]  # looks more like the show, but lost the person
    assert pick_best(rows)["snapshot"] == "b"  # c and b tie within 0.01; b keeps more of the person
    assert pick_best(rows, margin=0.0)["snapshot"] == "c"
    assert pick_best([rows[3]])["snapshot"] == "d"  # nothing recoverable: still names one


def test_weights_mode_measures_served_files_in_one_run(trained_run, tiny_dataset, tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    assert main(["export", "--run", str(trained_run), "--out", str(weights)]) == 0
    capsys.readouterr()
    assert main(["test", "--weights", str(weights), "--weights", str(weights), "--data", str(tiny_dataset)]) == 0
    report = json.loads((tiny_dataset / "c2st_weights.json").read_text())
    first, second = report["weights"]
    assert first["c2st_per_seed"] == second["c2st_per_seed"]  # same pool, same seeds: the same measure
    assert 0 <= first["flat"] == second["flat"] <= 1 and 0 <= list(report["flat_reference"].values())[0] <= 1
    assert 0 <= first["c2st_placement_blind"] <= 1
    from PIL import Image

    # the same faces for every model: one row of inputs (both are cropped alike), then one row per model
    picture = Image.open(tiny_dataset / "c2st_weights.png")
    assert picture.height == 3 * 128 and picture.width > 3 * 128
    assert 0 <= first["eyes"] <= 1 and first["eyes_show"] == second["eyes_show"]
    out = capsys.readouterr().out
    assert "C2ST" in out and "| eyes | eyes, show |" in out
    assert main(["test", "--weights", str(tmp_path / "missing.safetensors"), "--data", str(tiny_dataset)]) == 2


def test_more_seeds_give_more_classifiers_and_fewer_than_three_are_refused(trained_run, tiny_dataset, tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    assert main(["export", "--run", str(trained_run), "--out", str(weights)]) == 0
    assert main(["test", "--weights", str(weights), "--data", str(tiny_dataset), "--no-sanity", "--seeds", "5"]) == 0
    row = json.loads((tiny_dataset / "c2st_weights.json").read_text())["weights"][0]
    assert len(row["c2st_per_seed"]) == 5
    capsys.readouterr()
    modes = (["--weights", str(weights), "--data", str(tiny_dataset)], ["--run", str(trained_run), "--all-snapshots"])
    for mode in modes:
        assert main(["test", *mode, "--seeds", "2"]) == 2
        assert "--seeds must be at least 3" in capsys.readouterr().out
    assert (
        main(["test", "--run", str(trained_run), "--all-snapshots", "--last", "1", "--no-sanity", "--seeds", "4"]) == 0
    )
    assert len(json.loads((trained_run / "test" / "best_snapshot.json").read_text())["c2st_per_seed"]) == 4
    assert main(["test", "--run", str(trained_run), "--direction", "BtoA", "--no-sanity", "--seeds", "4"]) == 0
    metrics = json.loads((trained_run / "test" / "step_0000004" / "metrics.json").read_text())
    assert len(metrics["BtoA"]["c2st_per_seed"]) == 4


def test_export_then_predict_uses_it(trained_run, tiny_dataset, tmp_path, astronaut):
    import shutil

    from PIL import Image

    from simpsonize.model.pipeline import Simpsonizer

    # the run's dataset, with the record `prepare` writes: its counts and framing must reach the weights
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    counts = {"trainA": 6, "trainB": 6, "testA": 3, "testB": 3}
    framing = {"scale": 3.0, "eye_line": 0.42}
    (data / "dataset.json").write_text(json.dumps({"counts": counts, "framing": framing, "real": {"no_face": 2}}))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": str(data)}))

    out = tmp_path / "weights" / "tiny.safetensors"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    meta = read_metadata(out)
    assert meta["direction"] == "BtoA" and meta["training"]["steps"] == 4
    assert meta["training"]["images"] == 4  # one process, batch 1
    assert "non-commercial" in meta["licence"]
    assert {"AtoB", "BtoA"} <= set(meta["metrics"])
    assert meta["data"]["counts"] == counts and meta["data"]["skipped"] == {"real_without_face": 2}
    assert meta["framing"] == framing
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    generator, _ = load_generator(out)
    for key, value in state["G_B"].items():
        assert torch.allclose(generator.state_dict()[key], value, atol=1e-2)

    photo = tmp_path / "astronaut.jpg"
    astronaut.save(photo)
    assert (
        main(["predict", str(photo), "--output", str(tmp_path / "me.png"), "--weights", str(out), "--device", "cpu"])
        == 0
    )
    written = Image.open(tmp_path / "me.png").convert("RGB")
    served = Simpsonizer(weights=out, device="cpu")
    assert served.framing.scale == 3.0  # the exported framing is the one the served model crops with
    assert written.tobytes() == served(photo).image.tobytes()  # predict ran the exported generator


def test_images_seen_counts_every_ddp_process_in_each_session():
    from simpsonize.training.export import images_seen

    # 100 steps alone, then resumed under torchrun with 2 processes; exported at step 150
    sessions = [{"start_step": 100, "world_size": 2}, {"start_step": 0, "world_size": 1}]
    assert images_seen(sessions, 150, batch_size=1) == 100 + 2 * 50
    assert images_seen(sessions, 150, batch_size=4) == 4 * (100 + 2 * 50)
    assert images_seen(sessions, 80, batch_size=1) == 80  # a snapshot from before the resume
    # the 2-process session stopped before its first checkpoint; one process went on from the same step
    crashed = [
        {"start_step": 0, "world_size": 1},
        {"start_step": 100, "world_size": 2},
        {"start_step": 100, "world_size": 1},
    ]
    assert images_seen(crashed, 150, batch_size=1) == 150
    assert images_seen([], 30, batch_size=2) == 60  # a run from before sessions.json


def test_export_best_needs_a_ranking_first(trained_run, tmp_path, capsys):
    fresh = trained_run.parent / "unranked"
    fresh.mkdir(exist_ok=True)
    (fresh / "config.json").write_text((trained_run / "config.json").read_text())
    assert main(["export", "--run", str(fresh), "--best", "--out", str(tmp_path / "w.safetensors")]) == 2
    assert "--all-snapshots" in capsys.readouterr().out


def test_export_from_reference_folder(tmp_path):
    from simpsonize.model.networks import GeneratorConfig, ResnetGenerator

    reference = tmp_path / "ref"
    reference.mkdir()
    generator = ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=6))
    state = generator.state_dict()
    state["model.2.running_mean"] = torch.zeros(8)  # old checkpoints carry these
    torch.save(state, reference / "latest_net_G_B.pth")
    out = tmp_path / "imported.safetensors"
    assert main(["export", "--from-reference", str(reference), "--out", str(out)]) == 0
    loaded, meta = load_generator(out)
    assert loaded.config == GeneratorConfig(ngf=8, n_blocks=6)
    assert "latest_net_G_B.pth" in meta["source"]


def test_export_writes_an_examples_grid_for_the_model_card(trained_run, tmp_path):
    from PIL import Image

    out = tmp_path / "card.safetensors"
    assert main(["export", "--run", str(trained_run), "--out", str(out)]) == 0
    grid = Image.open(tmp_path / "card_examples.png")
    assert grid.height == 2 * 32  # before row, after row (tiny run: 32 px)


def test_grayscale_classifier_cannot_see_colour():
    from simpsonize.training.domain_classifier import DomainClassifier

    classifier = DomainClassifier(grayscale=True).eval()
    yellow = torch.zeros(1, 3, 32, 32)
    yellow[:, 0], yellow[:, 1], yellow[:, 2] = 0.9, 0.8, -0.9
    # same luma, different hue: identical verdicts
    luma = 0.299 * 0.9 + 0.587 * 0.8 + 0.114 * -0.9
    grey = torch.full((1, 3, 32, 32), luma)
    with torch.no_grad():
        assert torch.allclose(classifier(yellow), classifier(grey), atol=1e-5)


def _stored_dtypes(path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {str(handle.get_slice(key).get_dtype()) for key in handle.keys()}


@pytest.mark.parametrize(("measured", "stored"), [(39.99, "F32"), (40.0, "F16"), (55.0, "F16"), (12.0, "F32")])
def test_export_stores_fp16_only_at_40_db_or_more(trained_run, tmp_path, monkeypatch, measured, stored):
    """--precision auto: fp16 when the fp16 weights reproduce the fp32 outputs at PSNR >= 40 dB, else fp32."""
    import simpsonize.training.export as export

    seen = []

    def fixed_psnr(generator, images):
        seen.append(tuple(images.shape))
        return measured

    monkeypatch.setattr(export, "fp16_psnr", fixed_psnr)
    out = tmp_path / "w.safetensors"
    assert main(["export", "--run", str(trained_run), "--out", str(out)]) == 0
    assert seen and seen[0][1:] == (3, 32, 32)  # measured on the run's test faces, at its size
    meta = read_metadata(out)
    assert meta["fp16_psnr_db"] == measured
    assert meta["dtype"] == ("float16" if stored == "F16" else "float32")
    assert _stored_dtypes(out) == {stored}
    generator, _ = load_generator(out)
    assert all(v.dtype == torch.float32 for v in generator.state_dict().values())  # served in fp32 either way


@pytest.mark.parametrize(("precision", "stored"), [("fp16", "F16"), ("fp32", "F32")])
def test_export_precision_flag_overrides_the_measure(trained_run, tmp_path, monkeypatch, precision, stored):
    import simpsonize.training.export as export

    monkeypatch.setattr(export, "fp16_psnr", lambda generator, images: 30.0 if precision == "fp16" else 60.0)
    out = tmp_path / "w.safetensors"
    assert main(["export", "--run", str(trained_run), "--out", str(out), "--precision", precision]) == 0
    assert _stored_dtypes(out) == {stored}


def test_fp16_psnr_measures_the_rounding_of_the_weights():
    from simpsonize.model.networks import GeneratorConfig, ResnetGenerator
    from simpsonize.training.export import fp16_psnr

    torch.manual_seed(0)
    generator = ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=1)).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    measured = fp16_psnr(generator, images)
    assert 40 < measured < float("inf")  # fp16 keeps ~3 decimal digits: close, not identical
    with torch.no_grad():  # weights fp16 holds exactly: rounding changes nothing
        for parameter in generator.parameters():
            parameter.copy_(parameter.half().float())
    assert fp16_psnr(generator, images) == float("inf")


def test_weights_mode_adds_cycle_l1_for_snapshots_and_writes_where_report_says(
    trained_run, tiny_dataset, tmp_path, capsys
):
    snapshot = sorted((trained_run / "snapshots").glob("step_*"))[-1] / "G_B.safetensors"
    served = tmp_path / "w.safetensors"
    assert main(["export", "--run", str(trained_run), "--out", str(served)]) == 0
    report = tmp_path / "compare" / "a.json"
    report.parent.mkdir()
    assert (
        main(
            [
                "test",
                "--weights",
                str(snapshot),
                "--weights",
                str(served),
                "--data",
                str(tiny_dataset),
                "--no-sanity",
                "--report",
                str(report),
            ]
        )
        == 0
    )
    from_snapshot, from_served = json.loads(report.read_text())["weights"]
    assert 0 < from_snapshot["cycle_l1"] < 1  # G_A lies beside a snapshot's G_B
    assert "cycle_l1" not in from_served  # a served file has no way back to the photo
    assert report.with_suffix(".png").is_file()
    capsys.readouterr()
    assert (
        main(
            [
                "test",
                "--weights",
                str(served),
                "--data",
                str(tiny_dataset),
                "--report",
                str(tmp_path / "missing" / "b.json"),
            ]
        )
        == 2
    )
    assert "must be a .json file in an existing folder" in capsys.readouterr().out
    assert main(["test", "--run", str(trained_run), "--report", str(report)]) == 2
    assert "--report is for --weights" in capsys.readouterr().out

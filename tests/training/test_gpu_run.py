"""The prepared H200 command, run for a few steps on the CPU with tiny data and a tiny generator."""

import json

from simpsonize.model.weights import load_generator
from tools.gpu_run import main

TINY = ["--size", "32", "--ngf", "4", "--n-blocks", "1", "--ndf", "4", "--batch-size", "2", "--device", "cpu",
        "--num-workers", "0", "--max-steps", "3", "--minutes", "5"]


def test_pack_train_merge_round_trip(tiny_dataset, tmp_path):
    pack = tmp_path / "pack"
    assert main(["pack", "--data", str(tiny_dataset), "--out", str(pack), "--size", "32", "--max-mib", "1"]) == 0
    info = json.loads((pack / "dataset.json").read_text())
    assert info["counts"] == {"trainA": 6, "trainB": 6, "testA": 3, "testB": 3}
    assert sum(p.stat().st_size for p in pack.rglob("*.jpg")) <= 2**20

    out = tmp_path / "OUT"
    assert main(["train", "--pack", str(pack), "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 3 and summary["config"]["batch_size"] == 2
    assert summary["config"]["ema_decay"] == 0.999 and summary["weights"] == "moving average, decay 0.999"
    returned = [p for p in out.rglob("*") if p.is_file()]
    # what the device tool brings back: at most 8 files, each under 16 MiB, no sub-folders
    assert len(returned) <= 8 and all(p.parent == out and p.stat().st_size < 16 * 2**20 for p in returned)
    assert {"samples.png", "losses.csv", "G_B.0.safetensors", "G_A.0.safetensors"} <= {p.name for p in returned}

    run = tmp_path / "run"
    assert main(["merge", str(out), "--out", str(run)]) == 0
    g_b, meta = load_generator(run / "snapshots" / "step_0000003_ema" / "G_B.safetensors")  # the average came back
    assert meta["input_size"] == 32 and meta["direction"] == "BtoA" and g_b.config.ngf == 4


def test_without_the_average_the_trained_weights_come_back(tiny_dataset, tmp_path):
    pack = tmp_path / "pack"
    assert main(["pack", "--data", str(tiny_dataset), "--out", str(pack), "--size", "32", "--max-mib", "1"]) == 0
    out = tmp_path / "OUT"
    assert main(["train", "--pack", str(pack), "--out", str(out), *TINY, "--ema-decay", "0", "--max-steps", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())["weights"] == "trained"
    run = tmp_path / "run"
    assert main(["merge", str(out), "--out", str(run)]) == 0
    assert [p.name for p in (run / "snapshots").iterdir()] == ["step_0000001"]


def test_shards_stay_under_the_return_limit(monkeypatch, tmp_path):
    import tools.gpu_run as gpu_run
    from simpsonize.model.networks import GeneratorConfig, ResnetGenerator

    monkeypatch.setattr(gpu_run, "MAX_RETURN_BYTES", 20_000)  # a tiny limit forces several shards
    generator = ResnetGenerator(GeneratorConfig(ngf=8, n_blocks=2))

    class Config:
        size = 32

    paths = gpu_run.save_shards(generator, tmp_path, "G_B", Config, None, 7)
    assert len(paths) > 1
    biggest_tensor = max(v.numel() * 2 for v in generator.state_dict().values())
    assert all(p.stat().st_size <= max(20_000, biggest_tensor) + 4096 for p in paths)


def test_the_gpu_command_passes_the_discriminator_options_r1_and_the_cycle_weights_on(tiny_dataset, tmp_path):
    pack = tmp_path / "pack"
    assert main(["pack", "--data", str(tiny_dataset), "--out", str(pack), "--size", "48", "--max-mib", "1"]) == 0
    out = tmp_path / "OUT"
    assert main(["train", "--pack", str(pack), "--out", str(out), *TINY, "--size", "48", "--d-scales", "2",
                 "--r1-gamma", "10", "--d-thumbnail", "8", "--cycle-surround", "0.2", "--max-steps", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["d_scales"] == 2 and summary["config"]["r1_gamma"] == 10 and summary["step"] == 1
    assert summary["config"]["d_thumbnail"] == 8 and summary["config"]["cycle_surround"] == 0.2
    losses = (out / "losses.csv").read_text().splitlines()
    header, row = losses[0].split(","), losses[1].split(",")
    assert float(row[header.index("D_B_coarse")]) > 0
    assert float(row[header.index("r1")]) > 0  # lazy R1 runs at step 0

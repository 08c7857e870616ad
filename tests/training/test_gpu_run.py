"""The prepared H200 command, run for a few steps on the CPU with tiny data and a tiny generator."""

import json

from simpsonize.model.weights import load_generator
from tools.gpu_run import main

TINY = [
    "--size",
    "32",
    "--ngf",
    "4",
    "--n-blocks",
    "1",
    "--ndf",
    "4",
    "--batch-size",
    "2",
    "--device",
    "cpu",
    "--num-workers",
    "0",
    "--max-steps",
    "3",
    "--minutes",
    "5",
]


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


def test_shards_of_a_landmark_maps_run_are_refused(tmp_path, capsys):
    """`--landmark-maps` left after its ablation lost: its G_B (3 + 5 input channels) must not merge as a plain one."""
    out = tmp_path / "OUT"
    out.mkdir()
    (out / "summary.json").write_text(json.dumps({"step": 1, "config": {"landmark_maps": True}}))
    assert main(["merge", str(out), "--out", str(tmp_path / "run")]) == 2
    said = capsys.readouterr().out
    assert "--landmark-maps" in said and "commit e674807 still merges it." in said
    assert not (tmp_path / "run").exists()


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


def test_the_gpu_command_takes_the_trainers_own_options_with_its_defaults_stated_once(tiny_dataset, tmp_path):
    """Built from the same TrainConfig fields as `simpsonize train`: an option added to the trainer reaches the GPU
    command without a second copy, and its defaults differ only where GPU_DEFAULTS says so."""
    import argparse

    import tools.gpu_run as gpu_run
    from simpsonize.training import train as train_command
    from simpsonize.training.config import TrainConfig

    def destinations(add) -> set[str]:
        parser = argparse.ArgumentParser()
        add(parser)
        return {action.dest for action in parser._actions} & set(TrainConfig.__dataclass_fields__)

    assert destinations(train_command.add_arguments) - destinations(gpu_run.add_train_arguments) == {
        "data",
        "sample_every",
        "snapshot_every",
        "checkpoint_minutes",
    }  # --pack is its data; it sets its cadence

    pack = tmp_path / "pack"
    assert main(["pack", "--data", str(tiny_dataset), "--out", str(pack), "--size", "32", "--max-mib", "1"]) == 0
    out = tmp_path / "OUT"
    given = {"lr_d": 1e-4, "lambda_identity": 0, "pool_size": 1, "channels_last": "off"}
    flags = [str(part) for name, value in given.items() for part in ("--" + name.replace("_", "-"), value)]
    assert main(["train", "--pack", str(pack), "--out", str(out), *TINY, *flags, "--max-steps", "1"]) == 0
    config = json.loads((out / "summary.json").read_text())["config"]
    assert {name: config[name] for name in given} == given
    defaults = TrainConfig(data="", out="").to_dict()
    tiny = {"size", "ngf", "n_blocks", "ndf", "batch_size"}  # TINY's
    changed = {name for name, value in config.items() if value != defaults[name]}
    assert changed - tiny - set(given) - set(gpu_run.NOT_OPTIONS_HERE) == set(gpu_run.GPU_DEFAULTS) - tiny
    assert all(config[name] == value for name, value in gpu_run.GPU_DEFAULTS.items() if name not in tiny)


def test_a_bad_trainer_option_is_refused_with_a_sentence_before_training(tiny_dataset, tmp_path, capsys):
    pack = tmp_path / "pack"
    assert main(["pack", "--data", str(tiny_dataset), "--out", str(pack), "--size", "32", "--max-mib", "1"]) == 0
    assert main(["train", "--pack", str(pack), "--out", str(tmp_path / "OUT"), *TINY, "--diff-augment", "blur"]) == 2
    assert "error: --diff-augment: unknown DiffAugment policy blur" in capsys.readouterr().out
    assert not (tmp_path / "OUT").exists()

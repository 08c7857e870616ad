"""PatchNCE (training/patchnce.py) and the one-sided objective it drives (`train --objective cut`)."""

import csv

import torch

from simpsonize.cli import main
from simpsonize.model.networks import GeneratorConfig, ResnetGenerator
from tests.training.conftest import TINY_TRAIN, assert_same_networks
from simpsonize.training.patchnce import (PatchHeads, encode, feature_layers, layer_channels, patch_nce_loss,
                               sample_positions)


def unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def test_nce_is_low_when_each_patch_matches_its_own_place_and_high_when_places_are_swapped():
    torch.manual_seed(0)
    keys = unit(torch.randn(2, 64, 16))
    aligned = patch_nce_loss(keys.clone(), keys)
    swapped = patch_nce_loss(keys[:, torch.randperm(64)], keys)
    assert aligned < 0.5 < 3.0 < swapped  # log(65) = 4.2 is chance


def test_nce_gives_no_gradient_to_the_keys():
    query = unit(torch.randn(1, 8, 4)).requires_grad_()
    key = unit(torch.randn(1, 8, 4)).requires_grad_()
    patch_nce_loss(query, key).backward()
    assert query.grad is not None and query.grad.abs().sum() > 0 and key.grad is None


def test_encode_returns_the_chosen_layers_as_the_full_network_computes_them():
    generator = ResnetGenerator(GeneratorConfig(ngf=4, n_blocks=4, upsampling="resize_conv")).eval()
    layers = feature_layers(generator)
    # padded pixels, two downsampling convolutions, first and middle residual blocks
    assert layers == (0, 4, 7, 10, 12)
    x = torch.randn(1, 3, 32, 32)
    features = encode(generator, x, layers)
    expected, h = [], x
    for index, layer in enumerate(generator.model):
        h = layer(h)
        if index in layers:
            expected.append(h)
    assert all(torch.equal(a, b) for a, b in zip(features, expected))
    assert layer_channels(generator, layers) == [3, 8, 16, 16, 16]


def test_heads_pick_the_same_places_for_query_and_key():
    torch.manual_seed(0)
    feature = torch.randn(1, 5, 6, 6)
    heads = PatchHeads([5], dim=8)
    positions = sample_positions([feature], patches=10)
    assert positions[0].unique().numel() == 10
    a, = heads([feature], positions)
    b, = heads([feature.clone()], positions)
    assert a.shape == (1, 10, 8) and torch.allclose(a, b) and torch.allclose(a.norm(dim=-1), torch.ones(1, 10))


def _rows(run):
    with (run / "losses.csv").open() as handle:
        return list(csv.DictReader(handle))


def train(data, out, *extra):
    return main(["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, *extra])


def test_cut_trains_only_G_B_D_B_and_the_heads_and_resumes_exactly(tiny_dataset, tmp_path):
    source, straight, resumed = tmp_path / "source", tmp_path / "straight", tmp_path / "resumed"
    assert train(tiny_dataset, source, "--max-steps", "1") == 0
    start = torch.load(source / "checkpoint.pt", weights_only=False)
    cut = ("--objective", "cut", "--init-from", str(source))
    assert train(tiny_dataset, straight, *cut) == 0
    end = torch.load(straight / "checkpoint.pt", weights_only=False)
    assert end["step"] == 4 and {"heads", "opt_F", "sched_F"} <= set(end)
    for net in ("G_A", "D_A"):  # the reverse direction sits out
        assert all(torch.equal(start[net][k], end[net][k]) for k in start[net]), f"{net} changed"
    for net in ("G_B", "D_B"):
        assert any(not torch.equal(start[net][k], end[net][k]) for k in start[net]), f"{net} did not train"
    rows = _rows(straight)
    assert all(float(r["nce"]) > 0 and float(r["nce_idt"]) > 0 and float(r["cycle_B"]) == 0 for r in rows)

    assert train(tiny_dataset, resumed, *cut, "--max-steps", "2") == 0
    assert main(["train", "--out", str(resumed), "--resume", "--device", "cpu", "--num-workers", "0"]) == 0
    again = torch.load(resumed / "checkpoint.pt", weights_only=False)
    assert_same_networks(end, again, ("G_B", "D_B", "heads"))


def test_cut_without_identity_skips_the_identity_nce(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    assert train(tiny_dataset, run, "--objective", "cut", "--lambda-identity", "0", "--max-steps", "2") == 0
    assert all(float(r["nce_idt"]) == 0 and float(r["nce"]) > 0 for r in _rows(run))


def test_cut_continues_from_a_cut_run_with_its_heads(tiny_dataset, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert train(tiny_dataset, first, "--objective", "cut", "--max-steps", "2") == 0
    assert train(tiny_dataset, second, "--objective", "cut", "--init-from", str(first), "--max-steps", "0") == 0
    a = torch.load(first / "checkpoint.pt", weights_only=False)
    b = torch.load(second / "checkpoint.pt", weights_only=False)
    assert b["step"] == 0
    for key in a["heads"]:
        assert torch.equal(a["heads"][key], b["heads"][key]), f"heads.{key} was not carried over"


def test_cut_under_ddp_on_two_cpu_processes(tiny_dataset, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "simpsonize.cli", "train", "--data", str(tiny_dataset), "--out", str(run), *TINY_TRAIN, "--objective", "cut",
         "--max-steps", "2"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "sessions.json").read_text())[-1]["world_size"] == 2
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and all(float(r["nce"]) > 0 for r in _rows(run))

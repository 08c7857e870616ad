"""Training ablations at equal compute: every arm gets the same CPU time, the same seed and the same data.

    python -m tools.ablation --data DATA --out RUNS --cpu-minutes 12 --arms baseline small small_da ...

Arms run two at a time, each pinned to its own core with one thread (on 2 cores that is both cores busy, and small
convolutions scale poorly across threads, so two 1-thread arms do more work than two 2-thread arms in turn). The
budget is process CPU time (``train --max-cpu-minutes``), so an arm is not shortchanged when something else on the
machine takes a share of its core. Each arm then gets the C2ST on the real test pool, cycle L1 and a sample grid,
and the table is printed and written to ``RUNS/ablation.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# The current recipe first; each later arm changes one thing relative to the arm it names.
ARMS: dict[str, list[str]] = {
    "baseline": ["--size", "128", "--ngf", "32", "--n-blocks", "6", "--ndf", "64"],
    "small": ["--size", "96", "--ngf", "16", "--n-blocks", "6", "--ndf", "32"],
    "small_da": [
        "--size",
        "96",
        "--ngf",
        "16",
        "--n-blocks",
        "6",
        "--ndf",
        "32",
        "--diff-augment",
        "color,translation,cutout",
    ],
    "mid_da": [
        "--size",
        "96",
        "--ngf",
        "24",
        "--n-blocks",
        "6",
        "--ndf",
        "48",
        "--diff-augment",
        "color,translation,cutout",
    ],
    "small_da_b4": [
        "--size",
        "96",
        "--ngf",
        "16",
        "--n-blocks",
        "6",
        "--ndf",
        "32",
        "--diff-augment",
        "color,translation,cutout",
        "--batch-size",
        "4",
    ],
    # the framing arm: small_da on a dataset prepared with a looser crop (pass it with --data-for small_da_wide=DIR)
    "small_da_wide": [
        "--size",
        "96",
        "--ngf",
        "16",
        "--n-blocks",
        "6",
        "--ndf",
        "32",
        "--diff-augment",
        "color,translation,cutout",
    ],
    "baseline_da": [
        "--size",
        "128",
        "--ngf",
        "32",
        "--n-blocks",
        "6",
        "--ndf",
        "64",
        "--diff-augment",
        "color,translation,cutout",
    ],
}
COMMON = [
    "--upsampling",
    "resize_conv",
    "--epochs",
    "30",
    "--epochs-decay",
    "0",
    "--steps-per-epoch",
    "1000",
    "--seed",
    "0",
    "--device",
    "cpu",
    "--num-workers",
    "0",
    "--precision",
    "fp32",
]


def launch(name: str, data: Path, out: Path, cpu_minutes: float, core: int | None, extra: list[str]):
    run = out / name
    args = [
        sys.executable,
        "-m",
        "simpsonize.cli",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        *ARMS[name],
        *COMMON,
        *extra,
        "--max-cpu-minutes",
        str(cpu_minutes),
        "--snapshot-every",
        "100000",
        "--sample-every",
        "100000",
        "--checkpoint-minutes",
        "1000",
    ]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1" if core is not None else os.environ.get("OMP_NUM_THREADS", "2"),
        OMP_WAIT_POLICY="PASSIVE",
    )
    if core is not None:
        args = ["taskset", "-c", str(core), *args]
    log = (out / f"{name}.log").open("w")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


def measure(names: list[str], out: Path, data_for) -> list[dict]:
    import torch

    from simpsonize.training.checkpoint import load_run_generators
    from simpsonize.training.measures import c2st_of_generator
    from simpsonize.training.quality_pool import load_pool
    from simpsonize.training.visuals import save_grid

    pools: dict = {}
    rows, grid = [], {}
    for name in names:
        pool = pools.setdefault(data_for(name), load_pool(data_for(name)))
        run = out / name
        g_a, g_b, info = load_run_generators(run)
        config = info["config"]
        row, fake = c2st_of_generator(g_b, pool, int(config["size"]), g_a)
        log = (run / "losses.csv").read_text().splitlines()[1:]
        wall = sum(float(line.split(",")[-1]) for line in log)
        rows.append(
            {
                "arm": name,
                "pool": str(data_for(name)),
                "steps": info["step"],
                "seconds_per_step": round(wall / max(1, len(log)), 3),
                "images_per_second": round(len(log) * int(config["batch_size"]) / max(wall, 1e-9), 2),
                **row,
            }
        )
        grid[f"{name} ({info['step']} steps)"] = torch.nn.functional.interpolate(
            fake[:12], size=(96, 96), mode="bilinear", antialias=True
        )
    first = load_pool(data_for(names[0]))
    grid = {"test faces": torch.nn.functional.interpolate(first.photos(96)[:12], size=(96, 96)), **grid}
    save_grid(out / "ablation_grid.png", grid, thumb=96)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cpu-minutes", type=float, default=12.0, help="CPU time per arm")
    parser.add_argument("--arms", nargs="+", default=["baseline", "small", "small_da"], choices=sorted(ARMS))
    parser.add_argument("--parallel", type=int, default=2, help="arms at once, each pinned to a core (1: in turn)")
    parser.add_argument("--measure-only", action="store_true", help="only measure arms that already ran")
    parser.add_argument(
        "--data-for",
        action="append",
        default=[],
        metavar="ARM=DIR",
        help="another dataset for one arm (the framing arm); it is also measured on that one's pool",
    )
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more train flags for every arm")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = dict(item.split("=", 1) for item in args.data_for)

    def data_for(name: str) -> Path:
        return Path(overrides[name]) if name in overrides else args.data

    if not args.measure_only:
        pending = [a for a in args.arms if not (args.out / a / "checkpoint.pt").exists()]
        while pending:
            batch, pending = pending[: args.parallel], pending[args.parallel :]
            started = time.time()
            procs = [
                launch(name, data_for(name), args.out, args.cpu_minutes, i if args.parallel > 1 else None, args.extra)
                for i, name in enumerate(batch)
            ]
            codes = [p.wait() for p in procs]
            print(
                f"ablation: {', '.join(batch)} finished with {codes} in {(time.time() - started) / 60:.1f} min",
                flush=True,
            )
    rows = measure(args.arms, args.out, data_for)
    header = (
        "| arm | steps | s/step | images/s | C2ST (mean ± sd, 3 seeds) | cycle L1 |\n"
        "| --- | --- | --- | --- | --- | --- |"
    )
    lines = [header] + [
        f"| {r['arm']} | {r['steps']} | {r['seconds_per_step']} | {r['images_per_second']} | "
        f"{r['c2st']:.3f} ± {r['c2st_std']:.3f} | {r['cycle_l1']:.4f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    (args.out / "ablation.md").write_text(f"Equal CPU time per arm: {args.cpu_minutes} min.\n\n{table}\n")
    (args.out / "ablation.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

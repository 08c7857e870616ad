"""`simpsonize test`: translate the test splits both ways, write grids + an index.html gallery, and metrics.

Metrics per direction:
- ``cycle_l1``: mean absolute error between a test image and its reconstruction (X -> Y -> X), pixels in [0, 1].
- ``domain_score``: share of translated test images that a small Simpsons-vs-real classifier calls the target
  domain. The classifier is trained on the train splits only and sees **grey-scale** images, so it has to judge
  drawing-like structure (flat shading, outlines, eye shapes): measured on our first run, a colour classifier
  called every translated face "Simpsons" from step 250 on, once the skin had turned yellow, and so could not
  rank checkpoints. The colour classifier's verdict is reported too, as ``domain_score_colour``. Both
  classifiers' accuracies on the test splits are reported beside the scores.

The **eyes row** (issue 27): the share of translated test faces in which the show's eye finder (training/eyes.py)
finds at least one eye with a pupil (``eyes``), beside the same share on the Simpsons reference faces the C2ST
compares against (``eyes_show``): the shipped model draws blank white eyes, which the C2ST sees only as one cue
among many.

The honest measure is the **C2ST** (``training/c2st.py``): fresh classifiers try to tell the B->A translations of
the real test pool (``testB``, a few hundred faces that `prepare` kept out of training) from as many Simpsons faces;
their held-out accuracy, mean and spread over 3 seeds, is 0.5 when they cannot and 1.0 when they trivially can.
Sanity rows in the same report show the measure works (Simpsons vs Simpsons ~0.5, photos and yellow-tinted photos
~1.0, tighter-framed Simpsons in between).

``--all-snapshots`` ranks the run's snapshots (``train --snapshot-every``) by the C2ST, with B->A cycle L1 as the
tie-breaker (the person must stay recoverable), and writes a gallery of the same 16 test faces for every snapshot.
``--weights FILE`` measures served weights files (the shipped model, say) the same way, in the same run; a
snapshot's ``G_B.safetensors`` is measured with the ``G_A.safetensors`` beside it, which adds its B->A cycle L1.

This module is the command line; the parts it runs: ``quality_pool`` (the test pool), ``measures`` (the C2ST rows,
flat pixels, eyes, ``--weights``), ``domain_classifier``, ``direction_metrics`` (``--run``), ``snapshot_ranking``
(``--all-snapshots``) and ``galleries`` (the pictures and pages), all in ``simpsonize.training``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from simpsonize.model.errors import WeightsError
from simpsonize.training.c2st import SEEDS
from simpsonize.training.checkpoint import load_run_generators
from simpsonize.training.direction_metrics import DIRECTIONS, evaluate
from simpsonize.training.galleries import write_index, write_snapshot_gallery
from simpsonize.training.measures import cached_sanity_rows, format_table, measure_weights
from simpsonize.training.prepare import list_images
from simpsonize.training.quality_pool import load_pool
from simpsonize.training.snapshot_ranking import pick_best, rank_snapshots, write_snapshot_table

MIN_SEEDS = 3  # the floor: a mean and a spread


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", type=Path, help="run folder from `simpsonize train`")
    parser.add_argument("--direction", choices=("AtoB", "BtoA", "both"), default="both")
    parser.add_argument("--data", type=Path, default=None, help="dataset (default: the one the run trained on)")
    parser.add_argument("--snapshot", default=None, help="evaluate snapshots/STEP instead of the last checkpoint")
    parser.add_argument(
        "--all-snapshots",
        action="store_true",
        help="rank every snapshot by the C2ST (cycle L1 breaks ties), name the best",
    )
    parser.add_argument(
        "--last",
        type=int,
        default=None,
        metavar="N",
        help="with --all-snapshots: rank only the newest N snapshots (each costs a C2ST)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        action="append",
        default=None,
        metavar="FILE",
        help="measure served weights files instead of a run (repeat to compare; needs --data)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --weights: where the JSON report goes, its picture beside it as .png (default: "
        "DATA/c2st_weights.json; give one per comparison that runs at the same time)",
    )
    parser.add_argument("--no-sanity", action="store_true", help="skip the C2ST sanity rows")
    parser.add_argument(
        "--seeds",
        type=int,
        default=len(SEEDS),
        metavar="N",
        help=f"fresh classifiers per C2ST (at least {MIN_SEEDS}; default {len(SEEDS)}; the sanity "
        "rows keep 3). The spread "
        "over seeds is about 0.02, as large as most differences between fine-tunes; 12 seeds "
        "bring the mean's own error to about 0.004, at 4x the classifier time",
    )


def classifier_seeds(args: argparse.Namespace) -> tuple[int, ...]:
    """--seeds N as the seeds the C2ST draws its classifiers from (0..N-1: the default 3 are ``SEEDS``)."""
    return tuple(range(args.seeds))


def run(args: argparse.Namespace) -> int:
    if args.seeds < MIN_SEEDS:
        print(f"error: --seeds must be at least {MIN_SEEDS}: a C2ST reports the spread over seeds, not {args.seeds}.")
        return 2
    if args.weights:
        return run_weights(args)
    if args.report is not None:
        print("error: --report is for --weights; a run's report goes into RUN/test/.")
        return 2
    run_dir: Path = args.run
    if run_dir is None:
        print("error: give --run (a training run) or --weights (served weights files).")
        return 2
    if not (run_dir / "config.json").exists():
        print(f"error: {run_dir} is not a training run (no config.json).")
        return 2
    config = json.loads((run_dir / "config.json").read_text())
    data = args.data or Path(config["data"])
    if not (data / "testA").is_dir():
        print(f"error: {data} has no testA/ testB/ splits.")
        return 2
    size = int(config["size"])
    if args.all_snapshots:
        if not list((run_dir / "snapshots").glob("step_*")):
            print(f"error: {run_dir / 'snapshots'} holds no snapshots (train with --snapshot-every).")
            return 2
        pool = load_pool(data)
        rows, gallery = rank_snapshots(run_dir, data, size, pool, last=args.last, seeds=classifier_seeds(args))
        sanity = [] if args.no_sanity else cached_sanity_rows(pool, size)
        out = run_dir / "test"
        out.mkdir(exist_ok=True)
        write_snapshot_gallery(out, pool, size, gallery, rows, sanity)
        write_snapshot_table(out / "snapshots.csv", rows)
        best = pick_best(rows)
        (out / "best_snapshot.json").write_text(json.dumps(best, indent=2))
        print(format_table(rows, "snapshot"))
        _print_sanity(sanity)
        print(
            f"test: ranked {len(rows)} snapshots by C2ST; best {best['snapshot']} (C2ST {best['c2st']:.3f}, "
            f"cycle L1 {best['cycle_l1']:.4f}); gallery {out / 'index.html'}, table {out / 'snapshots.csv'}"
        )
        return 0
    try:
        g_a, g_b, info = load_run_generators(run_dir, args.snapshot)
    except (FileNotFoundError, WeightsError) as exc:  # no checkpoint; a --snapshot missing or damaged
        print(f"error: {exc}")
        return 2
    directions = DIRECTIONS if args.direction == "both" else (args.direction,)
    out = run_dir / "test" / (args.snapshot or f"step_{int(info['step']):07d}")
    pool = load_pool(data) if "BtoA" in directions else None
    metrics = evaluate(g_a, g_b, data, size, directions, out=out, c2st_pool=pool, seeds=classifier_seeds(args))
    if pool is not None and not args.no_sanity:
        metrics["sanity"] = cached_sanity_rows(pool, size)
        write_index(out, metrics, [(d, [f"{d}/{p.stem}.png" for p in list_images(out / d)]) for d in directions])
    metrics["step"] = info["step"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    summary = "; ".join(
        f"{d}: domain score {metrics[d]['domain_score']:.1%}, cycle L1 {metrics[d]['cycle_l1']:.4f}"
        for d in directions
        if d in metrics
    )
    if "BtoA" in metrics and "c2st" in metrics["BtoA"]:
        summary += (
            f"; B->A C2ST {metrics['BtoA']['c2st']:.3f} ± {metrics['BtoA']['c2st_std']:.3f}, eyes with a "
            f"pupil {metrics['BtoA']['eyes']:.1%} (show {metrics['BtoA']['eyes_show']:.1%})"
        )
    _print_sanity(metrics.get("sanity", []))
    print(
        f"test: step {info['step']}: {summary} (classifier accuracy {metrics['classifier_test_accuracy']:.1%}); "
        f"gallery {out / 'index.html'}"
    )
    return 0


def _print_sanity(rows: list[dict]) -> None:
    if not rows:
        return
    print(format_table(rows, "row"))
    broken = [r["row"] for r in rows if not r["as_expected"]]
    if broken:
        print(
            f"warning: the C2ST sanity rows {', '.join(broken)} fell outside their expected bands: "
            "the measure may be broken on this data."
        )


def run_weights(args: argparse.Namespace) -> int:
    if args.data is None or not (args.data / "testB").is_dir():
        print("error: --weights needs --data, a prepared dataset with a testB/ pool.")
        return 2
    missing = [str(p) for p in args.weights if not p.is_file()]
    if missing:
        print(f"error: {', '.join(missing)} does not exist.")
        return 2
    out = args.report or args.data / "c2st_weights.json"
    if out.suffix != ".json" or not out.parent.is_dir():
        print(f"error: --report {out} must be a .json file in an existing folder.")
        return 2
    report = measure_weights(
        args.weights, args.data, sanity=not args.no_sanity, grid=out.with_suffix(".png"), seeds=classifier_seeds(args)
    )
    print(format_table(report["weights"], "weights"))
    print(
        "flat pixels: share of neighbouring pixel pairs that differ by < 0.04; the Simpsons reference set: "
        + ", ".join(f"{v:.2f} at {k} px" for k, v in report["flat_reference"].items())
    )
    print(
        "eyes: share of translated faces where the show's eye finder (training/eyes.py) finds at least one eye "
        "with a pupil; eyes, show: the same share on the Simpsons reference faces"
    )
    print(
        "C2ST placement-blind: both sets moved and scaled at random first (how much of the C2ST is the aligned "
        "crop's fixed eye positions rather than the drawing); the ship rule uses the plain C2ST."
    )
    _print_sanity(report["sanity"])
    out.write_text(json.dumps(report, indent=2))
    print(
        f"test: measured {len(args.weights)} weights file(s) on {args.data / 'testB'}; report {out}, "
        f"picture {out.with_suffix('.png')}"
    )
    return 0

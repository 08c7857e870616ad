"""Ranking a run's snapshots (`simpsonize test --all-snapshots`): each one's C2ST and B->A cycle L1, the best by
the ship rule (``pick_best``), and the ranking as a CSV table a spreadsheet reads."""

from __future__ import annotations

import csv
from pathlib import Path

from simpsonize.model.weights import load_generator
from simpsonize.training.c2st import SEEDS
from simpsonize.training.measures import c2st_of_generator
from simpsonize.training.quality_pool import GALLERY_FACES, QualityPool, load_pool

TIE_MARGIN = 0.01  # C2ST differences below this (about 2 sd over seeds) are ties, broken by cycle L1
MAX_CYCLE_L1 = 0.08  # the person must stay recoverable: the first shipped model's B->A cycle L1 was 0.08


def rank_snapshots(
    run: Path, data: Path, size: int, pool: QualityPool | None = None, last: int | None = None, seeds=SEEDS
) -> tuple[list[dict], dict]:
    """C2ST and cycle L1 of every snapshot (or the ``last`` few), and the translations of the same gallery faces."""
    pool = pool or load_pool(data)
    rows, gallery = [], {}
    folders = sorted((run / "snapshots").glob("step_*"))
    for folder in folders[-last:] if last else folders:
        g_a, _ = load_generator(folder / "G_A.safetensors")
        g_b, meta = load_generator(folder / "G_B.safetensors")
        row, fake = c2st_of_generator(g_b, pool, size, g_a, seeds=seeds)
        rows.append({"snapshot": folder.name, "step": meta.get("step"), **row})
        gallery[folder.name] = fake[:GALLERY_FACES]
    return rows, gallery


def pick_best(rows: list[dict], margin: float = TIE_MARGIN, max_cycle_l1: float = MAX_CYCLE_L1) -> dict | None:
    """Lowest C2ST wins; within ``margin`` of it, the lowest cycle L1. Snapshots whose cycle L1 is above
    ``max_cycle_l1`` (the person no longer recoverable) are considered only if none is below it."""
    if not rows:
        return None
    keep = [r for r in rows if r.get("cycle_l1", 0.0) <= max_cycle_l1] or rows
    top = min(r["c2st"] for r in keep)
    return min((r for r in keep if r["c2st"] <= top + margin), key=lambda r: r.get("cycle_l1", 0.0))


SEED_COLUMN = "c2st_seed_"  # c2st_seed_1, c2st_seed_2, ...: one column per classifier seed


def write_snapshot_table(path: Path, rows: list[dict]) -> Path:
    """The ranking as CSV a spreadsheet reads: numbers as numbers, a missing value as an empty cell, and each seed's
    accuracy (``c2st_per_seed``) in a column of its own."""
    flat = []
    for row in rows:
        seeds = {f"{SEED_COLUMN}{i}": accuracy for i, accuracy in enumerate(row.get("c2st_per_seed", []), start=1)}
        flat.append({**{k: v for k, v in row.items() if k != "c2st_per_seed"}, **seeds})
    columns = list(dict.fromkeys(key for row in flat for key in row))  # every row's keys, in first-seen order
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(flat)
    return path


def read_snapshot_table(path: Path) -> list[dict]:
    """The rows ``write_snapshot_table`` wrote, as they were: numbers back as int or float, empty cells as None,
    the seed columns back into ``c2st_per_seed``."""

    def value(text: str) -> int | float | str | None:
        if text == "":
            return None
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    rows = []
    with path.open(newline="") as handle:
        for record in csv.DictReader(handle):
            row = {key: value(text) for key, text in record.items() if not key.startswith(SEED_COLUMN)}
            seeds = sorted(
                (int(key.removeprefix(SEED_COLUMN)), value(text))
                for key, text in record.items()
                if key.startswith(SEED_COLUMN) and text != ""
            )
            row["c2st_per_seed"] = [accuracy for _, accuracy in seeds]
            rows.append(row)
    return rows

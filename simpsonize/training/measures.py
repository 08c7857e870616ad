"""Per-model measures on the test pool: the C2ST of a generator's translations with their flat pixels and eyes
(and B->A cycle L1 when its G_A is there), the sanity rows that show the C2ST works, their table, and
``measure_weights`` for served weights files (`simpsonize test --weights`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from simpsonize.model.networks import ResnetGenerator
from simpsonize.model.weights import load_generator
from simpsonize.training.c2st import SANITY_EXPECTED, SEEDS, c2st, c2st_placement_blind, sanity_sets
from simpsonize.training.eyes import eyes_share
from simpsonize.training.quality_pool import GALLERY_FACES, QualityPool, load_pool
from simpsonize.training.regularizers import flat_share
from simpsonize.training.visuals import save_grid


@torch.no_grad()
def translate(generator: ResnetGenerator, images: torch.Tensor, batch: int = 32) -> torch.Tensor:
    return torch.cat([generator(images[i : i + batch]).clamp(-1, 1) for i in range(0, len(images), batch)])


def c2st_of_generator(
    g_b: ResnetGenerator,
    pool: QualityPool,
    size: int,
    g_a: ResnetGenerator | None = None,
    seeds=SEEDS,
    framing: dict | None = None,
) -> tuple[dict, torch.Tensor]:
    """C2ST of G_B's translations of the test pool (and B->A cycle L1 when G_A is given); returns the translations."""
    photos = pool.photos(size) if framing is None else pool.photos_framed(framing, size)
    fake = translate(g_b, photos)
    row = c2st(pool.reference(size), fake, seeds=seeds).to_dict()
    row["flat"] = round(flat_share(fake), 3)  # the show's crops: about 0.7 (report's flat_reference)
    row["eyes"] = round(eyes_share(fake), 3)  # translations with >= 1 eye with a pupil, and the show's own share
    row["eyes_show"] = pool.eyes_show(size)
    if g_a is not None:
        rec = translate(g_a, fake)
        row["cycle_l1"] = round(float((rec - photos).abs().mean() / 2), 4)
    return row, fake


def sanity_rows(pool: QualityPool, size: int = 128, seeds=SEEDS) -> list[dict]:
    """The rows that show the measure works; each says whether it came out inside its expected band."""
    rows = []
    for name, images in sanity_sets(pool.others(size), pool.photos(size), pool.others_zoomed(size)).items():
        result = c2st(pool.reference(size), images, seeds=seeds)
        low, high = SANITY_EXPECTED[name]
        rows.append(
            {
                "row": name,
                **result.to_dict(),
                "expected": f"{low:.2f}-{high:.2f}",
                "as_expected": low <= result.mean <= high,
            }
        )
    return rows


def cached_sanity_rows(pool: QualityPool, size: int = 128, seeds=SEEDS) -> list[dict]:
    """Sanity rows depend only on the dataset and size: computed once and kept beside the dataset."""
    import simpsonize.training.c2st

    steps = simpsonize.training.c2st.STEPS
    path = pool.data / f"c2st_sanity_v3_n{len(pool.photo_files)}_px{size}_s{len(seeds)}_k{steps}.json"
    if path.exists():
        return json.loads(path.read_text())
    rows = sanity_rows(pool, size, seeds)
    path.write_text(json.dumps(rows, indent=2))
    return rows


def format_table(rows: list[dict], first: str) -> str:
    lines = [
        f"| {first} | C2ST (mean ± sd over seeds) | per seed | cycle L1 | flat pixels | C2ST placement-blind "
        "| eyes | eyes, show |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        cycle, flat, blind = row.get("cycle_l1"), row.get("flat"), row.get("c2st_placement_blind")
        eyes, eyes_show = row.get("eyes"), row.get("eyes_show")
        lines.append(
            f"| {row[first]} | {row['c2st']:.3f} ± {row['c2st_std']:.3f} | "
            f"{', '.join(f'{a:.2f}' for a in row['c2st_per_seed'])} | "
            f"{'' if cycle is None else f'{cycle:.4f}'} | {'' if flat is None else f'{float(flat):.2f}'} | "
            f"{'' if blind is None else f'{float(blind):.3f}'} | "
            f"{'' if eyes is None else f'{float(eyes):.1%}'} | "
            f"{'' if eyes_show is None else f'{float(eyes_show):.1%}'} |"
        )
    return "\n".join(lines)


def companion_g_a(path: Path) -> Path | None:
    """The Simpsons->real generator saved beside a snapshot's G_B, if any: served files carry only G_B."""
    other = path.with_name("G_A.safetensors")
    return other if path.name == "G_B.safetensors" and other.is_file() else None


def measure_weights(files: list[Path], data: Path, sanity: bool = True, grid: Path | None = None, seeds=SEEDS) -> dict:
    """C2ST of served weights files on one dataset's test pool, in one run (for comparing models fairly); with
    ``grid``, a picture of the same first GALLERY_FACES test photos for every model: each framing's crops of them
    once, then each model's translations. A snapshot's G_B also gets its B->A cycle L1, from the G_A saved beside it
    (``companion_g_a``)."""
    pool = load_pool(data)
    rows, pictures, sizes, inputs = [], {}, set(), {}
    for i, path in enumerate(files):
        g_b, meta = load_generator(path)
        g_a = load_generator(companion)[0] if (companion := companion_g_a(path)) else None
        size, framing = int(meta.get("input_size", 256)), meta.get("framing") or {}
        sizes.add(size)
        # each model gets the test photos cropped as it was trained (weights without framing: the default one)
        row, fake = c2st_of_generator(g_b, pool, size, g_a=g_a, framing=framing, seeds=seeds)
        row["c2st_placement_blind"] = round(c2st_placement_blind(pool.reference(size), fake, seeds=seeds).mean, 3)
        rows.append({"weights": str(path), "step": (meta.get("training") or {}).get("steps"), **row})

        def show(x):
            return nn.functional.interpolate(
                x[:GALLERY_FACES], size=(128, 128), mode="bilinear", antialias=True, align_corners=False
            )

        crop = (size, json.dumps(framing, sort_keys=True))  # models cropped alike share one row of inputs
        if crop not in inputs:
            inputs[crop] = f"input {size} px" + (f" {framing}" if len(inputs) else "")
            pictures[inputs[crop]] = show(pool.photos_framed(framing, size))
        pictures[f"{i + 1}: C2ST {row['c2st']:.2f} eyes {row['eyes']:.0%}"] = show(fake)
    if grid is not None:
        save_grid(grid, pictures, thumb=128)
    sizes = sorted(sizes)
    return {
        "data": str(data),
        "weights": rows,
        "flat_reference": {size: round(flat_share(pool.reference(size)), 3) for size in sizes},
        "sanity": [dict(r, size=size) for size in sizes for r in cached_sanity_rows(pool, size)] if sanity else [],
    }

"""Pictures a person looks at while training: labelled image grids and the loss curves."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from simpsonize.model.imaging import to_images

LABEL_WIDTH = 84


def save_grid(path: Path, rows: dict[str, torch.Tensor], thumb: int | None = None) -> Path:
    """One labelled row per entry of ``rows`` (each a batch in [-1, 1]), like the reference visualiser."""
    batches = {name: to_images(batch) for name, batch in rows.items()}
    side = thumb or next(iter(batches.values()))[0].width
    columns = max(len(images) for images in batches.values())
    sheet = Image.new("RGB", (LABEL_WIDTH + columns * side, len(batches) * side), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, images) in enumerate(batches.items()):
        draw.text((4, r * side + side // 2 - 6), name, fill="black")
        for c, image in enumerate(images):
            sheet.paste(image.resize((side, side)), (LABEL_WIDTH + c * side, r * side))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def plot_losses(csv_path: Path, png_path: Path, window: int = 50) -> Path | None:
    """Moving averages of every loss column against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    names = [
        n for n in rows[0] if n not in ("step", "epoch", "lr", "seconds") and any(float(r[n] or 0) != 0 for r in rows)
    ]  # a judge that is off logs only zeros
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name in names:
        values = [float(r[name] or 0) for r in rows]  # empty: a column added after the run began
        smooth = _moving_average(values, window)
        ax = axes[0] if name.startswith(("D_", "G_")) else axes[1]
        ax.plot(steps, smooth, label=name)
    axes[0].set_title("adversarial (LSGAN)")
    axes[1].set_title("cycle and identity (L1, weighted)")
    for ax in axes:
        ax.set_xlabel("step")
        if ax.lines:  # with --lambda-cycle 0 every L1 term is 0 (identity is weighted by it too): nothing to label
            ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    return png_path


def _moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out

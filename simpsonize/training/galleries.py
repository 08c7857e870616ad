"""The pictures and pages `simpsonize test` writes: a run's grids per direction and its index.html gallery, and the
gallery of every snapshot on the same test faces."""

from __future__ import annotations

import html
from pathlib import Path

from simpsonize.training.quality_pool import GALLERY_FACES, QualityPool
from simpsonize.training.visuals import save_grid


def write_direction(folder: Path, direction: str, files, images, fake, rec, result) -> tuple[str, list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, path in enumerate(files):
        name = f"{path.stem}.png"
        save_grid(folder / name, {"real": images[i : i + 1], "fake": fake[i : i + 1], "rec": rec[i : i + 1]})
        names.append(f"{direction}/{name}")
    overview = {"real": images[:8], "translated": fake[:8], "reconstructed": rec[:8]}
    save_grid(folder.parent / f"{direction}_overview.png", overview)
    return direction, names


def write_index(out: Path, metrics: dict, pages) -> None:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>simpsonize test</title>",
        "<style>body{font-family:sans-serif} img{image-rendering:pixelated;margin:2px;border:1px solid #ccc}</style>",
        "<h1>Test-split translations</h1>",
        "<p>Domain classifier accuracy on the test splits: "
        f"{metrics['classifier_test_accuracy']:.1%} (grey-scale), "
        f"{metrics['classifier_colour_test_accuracy']:.1%} (colour)</p>",
    ]
    if "sanity" in metrics:
        parts.append("<h2>C2ST sanity rows</h2><table border=1 cellpadding=4><tr><th>row<th>C2ST<th>expected<th>ok")
        parts += [
            f"<tr><td>{html.escape(r['row'])}<td>{r['c2st']:.3f} ± {r['c2st_std']:.3f}<td>{r['expected']}"
            f"<td>{'yes' if r['as_expected'] else 'NO'}"
            for r in metrics["sanity"]
        ]
        parts.append("</table>")
    for direction, names in pages:
        m = metrics[direction]
        if "c2st" in m:
            parts.append(
                f"<p><b>{direction} C2ST {m['c2st']:.3f} ± {m['c2st_std']:.3f}</b> on {m['n_per_set']} "
                "translated test faces against as many Simpsons faces (0.5: indistinguishable); eyes with a "
                f"pupil in {m['eyes']:.1%} of them (the show's faces: {m['eyes_show']:.1%})</p>"
            )
        parts.append(f"<h2>{direction} ({'Simpsons → real' if direction == 'AtoB' else 'real → Simpsons'})</h2>")
        parts.append(
            f"<p>{m['count']} images · domain score {m['domain_score']:.1%} (grey-scale classifier; "
            f"colour classifier {m['domain_score_colour']:.1%}) · cycle L1 {m['cycle_l1']:.4f}"
            "<br>each image: real | translated | reconstructed</p>"
        )
        parts += [f"<img src='{html.escape(n)}' alt='{html.escape(n)}'>" for n in names]
    (out / "index.html").write_text("\n".join(parts))


def write_snapshot_gallery(
    out: Path, pool: QualityPool, size: int, gallery: dict, rows: list[dict], sanity: list[dict]
) -> Path:
    """One row per snapshot, the same 16 test faces in every row, and an index.html with the ranking."""
    grid = {"test faces": pool.photos(size)[:GALLERY_FACES]}
    by_name = {r["snapshot"]: r for r in rows}
    for name, fake in gallery.items():
        grid[f"{name} C2ST {by_name[name]['c2st']:.2f}"] = fake
    path = save_grid(out / "snapshots_gallery.png", grid, thumb=min(size, 96))
    table = "".join(
        f"<tr><td>{html.escape(r['snapshot'])}<td>{r['c2st']:.3f} ± {r['c2st_std']:.3f}"
        f"<td>{r['cycle_l1']:.4f}<td>{r['eyes']:.1%}<td>{r['eyes_show']:.1%}"
        for r in rows
    )
    checks = "".join(
        f"<tr><td>{html.escape(r['row'])}<td>{r['c2st']:.3f} ± {r['c2st_std']:.3f}<td>{r['expected']}"
        f"<td>{'yes' if r['as_expected'] else 'NO'}"
        for r in sanity
    )
    (out / "index.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>snapshots</title><style>body{font-family:sans-serif}</style>"
        "<h1>Snapshots ranked by C2ST (lower is better; 0.5 = indistinguishable from the show)</h1>"
        f"<table border=1 cellpadding=4><tr><th>snapshot<th>C2ST<th>B→A cycle L1<th>eyes<th>eyes, show{table}</table>"
        f"<h2>Sanity rows</h2><table border=1 cellpadding=4><tr><th>row<th>C2ST<th>expected<th>ok{checks}</table>"
        f"<h2>The same {GALLERY_FACES} test faces, every snapshot</h2><img src='{path.name}'>"
    )
    return path

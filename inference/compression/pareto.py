"""Quality vs speed of the variants in a manifest, with the Pareto front, as a PNG.

x: aggregate decode tok/s at the highest measured concurrency (the throughput a replica gives
under load); y: QA accuracy (agreement when no QA accuracy was measured). A variant is on the
front if no other is at least as fast and at least as good, and strictly better in one of them.
"""

from __future__ import annotations

from pathlib import Path

from inference.schema.manifest import VariantEntry, VariantManifest


def throughput(entry: VariantEntry) -> tuple[int, float]:
    """(concurrency, tok/s) at the highest concurrency measured (batch 1 if only that)."""
    if not entry.speed.tok_s_at:
        return 1, entry.speed.tok_s_bs1
    level = max(entry.speed.tok_s_at, key=int)
    return int(level), entry.speed.tok_s_at[level]


def quality(entry: VariantEntry) -> float:
    q = entry.quality
    return q.task_accuracy if q.task_accuracy is not None else q.agreement


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (maximising both coordinates), sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(manifest: VariantManifest, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = manifest.variants
    points = [(throughput(e)[1], quality(e)) for e in entries]
    front = pareto_front(points)
    level = max(throughput(e)[0] for e in entries)
    uses_qa = all(e.quality.task_accuracy is not None for e in entries)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, (entry, (x, y)) in enumerate(zip(entries, points, strict=True)):
        ax.scatter([x], [y], s=30 + entry.bytes / 4e6, alpha=0.8, color="tab:red" if i in front else "tab:blue")
        ax.annotate(entry.name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="tab:red", label="Pareto front")
    ax.set_xlabel(f"decode tok/s at {level} concurrent requests (engine, {manifest.hardware})")
    ax.set_ylabel("QA accuracy" if uses_qa else "greedy agreement with the full model")
    ax.set_title(f"{manifest.base}: quality vs speed (marker area ~ bytes on disk)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

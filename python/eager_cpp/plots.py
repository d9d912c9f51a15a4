"""PNG plots of `eager-cpp bench` results, like the paper's: tokens vs Pass@k with each
method's Pareto frontier across M, and per-method bars of Pass@k, Cons@k, Pass Rate and #T.

matplotlib is an optional extra: pip install "eager_cpp[plot]".
"""

from __future__ import annotations

from pathlib import Path

COLORS = {"parallel": "#555555", "eager_init": "#1f77b4", "eager_adapt": "#2ca02c", "eager": "#d62728"}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('plots need matplotlib: pip install "eager_cpp[plot]" (or pip install matplotlib)') from None
    return plt


def pareto_frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both fewer tokens and higher Pass@k, by tokens."""
    frontier, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            frontier.append((x, y))
            best = y
    return frontier


def plot_bench(rows: list[dict], out_dir: "str | Path") -> list[Path]:
    plt = _pyplot()
    out = Path(out_dir)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in COLORS:
        pts = [(r["tokens"], r["pass@k"]) for r in rows if r["method"] == method]
        if not pts:
            continue
        ax.scatter(*zip(*pts), color=COLORS[method], alpha=0.45, s=18)
        front = pareto_frontier(pts)
        ax.plot(*zip(*front), color=COLORS[method], marker="o", label=method)
    ax.set_xlabel("generated tokens (#T)")
    ax.set_ylabel("Pass@k")
    ax.set_title("Tokens vs Pass@k (lines: Pareto frontier over M and θ)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths.append(out / "tokens_vs_pass.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    top_m = max(r["M"] for r in rows)
    chosen = [r for r in rows if r["M"] == top_m]
    labels = [r["method"] if r["method"] == "parallel" else f"{r['method']}\nθ={r['theta']}" for r in chosen]
    fig, axes = plt.subplots(1, 4, figsize=(max(10, 1.2 * len(chosen) * 2), 4))
    for ax, (key, title) in zip(axes, [("pass@k", "Pass@k"), ("cons@k", "Cons@k"), ("pass_rate", "Pass Rate"),
                                      ("tokens", "#T")]):
        ax.bar(range(len(chosen)), [r[key] for r in chosen], color=[COLORS.get(r["method"], "#999") for r in chosen])
        ax.set_xticks(range(len(chosen)))
        ax.set_xticklabels(labels, rotation=60, fontsize=7)
        ax.set_title(f"{title} (M={top_m})")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(out / "methods_bars.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths

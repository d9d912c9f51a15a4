"""PNG plots of `eager-cpp bench` results, like the paper's: tokens vs Pass@k with each
method's Pareto frontier across M, and per-method bars of Pass@k, Cons@k, Pass Rate and #T.

matplotlib is an optional extra: pip install "eager_cpp[plot]".
"""

from __future__ import annotations

from pathlib import Path

COLORS = {"parallel": "#555555", "eager_init": "#1f77b4", "eager_adapt": "#2ca02c", "eager": "#d62728",
          "eager_adapt+tree": "#98df8a", "eager+tree": "#ff9896", "eager_label_free": "#9467bd",
          "eager_label_free+tree": "#c5b0d5"}


def label(row: dict) -> str:
    """A row's method, with "+tree" when its reallocation continued the trees."""
    return f"{row['method']}+tree" if row.get("reallocation") == "tree" else row["method"]


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError('plots need matplotlib: pip install "eager_cpp[plot]" (or pip install matplotlib)') from None
    return plt


def require_matplotlib() -> None:
    """Raise the ImportError of `_pyplot` now, before any work whose plots could not be drawn."""
    _pyplot()


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
        pts = [(r["tokens"], r["pass@k"]) for r in rows if label(r) == method]
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
    labels = [label(r) if r["method"] == "parallel" else f"{label(r)}\nθ={r['theta']}" for r in chosen]
    fig, axes = plt.subplots(1, 4, figsize=(max(10, 1.2 * len(chosen) * 2), 4))
    for ax, (key, title) in zip(axes, [("pass@k", "Pass@k"), ("cons@k", "Cons@k"), ("pass_rate", "Pass Rate"),
                                      ("tokens", "#T")]):
        ax.bar(range(len(chosen)), [r[key] for r in chosen], color=[COLORS.get(label(r), "#999") for r in chosen])
        ax.set_xticks(range(len(chosen)))
        ax.set_xticklabels(labels, rotation=60, fontsize=7)
        ax.set_title(f"{title} (M={top_m})")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    paths.append(out / "methods_bars.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def tree_lanes(sequences: list) -> list[int]:
    """Sequence indices in drawing order: each sequence directly above its children, children by branch step.

    A sequence index that appears twice is a ValueError: the walk from parent to children would never end.
    """
    children: dict = {}
    roots = []
    seen: set = set()
    for s in sequences:
        if s.index in seen:
            raise ValueError(f"sequence index {s.index} appears twice in one prompt's tree")
        seen.add(s.index)
        if s.parent is None:
            roots.append(s)
        else:
            children.setdefault(s.parent, []).append(s)
    order: list[int] = []
    stack = list(reversed(roots))
    while stack:
        s = stack.pop()
        order.append(s.index)
        stack.extend(sorted(children.get(s.index, []), key=lambda c: (c.branch_step, c.index), reverse=True))
    return order


def plot_tree(prompt, out_path: "str | Path", max_entropy: float = 3.0) -> Path:
    """One prompt's tree: a lane per sequence from its branch step, coloured by the entropy of each own
    token; a link from the parent's lane where it branched; the answer and its verdict at each leaf.
    Extras of reallocation (round > 0) are dashed and marked with their try."""
    plt = _pyplot()
    from matplotlib import cm, colors

    seqs = {s.index: s for s in prompt.sequences}
    order = tree_lanes(prompt.sequences)
    lane = {index: k for k, index in enumerate(order)}
    longest = max((len(s.token_ids) for s in prompt.sequences), default=1)
    fig, ax = plt.subplots(figsize=(min(18, 4 + 0.12 * longest + 3), max(2.5, 0.32 * len(order) + 1.4)))
    norm = colors.Normalize(vmin=0.0, vmax=max_entropy)
    cmap = cm.get_cmap("viridis") if hasattr(cm, "get_cmap") else plt.get_cmap("viridis")
    for index in order:
        s = seqs[index]
        y = -lane[index]
        xs = list(range(s.branch_step, s.branch_step + len(s.own_tokens)))
        extra = s.round > 0
        # The link leaves the parent's last shared token (the prompt, at x = -1, for step 0).
        if s.parent is not None and s.parent in lane:
            ax.plot([s.branch_step - 1, s.branch_step], [-lane[s.parent], y], color="#999999",
                    lw=0.8, ls="--" if extra else "-", zorder=1)
        elif xs:
            ax.plot([-1, xs[0]], [0, y], color="#999999", lw=0.8, ls="--" if extra else "-", zorder=1)
        if xs:
            ax.plot([xs[0], xs[-1]], [y, y], color="#ff7f0e" if extra else "#bbbbbb", lw=1.0,
                    ls="--" if extra else "-", zorder=1)
        if s.entropies and len(s.entropies) == len(xs):
            ax.scatter(xs, [y] * len(xs), c=s.entropies, cmap=cmap, norm=norm, s=14, zorder=2,
                       edgecolors="#ff7f0e" if extra else "none", linewidths=0.6)
        elif xs:
            ax.scatter(xs, [y] * len(xs), color="#888888", s=10, zorder=2)
        verdict = "" if s.correct is None else (" ✓" if s.correct else " ✗")
        answer = (s.answer if s.answer is not None else s.text.strip().split("\n")[0])[:28]
        tag = f"[try {s.round}] " if extra else ""
        ax.text((xs[-1] if xs else s.branch_step) + 0.8, y, f"{tag}#{s.index}: {answer!r}{verdict}", va="center",
                fontsize=7, color="#2ca02c" if s.correct else ("#d62728" if s.correct is False else "#333333"))
    ax.scatter([-1], [0], marker="s", color="#333333", s=22, zorder=3)
    ax.text(-1, 0.35, "prompt", ha="center", fontsize=7)
    ax.set_yticks([])
    ax.set_xlim(-1.8, longest + max(6, 0.35 * longest))
    ax.set_xlabel("generated token (step)")
    gold = f" — gold: {prompt.gold_answer!r}" if prompt.gold_answer is not None else ""
    # A few-shot prompt's last line is its question.
    title = prompt.prompt.strip().replace("\n", " ⏎ ")
    ax.set_title(f"prompt {prompt.index}: {'…' if len(title) > 70 else ''}{title[-70:]}{gold}", fontsize=9)
    bar = fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01, fraction=0.03)
    bar.set_label("top-K entropy (nats)")
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def format_tree(prompt) -> str:
    """The same tree as text: one line per sequence, indented under its parent."""
    seqs = {s.index: s for s in prompt.sequences}
    depth: dict = {}
    lines = [f"prompt {prompt.index}: {prompt.n_sequences} sequences, {prompt.generated_tokens} tokens"
             + (f", gold {prompt.gold_answer!r}" if prompt.gold_answer is not None else "")]
    for index in tree_lanes(prompt.sequences):
        s = seqs[index]
        depth[index] = 0 if s.parent is None or s.parent not in depth else depth[s.parent] + 1
        verdict = "" if s.correct is None else ("  correct" if s.correct else "  wrong")
        h = "" if s.branch_entropy is None else f" (H={s.branch_entropy:.2f})"
        where = "root" if s.parent is None else f"from #{s.parent} at step {s.branch_step}{h}"
        tag = f" [try {s.round}]" if s.round > 0 else ""
        answer = s.answer if s.answer is not None else s.text.strip().split("\n")[0][:40]
        lines.append(f"{'  ' * depth[index]}#{s.index}{tag} {where}: {answer!r}{verdict}")
    return "\n".join(lines)

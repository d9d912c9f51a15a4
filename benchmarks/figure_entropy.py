#!/usr/bin/env python
"""The README's "how EAGer works" figure: top-K entropy along each sequence of one prompt, with the
threshold θ and the steps where a sequence branched.

    python benchmarks/figure_entropy.py [--out docs/entropy_branches.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import eager_cpp
from eager_cpp.evaluation.plots import _pyplot

PROMPT = "Question: A baker makes 12 cakes and sells 7 of them. How many cakes are left?\nAnswer:"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "entropy_branches.png")
    p.add_argument("--theta", type=float, default=2.0)
    p.add_argument("-M", type=int, default=8)
    args = p.parse_args()
    result = eager_cpp.run(eager_cpp.default_model_path(), [PROMPT], method="eager_init", max_sequences=args.M,
                           entropy_threshold=args.theta, max_new_tokens=48, seed=0, stop="\n\n")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for s in result.prompts[0].sequences:
        steps = range(s.branch_step, s.branch_step + len(s.entropies))
        ax.plot(steps, s.entropies, lw=1.2, label=f"#{s.index}" + ("" if s.parent is None else f" ← #{s.parent}"))
        if s.parent is not None:
            ax.scatter([s.branch_step], [s.branch_entropy], color="black", zorder=3, s=18)
    ax.axhline(args.theta, color="red", ls="--", lw=1, label=f"θ = {args.theta}")
    ax.set_xlabel("generation step")
    ax.set_ylabel("top-20 entropy (nats)")
    ax.set_title(f"EAGer-init on one prompt: {result.prompts[0].n_sequences} sequences (cap M={args.M}); "
                 "dots = branches", fontsize=9)
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

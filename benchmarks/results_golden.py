"""Record a fixed set of runs in full, and compare two recordings: a refactor must not change any result.

    python benchmarks/results_golden.py record OUT.json [--no-ray]
    python benchmarks/results_golden.py compare A.json B.json

`record` runs, on the default model with one thread: Full Parallel and EAGer-init (sampled with a seed,
and greedy), EAGer / EAGer-adapt (fresh and tree) / label-free through `eager_cpp.run`, EAGer-adapt
through `eager_cpp.reallocate` on an EAGer-init result, `eager-cpp run` (the CLI's chunked, checkpointed
path), and the same runs on two Ray workers (a local Ray). It keeps every sequence (tokens, text,
finish reason, parent, branch step, entropies, answer, verdict), the settings, the counts of the stats
and the reallocation record; only wall-clock figures are left out, since they differ from run to run.

`compare` exits 0 when the two recordings are identical, else prints the first differences and exits 1.
Only public entry points are used, so the same script records the code before and after a refactor.
The comparison holds on one machine: llama.cpp's kernels differ between CPUs (docs/method.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
N_PROMPTS = 6
BASE = dict(max_sequences=4, entropy_threshold=1.0, temperature=0.6, max_new_tokens=16, stop="\n", seed=3)


def _capitals() -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in (DATA_DIR / "capitals_dev_100.jsonl").read_text().splitlines()
            if line.strip()][:N_PROMPTS]
    return [r["prompt"] for r in rows], [r["answer"] for r in rows]


def _plain(value: Any) -> Any:
    """JSON-able form of a result part (dataclasses, tuples, dict keys as strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _record(result: Any) -> dict[str, Any]:
    import eager_cpp.core.results as results

    stats = {k: v for k, v in dataclasses.asdict(result.stats).items() if not k.endswith("_seconds")}
    outcome = result.reallocation
    if outcome is not None:
        outcome = dict(_plain(outcome), unspent=outcome.unspent)
    return {"settings": _plain(result.settings), "stats": stats, "reallocation": outcome,
            "prompts": [results.prompt_to_dict(p) for p in result.prompts]}


def _runs(model: Any, cluster: Any, prompts: list[str], answers: list[str]) -> dict[str, Any]:
    import eager_cpp
    from eager_cpp.answers.scoring import default_scorer

    scorer = default_scorer("first_line")
    where = {} if cluster is None else {"cluster": cluster}
    target = model if cluster is None else cluster.model_path
    out: dict[str, Any] = {}

    def run(name: str, **kw: Any) -> Any:
        result = eager_cpp.run(target, prompts, **dict(BASE, **kw), **where)
        out[name] = _record(result)
        return result

    run("parallel", method="parallel")
    run("eager_init", method="eager_init")
    run("eager_init_greedy", method="eager_init", temperature=0.0)
    run("eager", method="eager", answers=answers, scorer=scorer)
    run("eager_adapt", method="eager_adapt")
    run("eager_adapt_tree", method="eager_adapt", reallocation="tree")
    run("eager_label_free", method="eager_label_free", scorer=scorer)
    init = eager_cpp.run(target, prompts, method="eager_init", answers=answers, scorer=scorer, **BASE, **where)
    out["reallocate_eager_adapt"] = _record(eager_cpp.reallocate(target, init, "eager_adapt", **where))
    init = eager_cpp.run(target, prompts, method="eager_init", answers=answers, scorer=scorer, **BASE, **where)
    out["reallocate_eager"] = _record(eager_cpp.reallocate(target, init, "eager", scorer=scorer, **where))
    return out


def _cli(model_path: str, prompts: list[str], answers: list[str], ray: bool) -> dict[str, Any]:
    """`eager-cpp run` (chunks of 4 prompts: the checkpointed phase (a), then (b) and (c)): its results file."""
    from eager_cpp import cli

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "capitals.jsonl"
        data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(prompts, answers)))
        for method in ("eager_init", "eager_adapt"):
            path = Path(tmp) / f"{method}.jsonl"
            argv = ["run", str(data), "-o", str(path), "--model", model_path, "--method", method, "-M", "4",
                    "--theta", "1.0", "--max-new-tokens", "16", "--stop", "\\n", "--seed", "3", "--chunk-size", "4",
                    "--quiet", "--threads", "1"]
            if ray:
                argv += ["--ray", "--workers", "2"]
            if cli.main(argv) != 0:
                raise SystemExit(f"eager-cpp {' '.join(argv)} failed")
            out[f"cli_{method}"] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


def record(path: str, with_ray: bool) -> None:
    import eager_cpp

    prompts, answers = _capitals()
    model_path = eager_cpp.default_model_path()
    model = eager_cpp.Model(model_path, n_threads=1)
    golden: dict[str, Any] = {"local": _runs(model, None, prompts, answers)}
    golden["local"].update(_cli(model_path, prompts, answers, ray=False))
    if with_ray:
        from eager_cpp.runner.distributed import RayWorkers

        with RayWorkers(model_path, "local", workers=2, threads_per_worker=1, num_cpus=4) as pool:
            golden["ray"] = _runs(model, pool, prompts, answers)
        golden["ray"].update(_cli(model_path, prompts, answers, ray=True))
    Path(path).write_text(json.dumps(golden, indent=1, sort_keys=True))
    print(f"wrote {path}: {sum(len(v) for v in golden.values())} runs")


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if type(a) is not type(b):
        return [f"{where}: {a!r} != {b!r}"[:300]]
    if isinstance(a, dict):
        out = [f"{where}.{k}: only in {'A' if k in a else 'B'}" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += _differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list):
        out = [f"{where}: length {len(a)} != {len(b)}"] if len(a) != len(b) else []
        for k, (x, y) in enumerate(zip(a, b)):
            out += _differences(x, y, f"{where}[{k}]")
        return out
    return [] if a == b else [f"{where}: {a!r} != {b!r}"[:300]]


def compare(a: str, b: str) -> int:
    diffs = _differences(json.loads(Path(a).read_text()), json.loads(Path(b).read_text()))
    if diffs:
        print(f"{len(diffs)} differences; the first:")
        print("\n".join(diffs[:40]))
        return 1
    print(f"identical: {a} and {b}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("out")
    r.add_argument("--no-ray", action="store_true", help="local runs only")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, with_ray=not args.no_ray)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())

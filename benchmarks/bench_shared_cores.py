"""Several eager_cpp processes on the same cores: how OpenMP's wait at llama.cpp's barriers shares the CPU.

    python benchmarks/bench_shared_cores.py                 # every setting below, ~3 min on 2 cores
    python benchmarks/bench_shared_cores.py --settings library,libgomp

Each setting runs the same job (Full Parallel, 8 few-shot GSM8K prompts x M = 8 x 64 tokens, T 0.6, no stop) in
a fresh process: alone; beside one busy-looping process per core; and as two processes at once. It prints tok/s
and each figure over the setting's own tok/s alone, and over the "libgomp" setting's tok/s alone (llama.cpp's
behaviour before eager_cpp set a spin count). Settings: "library", eager_cpp's default (GOMP_SPINCOUNT=1000 unless
the environment sets one); "libgomp", libgomp's own default (300,000 spins); "passive" (OMP_WAIT_POLICY=passive:
sleep at once); "threads1" (the library default with n_threads=1). Targets (issue 35, item 5): two processes
together >= 0.9x one alone; beside the busy loops >= 0.45x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from _common import DATA_DIR, add_common_args, environment, model_path, ratio, table, verdict, warn_if_busy, write_json

SETTINGS: dict[str, tuple[dict[str, str], int]] = {  # name: (environment, n_threads; 0 = the --threads value)
    "library": ({}, 0),
    "libgomp": ({"GOMP_SPINCOUNT": "300000"}, 0),
    "passive": ({"OMP_WAIT_POLICY": "passive"}, 0),
    "threads1": ({}, 1),
}

CHILD = r"""
import json, sys, time
import eager_cpp
spec = json.loads(sys.argv[1])
m = eager_cpp.Model(spec["model"], n_threads=spec["threads"])
eager_cpp.run(m, ["warm up"], method="parallel", max_sequences=2, max_new_tokens=4, progress=None)
t = time.perf_counter()
r = eager_cpp.run(m, spec["prompts"], method="parallel", max_sequences=8, max_new_tokens=64, ignore_eos=True,
                  temperature=0.6, seed=0, progress=None)
print(json.dumps({"tok_s": r.stats.generated_tokens / (time.perf_counter() - t)}))
"""


def launch(spec: dict[str, Any], env_extra: dict[str, str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_extra)
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)], env=env, stdout=subprocess.PIPE, text=True)


def tok_s(proc: subprocess.Popen) -> float:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"a benchmark process failed (exit {proc.returncode})")
    return float(json.loads(out.strip().splitlines()[-1])["tok_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "bench_shared_cores")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, of {', '.join(SETTINGS)}")
    args = ap.parse_args()
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        ap.error(f"--settings: unknown {', '.join(unknown)} (choose from {', '.join(SETTINGS)})")
    warn_if_busy()
    model = model_path(args.model)
    rows = [json.loads(line) for line in (DATA_DIR / "gsm8k_train_200.jsonl").read_text().splitlines()][:8]
    results = []
    for name in names:
        env, threads = SETTINGS[name]
        spec = {"model": model, "threads": threads or args.threads, "prompts": [r["prompt"] for r in rows]}
        alone = tok_s(launch(spec, env))
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        try:
            busy = tok_s(launch(spec, env))
        finally:
            for h in hogs:
                h.kill()
        pair = [launch(spec, env) for _ in range(2)]
        together = sum(tok_s(p) for p in pair)
        row = dict(setting=name, env=env, n_threads=spec["threads"], alone=alone, beside_busy=busy, two_together=together,
                   busy_over_alone=ratio(busy, alone), together_over_alone=ratio(together, alone))
        results.append(row)
        print(f"{name:9s} alone {alone:6.1f} tok/s, beside busy loops {busy:6.1f} ({row['busy_over_alone']:.2f}x), "
              f"two at once {together:6.1f} together ({row['together_over_alone']:.2f}x)", flush=True)
    base = next((r["alone"] for r in results if r["setting"] == "libgomp"), None)
    for r in results:
        r["alone_over_libgomp"] = ratio(r["alone"], base) if base else None
    print(table(["setting", "alone tok/s", "alone / libgomp", "beside busy", "x alone", "two together", "x alone",
                 "target (together >= 0.9, busy >= 0.45)"],
                [[r["setting"], r["alone"], r["alone_over_libgomp"], r["beside_busy"], r["busy_over_alone"],
                  r["two_together"], r["together_over_alone"],
                  verdict(min(r["together_over_alone"] / 0.9, r["busy_over_alone"] / 0.45), 1.0, True)]
                 for r in results]))
    write_json(args.out, {"environment": environment(model, args.threads), "runs": results})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

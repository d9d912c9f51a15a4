"""The phases of `eager_cpp.run` on Ray: each dispatch of phase jobs is a Ray Data `map_batches`.

Only this module touches Ray, and only once a cluster is asked for, so `import eager_cpp` works
without Ray installed (`pip install "eager_cpp[ray]"` adds Ray with Ray Data).

A run on a cluster goes through the same phases as `api.run` in one process:

(a) The driver splits the prompts into shards balanced by cost (estimated prompt tokens + M x
    max_new_tokens; longest first onto the lightest shard). The shards become a Ray Dataset, one row
    each, mapped by an actor-pool UDF (`_ShardRunner`): each actor loads the `Model` once and runs a
    shard's phase jobs on its local executor (one batched engine run). Random streams derive from
    (seed, prompt index, sequence index), so a prompt's samples do not depend on which actor ran it
    or which prompts shared its shard.
(b) The driver scores (labels stay on the driver) and plans with the same pure function as one
    process: `plan_reallocation(summarize(results, θ), M, method)`.
(c) The extra jobs (`jobs.PhaseJob`: prompt index, cap, θ, index of the first new sequence, try)
    go out the same way, balanced again by cost, once per reallocation try; the driver appends
    their sequences. The phases and their driver are the one process's (`driver.drive`, `phases`):
    `RayExecutor` only says where jobs run.

Failures are Ray Data's: an actor that dies (its process killed, its node lost) is restarted, on
another node if its own is gone, and its shard runs again (`max_restarts` per actor, also the
retries of its shard). A shard's output is one row keyed by its shard number and each prompt's by
its index, so a retried shard never yields a prompt twice. Ctrl-C on the driver ends the Dataset's
execution, which kills its actors (and stops a Ray the pool started).

What a dispatch costs over the old hand-written actor pool: Ray Data starts the actor pool per
dispatch, so each dispatch (each try, and phase (a) once per WINDOW_PROMPTS prompts of its chunks)
loads the model once per actor (the page cache keeps the file warm after the first), and the driver's
pre-check loads it once in a Ray task.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import os
import pickle
import socket
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Iterable, Iterator, Optional, Sequence as Seq, Union

from ..core.checks import parse_kv_memory
from ..core.jobs import PhaseJob, PhaseOutput
from ..core.options import RunOptions, WireOptions
from ..core.progress import ProgressEvent
from ..core.results import PromptResult, RunStats, prompt_from_dict, prompt_to_dict
from ..core.vocabulary import MAX_THREADS, THREADS_LIMIT
from ..engine.local import LocalExecutor
from ..engine.model import Model
from ..engine.system import resolve_cpu_buffers
from ..method.budget import ReallocationPlan

__all__ = ["RAY_HINT", "RayExecutor", "RayWorkers", "balance", "open_pool"]

RAY_HINT = ('running on a cluster needs Ray with Ray Data: pip install "eager_cpp[ray]" '
            '(or pip install "ray[data]>=2.40,<2.64")')
DEFAULT_OBJECT_STORE_BYTES = 200 * 1024 * 1024  # a local Ray's shared-memory store: results are small
CHARS_PER_TOKEN = 4.0  # prompt-length estimate for balancing phase (a); the driver does not tokenize
# Phase (a) chunks (the CLI's checkpoints) sent in one dispatch: its actors start and load the model once for
# them, and the object store holds this many prompts' jobs at most.
WINDOW_PROMPTS = 4096
# ... and fewer where their results would take more than this in the driver (a chunk's results wait there
# until the chunks before it are back): a result is about RESULT_BYTES_PER_TOKEN per generated position
# (docs/ray.md), so long generations go in windows of a few chunks.
WINDOW_RESULT_BYTES = 1 << 30
RESULT_BYTES_PER_TOKEN = 25
# The pre-check's prompts per Ray task: a run of many prompts reads them as it checks, and sends no more than
# this many at once (each task loads the model: a few per 100,000 prompts).
CHECK_WINDOW_PROMPTS = 16384
_LOAD_ERRORS = {e.__name__: e for e in (FileNotFoundError, IsADirectoryError, PermissionError, ValueError, OSError)}


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the dispatches are Ray Data pipelines)
    except ImportError as e:
        raise ImportError(RAY_HINT) from e
    return ray


def window_prompts(options: RunOptions) -> int:
    """The prompts of phase (a) one dispatch takes (WINDOW_PROMPTS, fewer for long generations)."""
    per_prompt = options.max_sequences * options.max_new_tokens * RESULT_BYTES_PER_TOKEN
    return max(1, min(WINDOW_PROMPTS, WINDOW_RESULT_BYTES // per_prompt))


def _check_count(name: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def balance(costs: Seq[float], bins: int) -> list[list[int]]:
    """Longest-processing-time-first: items by cost (descending, ties by position) each onto the
    lightest bin. Returns the non-empty bins, each's positions ascending, heaviest bin first."""
    bins = max(1, min(bins, len(costs)))
    heap = [(0.0, b) for b in range(bins)]
    members: list[list[int]] = [[] for _ in range(bins)]
    for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        load, b = heapq.heappop(heap)
        members[b].append(k)
        heapq.heappush(heap, (load + costs[k], b))
    out = [sorted(m) for m in members if m]
    out.sort(key=lambda m: -sum(costs[k] for k in m))
    return out


# ----------------------------------------------------------------------------- on the workers


def _where() -> dict:
    """The node this process runs on: its IP, Ray's node id, the host name."""
    where = {"pid": os.getpid(), "host": socket.gethostname(), "node": socket.gethostname(), "node_id": ""}
    try:
        import ray

        where["node"] = ray.util.get_node_ip_address()
        where["node_id"] = ray.get_runtime_context().get_node_id()
    except Exception:  # pragma: no cover - only the host's name is then known
        pass
    return where


def _load(placement: dict) -> tuple[Optional[Model], Optional[tuple[str, str]], float]:
    """The model as `placement` says (a dict of Model's arguments), or the error that prevented it."""
    started = time.perf_counter()
    try:
        return Model(**placement), None, time.perf_counter() - started
    except Exception as e:  # raised on the driver as a clear error naming the node (_load_error)
        return None, (type(e).__name__, str(e)), time.perf_counter() - started


def _check_prompts_on_a_worker(placement: dict, wire: WireOptions, prompts: list[tuple[int, str]]) -> dict:
    """A Ray task: load the model as a worker does and tokenize every prompt as a run would."""
    where = _where()
    model, error, _ = _load(placement)
    if model is None:
        return dict(where, error=error)
    try:
        return dict(where, error=None, checked=LocalExecutor(model, RunOptions.from_wire(wire)).check(prompts))
    except Exception as e:  # the prompt that does not fit, raised as itself on the driver
        return dict(where, error=None, exception=e)


class _ShardRunner:
    """Ray Data's actor-pool UDF: the model loaded once per actor, one shard (one row) per call.

    `placement`, `wire` and `method` are set on a subclass made per dispatch (`_runner_class`), so Ray
    Data ships them with the class, not as constructor arguments. A shard's output is the pickled dict
    the driver reads (`RayWorkers.dispatch`); an error inside the shard travels in it as the exception
    itself, so the driver raises what one process would.
    """

    placement: dict = {}
    wire: Optional[WireOptions] = None
    method: str = ""

    def __init__(self) -> None:
        self.where = _where()
        self.model, self.error, self.load_seconds = _load(self.placement)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        outputs = [_pickled(self.run_shard(str(jobs))) for jobs in batch["jobs"]]
        return {"shard": np.asarray(batch["shard"]), "output": np.asarray(outputs, dtype=object)}

    def run_shard(self, jobs_json: str) -> dict:
        out = dict(self.where, load_seconds=self.load_seconds, error=self.error)
        if self.model is None:
            return out
        started = time.perf_counter()
        try:
            assert self.wire is not None
            executor = LocalExecutor(self.model, RunOptions.from_wire(self.wire))
            result = executor.run_jobs([PhaseJob.from_dict(j) for j in json.loads(jobs_json)], self.method, None)
        except Exception as e:
            return dict(out, exception=e)
        return dict(out, prompts=[prompt_to_dict(p) for p in result.prompts], stats=asdict(result.stats),
                    unavailable={p.index: list(result.dropped(k)) for k, p in enumerate(result.prompts)},
                    recorded=executor.options.recorded(), busy_seconds=time.perf_counter() - started)


def _pickled(out: dict) -> bytes:
    """A shard's output; an exception that cannot be pickled travels as a RuntimeError with its text."""
    try:
        return pickle.dumps(out)
    except Exception:
        error = out.get("exception")
        return pickle.dumps(dict(out, exception=RuntimeError(f"{type(error).__name__}: {error}")))


def _runner_class(placement: dict, wire: WireOptions, method: str) -> type:
    return type("_ShardRunner", (_ShardRunner,), {"placement": placement, "wire": wire, "method": method})


def _load_error(kind: str, message: str, node: str, host: str, path: str) -> Exception:
    cls = _LOAD_ERRORS.get(kind, RuntimeError)
    return cls(f"Ray worker on node {node} ({host}) cannot open the model {path}: {message}. The .gguf must be "
               f"readable at this same path on every node (a shared file system or a copy on each machine)")


def _raise_worker_error(out: dict, path: str) -> None:
    if out.get("error") is not None:
        raise _load_error(out["error"][0], out["error"][1], out["node"], out["host"], path)
    if out.get("exception") is not None:
        raise out["exception"]


@contextmanager
def _quiet_ray_data(ray: Any) -> Iterator[Any]:
    """Ray Data with no progress bars or execution logs (the run draws its own progress) and its own
    deprecation warnings kept out of the caller's warning filters; the caller's settings come back after."""
    logger = logging.getLogger("ray.data")
    level = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context = ray.data.DataContext.get_current()
    bars = context.enable_progress_bars
    context.enable_progress_bars = False
    try:
        yield ray.data
    finally:
        context.enable_progress_bars = bars
        logger.setLevel(level)


class _ShardProgress:
    """One progress event per finished shard, into the run's progress sink (progress.ProgressSink)."""

    def __init__(self, sink: Any, phase: str, round_: int, total: int, started: float) -> None:
        self.sink, self.phase, self.round, self.total, self.started = sink, phase, round_, total, started
        self.prompts_done = 0
        self.tokens = 0

    def shard_done(self, done: int, shards: int, out: dict) -> None:
        n = len(out["prompts"])
        tokens = sum(len(s["own_tokens"]) for p in out["prompts"] for s in p["sequences"])
        self.tokens += tokens
        self.prompts_done += n
        if self.sink is not None:
            self.sink(ProgressEvent(self.phase, self.round, self.prompts_done, self.total, 0, self.tokens,
                                    time.perf_counter() - self.started, shards_done=done, shards_total=shards,
                                    worker=out["pid"], node=out["node"], shard_prompts=n, shard_tokens=tokens,
                                    shard_seconds=out["busy_seconds"]))


# ----------------------------------------------------------------------------- the driver


class RayWorkers:
    """Where a run's phases execute on Ray: the cluster, the workers' shape and the model they load.

        with RayWorkers("model.gguf", "local", workers=2) as pool:
            result = eager_cpp.run(pool.model_path, prompts, method="eager_adapt", cluster=pool)

    cluster: "local" (start Ray on this machine, stopped by close()) or a Ray address ("auto",
    "host:6379", "ray://host:10001"); an already initialised Ray is used as it is.
    workers: actors per dispatch (default: the cluster's CPUs // threads_per_worker); threads_per_worker:
    llama.cpp threads of each, also the CPUs each reserves (default 1; on machines of their own, one
    worker per machine with all its cores batches best). The model path must be readable at the same
    path on every node. num_cpus / object_store_memory: for a Ray this starts ("local").
    max_shard_prompts: a dispatch uses at least ceil(N / max_shard_prompts) shards (smaller shards:
    less to re-run after a failure, less to transfer at once). start_timeout: seconds for the
    pre-check's task to be placed and load the model. max_restarts: restarts of each actor within a
    dispatch, and retries of the shard it was running (default 2). n_gpu_layers / gpus_per_worker:
    offload on GPU nodes (each worker then reserves that many of Ray's GPUs). cpu_buffers: the
    workers' CPU buffer choice (see eager_cpp.Model; a Model passed as `model` gives its own).

    After a run: `last_plan` holds its reallocation plan, `last_shards` its shards as prompt indices
    per phase ({"a": [[...], ...], "c": [...]}; each phase's first dispatch), `last_dispatches` every
    dispatch's shards of PhaseJobs when `keep_dispatches` (they hold every job of the run, prompt texts
    included: a driver of many prompts keeps none by default), `last_busy` each actor's seconds inside its
    shards ({pid: seconds}) and `last_workers` the actors that returned shards ({pid: {"node", "node_id",
    "host", "load_seconds"}}).
    """

    def __init__(self, model: Union[str, "os.PathLike[str]", Model], cluster: str = "local",
                 workers: Optional[int] = None, threads_per_worker: Optional[int] = None, *,
                 n_ctx: Optional[int] = None, num_cpus: Optional[int] = None,
                 object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES, max_shard_prompts: int = 256,
                 start_timeout: float = 600.0, max_restarts: int = 2, n_gpu_layers: int = 0,
                 gpus_per_worker: float = 0.0, cpu_buffers: Optional[str] = None, kv_memory: Any = None,
                 keep_dispatches: bool = False) -> None:
        ray = _import_ray()
        self.keep_dispatches = bool(keep_dispatches)
        parse_kv_memory(kv_memory)  # a bad size fails here, before Ray starts
        self.kv_memory = kv_memory
        if not isinstance(cluster, str) or not cluster:
            raise ValueError(f'cluster must be "local" or a Ray address, got {cluster!r}')
        self.workers_requested = _check_count("workers", workers)
        self.threads_per_worker = _check_count("threads_per_worker", threads_per_worker) or 1
        if self.threads_per_worker > MAX_THREADS:  # refused here, not by each worker as it loads
            raise ValueError(f"threads_per_worker must be between 1 and {MAX_THREADS} ({THREADS_LIMIT}), "
                             f"got {self.threads_per_worker}")
        self.n_ctx = _check_count("n_ctx", n_ctx)
        self.max_shard_prompts = _check_count("max_shard_prompts", max_shard_prompts)
        _check_count("num_cpus", num_cpus)
        if not (isinstance(start_timeout, (int, float)) and start_timeout > 0):
            raise ValueError(f"start_timeout must be a positive number of seconds, got {start_timeout!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int) or max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, got {max_restarts!r}")
        self.max_restarts = max_restarts
        self.model_path = _model_path(model)
        self.n_gpu_layers = int(n_gpu_layers)
        # The workers load with the driver's CPU buffer choice (a Model's own, else its default here),
        # so a remote node does not depend on its own environment for it.
        self.cpu_buffers = resolve_cpu_buffers(model.cpu_buffers if isinstance(model, Model) else cpu_buffers)
        self.gpus_per_worker = float(gpus_per_worker)
        self.start_timeout = float(start_timeout)
        self.cluster = cluster
        self.begin_run()
        self._ray = ray
        self._closed = False
        self._owns_ray = False
        started = time.perf_counter()
        try:
            if not ray.is_initialized():
                if cluster == "local":
                    wanted = (workers or 1) * self.threads_per_worker
                    ray.init(address="local", num_cpus=num_cpus or max(os.cpu_count() or 1, wanted),
                             include_dashboard=False, object_store_memory=object_store_memory,
                             logging_level=logging.WARNING)
                else:
                    ray.init(address=cluster, logging_level=logging.WARNING)
                self._owns_ray = True
            cpus = ray.cluster_resources().get("CPU", 0)
            self.n_workers = workers if workers is not None else max(1, int(cpus // self.threads_per_worker))
            if self.n_workers * self.threads_per_worker > cpus:
                raise ValueError(f"{self.n_workers} workers x {self.threads_per_worker} threads need "
                                 f"{self.n_workers * self.threads_per_worker} CPUs; the Ray cluster has {cpus:g}: "
                                 f"use fewer workers or threads_per_worker (an autoscaling cluster needs its "
                                 f"nodes up first)")
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.perf_counter() - started

    def _placement(self) -> dict:
        """Model's arguments on each worker."""
        return dict(path=self.model_path, n_ctx=self.n_ctx, n_threads=self.threads_per_worker,
                    n_gpu_layers=self.n_gpu_layers, cpu_buffers=self.cpu_buffers, kv_memory=self.kv_memory)

    def _resources(self) -> dict:
        return dict(num_cpus=self.threads_per_worker, num_gpus=self.gpus_per_worker or None)

    def close(self) -> None:
        """Stop Ray if this pool started it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        ray = getattr(self, "_ray", None)
        if self._owns_ray and ray is not None and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> "RayWorkers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.n_workers} workers x {self.threads_per_worker} threads"
        return f"RayWorkers({self.model_path!r}, {self.cluster!r}: {state})"

    # -- a run's record

    def begin_run(self) -> None:
        """Forget the last run's record (plan, shards, dispatches, busy times, workers): a run starts."""
        self.last_plan: Optional[ReallocationPlan] = None
        self.last_shards: dict[str, list[list[int]]] = {}
        self.last_dispatches: list[tuple[str, list[list[PhaseJob]]]] = []
        self.last_busy: dict[int, float] = {}
        self.last_workers: dict[int, dict] = {}
        self.critical_seconds = 0.0  # per dispatch, the busiest actor's seconds in it, summed over the run

    def note_dispatch(self, phase: str, shards: list[list[PhaseJob]]) -> None:
        """Record a dispatch's shards (`last_dispatches`, when kept; `last_shards` keeps each phase's first)."""
        if self.keep_dispatches:
            self.last_dispatches.append((phase, shards))
        self.last_shards.setdefault(phase, [[j.index for j in shard] for shard in shards])

    def shard_count(self, n: int) -> int:
        """Shards for `n` jobs: one per worker at least, at most `max_shard_prompts` prompts each."""
        return max(1, min(n, max(self.n_workers, math.ceil(n / self.max_shard_prompts))))

    # -- the work

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this RayWorkers pool is closed")

    def check_prompts(self, wire: WireOptions, prompts: list[tuple[int, str]]) -> tuple[int, int]:
        """What one process checks before phase (a), in one Ray task shaped as a worker: the model opens
        on the cluster and every prompt fits its context. Returns the longest prompt's tokens and the
        model's vocabulary size."""
        self._check_open()
        ray = self._ray
        task = ray.remote(_check_prompts_on_a_worker).options(**self._resources(), max_retries=self.max_restarts)
        ref = task.remote(self._placement(), wire, prompts)
        try:
            out = ray.get(ref, timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            raise TimeoutError(
                f"a Ray worker did not start and load the model within {self.start_timeout:.0f} s (each reserves "
                f"{self.threads_per_worker} CPUs; the cluster has {ray.available_resources()} free); use fewer "
                f"threads_per_worker, or raise start_timeout") from None
        except KeyboardInterrupt:
            ray.cancel(ref, force=True)
            self.close()
            raise
        except ray.exceptions.RayError as e:
            raise RuntimeError(f"a Ray worker died while checking the prompts (is eager_cpp installed on every "
                               f"node?): {e}") from None
        _raise_worker_error(out, self.model_path)
        return tuple(out["checked"])  # type: ignore[return-value]

    def dispatch(self, phase: str, shards: list[list[dict]], wire: WireOptions, method: str,
                 reporter: _ShardProgress) -> list[dict]:
        """Every shard's output (`dispatch_iter`), in shard order."""
        outputs: list[Optional[dict]] = [None] * len(shards)
        for k, out in self.dispatch_iter(phase, shards, wire, method, reporter):
            outputs[k] = out
        return outputs  # type: ignore[return-value]

    def dispatch_iter(self, phase: str, shards: list[list[dict]], wire: WireOptions, method: str,
                      reporter: _ShardProgress) -> Iterator[tuple[int, dict]]:
        """Run every shard (a list of PhaseJob dicts) on an actor pool of `n_workers` (fewer when there are
        fewer shards): one Ray Data row per shard, in the order given, one shard at a time per actor. Yields
        (shard number, output) as shards come back, each shard once."""
        self._check_open()
        ray = self._ray
        rows = [{"shard": k, "jobs": json.dumps(jobs)} for k, jobs in enumerate(shards)]
        runner = _runner_class(self._placement(), wire, method)
        returned = [False] * len(rows)
        busy: dict[int, float] = {}
        try:
            with _quiet_ray_data(ray) as data:
                with warnings.catch_warnings():
                    # max_restarts and max_task_retries have no named parameter yet: Ray warns that its generic
                    # remote arguments are deprecated (removed in Ray 2.64, hence the pin in pyproject.toml).
                    warnings.simplefilter("ignore", DeprecationWarning)
                    dataset = data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                        runner, batch_size=1, zero_copy_batch=False,
                        compute=data.ActorPoolStrategy(size=min(self.n_workers, len(rows)),
                                                       max_tasks_in_flight_per_actor=1),
                        max_restarts=self.max_restarts, max_task_retries=self.max_restarts, **self._resources())
                for row in dataset.iter_rows():
                    out = pickle.loads(row["output"])
                    _raise_worker_error(out, self.model_path)
                    k = int(row["shard"])
                    if returned[k]:  # Ray Data yields a retried shard once; keyed, a repeat is dropped
                        continue
                    returned[k] = True
                    self._account_worker(out)
                    busy[out["pid"]] = busy.get(out["pid"], 0.0) + out["busy_seconds"]
                    reporter.shard_done(sum(returned), len(rows), out)
                    yield k, out
        except KeyboardInterrupt:
            self.close()
            raise
        except ray.exceptions.RayError as e:
            raise RuntimeError(f"phase ({phase}) failed on Ray after {self.max_restarts} restarts of a worker "
                               f"(max_restarts): {_root_message(e)}") from e
        missing = [k for k, done in enumerate(returned) if not done]
        if missing:
            raise RuntimeError(f"internal error: shards {missing[:10]} of phase ({phase}) never came back")
        self.critical_seconds += max(busy.values(), default=0.0)

    def _account_worker(self, out: dict) -> None:
        self.last_busy[out["pid"]] = self.last_busy.get(out["pid"], 0.0) + out["busy_seconds"]
        self.last_workers[out["pid"]] = {k: out[k] for k in ("node", "node_id", "host", "load_seconds")}


def _root_message(error: BaseException) -> str:
    """The innermost error that says something (Ray Data wraps an actor's death in errors of its own)."""
    said, seen = error, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if str(error).strip():
            said = error
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    text = str(said).strip()
    return f"{type(said).__name__}: {text.splitlines()[0] if text else ''}"


class RayExecutor:
    """Runs phase jobs on a RayWorkers pool: shards balanced by cost, one engine run per shard.

    Each dispatch is recorded on the pool: `last_dispatches` holds (phase, shards of PhaseJobs) in
    order (a pool made with keep_dispatches=True), `last_shards` the prompt indices of phase (a)'s first
    dispatch's shards ("a") and of the first reallocation try's ("c").
    """

    def __init__(self, pool: RayWorkers, options: RunOptions) -> None:
        self.pool = pool
        self.options = options
        self.wire = options.wire()
        self.started = time.perf_counter()
        self.worker_recorded: Optional[dict] = None
        pool.begin_run()

    @property
    def n_ctx(self) -> int:
        return self.options.n_ctx or self.pool.n_ctx or 0

    def check(self, prompts: Iterable[tuple[int, str]]) -> tuple[int, int]:
        """The pre-check of every prompt (``RayWorkers.check_prompts``), CHECK_WINDOW_PROMPTS per Ray task."""
        longest, n_vocab, items = 0, 0, iter(prompts)
        while True:
            window = list(itertools.islice(items, CHECK_WINDOW_PROMPTS))
            if window or not n_vocab:  # one task at least: the model opens on the cluster
                most, n_vocab = self.pool.check_prompts(self.wire, window)
                longest = max(longest, most)
            if len(window) < CHECK_WINDOW_PROMPTS:
                return longest, n_vocab

    def run_jobs(self, jobs: list[PhaseJob], method: str, progress: Any = None) -> PhaseOutput:
        if not jobs:
            return PhaseOutput(prompts=[], stats=RunStats(method=method))
        phase = "a" if all(j.round == 0 for j in jobs) else "c"
        reporter = _ShardProgress(progress, phase, max(j.round for j in jobs), len(jobs), self.started)
        shards = self._shards(phase, jobs)
        outputs = self.pool.dispatch(phase, [[j.to_dict() for j in shard] for shard in shards], self.wire, method,
                                     reporter)
        return self._gathered(jobs, outputs, method)

    def run_chunks(self, chunks: Iterable[list[PhaseJob]], method: str, progress: Any = None) -> Iterator[PhaseOutput]:
        """Chunks of jobs (phase (a)'s, or a try's), each sharded as `run_jobs` shards it, but up to
        ``window_prompts`` prompts of chunks in one dispatch (Ray Data starts the actors, and they load the model,
        once per dispatch); a chunk's output is yielded, in order, as soon as its shards and those of the chunks
        before it are back."""
        window: list[list[PhaseJob]] = []
        for jobs in chunks:
            window.append(jobs)
            if sum(len(j) for j in window) >= window_prompts(self.options):
                yield from self._run_window(window, method, progress)
                window = []
        if window:
            yield from self._run_window(window, method, progress)

    def _run_window(self, window: list[list[PhaseJob]], method: str, progress: Any) -> Iterator[PhaseOutput]:
        jobs_in = [j for jobs in window for j in jobs]
        phase, round_ = ("a", 0) if all(j.round == 0 for j in jobs_in) else ("c", max(j.round for j in jobs_in))
        reporter = _ShardProgress(progress, phase, round_, len(jobs_in), self.started)
        shards: list[list[PhaseJob]] = []
        owner: list[int] = []  # shard -> its chunk in the window
        for c, jobs in enumerate(window):
            chunk_shards = self._shards(phase, jobs) if jobs else []
            shards += chunk_shards
            owner += [c] * len(chunk_shards)
        outputs: list[list[dict]] = [[] for _ in window]
        left = [owner.count(c) for c in range(len(window))]
        ready = 0  # chunks yielded so far
        for k, out in self.pool.dispatch_iter(phase, [[j.to_dict() for j in shard] for shard in shards], self.wire,
                                              method, reporter):
            outputs[owner[k]].append(out)
            left[owner[k]] -= 1
            while ready < len(window) and left[ready] == 0:
                yield self._gathered(window[ready], outputs[ready], method)
                outputs[ready] = []  # let go of a chunk's results once handed on
                ready += 1
        while ready < len(window):  # chunks without jobs
            yield self._gathered(window[ready], outputs[ready], method)
            ready += 1

    def _shards(self, phase: str, jobs: list[PhaseJob]) -> list[list[PhaseJob]]:
        """Jobs in shards balanced by cost, recorded on the pool."""
        pool, t = self.pool, self.options.max_new_tokens
        costs = [len(j.prompt) / CHARS_PER_TOKEN + j.max_sequences * t for j in jobs]
        shards = [[jobs[k] for k in members] for members in balance(costs, pool.shard_count(len(jobs)))]
        pool.note_dispatch(phase, shards)
        return shards

    def _gathered(self, jobs: list[PhaseJob], outputs: list[dict], method: str) -> PhaseOutput:
        """The jobs' results from their shards' outputs, in job order, each prompt exactly once."""
        stats = RunStats(method=method)
        by_index: dict[int, PromptResult] = {}
        unavailable: dict[int, tuple[int, ...]] = {}
        for out in outputs:
            stats.merge(RunStats(**out["stats"]))
            unavailable.update({int(i): tuple(d) for i, d in out.get("unavailable", {}).items()})
            for d in out["prompts"]:
                if d["index"] in by_index:
                    raise RuntimeError(f"internal error: prompt {d['index']} came back from two shards")
                by_index[d["index"]] = prompt_from_dict(d)
        missing = [j.index for j in jobs if j.index not in by_index]
        if missing:
            raise RuntimeError(f"internal error: prompts {missing[:10]} missing from the shards' results")
        if self.worker_recorded is None and outputs:
            self.worker_recorded = outputs[0]["recorded"]
        return PhaseOutput(prompts=[by_index[j.index] for j in jobs], stats=stats,
                           unavailable=[unavailable.get(j.index, ()) for j in jobs])

    def recorded(self, n_prompts: int) -> dict[str, Any]:
        """The workers' own record (it holds what only a loaded model decides, e.g. the device path)."""
        return dict(self.worker_recorded or self.options.recorded(), method=self.options.method, n_prompts=n_prompts)

    def account(self, stats: RunStats, elapsed: float, outcome: Any) -> None:
        """The pool's figures: its workers, Ray's start, the driver's time outside the busiest worker's."""
        pool = self.pool
        pool.last_plan = outcome.plan if outcome is not None else None
        stats.workers, stats.worker_start_seconds = pool.n_workers, pool.start_seconds
        stats.ray_overhead_seconds += max(0.0, elapsed - pool.critical_seconds)


def _model_path(model: Any) -> str:
    path = model.path if isinstance(model, Model) else os.fspath(model)
    return os.path.abspath(os.path.expanduser(path))


@contextmanager
def open_pool(model: Any, options: RunOptions) -> Iterator[RayWorkers]:
    """The pool `options.cluster` names: the caller's RayWorkers as it is, or one started for this run
    ("local" or a Ray address; closed at the end)."""
    cluster = options.cluster
    threads = options.threads_per_worker or options.n_threads
    if isinstance(cluster, RayWorkers):
        if _model_path(model) != cluster.model_path:
            raise ValueError(f"the pool's workers hold {cluster.model_path}, not {_model_path(model)}")
        for name, value, have in (("workers", options.workers, cluster.n_workers),
                                  ("threads_per_worker", threads, cluster.threads_per_worker)):
            if value is not None and value != have:
                raise ValueError(f"{name}={value} differs from the RayWorkers pool's {have}; set it on the pool")
        yield cluster
        return
    if not isinstance(cluster, str):
        raise TypeError(f'cluster must be "local", a Ray address or a RayWorkers pool, got {type(cluster).__name__}')
    pool = RayWorkers(model, cluster, options.workers, threads, n_ctx=options.n_ctx,
                      n_gpu_layers=options.n_gpu_layers, kv_memory=options.kv_memory)
    try:
        yield pool
    finally:
        pool.close()

"""The phases of `eager_cpp.run` on Ray actors: one run over many workers and machines.

Only this module touches Ray, and only once a cluster is asked for, so `import eager_cpp` works
without Ray installed (`pip install "eager_cpp[ray]"` adds it).

A run on a cluster goes through the same phases as `api.run` in one process:

(a) The driver splits the prompts into shards balanced by cost (estimated prompt tokens + M x
    max_new_tokens; longest first onto the lightest shard). Each actor holds one loaded `Model`
    and runs the shard's phase jobs on its local executor (one batched engine run), returning plain
    dicts. Random streams derive from (seed, prompt index, sequence index), so a prompt's samples
    do not depend on which actor ran it or which prompts shared its shard.
(b) The driver scores (labels stay on the driver) and plans with the same pure function as one
    process: `plan_reallocation(summarize(results, θ), M, method)`.
(c) The extra jobs (`jobs.PhaseJob`: prompt index, cap, θ, index of the first new sequence, try)
    go back to the actors, balanced again by cost, once per reallocation try; the driver appends
    their sequences. The phases and their driver are the one process's (`driver.drive`, `phases`):
    `RayExecutor` only says where jobs run.

This module holds the actor (`ModelWorker`), the pool with its fault-tolerant dispatch (`RayWorkers`) and
the executor adapter (`RayExecutor`, which uses only the pool's public methods). The actors receive the
options as `options.WireOptions` (every option but the driver's own), never the recorded form.

An actor that dies (its process killed, its node lost) has its shard re-run on a replacement
actor; shards are returned whole and results are keyed by prompt index, so no prompt is lost or
counted twice. Ctrl-C on the driver kills the actors (and stops a Ray it started).
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence as Seq, Union

from ..method.budget import ReallocationPlan
from ..core.jobs import PhaseJob, PhaseOutput
from ..engine.local import LocalExecutor
from ..engine.model import Model
from ..core.checks import parse_kv_memory
from ..core.options import RunOptions, WireOptions
from ..core.progress import ProgressEvent
from ..core.results import PromptResult, RunStats, prompt_from_dict, prompt_to_dict
from ..engine.system import resolve_cpu_buffers
from ..core.vocabulary import MAX_THREADS, THREADS_LIMIT

__all__ = ["RAY_HINT", "RayExecutor", "RayWorkers", "balance", "open_pool"]

RAY_HINT = 'running on a cluster needs Ray: pip install "eager_cpp[ray]" (or pip install "ray>=2.9")'
DEFAULT_OBJECT_STORE_BYTES = 200 * 1024 * 1024  # a local Ray's shared-memory store: results are small
CHARS_PER_TOKEN = 4.0  # prompt-length estimate for balancing phase (a); the driver does not tokenize
_LOAD_ERRORS = {e.__name__: e for e in (FileNotFoundError, IsADirectoryError, PermissionError, ValueError, OSError)}



def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError(RAY_HINT) from e
    return ray


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


# ----------------------------------------------------------------------------- the actor


class ModelWorker:
    """One Ray actor: the model loaded once, phases run on request (made remote lazily)."""

    def __init__(self, model_path: str, n_threads: int, n_ctx: Optional[int], n_gpu_layers: int = 0,
                 cpu_buffers: Optional[str] = None, kv_memory: Any = None) -> None:
        self.pid = os.getpid()
        self.host = socket.gethostname()
        try:
            import ray

            self.node = ray.util.get_node_ip_address()
            self.node_id = ray.get_runtime_context().get_node_id()
        except Exception:  # pragma: no cover - only the node's name is then known
            self.node, self.node_id = self.host, ""
        self.running: Optional[str] = None
        self.progress: dict = {}
        started = time.perf_counter()
        self.model: Optional[Model] = None
        self.error: Optional[tuple[str, str]] = None
        try:
            self.model = Model(model_path, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers,
                               cpu_buffers=cpu_buffers, kv_memory=kv_memory)
        except Exception as e:  # reported by info() and raised on use, as a clear error on the driver
            self.error = (type(e).__name__, str(e))
        self.model_path = model_path
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict:
        return {"pid": self.pid, "node": self.node, "node_id": self.node_id, "host": self.host,
                "load_seconds": self.load_seconds,
                "error_type": self.error[0] if self.error else None, "error": self.error[1] if self.error else None}

    def status(self) -> dict:
        """Answered while a shard runs (the actor has a second thread): what it is doing."""
        return {"pid": self.pid, "running": self.running, "progress": dict(self.progress)}

    def _on_progress(self, event: ProgressEvent) -> None:
        self.progress = event.to_dict()

    def _ready(self) -> Model:
        if self.model is None:
            assert self.error is not None
            raise _load_error(self.error[0], self.error[1], self.node, self.host, self.model_path)
        return self.model

    def check_prompts(self, wire: WireOptions, prompts: list[tuple[int, str]]) -> tuple[int, int]:
        """Tokenize every prompt as a run would (ValueError naming one too long): the longest, and n_vocab."""
        return LocalExecutor(self._ready(), RunOptions.from_wire(wire)).check(prompts)

    def run_jobs(self, shard: str, wire: WireOptions, jobs: list[dict], method: str) -> dict:
        """Phase jobs on this actor's model, as the local executor runs them in one process."""
        model = self._ready()
        started = time.perf_counter()
        self.running, self.progress = shard, {}
        try:
            executor = LocalExecutor(model, RunOptions.from_wire(wire))
            out = executor.run_jobs([PhaseJob.from_dict(j) for j in jobs], method, self._on_progress)
        finally:
            self.running = None
        return {"prompts": [prompt_to_dict(p) for p in out.prompts], "stats": asdict(out.stats),
                "unavailable": {p.index: list(out.dropped(k)) for k, p in enumerate(out.prompts)},
                "recorded": executor.options.recorded(),
                "busy_seconds": time.perf_counter() - started, "pid": self.pid, "node": self.node}


def _load_error(kind: str, message: str, node: str, host: str, path: str) -> Exception:
    cls = _LOAD_ERRORS.get(kind, RuntimeError)
    return cls(f"Ray worker on node {node} ({host}) cannot open the model {path}: {message}. The .gguf must be "
               f"readable at this same path on every node (a shared file system or a copy on each machine)")


_REMOTE_WORKER: Any = None


def _remote_worker(ray: Any) -> Any:
    global _REMOTE_WORKER
    if _REMOTE_WORKER is None:
        _REMOTE_WORKER = ray.remote(ModelWorker)
    return _REMOTE_WORKER


# ----------------------------------------------------------------------------- the driver


@dataclass
class _Handle:
    actor: Any
    number: int  # the n-th worker this pool started (a replacement gets a new number)
    info_ref: Any
    info: Optional[dict] = None
    busy: float = 0.0  # seconds spent in the current phase's shards


@dataclass
class _Dispatch:
    """One dispatch's state: shards waiting (`queue`), running (ref -> (shard, worker)), done (`outputs`),
    and the workers idle or starting (info ref -> (worker, when it was asked to start))."""

    phase: str
    n_shards: int
    idle: list[_Handle]
    starting: dict[Any, tuple[_Handle, float]]
    queue: list[int] = field(default_factory=list)
    running: dict[Any, tuple[int, _Handle]] = field(default_factory=dict)
    outputs: list[Optional[dict]] = field(default_factory=list)
    done: int = 0

    def __post_init__(self) -> None:
        self.queue = list(range(self.n_shards))
        self.outputs = [None] * self.n_shards


class _ShardProgress:
    """One progress event per finished shard, into the run's progress sink (progress.ProgressSink)."""

    def __init__(self, sink: Any, phase: str, round_: int, total: int, started: float) -> None:
        self.sink, self.phase, self.round, self.total, self.started = sink, phase, round_, total, started
        self.prompts_done = 0
        self.tokens = 0

    @property
    def verbose(self) -> bool:
        return self.sink is not None

    def shard_done(self, done: int, shards: int, worker: int, out: dict) -> None:
        n = len(out["prompts"])
        tokens = sum(len(s["own_tokens"]) for p in out["prompts"] for s in p["sequences"])
        self.tokens += tokens
        self.prompts_done += n
        if self.sink is not None:
            self.sink(ProgressEvent(self.phase, self.round, self.prompts_done, self.total, 0, self.tokens,
                                    time.perf_counter() - self.started, shards_done=done, shards_total=shards,
                                    worker=worker, node=out["node"], shard_prompts=n, shard_tokens=tokens,
                                    shard_seconds=out["busy_seconds"]))


class RayWorkers:
    """A pool of Ray actors, each holding the model once; reusable across runs.

        with RayWorkers("model.gguf", "local", workers=2) as pool:
            result = eager_cpp.run(pool.model_path, prompts, method="eager_adapt", cluster=pool)

    cluster: "local" (start Ray on this machine, stopped by close()) or a Ray address ("auto",
    "host:6379", "ray://host:10001"); an already initialised Ray is used as it is.
    workers: actors (default: the cluster's CPUs // threads_per_worker); threads_per_worker:
    llama.cpp threads of each, also the CPUs each reserves (default 1; on machines of their own,
    one worker per machine with all its cores batches best). The model path must be readable at the
    same path on every node. num_cpus / object_store_memory: for a Ray this starts ("local").
    max_shard_prompts: phase (a) uses at least ceil(N / max_shard_prompts) shards (smaller shards:
    less to re-run after a failure, less to transfer at once). start_timeout: seconds for the
    workers to start and load the model. max_restarts: replacements for dead workers per pool
    (default: 2 x workers). n_gpu_layers / gpus_per_worker: offload on GPU nodes (each worker
    then reserves that many of Ray's GPUs). cpu_buffers: the workers' CPU buffer choice (see
    eager_cpp.Model; a Model passed as `model` gives its own). After a run, `last_plan` holds its reallocation plan,
    `last_shards` its shards as prompt indices per phase ({"a": [[...], ...], "c": [...]}) and
    `last_busy` each worker's seconds inside its shards ({worker number: seconds}).
    """

    def __init__(self, model: Union[str, "os.PathLike[str]", Model], cluster: str = "local",
                 workers: Optional[int] = None, threads_per_worker: Optional[int] = None, *,
                 n_ctx: Optional[int] = None, num_cpus: Optional[int] = None,
                 object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES, max_shard_prompts: int = 256,
                 start_timeout: float = 600.0, max_restarts: Optional[int] = None, n_gpu_layers: int = 0,
                 gpus_per_worker: float = 0.0, cpu_buffers: Optional[str] = None, kv_memory: Any = None) -> None:
        ray = _import_ray()
        parse_kv_memory(kv_memory)  # a bad size fails here, before any worker starts
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
        self.model_path = _model_path(model)
        self.n_gpu_layers = int(n_gpu_layers)
        # The workers load with the driver's CPU buffer choice (a Model's own, else its default here),
        # so a remote node does not depend on its own environment for it.
        self.cpu_buffers = resolve_cpu_buffers(model.cpu_buffers if isinstance(model, Model) else cpu_buffers)
        self.gpus_per_worker = float(gpus_per_worker)
        self.start_timeout = float(start_timeout)
        self.cluster = cluster
        self.last_plan: Optional[ReallocationPlan] = None
        self.last_shards: dict[str, list[list[int]]] = {}
        self.last_dispatches: list[tuple[str, list[list[PhaseJob]]]] = []
        self.last_busy: dict[int, float] = {}
        self.critical_seconds = 0.0  # per phase, the busiest worker's seconds in it, summed over the run's phases
        self.restarts = 0
        self._ray = ray
        self._handles: list[_Handle] = []
        self._spawned = 0
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
            if workers is None:
                cpus = ray.cluster_resources().get("CPU", 1)
                workers = max(1, int(cpus // self.threads_per_worker))
            self.max_restarts = 2 * workers if max_restarts is None else max_restarts
            self._cls = _remote_worker(ray)
            handles = [self._spawn() for _ in range(workers)]
            self._handles = handles
            self._wait_ready(handles)
        except BaseException:
            self.close()
            raise
        self.start_seconds = time.perf_counter() - started

    # -- workers

    @property
    def n_workers(self) -> int:
        return len(self._handles)

    def _spawn(self) -> _Handle:
        actor = self._cls.options(num_cpus=self.threads_per_worker, num_gpus=self.gpus_per_worker, max_concurrency=2,
                                  max_restarts=0, scheduling_strategy="SPREAD").remote(
            self.model_path, self.threads_per_worker, self.n_ctx, self.n_gpu_layers, self.cpu_buffers, self.kv_memory)
        self._spawned += 1
        return _Handle(actor=actor, number=self._spawned - 1, info_ref=actor.info.remote())

    def _wait_ready(self, handles: list[_Handle]) -> None:
        ray = self._ray
        try:
            infos = ray.get([h.info_ref for h in handles], timeout=self.start_timeout)
        except ray.exceptions.GetTimeoutError:
            raise TimeoutError(
                f"{len(handles)} Ray workers did not start and load the model within {self.start_timeout:.0f} s "
                f"(each reserves {self.threads_per_worker} CPUs; the cluster has {ray.available_resources()} "
                f"free); use fewer workers or threads_per_worker, or raise start_timeout") from None
        except ray.exceptions.RayActorError as e:
            raise RuntimeError(f"a Ray worker died while starting (is eager_cpp installed on every node?): {e}") from None
        for h, info in zip(handles, infos):
            h.info = info
        for info in infos:
            if info["error"] is not None:
                raise _load_error(info["error_type"], info["error"], info["node"], info["host"], self.model_path)

    def workers_info(self) -> list[dict]:
        """pid, node, host, model load seconds of each live worker (waits for new ones to start)."""
        pending = [h for h in self._handles if h.info is None]
        if pending:
            self._wait_ready(pending)
        return [dict(h.info, worker=h.number) for h in self._handles]  # type: ignore[arg-type]

    def worker_pids(self) -> list[int]:
        return [info["pid"] for info in self.workers_info()]

    def workers_status(self, timeout: float = 30.0) -> list[dict]:
        """What each worker is doing right now (answered while it runs a shard)."""
        handles = list(self._handles)
        statuses = self._ray.get([h.actor.status.remote() for h in handles], timeout=timeout)
        return [dict(status, worker=h.number, node_id=(h.info or {}).get("node_id"))
                for h, status in zip(handles, statuses)]

    def _kill(self, handle: _Handle) -> None:
        try:
            self._ray.kill(handle.actor, no_restart=True)
        except Exception:  # already gone
            pass

    def _replace(self, handle: _Handle, error: BaseException, count: bool) -> _Handle:
        self._handles.remove(handle)
        self._kill(handle)
        if count:
            self.restarts += 1
            if self.restarts > self.max_restarts:
                raise RuntimeError(f"Ray workers died {self.restarts} times in this pool (max_restarts="
                                   f"{self.max_restarts}); the last: {error}") from error
        new = self._spawn()
        self._handles.append(new)
        return new

    def close(self) -> None:
        """Kill the workers; stop Ray if this pool started it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for h in self._handles:
            self._kill(h)
        self._handles = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()

    def __enter__(self) -> "RayWorkers":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.n_workers} workers x {self.threads_per_worker} threads"
        return f"RayWorkers({self.model_path!r}, {self.cluster!r}: {state})"

    # -- shards

    def begin_run(self) -> None:
        """Forget the last run's record (plan, shards, dispatches, busy times): a run starts."""
        self.last_plan, self.last_shards, self.last_dispatches, self.last_busy = None, {}, [], {}
        self.critical_seconds = 0.0

    def note_dispatch(self, phase: str, shards: list[list[PhaseJob]]) -> None:
        """Record a dispatch's shards (`last_dispatches`; `last_shards` keeps each phase's first)."""
        self.last_dispatches.append((phase, shards))
        self.last_shards.setdefault(phase, [[j.index for j in shard] for shard in shards])

    def shard_count(self, n: int) -> int:
        """Shards for `n` jobs: one per worker at least, at most `max_shard_prompts` prompts each."""
        return max(1, min(n, max(self.n_workers, math.ceil(n / self.max_shard_prompts))))

    def dispatch(self, phase: str, payloads: list[Any], submit: Callable[[Any, str, Any], Any],
                 reporter: _ShardProgress) -> list[dict]:
        """Run every shard on some worker (heaviest first, one at a time per worker); a shard whose
        worker dies goes back to the queue and a replacement worker joins once it has started (so a
        replacement that cannot be placed never holds a shard the others could run). Outputs in shard order."""
        if self._closed:
            raise RuntimeError("this RayWorkers pool is closed")
        ray = self._ray
        state = _Dispatch(phase, len(payloads), idle=[h for h in self._handles if h.info is not None],
                          starting={h.info_ref: (h, time.monotonic()) for h in self._handles if h.info is None})
        for h in self._handles:
            h.busy = 0.0
        try:
            while state.queue or state.running:
                while state.queue and state.idle:
                    handle, shard = state.idle.pop(0), state.queue.pop(0)
                    state.running[submit(handle.actor, f"{phase}{shard}", payloads[shard])] = (shard, handle)
                if not state.running and all(time.monotonic() - t > self.start_timeout
                                             for _, t in state.starting.values()):
                    raise TimeoutError(
                        f"no Ray worker left to run {len(state.queue)} shards: replacements did not start within "
                        f"{self.start_timeout:.0f} s (the cluster has {ray.available_resources()} free)")
                ready, _ = ray.wait(list(state.running) + list(state.starting), num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in state.starting:
                        self._worker_started(ref, state)
                    else:
                        self._shard_returned(ref, state, reporter)
        except KeyboardInterrupt:
            self.close()
            raise
        except BaseException:
            # The other shards may still run: fresh workers, so the pool is clean for the next run.
            for _, handle in list(state.running.values()):
                self._replace(handle, RuntimeError("run aborted"), count=False)
            raise
        for h in self._handles:
            self.last_busy[h.number] = self.last_busy.get(h.number, 0.0) + h.busy
        self.critical_seconds += max((h.busy for h in self._handles), default=0.0)
        return state.outputs  # type: ignore[return-value]

    def _dead_worker_errors(self) -> tuple[type, ...]:
        e = self._ray.exceptions
        return e.RayActorError, e.WorkerCrashedError, e.ObjectLostError

    def _worker_started(self, ref: Any, state: "_Dispatch") -> None:
        """A replacement worker is up (it joins the idle ones) or failed to start (another replaces it)."""
        handle, _ = state.starting.pop(ref)
        try:
            handle.info = self._ray.get(ref, timeout=60.0)
        except self._dead_worker_errors() as e:
            new = self._replace(handle, e, count=True)
            state.starting[new.info_ref] = (new, time.monotonic())
            return
        if handle.info["error"] is not None:
            i = handle.info
            raise _load_error(i["error_type"], i["error"], i["node"], i["host"], self.model_path)
        state.idle.append(handle)

    def _shard_returned(self, ref: Any, state: "_Dispatch", reporter: _ShardProgress) -> None:
        """A shard's output (its worker goes back to the idle ones), or its worker died: the shard is queued
        again, first, and a replacement starts. An error raised inside the shard is raised here as itself."""
        shard, handle = state.running.pop(ref)
        try:
            out = self._ray.get(ref, timeout=600.0)
        except self._dead_worker_errors() as e:
            if reporter.verbose:
                sys.stderr.write(f"[eager_cpp] worker {handle.number} died ({type(e).__name__}); "
                                 f"shard {shard} of phase ({state.phase}) runs again on another worker\n")
            new = self._replace(handle, e, count=True)
            state.starting[new.info_ref] = (new, time.monotonic())
            state.queue.insert(0, shard)
            return
        except self._ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        state.outputs[shard] = out
        handle.busy += out["busy_seconds"]
        state.idle.append(handle)
        state.done += 1
        reporter.shard_done(state.done, len(state.outputs), handle.number, out)

    def check_prompts(self, wire: WireOptions, prompts: list[tuple[int, str]]) -> tuple[int, int]:
        """What one process checks before phase (a), on one worker: every prompt fits the model's context.
        Returns the longest prompt's tokens and the model's vocabulary size."""
        handle = next((h for h in self._handles if h.info is not None), None)
        if handle is None:
            self.workers_info()
            handle = self._handles[0]
        try:
            return tuple(self._ray.get(handle.actor.check_prompts.remote(wire, prompts), timeout=600.0))
        except self._ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            raise (cause if isinstance(cause, Exception) else e) from None


class RayExecutor:
    """Runs phase jobs on a RayWorkers pool: shards balanced by cost, one engine run per shard.

    Each dispatch is recorded on the pool: `last_dispatches` holds (phase, shards of PhaseJobs) in
    order, `last_shards` the prompt indices of phase (a)'s shards ("a") and of the first
    reallocation try's ("c").
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

    def check(self, prompts: list[tuple[int, str]]) -> tuple[int, int]:
        return self.pool.check_prompts(self.wire, prompts)

    def run_jobs(self, jobs: list[PhaseJob], method: str, progress: Any = None) -> PhaseOutput:
        stats = RunStats(method=method)
        if not jobs:
            return PhaseOutput(prompts=[], stats=stats)
        pool, t = self.pool, self.options.max_new_tokens
        phase = "a" if all(j.round == 0 for j in jobs) else "c"
        reporter = _ShardProgress(progress, phase, max(j.round for j in jobs), len(jobs), self.started)
        costs = [len(j.prompt) / CHARS_PER_TOKEN + j.max_sequences * t for j in jobs]
        shards = [[jobs[k] for k in members] for members in balance(costs, pool.shard_count(len(jobs)))]
        pool.note_dispatch(phase, shards)
        wire = self.wire
        outputs = pool.dispatch(
            phase, [[j.to_dict() for j in shard] for shard in shards],
            lambda actor, name, payload: actor.run_jobs.remote(name, wire, payload, method), reporter)
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
        if self.worker_recorded is None:
            self.worker_recorded = outputs[0]["recorded"]
        return PhaseOutput(prompts=[by_index[j.index] for j in jobs], stats=stats,
                           unavailable=[unavailable.get(j.index, ()) for j in jobs])

    def recorded(self, n_prompts: int) -> dict[str, Any]:
        """The workers' own record (it holds what only a loaded model decides, e.g. the device path)."""
        return dict(self.worker_recorded or self.options.recorded(), method=self.options.method, n_prompts=n_prompts)

    def account(self, stats: RunStats, elapsed: float, outcome: Any) -> None:
        """The pool's figures: its workers, their start, the driver's time outside the busiest worker's."""
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

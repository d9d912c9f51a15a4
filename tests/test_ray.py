"""Scale-out on Ray (issue 7): the same runs on a local Ray cluster of 2 workers, real model.

The Ray tests share one pool of 2 workers (1 thread each) on a local Ray the module starts. They
skip when Ray is not installed; the Ray-less import test runs either way.

Parity: llama.cpp's CPU kernels are not batch-invariant (docs/method.md, "Numerical noise"): a token's entropy moves by
~0.02 nats with the other prompts in its batch, which can flip a branch or a sampled token. So
"the same as one process" is checked two ways: with max_live_sequences=1 (each prompt decodes
alone, so its batches do not depend on the shard) against a plain single-process run; and with
the default batching against one process running the very shards the workers ran.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import eager_cpp
from eager_cpp.engine.local import LocalExecutor
from eager_cpp.core.options import RunOptions
from eager_cpp.method.phases import PhaseOutput, merge
from eager_cpp.answers.scoring import default_scorer
from conftest import load_jsonl

pytestmark = pytest.mark.slow  # a local Ray cluster: the long end-to-end tier

HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason='Ray is not installed (pip install "eager_cpp[ray]")')

M = 4
THETA = 1.0
FIRST_LINE = default_scorer("first_line")


def settings(**kw):
    base = dict(max_sequences=M, entropy_threshold=THETA, temperature=0.6, max_new_tokens=16, stop="\n", seed=3)
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def capitals():
    rows = load_jsonl("capitals_dev_100.jsonl", limit=8)
    return [r["prompt"] for r in rows], [r["answer"] for r in rows]


@pytest.fixture(scope="module")
def pool(model_path):
    if not HAVE_RAY:
        pytest.skip("Ray is not installed")
    from eager_cpp.runner.distributed import RayWorkers

    # 4 logical CPUs on this 2-core machine: the 2 workers hold 2, the bad-path and CLI tests start more.
    workers = RayWorkers(model_path, "local", workers=2, threads_per_worker=1, num_cpus=4, keep_dispatches=True)
    yield workers
    workers.close()


def signature(result):
    return [(p.index, [(s.index, s.round, s.parent, s.branch_step, s.finish_reason, s.token_ids)
                       for s in p.sequences]) for p in result.prompts]


def round0_summaries(result):
    """Phase (a)'s summaries rebuilt from a finished run: its round-0 sequences only."""
    init = [eager_cpp.PromptResult(p.index, p.prompt, [s for s in p.sequences if s.round == 0], p.prompt_tokens,
                                   p.gold_answer) for p in result.prompts]
    return eager_cpp.summarize(init, THETA)


def check_complete(result, n):
    assert [p.index for p in result.prompts] == list(range(n))  # every prompt once, in input order
    assert all(1 <= p.n_sequences for p in result.prompts)
    assert result.stats.sequences == sum(p.n_sequences for p in result.prompts) <= M * n
    assert result.stats.generated_tokens == sum(len(s.own_tokens) for p in result.prompts for s in p.sequences)
    for p in result.prompts:
        assert [s.index for s in p.sequences] == list(range(p.n_sequences))


def busy_shard_runners(parent=None):
    """Pids of the Ray Data actors running a shard right now (Ray titles an actor process by the call it runs),
    those whose parent (a node's raylet) is `parent` when given."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if "MapBatches(_ShardRunner)).submit" in title and (parent is None or ppid == parent):
            pids.append(int(entry))
    return pids


def kill_when_busy(kill, parent=None, settle=0.5, when=lambda: True):
    """A thread that calls kill(pid) once a shard runner has been busy for `settle` s (so past its model load and
    into decoding) while `when()` holds; `killed` gets the pid."""
    killed = []

    def watch():
        deadline = time.monotonic() + 120
        seen = None
        while time.monotonic() < deadline:
            busy = busy_shard_runners(parent) if when() else []
            if busy and seen is None:
                seen = time.monotonic()
            if busy and time.monotonic() - seen >= settle:
                kill(busy[0])
                killed.append(busy[0])
                return
            time.sleep(0.05)

    return threading.Thread(target=watch), killed


@needs_ray
@pytest.mark.parametrize("method", ["parallel", "eager_init", "eager_adapt", "eager"])
def test_workers_match_one_process(pool, model, capitals, method):
    prompts, answers = capitals
    labels = dict(answers=answers, scorer=FIRST_LINE) if method == "eager" else {}
    events = []
    kw = settings(max_live_sequences=1)
    dist = eager_cpp.run(pool.model_path, prompts, method=method, cluster=pool, progress=events.append, **kw, **labels)
    single = eager_cpp.run(model, prompts, method=method, **kw, **labels)

    check_complete(dist, len(prompts))
    assert len(pool.last_shards["a"]) == 2 and sorted(sum(pool.last_shards["a"], [])) == list(range(len(prompts)))
    assert [p.n_sequences for p in dist.prompts] == [p.n_sequences for p in single.prompts]
    assert signature(dist) == signature(single)
    assert dist.settings == single.settings
    assert dist.stats.workers == 2 and single.stats.workers == 0
    assert dist.stats.prompt_tokens == single.stats.prompt_tokens
    assert (dist.stats.rounds, dist.stats.reallocated_sequences) == (single.stats.rounds,
                                                                     single.stats.reallocated_sequences)
    assert [e["phase"] for e in events][:2] == ["a", "a"] and events[1]["prompts_done"] == len(prompts)
    if method == "eager":
        assert dist.metrics()["pass@k"] == single.metrics()["pass@k"]
        assert [s.correct for p in dist.prompts for s in p.sequences] == [
            s.correct for p in single.prompts for s in p.sequences]
    if method in ("eager_adapt", "eager"):
        # The driver's plan is the pure function on the same summaries as one process.
        expected = eager_cpp.plan_reallocation(round0_summaries(single), M, method)
        assert pool.last_plan == expected
        assert expected.extras, "this setting should reallocate some budget"
        planned = {e.index: e.extra_sequences for e in expected.extras}
        outcome = dist.reallocation
        for p in dist.prompts:
            extra = sum(1 for s in p.sequences if s.round > 0)
            assert extra == outcome.produced.get(p.index, 0) <= planned.get(p.index, 0)
        assert dist.stats.unspent_sequences == expected.budget - sum(outcome.produced.values())
        assert sorted(sum(pool.last_shards["c"], [])) == sorted(planned)
    else:
        assert pool.last_plan is None and "c" not in pool.last_shards


@needs_ray
@pytest.mark.parametrize("method", ["eager_adapt", "eager"])
def test_tree_reallocation_on_workers_matches_one_process(pool, model, capitals, method):
    prompts, answers = capitals
    labels = dict(answers=answers, scorer=FIRST_LINE) if method == "eager" else {}
    kw = settings(max_live_sequences=1, reallocation="tree")
    dist = eager_cpp.run(pool.model_path, prompts, method=method, cluster=pool, **kw, **labels)
    single = eager_cpp.run(model, prompts, method=method, **kw, **labels)
    check_complete(dist, len(prompts))
    extras = [s for p in dist.prompts for s in p.sequences if s.round > 0]
    assert extras and all(s.parent is not None for s in extras)  # continuations, not fresh roots
    assert signature(dist) == signature(single)
    assert dist.settings == single.settings and dist.settings["reallocation"] == "tree"
    assert dist.stats.reprocessed_tokens == single.stats.reprocessed_tokens > 0
    assert dist.reallocation.produced == single.reallocation.produced == dist.reallocation.granted


@needs_ray
@pytest.mark.parametrize("reallocation", ["fresh", "tree"])
def test_label_free_reallocation_on_workers_matches_one_process(pool, model, capitals, reallocation):
    from eager_cpp.method.budget import plan_label_free
    from eager_cpp.method.phases import signals_of

    prompts, _ = capitals
    kw = settings(max_live_sequences=1, reallocation=reallocation, scorer=FIRST_LINE)
    dist = eager_cpp.run(pool.model_path, prompts, method="eager_label_free", cluster=pool, **kw)
    single = eager_cpp.run(model, prompts, method="eager_label_free", **kw)
    check_complete(dist, len(prompts))
    assert signature(dist) == signature(single) and dist.settings == single.settings
    init = [eager_cpp.PromptResult(p.index, p.prompt, [s for s in p.sequences if s.round == 0], p.prompt_tokens)
            for p in single.prompts]
    expected = plan_label_free(signals_of(init, THETA, FIRST_LINE, 1000), M)
    assert pool.last_plan == expected and expected.extras, "this setting should reallocate some budget"
    assert dist.reallocation.produced == single.reallocation.produced


@needs_ray
def test_default_batching_matches_the_same_shards_in_one_process(pool, model, capitals):
    prompts, _ = capitals
    kw = settings()
    dist = eager_cpp.run(pool.model_path, prompts, method="eager_adapt", cluster=pool, **kw)
    check_complete(dist, len(prompts))

    # One process, the very shards the workers ran, dispatch after dispatch: phase (a)'s shards, then
    # each reallocation try's, each shard one engine run in this process.
    executor = LocalExecutor(model, RunOptions.from_recorded(dist.settings))
    ref = [eager_cpp.PromptResult(index=i, prompt=p, sequences=[], prompt_tokens=0) for i, p in enumerate(prompts)]
    phases = [phase for phase, _ in pool.last_dispatches]
    assert phases[0] == "a" and set(phases[1:]) == {"c"}
    for phase, shards in pool.last_dispatches:
        for shard in shards:
            out = executor.run_jobs(shard, "eager_init", None)
            merge(ref, shard, PhaseOutput(prompts=out.prompts, stats=out.stats))
    plan = eager_cpp.plan_reallocation(
        eager_cpp.summarize([eager_cpp.PromptResult(p.index, p.prompt, [q for q in p.sequences if q.round == 0], 0)
                             for p in ref], THETA), M, "eager_adapt")
    assert pool.last_plan == plan and plan.extras
    expected = eager_cpp.RunResult(prompts=ref, stats=dist.stats)
    assert signature(dist) == signature(expected)

    # Against an unsharded run, each prompt in batches of its own (max_live_sequences=1): the same tokens (docs/ray.md,
    # "Exactness"). With other prompts in its batches, prefill included, its tokens move by llama.cpp's batch noise.
    alone = settings(max_live_sequences=1)
    sharded = eager_cpp.run(pool.model_path, prompts, method="eager_adapt", cluster=pool, **alone)
    single = eager_cpp.run(model, prompts, method="eager_adapt", **alone)
    assert signature(sharded) == signature(single) and sharded.stats.reallocated_sequences > 0


@needs_ray
def test_phase_a_chunks_share_one_dispatch_and_are_handed_on_in_order(pool, model, capitals):
    """The CLI's chunks (its checkpoints) on Ray: one Ray Data dispatch runs them all (its actors load the
    model once), each chunk handed on in order once its shards are back, with one process's tokens."""
    from eager_cpp.runner.driver import drive

    prompts, _ = capitals
    kw = settings(max_live_sequences=1)
    options = RunOptions.create(method="eager_init", cluster=pool, **kw)
    fresh = [eager_cpp.PromptResult(index=i, prompt=p, sequences=[], prompt_tokens=0) for i, p in enumerate(prompts)]
    handed = []
    dist = drive(pool.model_path, options, fresh, None, None, None, chunk_size=2,
                 on_chunk=lambda chunk: handed.append([p.index for p in chunk]))
    assert handed == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [phase for phase, _ in pool.last_dispatches] == ["a"] * 4  # each chunk sharded on its own
    assert len(pool.last_workers) == 2  # one actor pool for the four chunks: a dispatch each would start 8 actors
    single = eager_cpp.run(model, prompts, method="eager_init", **kw)
    assert signature(dist) == signature(single)


@needs_ray
def test_bad_model_path_fails_fast_on_the_driver(pool, capitals, tmp_path):
    import ray

    prompts, _ = capitals
    free = ray.available_resources().get("CPU")
    node = ray.util.get_node_ip_address()
    missing = tmp_path / "nowhere" / "model.gguf"
    started = time.monotonic()
    with pytest.raises(FileNotFoundError, match=rf"node {node} .*cannot open the model {missing}"):
        eager_cpp.run(str(missing), prompts[:1], cluster="local", workers=1)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        eager_cpp.run(str(junk), prompts[:1], cluster="local", workers=2)
    assert time.monotonic() - started < 60
    # The failed workers were killed: their CPUs come back (Ray frees them asynchronously).
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU") != free and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU") == free
    # The pool itself is untouched and still works.
    assert eager_cpp.run(pool.model_path, prompts[:2], cluster=pool, **settings()).stats.sequences >= 2


@needs_ray
def test_pool_rejects_other_model_and_worker_count(pool, capitals, tmp_path):
    prompts, _ = capitals
    with pytest.raises(ValueError, match="hold"):
        eager_cpp.run(str(tmp_path / "other.gguf"), prompts[:1], cluster=pool)
    with pytest.raises(ValueError, match="workers=3"):
        eager_cpp.run(pool.model_path, prompts[:1], cluster=pool, workers=3)
    with pytest.raises(ValueError, match="need cluster"):
        eager_cpp.run(pool.model_path, prompts[:1], workers=2)


@needs_ray
def test_cli_runs_on_a_running_cluster_by_address(pool, model, capitals, tmp_path):
    import ray

    prompts, answers = capitals
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(prompts, answers)))
    out = tmp_path / "out.jsonl"
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-m", "eager_cpp", "run", str(data), "-o", str(out), "--ray", address, "--workers", "2",
         "--threads", "1", "--method", "eager_adapt", "-M", str(M), "--theta", str(THETA), "--max-new-tokens", "16",
         "--stop", "\\n", "--seed", "3", "--max-live", "1", "--model", pool.model_path, "--quiet"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    single = eager_cpp.run(model, prompts, method="eager_adapt", **settings(max_live_sequences=1))
    assert [r["index"] for r in rows] == list(range(len(prompts)))
    assert [[s["token_ids"] for s in r["sequences"]] for r in rows] == [
        [s.token_ids for s in p.sequences] for p in single.prompts]
    assert [[s["round"] for s in r["sequences"]] for r in rows] == [[s.round for s in p.sequences]
                                                                    for p in single.prompts]


@needs_ray
def test_a_worker_killed_mid_run_has_its_shard_rerun(pool, model, capitals):
    """Ray Data restarts the killed actor and runs its shard again; keyed by shard and prompt, nothing twice."""
    prompts, _ = capitals
    kw = settings(max_new_tokens=24, stop=None, max_live_sequences=1)
    events = []
    killer, killed = kill_when_busy(lambda pid: os.kill(pid, signal.SIGKILL))
    killer.start()
    try:
        dist = eager_cpp.run(pool.model_path, prompts, method="parallel", cluster=pool, progress=events.append, **kw)
    finally:
        killer.join()
    assert killed, "no worker was seen mid-shard"
    assert killed[0] not in pool.last_workers  # the shard it was running came back from another process
    shards = pool.last_shards["a"]
    assert len(events) == len(shards) and sorted(e["shards_done"] for e in events) == list(range(1, len(shards) + 1))
    check_complete(dist, len(prompts))
    assert [p.n_sequences for p in dist.prompts] == [M] * len(prompts)
    single = eager_cpp.run(model, prompts, method="parallel", **kw)
    assert signature(dist) == signature(single)


@needs_ray
def test_a_worker_killed_mid_try_has_its_shard_rerun(pool, model, capitals):
    """The same in phase (c): a worker killed while it runs a reallocation try's shard; every prompt once, with
    the extras and tokens of one process."""
    prompts, _ = capitals
    kw = settings(max_sequences=8, max_live_sequences=1)  # M 8: tries long enough to be caught running
    in_a_try = lambda: any(phase == "c" for phase, _ in pool.last_dispatches)  # noqa: E731
    killer, killed = kill_when_busy(lambda pid: os.kill(pid, signal.SIGKILL), settle=0.0, when=in_a_try)
    killer.start()
    try:
        dist = eager_cpp.run(pool.model_path, prompts, method="eager_adapt", cluster=pool, **kw)
    finally:
        killer.join()
    assert killed, "no worker was seen mid-try"
    assert killed[0] not in pool.last_workers  # it returned no shard of this run: its try's shard ran again
    assert [p.index for p in dist.prompts] == list(range(len(prompts)))
    single = eager_cpp.run(model, prompts, method="eager_adapt", **kw)
    assert dist.stats.reallocated_sequences == single.stats.reallocated_sequences > 0
    assert signature(dist) == signature(single)


@needs_ray
def test_ctrl_c_on_the_driver_kills_the_workers(pool, capitals):
    from eager_cpp.runner.distributed import RayWorkers

    prompts, _ = capitals
    own = RayWorkers(pool.model_path, "local", workers=1)  # Ray is the fixture's: only this run's actor goes
    sent = []
    # As Ctrl-C: KeyboardInterrupt in the main thread, once the run's actor decodes.
    interrupter, busy = kill_when_busy(lambda pid: (sent.append(time.monotonic()), os.kill(os.getpid(), signal.SIGINT)))

    # A suite started in the background passes SIGINT down ignored: restore Python's handler, as a
    # foreground process that gets a user's Ctrl-C has it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    interrupter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            eager_cpp.run(own.model_path, prompts, method="parallel", cluster=own, **settings(max_new_tokens=64,
                                                                                                  stop=None))
    finally:
        interrupter.join()
        signal.signal(signal.SIGINT, previous)
    assert sent and time.monotonic() - sent[0] < 10
    assert "closed" in repr(own)
    pid = busy[0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail(f"worker process {pid} still alive after Ctrl-C")


def test_import_without_ray_works_and_cluster_names_the_extra(model_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed: `import ray` raises ImportError
        import eager_cpp, eager_cpp.runner.distributed
        try:
            eager_cpp.run(sys.argv[1], ["Country: Peru\\nCapital:"], cluster="local")
        except ImportError as e:
            print("ImportError:", e)
        else:
            raise SystemExit("cluster= without Ray did not raise")
    """)
    proc = subprocess.run([sys.executable, "-c", code, model_path], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "eager_cpp[ray]"' in proc.stdout
    if HAVE_RAY:  # installed, Ray is still not imported until a cluster is asked for
        proc = subprocess.run([sys.executable, "-c", "import sys, eager_cpp, eager_cpp.runner.distributed; "
                               "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "[]"


NODE_LOSS_SCRIPT = textwrap.dedent("""
    import json, sys, threading, time
    import ray
    from ray.cluster_utils import Cluster
    import eager_cpp
    from eager_cpp.runner.distributed import RayWorkers

    model_path, prompts, helpers = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    exec(helpers)  # busy_shard_runners, from the test module
    kw = dict(max_sequences=4, entropy_threshold=1.0, temperature=0.6, max_new_tokens=24, seed=3,
              max_live_sequences=1)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    second = cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, logging_level="ERROR")
    cluster.wait_for_nodes()
    pool = RayWorkers(model_path, cluster.address, workers=2, threads_per_worker=1, max_shard_prompts=2)
    raylet = second.all_processes["raylet"][0].process.pid  # the second node's workers are its children
    removed = []

    def remove_a_busy_node():
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if busy_shard_runners(parent=raylet):
                time.sleep(0.5)  # into its shard's decoding
                cluster.remove_node(second)  # the whole node: raylet and worker process
                removed.append(second.node_id)
                cluster.add_node(num_cpus=1)  # room for the restarted actor
                return
            time.sleep(0.05)

    t = threading.Thread(target=remove_a_busy_node)
    t.start()
    dist = eager_cpp.run(model_path, prompts, method="eager_init", cluster=pool, **kw)
    t.join()
    model = eager_cpp.Model(model_path, n_threads=1)
    single = eager_cpp.run(model, prompts, method="eager_init", **kw)
    sig = lambda r: [[(s.index, s.parent, s.branch_step, s.token_ids) for s in p.sequences] for p in r.prompts]
    nodes = {w["node_id"] for w in pool.last_workers.values()}
    print(json.dumps({"removed": removed, "same": sig(dist) == sig(single), "indices": [p.index for p in dist.prompts],
                      "shards": len(pool.last_shards["a"]), "nodes": len(nodes),
                      "removed_node_returned": second.node_id in nodes}))
    pool.close()
    ray.shutdown()
    cluster.shutdown()
""")


@needs_ray
@pytest.mark.slow
def test_losing_a_node_mid_run_reruns_its_shard(model_path, capitals):
    """A two-node cluster on this machine (ray.cluster_utils.Cluster): one node removed while its worker
    runs a shard; its shard runs again on another actor, and the run completes with every prompt once and
    equals one process."""
    prompts, _ = capitals
    helpers = "import os\n" + inspect.getsource(busy_shard_runners)
    proc = subprocess.run([sys.executable, "-c", NODE_LOSS_SCRIPT, model_path, json.dumps(prompts), helpers],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["removed"], "no worker on the second node was seen mid-shard"
    # Its shard came back from another actor (the head's, or the one restarted on the added node).
    assert not report["removed_node_returned"] and report["shards"] == 4, report
    assert report["indices"] == list(range(len(prompts)))
    assert report["same"]


@needs_ray
def test_a_prompt_too_long_fails_on_the_driver_before_any_shard(pool, capitals):
    prompts, _ = capitals
    with pytest.raises(ValueError, match="prompt 1 is .* tokens; with max_new_tokens=100 "):
        eager_cpp.run(pool.model_path, [prompts[0], prompts[1] * 3000], cluster=pool, max_new_tokens=100)
    assert pool.last_dispatches == []  # nothing was dispatched

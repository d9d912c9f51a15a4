"""RunOptions: one default per option, one check per option, a versioned recorded form."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import pytest

import eager_cpp
from eager_cpp.core.options import MAX_SEQUENCES, RunOptions, spec_of


def test_run_without_options_runs_the_options_defaults(model):
    # run()'s arguments left out (None for those a preset may set) end as RunOptions' defaults in the record.
    r = eager_cpp.run(model, ["Country: Peru\nCapital:"], stop="\n")
    # device_topk: None resolves to the model's placement (no GPU here: off).
    assert r.settings == {**RunOptions(stop=("\n",), device_topk=False).recorded(1), "stop": ["\n"]}
    params = inspect.signature(eager_cpp.run).parameters
    for name in RunOptions.names():
        if name in params and params[name].default is not None:
            assert (params[name].default if name != "stop" else ()) == getattr(RunOptions(), name), name


def test_limits_come_from_the_engine():
    from eager_cpp import _core

    assert MAX_SEQUENCES == _core.MAX_SEQUENCES == 256


def engine_fields(config) -> dict:
    """Every field of an engine config (the sampling parameters' too), as plain values."""
    out = {}
    for name in dir(config):
        if name.startswith("_"):
            continue
        value = getattr(config, name)
        if name == "sampling":
            out.update({f"sampling.{k}": getattr(value, k) for k in dir(value) if not k.startswith("_")})
        else:
            out[name] = list(value) if isinstance(value, list) else value
    return out


def test_the_engine_defaults_are_the_options_defaults(model):
    # One source of defaults: RunOptions sets every field of the engine's config, and the C++ struct's own
    # defaults agree with it, so a caller of the core with a bare EngineConfig gets what eager_cpp.run gives.
    from eager_cpp import _core
    from eager_cpp.engine.local import engine_config

    mine = engine_fields(engine_config(RunOptions(), eager_cpp.Model(model.path)))
    core = engine_fields(_core.EngineConfig())
    assert set(mine) == set(core) and len(core) >= 25
    assert {k: v for k, v in mine.items() if core[k] != v} == {}


def test_recorded_form_round_trips_and_is_versioned():
    opts = RunOptions.create(method="eager", max_sequences=4, stop="\n", top_p=0.9, n_threads=2, device_topk=False)
    d = opts.recorded(3)
    assert d["options_version"] == RunOptions.VERSION and d["n_prompts"] == 3 and d["stop"] == ["\n"]
    assert "n_threads" not in d  # where it ran, not what it sampled
    assert RunOptions.from_recorded(d) == RunOptions.create(method="eager", max_sequences=4, stop="\n", top_p=0.9,
                                                        device_topk=False)
    # Version 1 (no options_version) predates the device path: it ran on the host kernel.
    old = {k: v for k, v in d.items() if k not in ("options_version", "device_topk")}
    assert RunOptions.from_recorded(old).device_topk is False
    with pytest.raises(ValueError, match="newer eager_cpp"):
        RunOptions.from_recorded(dict(d, options_version=RunOptions.VERSION + 1))
    # Version 2 predates tree reallocation: its reallocating runs started fresh.
    v2 = {k: v for k, v in dict(d, options_version=2).items() if k != "reallocation"}
    assert RunOptions.from_recorded(v2).reallocation == "fresh"


def test_prompt_prefix_sharing_is_opt_in_and_old_results_replay_without_it():
    # Sharing makes a prompt's samples depend on the prompt before it (docs/method.md, Departures).
    assert RunOptions().share_prompt_prefixes is False
    assert RunOptions.create().recorded(1)["share_prompt_prefixes"] is False
    d = RunOptions.create(share_prompt_prefixes=True).recorded(1)
    assert RunOptions.from_recorded(d).share_prompt_prefixes is True  # recorded on: replays on
    before = {k: v for k, v in dict(d, options_version=3).items() if k != "share_prompt_prefixes"}
    assert RunOptions.from_recorded(before).share_prompt_prefixes is False  # before the option: never shared
    assert RunOptions.from_recorded(dict(d, options_version=3)).share_prompt_prefixes is True


def test_results_from_before_the_rules_replay_with_eager_cpps_and_newer_ones_are_refused():
    d = RunOptions.create(rules="reference").recorded(1)
    assert RunOptions.from_recorded(d).rules == "reference"
    before = {k: v for k, v in dict(d, options_version=4).items() if k not in ("rules", "preset")}
    assert RunOptions.from_recorded(before).rules == "eager_cpp"
    # A reader that predates a recorded option must refuse the record, not drop the option silently.
    with pytest.raises(ValueError, match="newer eager_cpp"):
        RunOptions.from_recorded(dict(d, options_version=RunOptions.VERSION + 1))


@pytest.mark.parametrize("name, value, error, match", [
    ("entropy_threshold", "1.0", TypeError, "entropy_threshold must be a number"),
    ("max_sequences", "8", TypeError, "max_sequences must be an int"),
    ("temperature", 1e40, ValueError, "temperature must be a finite number"),
    ("temperature", math.nan, ValueError, "temperature must be a finite number"),
    ("seed", 2**64, ValueError, "seed must be between 0 and"),
    ("top_k", 2**40, ValueError, "top_k must be between 0 and"),
    ("max_new_tokens", 2**40, ValueError, "max_new_tokens must be between 1 and"),
    ("n_ctx", 2**40, ValueError, "n_ctx must be between 1 and"),
    ("n_threads", 100_000, ValueError, "n_threads must be between 1 and 512"),
    ("max_sequences", 257, ValueError, "max_sequences must be between 1 and 256"),
    ("top_p", 0.0, ValueError, r"top_p must be a finite number in \(0.0, 1.0\]"),
    ("record_entropies", "yes", TypeError, "record_entropies must be True or False"),
    ("method", "beam", ValueError, "unknown method 'beam'"),
    ("reallocation", "forest", ValueError, "unknown reallocation 'forest'"),
    ("stop", 5, TypeError, "stop must be a string or a list of strings"),
    ("stop", [""], ValueError, "non-empty"),
])
def test_every_option_is_checked_with_a_clear_message(name, value, error, match):
    with pytest.raises(error, match=match):
        RunOptions.create(**{name: value})


def test_unknown_option_names_the_known_ones(model):
    with pytest.raises(TypeError, match=r"unknown option 'temprature'; run options are: method, max_sequences"):
        eager_cpp.run(model, ["x"], temprature=0.5)
    # Checked before anything runs, whatever the prompts.
    with pytest.raises(ValueError, match="seed must be between"):
        eager_cpp.run(model, ["Country: Peru\nCapital:"], seed=2**64)


def test_reallocate_rejects_what_is_not_a_result(model):
    with pytest.raises(TypeError, match="RunResult of an eager_init run"):
        eager_cpp.reallocate(model, None)


@pytest.mark.parametrize("call, error, match", [
    (lambda m: eager_cpp.run(m, ["\ud800"]), ValueError, "prompt 0 is not valid Unicode"),
    (lambda m: eager_cpp.run(m, b"hi"), TypeError, "not bytes"),
    (lambda m: eager_cpp.run(m, ["a"], prompt_indices=[2**64]), ValueError, "prompt_indices must be"),
    (lambda m: eager_cpp.run(m, ["a"], answers="Paris"), TypeError, "answers must be a list"),
    (lambda m: m.detokenize([-1]), ValueError, r"token ids must be ints in \[0, 262144\)"),
    (lambda m: m.tokenize(b"x"), TypeError, "text must be a str"),
    (lambda m: eager_cpp.reallocate(m, None), TypeError, "RunResult"),
])
def test_bad_input_says_what_is_wrong(model, call, error, match):
    with pytest.raises(error, match=match):
        call(model)


def test_the_vocabularys_limits_are_the_engines():
    """vocabulary.py imports no extension (options, phases and tree stay pure): its limits are checked here."""
    from eager_cpp import _core
    from eager_cpp.core import vocabulary
    from eager_cpp.method.tree import MAX_RANKED_TOKENS

    assert vocabulary.MAX_SEQUENCES == _core.MAX_SEQUENCES
    assert vocabulary.MAX_ENTROPY_TOP_K == MAX_RANKED_TOKENS == _core.MAX_ENTROPY_TOP_K
    assert set(vocabulary.THRESHOLD_MODES) == {m.name.lower() for m in _core.ThresholdMode.__members__.values()}
    assert {vocabulary.Method(m).engine_method for m in vocabulary.METHODS} == {
        m.name.lower() for m in _core.Method.__members__.values()}


def test_the_pure_layers_import_no_extension():
    """options, vocabulary, phases, budget, tree and the checkpoint load without eager_cpp._core."""
    import subprocess
    import sys

    code = ("import sys, types, importlib.util, pathlib\n"
            "spec = importlib.util.find_spec('eager_cpp')\n"
            "pkg = types.ModuleType('eager_cpp'); pkg.__path__ = list(spec.submodule_search_locations)\n"
            "sys.modules['eager_cpp'] = pkg\n"
            "for m in ('core.vocabulary', 'core.options', 'method.phases', 'method.budget', 'method.tree',"
            "          'files.checkpoint', 'core.jobs'):\n"
            "    importlib.import_module('eager_cpp.' + m)\n"
            "assert 'eager_cpp._core' not in sys.modules, sorted(sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_cli_has_a_flag_for_every_option_and_takes_its_defaults_from_them():
    from eager_cpp.cli import build_parser
    from eager_cpp.cli.flags import flag_of, given_options

    text = " ".join(subprocess.run([sys.executable, "-m", "eager_cpp", "run", "--help"], capture_output=True,
                                   text=True, timeout=120).stdout.split())
    for name in RunOptions.names():
        assert flag_of(name) in text and f"option {name};" in text, name
    args = build_parser().parse_args(["run", "in.txt", "-o", "out.jsonl"])
    assert given_options(args) == {} and RunOptions.create(**given_options(args)) == RunOptions.create()


def bad_value(name: str):
    """A value each option's check refuses, as a command-line argument (None: a flag that takes none)."""
    spec = spec_of(name)
    kind = spec.value or type(getattr(RunOptions(), name))
    if kind is bool:
        return None
    if spec.choices or name == "label_free_signals":
        return "bogus"
    if kind in (int, float):
        return "-5" if spec.low is not None and spec.low > -5 else "x"
    return {"stop": "", "kv_memory": "12 parsecs", "cluster": ""}.get(name)


@pytest.mark.parametrize("name", RunOptions.names())
def test_a_bad_value_of_every_flag_is_one_error_line_naming_it(name, tmp_path):
    from eager_cpp.cli.flags import flag_of

    value = bad_value(name)
    if value is None and name in ("think_end_marker", "chat_template"):
        pytest.skip(f"{name}: every text is a valid value")
    flag = flag_of(name)
    argv = [f"{flag}=x"] if value is None else [f"{flag}={value}"]
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    proc = subprocess.run([sys.executable, "-m", "eager_cpp", "run", str(prompts), "-o", str(tmp_path / "o.jsonl"),
                           *argv], capture_output=True, text=True, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("eager-cpp: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and flag in errors[0], (argv, proc.stderr)
    assert "Traceback" not in proc.stderr and not (tmp_path / "o.jsonl").exists()


def test_the_wire_form_carries_every_option_but_the_drivers_own():
    opts = RunOptions.create(method="eager", max_sequences=5, n_ctx=4096, kv_memory="1GiB", n_threads=3,
                             cluster="local", workers=2)
    wire = opts.wire()
    names = dict(wire.values)
    assert set(names) == set(RunOptions.names()) - set(RunOptions.with_role("driver"))
    # The placement the record leaves out still reaches the workers; the driver's own fields do not.
    assert names["n_ctx"] == 4096 and names["kv_memory"] == "1GiB" and names["n_threads"] == 3
    back = RunOptions.from_wire(wire)
    assert back == RunOptions.create(method="eager", max_sequences=5, n_ctx=4096, kv_memory="1GiB", n_threads=3)
    with pytest.raises(TypeError, match="WireOptions"):
        RunOptions.from_wire(opts.recorded(1))  # the recorded form is not the wire form


def test_an_option_added_to_the_options_reaches_a_worker(model_path, monkeypatch):
    """A field added to RunOptions travels to the Ray actors in the wire form with no second list to edit.

    The actor's UDF class runs here in-process (a Ray worker process would import the unpatched package).
    """
    import dataclasses
    import json
    import sys

    from eager_cpp.runner import distributed
    from eager_cpp.method.phases import PhaseJob

    # The actor asks Ray for its node, which would start a Ray for this process as a side effect (and
    # leave the Ray tests a cluster of other CPUs): here it answers with the host name instead.
    monkeypatch.setitem(sys.modules, "ray", None)

    Extended = dataclasses.make_dataclass("RunOptions", [("new_option", int, dataclasses.field(default=0))],
                                          bases=(RunOptions,), frozen=True)
    monkeypatch.setattr(distributed, "RunOptions", Extended)
    opts = Extended.create(method="eager_init", max_sequences=2, max_new_tokens=3, new_option=7, n_threads=1)
    placement = dict(path=model_path, n_threads=1)
    checked = distributed._check_prompts_on_a_worker(placement, opts.wire(), [(0, "Country: Peru\nCapital:")])
    assert checked["error"] is None and checked["checked"][0] > 0
    runner = distributed._runner_class(placement, opts.wire(), "eager_init")()  # as Ray Data's actor makes it
    out = runner.run_shard(json.dumps([PhaseJob(0, "Country: Peru\nCapital:", 2, 1.0).to_dict()]))
    assert out["recorded"]["new_option"] == 7  # the worker's own options had it
    assert len(out["prompts"]) == 1

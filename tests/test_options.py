"""RunOptions: one default per option, one check per option, a versioned recorded form."""

from __future__ import annotations

import inspect
import math

import pytest

import eager_cpp
from eager_cpp.options import MAX_SEQUENCES, RunOptions


def test_run_defaults_are_the_options_defaults():
    params = inspect.signature(eager_cpp.run).parameters
    defaults = RunOptions()
    for name in RunOptions.names():
        if name in params:
            default = params[name].default
            assert (default if name != "stop" else (default or ())) == getattr(defaults, name), name


def test_limits_come_from_the_engine():
    from eager_cpp import _core

    assert MAX_SEQUENCES == _core.MAX_SEQUENCES == 256
    assert _core.EngineConfig().device_candidates == RunOptions().device_candidates


def test_recorded_form_round_trips_and_is_versioned():
    opts = RunOptions.create(method="eager", max_sequences=4, stop="\n", top_p=0.9, n_threads=2, device_topk=False)
    d = opts.recorded(3)
    assert d["options_version"] == RunOptions.VERSION and d["n_prompts"] == 3 and d["stop"] == ["\n"]
    assert "n_threads" not in d  # where it ran, not what it sampled
    assert RunOptions.from_dict(d) == RunOptions.create(method="eager", max_sequences=4, stop="\n", top_p=0.9,
                                                        device_topk=False)
    # Version 1 (no options_version) predates the device path: it ran on the host kernel.
    old = {k: v for k, v in d.items() if k not in ("options_version", "device_topk")}
    assert RunOptions.from_dict(old).device_topk is False
    with pytest.raises(ValueError, match="newer eager_cpp"):
        RunOptions.from_dict(dict(d, options_version=RunOptions.VERSION + 1))
    # Version 2 predates tree reallocation: its reallocating runs started fresh.
    v2 = {k: v for k, v in dict(d, options_version=2).items() if k != "reallocation"}
    assert RunOptions.from_dict(v2).reallocation == "fresh"


def test_prompt_prefix_sharing_is_opt_in_and_old_results_replay_without_it():
    # Sharing makes a prompt's samples depend on the prompt before it (docs/method.md, Departures).
    assert RunOptions.VERSION == 4
    assert RunOptions().share_prompt_prefixes is False
    assert RunOptions.create().recorded(1)["share_prompt_prefixes"] is False
    d = RunOptions.create(share_prompt_prefixes=True).recorded(1)
    assert RunOptions.from_dict(d).share_prompt_prefixes is True  # recorded on: replays on
    before = {k: v for k, v in dict(d, options_version=3).items() if k != "share_prompt_prefixes"}
    assert RunOptions.from_dict(before).share_prompt_prefixes is False  # before the option: never shared
    assert RunOptions.from_dict(dict(d, options_version=3)).share_prompt_prefixes is True


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


def test_the_phase_pipelines_per_job_limit_is_the_engines():
    from eager_cpp import _core
    from eager_cpp.phases import MAX_SEQUENCES_PER_JOB

    assert MAX_SEQUENCES_PER_JOB == _core.MAX_SEQUENCES  # phases.py imports no extension: checked here

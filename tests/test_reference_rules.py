"""rules="reference": the authors' code's cap check, answer matching and retry loop; preset="paper"."""

from __future__ import annotations

import subprocess
import sys

import pytest

import eager_cpp
from eager_cpp import _core
from eager_cpp.core.options import PRESETS, RunOptions
from eager_cpp.method.phases import summarize
from eager_cpp.answers.reference import reference_consensus, reference_correct, reference_solved
from eager_cpp.core.results import PromptResult, RunResult, Sequence
from eager_cpp.answers.scoring import AnswerScorer

Policies = _core.policies


def branching_rows(cap_rule, n_at_start: int, entropies: list[float], max_sequences: int, theta: float = 1.0) -> list[int]:
    """One step of one prompt as the engine runs it: rows in sequence order, each asked may_branch (with
    its position and the count at the step's start) and branches; returns the rows that branched."""
    policy = Policies.BranchPolicy(_core.Method.EAGER_INIT, _core.ThresholdMode.FIXED, 1000, cap_rule)
    state = Policies.BranchState()
    n_now, branched = n_at_start, []
    for position, entropy in enumerate(entropies):
        may = policy.may_branch(state, False, n_now, max_sequences, row_position=position, at_step_start=n_at_start)
        if may and policy.branches(entropy, 1, 2, theta, state):
            n_now += 1
            branched.append(position)
    return branched


def test_the_reference_cap_is_a_test_on_the_rows_position():
    # M = 8, five sequences live when the step begins; the first two rows are sure, the last three cross θ.
    # The reference lets row i branch only while 5 + i < 8: row 2 only. eager_cpp: until the prompt has 8.
    entropies = [0.1, 0.1, 2.5, 2.5, 2.5]
    assert branching_rows(_core.CapRule.ROW, 5, entropies, 8) == [2]
    assert branching_rows(_core.CapRule.PROMPT, 5, entropies, 8) == [2, 3, 4]
    # Finished sequences count at the step's start: with 2 of 7 finished, 5 live, row 0 of the live ones is
    # at 7 + 0 < 8; row 1 is past it.
    assert branching_rows(_core.CapRule.ROW, 7, [2.5, 2.5], 8) == [0]
    assert branching_rows(_core.CapRule.PROMPT, 7, [2.5, 2.5], 8) == [0]


def test_the_engine_branches_as_the_reference_counts(model):
    """Every branch of a rules="reference" run passes the reference's check, (sequences born before the
    step) + (the parent's position among the step's rows, by index) < M; eager_cpp's own rule breaks it."""
    prompts = ["Question: Name a colour.\nAnswer:", "Once upon a time", "The best way to learn is",
               "Question: What is 7 times 8?\nAnswer:", "List three animals:", "My favourite food is"]
    M = 6

    def violations(rules: str) -> tuple[int, int]:
        r = eager_cpp.run(model, prompts, method="eager_init", max_sequences=M, entropy_threshold=0.8,
                          max_new_tokens=24, ignore_eos=True, seed=1, rules=rules, think_end_marker=None)
        branches = bad = 0
        for p in r.prompts:
            assert all(len(s.token_ids) == 24 for s in p.sequences)  # lockstep: every sequence to the end
            for s in p.sequences[1:]:
                t = s.branch_step  # the parent was a row of step t; the child's first token is token t
                born_before = [q.index for q in p.sequences if q.parent is None or q.branch_step < t]
                position = sorted(born_before).index(s.parent)  # all of them are rows (none has ended)
                branches += 1
                bad += len(born_before) + position >= M
        return branches, bad

    branches, bad = violations("reference")
    assert branches >= 10 and bad == 0
    branches, bad = violations("eager_cpp")
    assert branches >= 10 and bad > 0  # the check above can fail: the default rule branches past it


def test_reference_matching():
    # Pass@k's test: an int compares by value; anything else equal or containing the target.
    assert reference_correct("x = 5", "5") and reference_correct("$18", "18") and reference_correct("5.0", "5")
    assert not reference_correct("25", "5")  # an int: by value, no substring
    assert not reference_correct("18", "18.0")  # "18.0" is a string target: an int never equals it
    assert reference_correct("Paris, France", "Paris") and not reference_correct("Lyon", "Paris")
    assert not reference_correct(None, "5") and not reference_correct("", "5")
    # eager_cpp's matching differs on exactly these.
    from eager_cpp.answers.scoring import answers_match
    assert not answers_match("x = 5", "5") and answers_match("18", "18.0")
    # Cons@k: the most common normalised answer, first seen on a tie, then equality (no substring).
    assert not reference_consensus(["5", "x=5", "x = 5"], "5")
    assert reference_consensus(["5", "x=5", "5"], "5") and reference_consensus(["7", "5", "5", "7"], "7")
    assert not reference_consensus([None, ""], "5")
    # Full EAGer's unsolved set: exact membership of the target's string; a "none" target is never unsolved.
    assert not reference_solved(["18 ", "18.0"], "18") and reference_solved(["3", "18"], "18")
    assert reference_solved([], "None")


def _prompt(index: int, answers: list[str], gold: str, correct: bool) -> PromptResult:
    seqs = [Sequence(index=k, text=a, token_ids=[1], own_tokens=[1], entropies=[0.0], parent=None if k == 0 else 0,
                     branch_step=0 if k == 0 else 1, finish_reason="stop", answer=a, correct=correct)
            for k, a in enumerate(answers)]
    return PromptResult(index=index, prompt="q", sequences=seqs, prompt_tokens=1, gold_answer=gold)


def test_the_unsolved_set_under_each_rule():
    results = [_prompt(0, ["18 "], "18", True), _prompt(1, ["x"], "none", False), _prompt(2, ["7"], "7", True)]
    assert [s.solved for s in summarize(results, 1.0)] == [True, False, True]
    assert [s.solved for s in summarize(results, 1.0, "reference")] == [False, True, True]


def test_a_run_scores_with_the_rules_matching(model):
    # The capital is "Paris"; a gold "Par" is a substring of it: correct under the reference's matching only.
    kw = dict(method="parallel", max_sequences=1, temperature=0.0, max_new_tokens=4, stop="\n",
              answers=["Par"], scorer=AnswerScorer("first_line"))
    mine = eager_cpp.run(model, ["Country: France\nCapital:"], **kw)
    theirs = eager_cpp.run(model, ["Country: France\nCapital:"], rules="reference", **kw)
    assert mine.prompts[0].sequences[0].answer == theirs.prompts[0].sequences[0].answer == "Paris"
    assert mine.prompts[0].sequences[0].correct is False and theirs.prompts[0].sequences[0].correct is True
    assert theirs.settings["rules"] == "reference" and mine.settings["rules"] == "eager_cpp"


def test_the_reference_retry_loop_has_no_try_cap(model):
    # θ far above any entropy: every try makes exactly one sequence. M = 12, two unsolved prompts: eᵢ = 11 each.
    # eager_cpp stops after 8 tries (3 each unspent); the reference loops until all 11 are made.
    kw = dict(method="eager", max_sequences=12, entropy_threshold=100.0, max_new_tokens=2, ignore_eos=True,
              answers=["zzz", "zzz"])
    prompts = ["Country: Peru\nCapital:", "Country: Chile\nCapital:"]
    mine = eager_cpp.run(model, prompts, **kw)
    theirs = eager_cpp.run(model, prompts, rules="reference", **kw)
    assert mine.stats.reallocation_tries == 8 and mine.stats.unspent_sequences == 6
    assert [p.n_sequences for p in mine.prompts] == [9, 9]
    assert theirs.stats.reallocation_tries == 11 and theirs.stats.unspent_sequences == 0
    assert [p.n_sequences for p in theirs.prompts] == [12, 12]


def test_the_paper_preset_and_explicit_options_over_it():
    opts = RunOptions.create(preset="paper")
    assert (opts.chat, opts.max_sequences, opts.max_new_tokens, opts.temperature, opts.entropy_threshold,
            opts.threshold_mode, opts.rules) == (True, 32, 32000, 0.6, 2.5, "p99", "reference")
    assert RunOptions.create(preset="paper", max_sequences=4, rules="eager_cpp").max_sequences == 4
    assert RunOptions.create(preset="paper", max_sequences=4, rules="eager_cpp").rules == "eager_cpp"
    assert opts.recorded()["preset"] == "paper"
    assert RunOptions.from_recorded(opts.recorded()) == opts
    assert set(PRESETS["paper"]) <= set(RunOptions.names())


@pytest.mark.parametrize("bad, names", [(dict(preset="vllm"), "'paper'"), (dict(rules="authors"), "'eager_cpp', 'reference'")])
def test_unknown_preset_or_rules_names_the_accepted_ones(bad, names):
    with pytest.raises(ValueError, match=names):
        RunOptions.create(**bad)


def test_reference_rules_refuse_tree_reallocation():
    with pytest.raises(ValueError, match="reallocation=\"tree\""):
        RunOptions.create(method="eager_adapt", rules="reference", reallocation="tree")


def test_run_with_the_preset_records_it(model):
    # The base model has no chat template of its own: the preset turns chat on, a built-in one serves.
    r = eager_cpp.run(model, ["Country: Peru\nCapital:"], preset="paper", method="parallel", max_sequences=2,
                      max_new_tokens=3, chat_template="gemma")
    s = r.settings
    assert (s["preset"], s["chat"], s["max_sequences"], s["max_new_tokens"], s["threshold_mode"], s["rules"],
            s["temperature"], s["entropy_threshold"]) == ("paper", True, 2, 3, "p99", "reference", 0.6, 2.5)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eager_cpp", *args], capture_output=True, text=True, timeout=600)


def test_the_cli_help_shows_what_the_preset_sets():
    out = cli("run", "--help").stdout.replace("\n", " ")
    for name, value in PRESETS["paper"].items():
        assert f"{name}={value!r}" in " ".join(out.split()), name


@pytest.mark.parametrize("flag, value", [("--preset", "vllm"), ("--rules", "authors")])
def test_the_cli_refuses_an_unknown_preset_or_rules_in_one_line(flag, value, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    proc = cli("run", str(prompts), "-o", str(tmp_path / "o.jsonl"), flag, value)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(errors) == 1 and flag in errors[0] and "Traceback" not in proc.stderr


def test_the_cli_preset_fills_only_the_flags_not_given(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Country: Peru\\nCapital:\n")
    out = tmp_path / "o.jsonl"
    proc = cli("run", str(prompts), "-o", str(out), "--preset", "paper", "--chat-template", "gemma", "-M", "2",
               "--max-new-tokens", "3", "--method", "parallel", "--quiet")
    assert proc.returncode == 0, proc.stderr
    settings = RunResult.from_jsonl(out).settings
    assert (settings["preset"], settings["max_sequences"], settings["max_new_tokens"], settings["chat"],
            settings["rules"], settings["threshold_mode"]) == ("paper", 2, 3, True, "reference", "p99")

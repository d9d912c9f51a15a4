"""Result types of `eager_cpp.run` and their serialisation."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

from ..answers.metrics import consensus, run_metrics
from ..answers.scoring import score_prompts
from ..files.textfiles import read_lines


@dataclass
class Sequence:
    """One generated sequence of a prompt.

    token_ids holds every generated token, the prefix inherited from the parent included;
    own_tokens only those it generated itself (what #T counts), from index branch_step on. A sequence
    of tree reallocation has as parent the sequence whose tree it continues, and inherits its prefix
    from there (prefilled again: RunStats.reprocessed_tokens, not #T).
    """

    index: int
    text: str
    token_ids: list[int]
    own_tokens: list[int]
    entropies: list[float]
    parent: Optional[int]
    branch_step: int
    finish_reason: str
    round: int = 0  # 0: EAGer-init / Full Parallel; t: extra sequences of the t-th reallocation try
    branch_entropy: Optional[float] = None
    answer: Optional[str] = None
    correct: Optional[bool] = None
    marker_step: Optional[int] = None  # index in token_ids of the token that completed the end-of-thinking marker


@dataclass
class PromptResult:
    index: int
    prompt: str
    sequences: list[Sequence]
    prompt_tokens: int
    gold_answer: Optional[str] = None
    steps: int = 0  # engine steps (one token for each live sequence) the prompt was live for, over all its runs

    @property
    def n_sequences(self) -> int:
        return len(self.sequences)

    @property
    def generated_tokens(self) -> int:
        return sum(len(s.own_tokens) for s in self.sequences)

    def extend(self, more: "PromptResult", sequences: bool = True) -> None:
        """Adds a later run of this prompt (a reallocation try): its steps and, unless `sequences` is False (they
        are kept elsewhere), its sequences."""
        if sequences:
            self.sequences.extend(more.sequences)
        self.steps += more.steps
        if not self.prompt_tokens:
            self.prompt_tokens = more.prompt_tokens


@dataclass
class RunStats:
    method: str
    generated_tokens: int = 0  # #T: a shared prefix counted once
    prompt_tokens: int = 0     # each prompt counted once per run it was prefilled in
    reprocessed_tokens: int = 0  # tree reallocation: prefixes of continued trees prefilled again (not #T)
    shared_prompt_tokens: int = 0  # prompt tokens copied from an earlier prompt's KV cells instead of prefilled
    sequences: int = 0
    wall_seconds: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    row_kernel_seconds: float = 0.0
    bookkeeping_seconds: float = 0.0
    steps: int = 0
    rounds: int = 1
    max_live_sequences: int = 0
    reallocated_sequences: int = 0
    # KV memory (docs/long-generations.md): the cells the budget bought (or kv_memory "auto" grew to),
    # the most the sequences held at once, the times "auto" doubled the cache, the prompts (or, in the
    # only prompt running, sequences) paused because the cache was full or, when every length is known,
    # held back before they started (nothing to recompute), and the tokens prefilled again when they
    # resumed (not #T).
    kv_cells: int = 0
    peak_kv_cells: int = 0
    kv_grows: int = 0
    preemptions: int = 0
    recomputed_tokens: int = 0
    # Why "auto" stopped growing below its budget: llama.cpp could not allocate the larger cache, so the run
    # kept the cells it had as its ceiling and went on preempting within them ("" when it never happened).
    kv_ceiling_lowered: str = ""
    # The KV layout the engine used ("unified" or "per_sequence": what kv_layout "auto" chose); runs of one
    # result that used both read "per_sequence+unified".
    kv_layout: str = ""
    # Device path only (device_topk): the largest probability mass of a row outside its
    # candidates, which sampling could not reach; 0 on the host kernel.
    device_dropped_mass_max: float = 0.0
    # Ray runs only (eager_cpp.runner.distributed); 0 in this process. The engine times above are summed
    # over the workers; wall_seconds is the driver's, from the workers being ready to the result.
    workers: int = 0
    worker_start_seconds: float = 0.0  # starting the workers and loading the model (not in wall_seconds)
    ray_overhead_seconds: float = 0.0  # wall_seconds minus, per phase, the busiest worker's time in it
    # Reallocating methods only: the saved budget b, the tries that spent it and what they left.
    reallocation_budget: int = 0
    reallocation_tries: int = 0
    unspent_sequences: int = 0
    reallocated_length_ended: int = 0  # extras that ended with "length" (no room left for an answer)
    unavailable_seeds: int = 0  # tree seeds whose point had no allowed token left (dropped; in unspent)
    reallocation_error: str = ""  # the failure that ended the tries early ("" when none did)

    # Engine figures that add up over the engine runs of one run (and over Ray shards), and those that peak.
    SUMMED = ("prompt_tokens", "shared_prompt_tokens", "reprocessed_tokens", "prefill_seconds", "decode_seconds", "row_kernel_seconds", "bookkeeping_seconds", "steps", "kv_grows", "preemptions", "recomputed_tokens")
    PEAKED = ("max_live_sequences", "device_dropped_mass_max", "kv_cells", "peak_kv_cells")

    def merge(self, other: "RunStats") -> None:
        """Fold another engine run's figures into these."""
        for key in self.SUMMED:
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for key in self.PEAKED:
            setattr(self, key, max(getattr(self, key), getattr(other, key)))
        self.kv_ceiling_lowered = self.kv_ceiling_lowered or other.kv_ceiling_lowered
        layouts = {part for text in (self.kv_layout, other.kv_layout) for part in text.split("+") if part}
        self.kv_layout = "+".join(sorted(layouts))

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def step_overhead_share(self) -> float:
        """Share of generation time spent outside llama_decode (entropy, sampling, bookkeeping)."""
        own = self.row_kernel_seconds + self.bookkeeping_seconds
        total = own + self.decode_seconds
        return own / total if total > 0 else 0.0


@dataclass
class RunResult:
    prompts: list[PromptResult]
    stats: RunStats
    settings: dict[str, Any] = field(default_factory=dict)
    # Reallocating methods: the plan and what its tries produced (phases.ReallocationOutcome).
    reallocation: Any = None

    def score(self, answers: list[str], scorer: Optional[Callable[[str, str], bool]] = None) -> None:
        """Attach gold answers and mark every sequence correct or not (``scoring.score_prompts``)."""
        score_prompts(self.prompts, answers, scorer)

    def metrics(self, ks: tuple[int, ...] = (1, 4, 8)) -> dict[str, Any]:
        """Pass@k, Cons@k (plain and confidence-weighted), Pass Rate, #T, #S (docs/method.md, "Metrics")."""
        return dict(run_metrics(self.prompts, ks=ks), wall_seconds=self.stats.wall_seconds)

    def consensus(self, scorer: Optional[Callable[[str, str], bool]] = None) -> list[Optional[str]]:
        """Per prompt, the confidence-weighted majority answer, with no labels (``metrics.consensus``)."""
        return consensus(self.prompts, scorer)

    def to_dict(self) -> dict[str, Any]:
        stats = asdict(self.stats)
        stats["tokens_per_second"] = self.stats.tokens_per_second
        return {
            "settings": self.settings,
            "stats": stats,
            "prompts": [prompt_to_dict(p) for p in self.prompts],
        }

    def to_jsonl(self, path: "str | os.PathLike[str]") -> None:
        """One JSON line per prompt (its sequences inside)."""
        with open(path, "w", encoding="utf-8") as f:
            for p in self.prompts:
                f.write(json.dumps(prompt_to_dict(p), ensure_ascii=False) + "\n")

    @classmethod
    def from_jsonl(cls, path: "str | os.PathLike[str]", settings: Optional[dict[str, Any]] = None) -> "RunResult":
        """Results written by `to_jsonl` or `eager-cpp run` read back (prompts in index order).

        The run's settings are `settings` when given, else those `eager-cpp run` recorded beside the
        file (`checkpoint.recorded_settings`), if any. Stats are recounted from the prompts. Each line's
        structure is checked (`check_structure`): a malformed one is a ValueError naming its line.
        ``iter_results`` reads the same file a prompt at a time.
        """
        prompts = list(iter_results(path))
        prompts.sort(key=lambda p: p.index)
        if settings is None:
            from ..files.checkpoint import recorded_settings  # the CLI's store: lazily, only for its files

            settings = recorded_settings(path)
        stats = RunStats(method=(settings or {}).get("method", ""))
        count_totals(stats, prompts)
        return cls(prompts=prompts, stats=stats, settings=dict(settings or {}))


def iter_results(path: "str | os.PathLike[str]") -> Iterator[PromptResult]:
    """The prompts of a results file (`RunResult.to_jsonl`, `eager-cpp run`) one at a time, in file order, each
    checked as `RunResult.from_jsonl` checks it (a ValueError naming the line): a file of a million prompts
    read without holding it."""
    for number, line in read_lines(path, "results file"):
        if not line.strip():
            continue
        try:
            prompt = prompt_from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}:{number}: not a results line ({e})") from None
        try:
            check_structure([prompt])
        except ValueError as e:
            raise ValueError(f"{path}:{number}: {e}") from None
        yield prompt


def check_structure(prompts: Iterable[PromptResult]) -> None:
    """Each prompt's sequences form the tree a run makes of them; a ValueError naming the prompt and the
    sequence otherwise (a result edited, or read from a file, before `reallocate` or a resumed run reuses it).

    What every run's result holds: at least one sequence; sequences numbered 0..n-1 in order, once each;
    sequence 0 a root (no parent); a parent always an earlier sequence (a child is numbered when it is
    born, after its parent: so parents never form a cycle); a root inherits no tokens (branch_step 0), a
    child the first ``branch_step`` tokens of its parent (0 <= branch_step <= its tokens);
    ``own_tokens == token_ids[branch_step:]``; entropies one per own token, or none (not recorded).
    """
    for p in prompts:
        where = f"prompt {p.index}"
        seqs = list(p.sequences)
        n = len(seqs)
        if not n:
            raise ValueError(f"{where} has no sequences: a run gives every prompt at least its root, sequence 0")
        seen: set[int] = set()
        for k, s in enumerate(seqs):
            for name in ("index", "branch_step", "parent"):
                value = getattr(s, name)
                if not (value is None and name == "parent") and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError(f"{where}: sequence at position {k}: {name} must be an int"
                                     f"{' or None' if name == 'parent' else ''}, got {value!r}"[:300])
            for name in ("token_ids", "own_tokens", "entropies"):
                if not isinstance(getattr(s, name), (list, tuple)):
                    raise ValueError(f"{where}: sequence {s.index}: {name} must be a list, "
                                     f"got {type(getattr(s, name)).__name__}")
            if s.index in seen:
                raise ValueError(f"{where}: sequence index {s.index} appears twice")
            seen.add(s.index)
        if 0 not in seen:
            raise ValueError(f"{where} has no sequence 0 (its root)")
        for k, s in enumerate(seqs):
            if s.index != k:
                raise ValueError(f"{where}: sequence {s.index} is at position {k}: a prompt's {n} sequences are "
                                 f"numbered 0..{n - 1} in order")
        for s in seqs:
            at = f"{where}: sequence {s.index}"
            tokens, step = list(s.token_ids), s.branch_step
            if s.parent is None:
                if step != 0:
                    raise ValueError(f"{at} has no parent but branch_step {step}: a root inherits no tokens")
            elif s.index == 0:
                raise ValueError(f"{at} is the root: its parent must be None, got {s.parent}")
            elif not 0 <= s.parent < n:
                raise ValueError(f"{at} has parent {s.parent}, which is not a sequence of the prompt (0..{n - 1})")
            elif s.parent >= s.index:
                raise ValueError(f"{at} has parent {s.parent}, not an earlier sequence: a child is numbered after "
                                 "its parent, so a later parent would make a cycle")
            if not 0 <= step <= len(tokens):
                raise ValueError(f"{at}: branch_step {step} is outside its {len(tokens)} tokens")
            if s.parent is not None and list(seqs[s.parent].token_ids[:step]) != tokens[:step]:
                raise ValueError(f"{at}: its first {step} tokens (up to branch_step) are not those of its parent, "
                                 f"sequence {s.parent}")
            if list(s.own_tokens) != tokens[step:]:
                raise ValueError(f"{at}: own_tokens ({len(s.own_tokens)}) are not its tokens from branch_step {step} "
                                 f"on ({len(tokens) - step}): own_tokens must equal token_ids[branch_step:]")
            if s.entropies and len(s.entropies) != len(s.own_tokens):
                raise ValueError(f"{at} has {len(s.entropies)} entropies for {len(s.own_tokens)} own tokens: one "
                                 "per own token (or none, when not recorded)")


def count_totals(stats: RunStats, prompts: list[PromptResult]) -> None:
    """#S and #T over the prompts, as every run reports them."""
    stats.sequences = sum(p.n_sequences for p in prompts)
    stats.generated_tokens = sum(p.generated_tokens for p in prompts)


# What each field of a stored sequence may hold: a file edited by hand (or by an attacker) gives a
# ValueError naming the field, not an AttributeError deep inside whatever reads it next.
_INT, _TEXT, _NUMBER = (int,), (str,), (int, float)
_SEQUENCE_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {  # name -> (types, None allowed)
    "index": (_INT, False), "text": (_TEXT, False), "parent": (_INT, True), "branch_step": (_INT, False),
    "finish_reason": (_TEXT, False), "round": (_INT, False), "branch_entropy": (_NUMBER, True),
    "answer": (_TEXT, True), "correct": ((bool,), True), "marker_step": (_INT, True),
}
_SEQUENCE_LISTS = {"token_ids": _INT, "own_tokens": _INT, "entropies": _NUMBER}


def _is(value: Any, types: tuple[type, ...]) -> bool:
    return isinstance(value, types) and (bool in types or not isinstance(value, bool))


def _sequence_from_dict(s: Any, position: int) -> Sequence:
    where = f"sequence {position}"
    if not isinstance(s, dict):
        raise ValueError(f"{where} is {type(s).__name__}, expected an object")
    for name in ("index", "text", "token_ids", "own_tokens", "entropies", "parent", "branch_step", "finish_reason"):
        if name not in s:
            raise ValueError(f"{where} has no {name!r} field")
    for name, (types, nullable) in _SEQUENCE_FIELDS.items():
        value = s.get(name)
        if name in s and not (value is None and nullable) and not _is(value, types):
            raise ValueError(f"{where}: {name!r} must be {' or '.join(t.__name__ for t in types)}"
                             f"{' or null' if nullable else ''}, got {value!r}"[:300])
    for name, types in _SEQUENCE_LISTS.items():
        value = s[name]
        if not isinstance(value, list) or not all(_is(v, types) for v in value):
            raise ValueError(f"{where}: {name!r} must be a list of {' or '.join(t.__name__ for t in types)}")
    if s["index"] < 0 or s["branch_step"] < 0 or s.get("round", 0) < 0:
        raise ValueError(f"{where}: 'index', 'branch_step' and 'round' must be >= 0")
    if s["parent"] == s["index"]:
        raise ValueError(f"{where}: sequence {s['index']} is its own parent")
    fields = set(Sequence.__dataclass_fields__)
    return Sequence(**{k: v for k, v in s.items() if k in fields})


def prompt_from_dict(d: dict[str, Any]) -> PromptResult:
    """Inverse of prompt_to_dict (for resuming from a results JSONL); ValueError naming what is malformed."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    for name, types in (("index", _INT), ("prompt", _TEXT), ("prompt_tokens", _INT), ("sequences", (list,))):
        if name not in d:
            raise ValueError(f"no {name!r} field")
        if not _is(d[name], types):
            raise ValueError(f"{name!r} must be {types[0].__name__}, got {d[name]!r}"[:300])
    steps = d.get("steps", 0)
    if not _is(steps, _INT):
        raise ValueError(f"'steps' must be int, got {steps!r}"[:300])
    sequences = [_sequence_from_dict(s, k) for k, s in enumerate(d["sequences"])]
    seen: set[int] = set()
    for s in sequences:
        if s.index in seen:  # a tree walk over such a prompt would never end
            raise ValueError(f"prompt {d['index']}: sequence index {s.index} appears twice")
        seen.add(s.index)
    gold = d.get("answer", d.get("gold_answer"))  # "gold_answer" in files written before 0.2
    return PromptResult(index=d["index"], prompt=d["prompt"], sequences=sequences, prompt_tokens=d["prompt_tokens"],
                        gold_answer=None if gold is None else str(gold), steps=steps)


def prompt_to_dict(p: PromptResult) -> dict[str, Any]:
    return {
        "index": p.index,
        "prompt": p.prompt,
        "prompt_tokens": p.prompt_tokens,
        "answer": p.gold_answer,  # the gold answer, as the input's "answer" field names it
        "n_sequences": p.n_sequences,
        "generated_tokens": p.generated_tokens,
        "steps": p.steps,
        "sequences": [asdict(s) for s in p.sequences],
    }

"""``EagerCppLM``: eager_cpp as an lm-evaluation-harness model (registered as ``eager_cpp``; docs/lm-eval.md).

- ``generate_until``: the copies of a request (the task's ``repeats``) become one eager_cpp prompt with M = the
  number of copies, run by ``eager_cpp.run`` with the model's method (Full Parallel or an EAGer method), many
  prompts per call; what each copy gets is ``requests.fill``'s rule.
- ``loglikelihood`` / ``loglikelihood_rolling``: from the model's logits through the native engine
  (``Model.score_continuations``: many requests per llama_decode call), so multiple-choice and perplexity tasks
  run too.

Model arguments are ``RunOptions``' fields by name (method, entropy_threshold, temperature, top_k_entropy,
max_new_tokens, seed, n_threads, n_ctx, kv_memory, n_gpu_layers, ...) and ``model_path`` (alias ``pretrained``;
default: the default model), ``cpu_buffers``, ``max_length`` (the rolling window, default 2048 tokens).
``max_sequences`` and ``stop`` come from each request (its copies, its ``until``); the request's
``max_gen_toks``, temperature and ``do_sample`` override the model's.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..core.options import RunOptions
from ..core.vocabulary import MAX_SEQUENCES, Method
from ..engine.model import Model, default_model_path
from ..runner.api import run
from .requests import Group, cut_at_stops, fill, group_copies

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval import utils as lm_utils
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError('eager_cpp\'s lm-eval backend needs lm-eval: pip install "eager_cpp[lm-eval]"') from e

__all__ = ["DEFAULT_MAX_LENGTH", "EagerCppLM"]

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048  # tokens per loglikelihood_rolling window (lm-eval's HF default)
SCORE_CHUNK = 512  # loglikelihood requests per native call (one progress step)
# lm-eval passes these to every model; eager_cpp batches natively and runs where the options say.
_HARNESS_ARGS = ("batch_size", "max_batch_size", "device")
_OWN_ARGS = ("model_path", "pretrained", "cpu_buffers", "max_length")
_PER_REQUEST = ("max_sequences", "stop")  # from each request: its copies, its `until`


def _split_arguments(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run options, the backend's own arguments); an unknown or per-request name is one ValueError."""
    given = {k: v for k, v in kwargs.items() if k not in _HARNESS_ARGS}
    options = {k: v for k, v in given.items() if k in RunOptions.names()}
    own = {k: v for k, v in given.items() if k in _OWN_ARGS}
    unknown = sorted(set(given) - set(options) - set(own))
    if unknown:
        raise ValueError(f"unknown eager_cpp model argument{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; the arguments are {', '.join(_OWN_ARGS)} and the run "
                         f"options: {', '.join(RunOptions.names())}")
    fixed = sorted(set(options) & set(_PER_REQUEST))
    if fixed:
        raise ValueError(f"{', '.join(fixed)} come from each request (M: its copies, the task's repeats; stop: "
                         "its until), not from the model arguments")
    if options.get("method") == Method.EAGER.value:
        raise ValueError('method="eager" reallocates by the gold answers, which lm-eval does not pass to a model; '
                         'use "eager_adapt" or "eager_label_free"')
    if options.get("cluster") is not None:
        raise ValueError("the lm-eval backend runs in this process: cluster= is not supported")
    return options, own


class EagerCppLM(TemplateLM):
    """eager_cpp's engine behind lm-eval's model interface (module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        options, own = _split_arguments(kwargs)
        self.options = RunOptions.create(**options)  # every option checked before the model loads
        if self.options.chat:  # given, or set by a preset
            raise ValueError("chat=True: let lm-eval apply the chat template (--apply_chat_template)")
        # What each run gets: the arguments as given, so a preset and the explicit values over it resolve as here.
        self._given = options
        max_length = int(own.get("max_length") or DEFAULT_MAX_LENGTH)
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 tokens, got {max_length}")
        path = own.get("model_path") or own.get("pretrained") or default_model_path()
        self.model = Model(path, n_threads=self.options.n_threads, n_gpu_layers=self.options.n_gpu_layers,
                           cpu_buffers=own.get("cpu_buffers"))
        self._bos = self.model.tokenize("", add_special=True)
        # A rolling window is max_length + 1 tokens (its prefix token first): it must fit the model's positions.
        fits = self.model.n_ctx_train - 1 if self.model.n_ctx_train > 1 else max_length
        if own.get("max_length") and max_length > fits:
            raise ValueError(f"max_length={max_length} leaves no room in the model's {self.model.n_ctx_train}-token "
                             f"context for a rolling window's prefix token; at most {fits}")
        self.max_length = min(max_length, fits)
        # Each generate_until prompt's whole result (every sequence, the tree), in the order the prompts ran.
        self.generations: list[tuple[Group, Any]] = []

    # ----------------------------------------------------------------------------- tokens

    @property
    def eot_token_id(self) -> int:
        return self._bos[0] if self._bos else 0

    @property
    def prefix_token_id(self) -> int:
        """An empty context is scored after this token: the model's BOS (what its prompts start with)."""
        return self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return self.model.path

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        """Token ids of `string`; the model's BOS in front unless add_special_tokens is False."""
        return self.model.tokenize(string, add_special=add_special_tokens is not False)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.model.detokenize(tokens)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """lm-eval's chat history through the model's own template (llama.cpp's), the assistant turn opened."""
        return self.model.format_messages([(m["role"], m["content"]) for m in chat_history], self.options.chat_template)

    # ----------------------------------------------------------------------------- log-likelihoods

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """A pair within max_length tokens: the context cut from the left, as lm-eval's HF model does."""
        if len(continuation) >= self.max_length:
            raise ValueError(f"a continuation of {len(continuation)} tokens does not fit max_length="
                             f"{self.max_length}; raise max_length")
        keep = self.max_length - len(continuation)
        return context[-keep:], continuation

    def _score(self, pairs: list[tuple[list[int], list[int]]], disable_tqdm: bool) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        out: list[tuple[float, bool]] = []
        starts = range(0, len(pairs), SCORE_CHUNK)
        for start in tqdm(starts, desc="eager_cpp loglikelihood", disable=disable_tqdm or len(starts) < 2):
            out.extend(self.model.score_continuations(pairs[start:start + SCORE_CHUNK]))
        return out

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        scores = self._score([self._fit(c, x) for _, c, x in requests], disable_tqdm)
        for (key, _, _), score in zip(requests, scores):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, score)
        return scores

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text, in disjoint windows of max_length tokens (the first after BOS)."""
        windows: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        for i, (string,) in enumerate(req.args for req in requests):
            tokens = self.tok_encode(string, add_special_tokens=False)
            for window in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append(window)
                owners.append(i)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._score(windows, disable_tqdm)):
            totals[owner] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # ----------------------------------------------------------------------------- generation

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """One string per request, in lm-eval's order: the copies of a request are one prompt (module docstring)."""
        groups = group_copies(requests, self.options.max_new_tokens)
        too_many = [g.copies for g in groups if g.copies > MAX_SEQUENCES]
        if too_many:
            raise ValueError(f"a request has {max(too_many)} copies (repeats); eager_cpp makes at most "
                             f"{MAX_SEQUENCES} sequences per prompt")
        by_settings: dict[str, list[Group]] = {}
        for g in groups:
            by_settings.setdefault(g.settings_key(), []).append(g)
        out: list[Optional[str]] = [None] * len(requests)
        for batch in by_settings.values():
            self._generate(batch, out)
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return [text if text is not None else "" for text in out]

    def _generate(self, groups: list[Group], out: list[Optional[str]]) -> None:
        """One eager_cpp.run over prompts that share their settings and M; each copy's string into `out`."""
        settings, copies = groups[0].settings, groups[0].copies
        result = run(self.model, [g.context for g in groups], **{**self._given, **settings, "max_sequences": copies})
        for g, prompt in zip(groups, result.prompts):
            self.generations.append((g, prompt))
            texts = [cut_at_stops(s.text, settings["stop"]) for s in sorted(prompt.sequences, key=lambda s: s.index)]
            if len(texts) != copies:
                log.info("eager_cpp: %d sequences for %d copies of a request", len(texts), copies)
            for position, text in zip(g.positions, fill(texts, copies)):
                out[position] = text

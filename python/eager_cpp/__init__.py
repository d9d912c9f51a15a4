"""eager_cpp: EAGer (entropy-aware generation) on llama.cpp.

    import eager_cpp
    result = eager_cpp.run("model.gguf", ["2+2="], method="eager_init", max_sequences=8)
    result.prompts[0].sequences[0].text
"""

from importlib.metadata import PackageNotFoundError as _NotInstalled, version as _version

from ._library import preload_llama as _preload_llama

try:
    __version__ = _version("eager_cpp")  # pyproject.toml's, the one place it is written
except _NotInstalled:  # pragma: no cover - a source tree on sys.path without an install
    __version__ = "0+unknown"

_preload_llama()  # before _core, so one copy of libllama serves eager_cpp and llama_cpp

from . import _core  # noqa: E402
from .runner.api import METHODS, reallocate, run, summarize  # noqa: E402
from .method.budget import (PromptSignals, PromptSummary, ReallocationPlan, plan_label_free,  # noqa: E402
                            plan_reallocation)
from .engine.kernels import topk_entropy  # noqa: E402
from .engine.model import Model, builtin_chat_templates, default_model_path  # noqa: E402
from .core.options import RunOptions  # noqa: E402
from .core.results import PromptResult, RunResult, RunStats, Sequence, iter_results  # noqa: E402
from .answers.scoring import default_scorer, extract_answer, scorer_for_dataset  # noqa: E402
from .engine.system import llama_cpp_reference, system_info  # noqa: E402
from .core.vocabulary import Method  # noqa: E402

__all__ = [
    "METHODS", "Method", "Model", "PromptResult", "PromptSignals", "PromptSummary", "ReallocationPlan", "RunOptions",
    "RunResult", "RunStats", "Sequence", "builtin_chat_templates", "default_model_path", "default_scorer",
    "extract_answer", "iter_results", "llama_cpp_reference", "plan_label_free", "plan_reallocation", "reallocate", "run",
    "scorer_for_dataset", "summarize", "system_info", "topk_entropy",
]

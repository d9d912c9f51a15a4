"""eager_cpp as an lm-evaluation-harness model (``pip install "eager_cpp[lm-eval]"``; docs/lm-eval.md).

- ``register()`` adds the model to lm-eval's registry as ``"eager_cpp"`` (lm-eval 0.4.13 finds models only in its
  own registry, not through installed packages): then ``lm_eval.simple_evaluate(model="eager_cpp", ...)`` works,
  or pass an ``EagerCppLM`` (``eager_cpp.lm_eval.model``) as ``model=``.
- ``TASKS_DIR`` holds task configs for the repository's data (``data/``, read by path from the repository
  root): ``eager_gsm8k`` (few-shot GSM8K, k samples per question: maj@k, the first sample, and the
  pass rate of the first k), ``eager_capitals`` (short answers) and ``eager_capitals_mc`` (multiple choice
  through loglikelihood). ``task_manager()`` is lm-eval's ``TaskManager`` with them included;
  ``task_config(name, repeats=..., data_dir=...)`` one of them as a config dict for ``simple_evaluate(tasks=[...])``,
  with another k or the data read from another folder (lm-eval merges no overrides into a named task).
- ``python -m eager_cpp.lm_eval ARGS``: lm-eval's own command line (``lm-eval run ...``) with the model
  registered and the tasks included (``--include_path``).

Importing this package does not import lm-eval; ``register`` and ``task_manager`` do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

__all__ = ["INSTALL_HINT", "MODEL_NAME", "TASKS_DIR", "register", "task_config", "task_manager"]

MODEL_NAME = "eager_cpp"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
INSTALL_HINT = 'pip install "eager_cpp[lm-eval]" (lm-eval==0.4.13)'
_TARGET = "eager_cpp.lm_eval.model:EagerCppLM"


def _needs_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise ImportError(f"eager_cpp's lm-eval backend needs lm-eval: {INSTALL_HINT}") from e


def register() -> None:
    """Add ``eager_cpp`` to lm-eval's model registry (lazily: the backend loads when lm-eval asks for it)."""
    _needs_lm_eval()
    import lm_eval.models  # noqa: F401 - its built-in models first: lm-eval loads them only into an empty registry
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=_TARGET)


def task_manager(**kwargs: Any) -> Any:
    """lm-eval's ``TaskManager`` with eager_cpp's task configs included (``TASKS_DIR``)."""
    _needs_lm_eval()
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR), **kwargs)


def task_config(name: str, repeats: Optional[int] = None, data_dir: Union[None, str, Path] = None,
                **overrides: Any) -> dict[str, Any]:
    """The config of a shipped task as a dict that ``simple_evaluate(tasks=[...])`` takes, changed:

    repeats: k samples per document; the filters follow (``take_first_k``'s k, and "@8" in their names);
    data_dir: the folder of the data files (default: ``data/`` relative to the working directory);
    overrides: any other TaskConfig field (task, generation_kwargs, ...), set as given.
    """
    _needs_lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml

    path = TASKS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
        raise ValueError(f"no eager_cpp task {name!r}; the tasks are {', '.join(known)}")
    cfg = load_yaml(path)
    if data_dir is not None:
        files = {split: str(Path(data_dir) / Path(f).name) for split, f in cfg["dataset_kwargs"]["data_files"].items()}
        cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": files}
    if repeats is not None:
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
        old, cfg["repeats"] = cfg.get("repeats", 1), repeats
        for f in cfg.get("filter_list", []):
            f["name"] = f["name"].replace(f"@{old}", f"@{repeats}")
            for step in f["filter"]:
                if step["function"] == "take_first_k":
                    step["k"] = repeats
    cfg.update(overrides)
    return cfg

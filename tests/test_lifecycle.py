"""A Model in a long-lived process: several threads on one model, a clean exit beside llama-cpp-python, bounds."""

from __future__ import annotations

import subprocess
import sys

import pytest

import eager_cpp


def test_exit_with_llama_cpp_python_loaded(model_path):
    """Models freed while Python finalises must not call llama-cpp-python's ctypes log callback."""
    pytest.importorskip("llama_cpp")
    code = (
        "import eager_cpp, llama_cpp\n"
        f"m = eager_cpp.Model({model_path!r}, n_threads=2)\n"
        "r = eager_cpp.run(m, ['Country: Peru\\nCapital:'], max_new_tokens=3)\n"
        f"ref = eager_cpp.llama_cpp_reference({model_path!r}, n_ctx=256, n_threads=2, verbose=False)\n"
        "out = ref('Country: Peru\\nCapital:', max_tokens=2)\n"
        "print(r.prompts[0].sequences[0].text.strip(), out['choices'][0]['text'].strip())\n"
    )
    for _ in range(2):  # the crash at exit was intermittent
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"exit code {proc.returncode}: {proc.stderr[-2000:]}"
        assert proc.stdout.split()[0] == "Lima"


PROMPTS = ["Country: France\nCapital:", "Country: Japan\nCapital:", "The most surprising thing about the ocean is"]


def _texts(result):
    return [[s.token_ids for s in p.sequences] for p in result.prompts]


def test_one_model_from_several_threads_gives_the_sequential_results(model):
    import threading

    kwargs = [dict(method="eager_init", max_sequences=4, entropy_threshold=1.0, max_new_tokens=12, seed=s)
              for s in range(4)]
    expected = [_texts(eager_cpp.run(model, PROMPTS, **kw)) for kw in kwargs]
    got: list = [None] * len(kwargs)
    errors: list = []

    def work(k):
        try:
            got[k] = _texts(eager_cpp.run(model, PROMPTS, **kwargs[k]))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(kwargs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and got == expected


def test_a_progress_callback_running_on_the_same_model_raises(model):
    def nested(info):
        eager_cpp.run(model, ["Country: Peru\nCapital:"], max_new_tokens=2)

    with pytest.raises(RuntimeError, match="already generating in this thread"):
        eager_cpp.run(model, PROMPTS, max_new_tokens=4, progress=nested)
    # The model is free again afterwards.
    assert eager_cpp.run(model, PROMPTS[:1], max_new_tokens=2).prompts[0].sequences


@pytest.mark.parametrize("bad", [0, 513, 10**6, True])
def test_thread_counts_are_bounded(model_path, bad):
    with pytest.raises(ValueError, match="n_threads must be an int between 1 and 512"):
        eager_cpp.Model(model_path, n_threads=bad)

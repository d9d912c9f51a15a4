"""Progress: one event shape from the engine in this process, rendered by one status line."""

from __future__ import annotations

import pytest

import eager_cpp
from eager_cpp.core.progress import ProgressEvent, ProgressLine, ProgressSink


def test_local_runs_report_phase_round_and_totals(model):
    events = []
    r = eager_cpp.run(model, ["Country: Peru\nCapital:", "Country: Chile\nCapital:"], method="eager_adapt",
                      max_sequences=3, entropy_threshold=0.5, max_new_tokens=6, stop="\n", seed=1,
                      progress=events.append)
    assert events and {"phase", "round", "prompts_done", "prompts_total", "live_sequences", "generated_tokens",
                        "elapsed_seconds", "tokens_per_second"} <= set(events[0])
    phase_a = [e for e in events if e["phase"] == "a"]
    assert phase_a[-1]["prompts_done"] == phase_a[-1]["prompts_total"] == 2
    tries = {e["round"] for e in events if e["phase"] == "c"}
    assert tries == {s.round for p in r.prompts for s in p.sequences if s.round > 0}


def test_status_line_is_drawn_from_the_same_events(capsys):
    line = ProgressLine(total=10)
    line.offset = 4
    line(ProgressEvent("a", 0, 2, 3, 5, 120, 2.0))
    line.close()
    err = capsys.readouterr().err
    assert "6/10 prompts" in err and "60.0 tok/s" in err and err.endswith("\n")
    sink = ProgressSink(line)  # a caller's line: the sink draws on it but leaves it open
    sink(ProgressEvent("c", 2, 1, 1, 0, 10, 1.0))
    sink.close()
    assert "try 2" in capsys.readouterr().err and line.shown
    with pytest.raises(TypeError, match="progress must be"):
        ProgressSink(5)

"""rose tail's live board: rows per run and learner, outcome, sink progress."""

from __future__ import annotations

import json

from rich.console import Console

from rose.events import iteration_event, start_event, stop_event
from rose.tracking import EventContext, IterationState, PipelineManifest
from sinks.tail_view import TailBoard


def render(board: TailBoard) -> str:
    console = Console(width=140, record=True)
    console.print(board.render())
    return console.export_text()


def test_board_rows_outcome_and_sinks(tmp_path):
    (tmp_path / "status.json").write_text(json.dumps(
        {"sink": "file", "counters": {"applied": 7}, "lag": 2, "retrying": ["runB"]}))
    board = TailBoard([tmp_path, tmp_path / "missing"])
    assert "waiting for events" in render(board)
    ctx = (EventContext("runA", i, 100.0 + i) for i in range(10))
    board.apply(start_event(next(ctx), PipelineManifest("ParallelActiveLearner")), 1.0, 100.0)
    for lid, it, value in [(0, 0, 0.5), (1, 0, 0.4), (0, 1, 0.05)]:
        state = IterationState(iteration=it, learner_id=lid, metric_name="mse", metric_value=value)
        board.apply(iteration_event(next(ctx), state), 2.5, 104.0)
    text = render(board)
    assert "runA" in text and "0.05" in text and "0.4" in text and "running" in text
    board.apply(stop_event(next(ctx), None, "criterion_met"), 2.5, 105.0)
    text = render(board)
    assert text.count("criterion_met") == 2  # both learners' rows show the run's outcome
    assert "file" in text and "7" in text and "runB" in text and "no status yet" in text


def test_board_keeps_run_names_and_numbers_whole_on_narrow_and_wide_terminals():
    run = "long-run-" + "ff89abcd" * 4
    board = TailBoard([])
    ctx = (EventContext(run, i, 100.0 + i) for i in range(10))
    board.apply(start_event(next(ctx), PipelineManifest("ParallelActiveLearner")), 1.0, 100.0)
    for lid, value, stop in [(0, 0.0173456789, False), (1, 0.004, True)]:
        state = IterationState(iteration=3, learner_id=lid, metric_name="mean_squared_error_mse",
                               metric_value=value, should_stop=stop)
        board.apply(iteration_event(next(ctx), state), 2.5, 104.0)
    for width in (100, 160):
        console = Console(width=width, record=True)
        console.print(board.render())
        text = console.export_text()
        assert "│ long-run-ff89abcd… " in text  # the name from its first letter, the uuid short
        assert "0.01735" in text and "MSE" in text  # the value whole, the header readable
        assert "criterion_met" in text and "running" in text and "2000 ms" in text


def test_status_and_tail_lines_read_as_sentences():
    from sinks.health import latency_text as _latency_text
    from sinks.health import run_status_text as _run_status_text
    from sinks.tail_view import format_tail_line

    run = {"run": "r-1", "kind": "iteration", "iteration": 17, "metric_name": "mse",
           "metric_value": 0.017345678901234567, "next_seq": 19, "events_per_s": 3.25}
    assert _run_status_text(run) == "r-1: running, iteration 17, mse=0.0173457; next seq 19, 3.2 ev/s"
    done = dict(run, kind="stop", done=True, events_per_s=0.0)
    assert _run_status_text(done).startswith("r-1: finished, iteration 17,")
    assert _run_status_text(done).endswith("0.0 ev/s (done)")
    assert _latency_text(0.0123) == ", latency 12 ms"
    assert _latency_text(31.3) == ", last event applied 31 s after it was emitted"
    assert _latency_text(600.0) == ", last event applied 10 min after it was emitted"
    state = IterationState(iteration=2, metric_name="mse", metric_value=0.017345678901234567)
    line = format_tail_line(iteration_event(EventContext("r-1", 3, 100.0), state), 1.0, 100.5)
    assert line.endswith("r-1 #3 iteration 2 mse=0.0173457 | 1.0 ev/s | lag 500 ms")

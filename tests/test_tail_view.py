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

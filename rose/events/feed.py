"""Trackers driven by events (EventFeed) and events made by a tracker (EventTracker)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rose.events.bodies import (
    iteration_event,
    manifest_from_body,
    start_event,
    state_from_body,
    stop_event,
)
from rose.events.identity import make_origin, new_run_id
from rose.tracking import (
    EventContext,
    IterationState,
    PipelineManifest,
    TrackerBase,
    delivering,
    event_context,
)


class EventFeed:
    """Drive any TrackerBase from events, as the learner would have.

    Rebuilds real PipelineManifest / IterationState objects (metric_history
    included, per learner) and delivers each call under the event's own run id,
    seq and timestamp.  Exceptions from the tracker propagate: whoever feeds
    events owns the retry policy.
    """

    def __init__(self, tracker: TrackerBase) -> None:
        self.tracker = tracker
        self._history: dict[tuple[str, Any], list[float]] = {}

    def _history_of(self, run: str, body: dict[str, Any]) -> list[float]:
        return self._history.setdefault((run, body.get("learner_id")), [])

    def __call__(self, event: dict[str, Any]) -> None:
        kind, body, run = event["kind"], event["body"], event["run"]
        ctx = EventContext(run=run, seq=event["seq"], ts=event["ts"], origin=event.get("origin"))
        with delivering(ctx):
            if kind == "start":
                self.tracker.on_start(manifest_from_body(body))
            elif kind == "iteration":
                hist = self._history_of(run, body)
                value = body.get("metric_value")
                seen = hist if value is None else [*hist, value]
                self.tracker.on_iteration(state_from_body(body, seen))
                if value is not None:  # only once delivered: a retried event counts once
                    hist.append(value)
            else:
                final = body.get("final_state")
                state = None
                if final is not None:
                    state = state_from_body(final, self._history_of(run, final))
                self.tracker.on_stop(state, body["reason"])

    def feed(self, events: Iterable[dict[str, Any]]) -> int:
        n = 0
        for event in events:
            self(event)
            n += 1
        return n


class EventTracker(TrackerBase):
    """A tracker that turns each callback into one event and hands it to ``emit``.

    Run id, seq and timestamp come from the learner's event context, so every
    event tracker of one learner produces the same events.  Called by hand
    (no context), it stamps its own: a fresh run id, seq from 0, the clock.
    """

    def __init__(self) -> None:
        self._own_run: str | None = None
        self._own_seq = 0

    def emit(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def _context(self, kind: str) -> EventContext:
        ctx = event_context()
        if ctx is not None:
            return ctx
        if self._own_run is None:
            self._own_run = new_run_id()
        seq, self._own_seq = self._own_seq, self._own_seq + 1
        origin = make_origin() if kind == "start" else None
        return EventContext(run=self._own_run, seq=seq, ts=time.time(), origin=origin)

    def on_start(self, manifest: PipelineManifest) -> None:
        self.emit(start_event(self._context("start"), manifest))

    def on_iteration(self, state: IterationState) -> None:
        self.emit(iteration_event(self._context("iteration"), state))

    def on_stop(self, final_state: IterationState | None, reason: str) -> None:
        self.emit(stop_event(self._context("stop"), final_state, reason))

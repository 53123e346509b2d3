"""The learner's trackers and the one way they are called.

A tracker that raises must neither stop the run nor flood the log: its first
failure per callback is logged with the traceback, later ones are counted, and
the end of the run says how many calls each tracker missed.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from rose.events.identity import make_origin
from rose.logonce import RepeatLog
from rose.tracking import EventContext, TrackerBase, delivering

log = logging.getLogger(__name__)

#: The tracker callbacks a learner calls, in lifecycle order.
CALLBACKS = ("on_start", "on_iteration", "on_stop")


class TrackerFanout:
    """Calls every attached tracker with the event context of one learner run."""

    def __init__(self) -> None:
        self.trackers: list[Any] = []
        self.errors = RepeatLog(log)
        self.seq = 0
        self.start_ts: float | None = None
        self.origin: dict[str, Any] | None = None

    def add(self, tracker: TrackerBase, run: str, manifest: Any) -> None:
        """Attach ``tracker`` and call its ``on_start`` (seq 0, the run's start time)."""
        if self.start_ts is None:
            self.start_ts = time.time()
            self.origin = make_origin()
        self.trackers.append(tracker)
        ctx = EventContext(run=run, seq=0, ts=self.start_ts, origin=self.origin)
        self.call(tracker, "on_start", ctx, manifest)

    def notify(self, run: str, method: str, *args: Any) -> None:
        """Call ``method`` on every tracker, all under the next sequence number."""
        self.seq += 1
        ctx = EventContext(run=run, seq=self.seq, ts=time.time())
        for tracker in list(self.trackers):
            self.call(tracker, method, ctx, *args)

    def call(self, tracker: Any, method: str, ctx: EventContext, *args: Any) -> None:
        callback = getattr(tracker, method, None)
        if callback is None:
            return
        try:
            with delivering(ctx):
                callback(*args)
        except Exception:
            self.errors(
                (id(tracker), method),
                "tracker %s raised in %s; the learner and other trackers continue "
                "(further failures of this callback are counted, not logged)",
                type(tracker).__name__,
                method,
                level=logging.ERROR,
                exc_info=True,
            )

    def summarize(self) -> None:
        """At the end of a run: how often each tracker's callback raised, where it repeated."""
        for t in self.trackers:
            for method in CALLBACKS:
                n = self.errors.count((id(t), method))
                if n > 1:
                    log.warning("tracker %s raised %d times in %s", type(t).__name__, n, method)

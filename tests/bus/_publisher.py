"""Child process for the many-publishers tests: N BusTrackers sending interleaved events.

Usage: python -m tests.bus._publisher ENDPOINT TRACKERS EVENTS [defaults]
With ``defaults`` every tracker has the default settings (as a user would create it).
Prints one JSON line: the run ids and summed counters.
"""

from __future__ import annotations

import json
import sys

import zmq

from bus import BusTracker
from rose.tracking import IterationState, PipelineManifest


def main() -> None:
    endpoint, n_trackers, n_events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    defaults = sys.argv[4:] == ["defaults"]
    options = {} if defaults else {"start_wait_ms": 5000, "flush_timeout_ms": 30_000}
    ctx = zmq.Context()
    trackers = [BusTracker(endpoint, context=ctx, **options) for _ in range(n_trackers)]
    manifest = PipelineManifest(learner_type="Bench")
    for t in trackers:
        t.on_start(manifest)
    for i in range(n_events - 2):
        state = IterationState(iteration=i, state={f"k{j}": j * 0.5 for j in range(20)})
        for t in trackers:
            t.on_iteration(state)
    for t in trackers:
        t.on_stop(None, "max_iter_reached")
    for t in trackers:
        t.close()
    ctx.term()
    keys = ("sent", "resent", "dropped", "acknowledged", "fallback")
    totals = {k: sum(t.stats()[k] for t in trackers) for k in keys}
    print(json.dumps({"runs": [t._own_run for t in trackers], **totals}))


if __name__ == "__main__":
    main()

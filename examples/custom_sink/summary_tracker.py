"""An ordinary tracker that also runs as a sink: one summary line per finished run.

In a learner script::

    learner.add_tracker(SummaryTracker("summary.txt"))

On the login node, fed by the bus or by saved logs (one instance per run)::

    PYTHONPATH=examples/custom_sink rose sink tracker summary_tracker:SummaryTracker \\
        --arg path=summary.txt --bus ~/rose-tracking/store/bus.json
    PYTHONPATH=examples/custom_sink rose replay runs/ --into tracker \\
        --tracker summary_tracker:SummaryTracker --arg path=summary.txt --state st/
"""

from __future__ import annotations

from rose import TrackerBase


class SummaryTracker(TrackerBase):
    def __init__(self, path: str = "summary.txt") -> None:
        self.path = path
        self.learner_type = "?"
        self.iterations = 0

    def on_start(self, manifest) -> None:
        self.learner_type = manifest.learner_type

    def on_iteration(self, state) -> None:
        self.iterations += 1

    def on_stop(self, final_state, reason) -> None:
        metric = "n/a"
        if final_state is not None and final_state.metric_value is not None:
            metric = f"{final_state.metric_name}={final_state.metric_value:.4g}"
        with open(self.path, "a") as f:
            f.write(f"{self.learner_type}: {self.iterations} iterations, {reason}, {metric}\n")

"""The ``clearml`` sink kind: the options of :class:`sinks.clearml_sink.ClearMLSink`.

Beside the sink rather than in it, to keep each module one job (ClearML itself
is imported only by the sink's worker processes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sinks.clearml_sink import DEFAULT_MAX_WORKERS, DEFAULT_TASK_NAME, ClearMLSink
from sinks.kinds import STATE_ROOT, Option, SinkKind, split_list


class ClearMLKind(SinkKind):
    name = "clearml"
    help = "one ClearML task per run (hyperparameters, per-learner scalars, stop tags)"
    epilog = """\
examples:
  rose sink clearml --bus ~/rose-tracking/store/bus.json --project ROSE-Materials-UQ
  rose sink clearml --backend tcp://127.0.0.1:5556 --replay tcp://127.0.0.1:5557 \\
      --project ROSE --task-name "gp-{run}" --learner-names A,B
  CLEARML_OFFLINE_MODE=1 rose replay runs/*.jsonl --into clearml --project ROSE

ClearML credentials come from clearml.conf or CLEARML_API_* variables, never
from the command line.  Each active run has its own worker process (ClearML
allows one task per process); a journal per run makes restarts and replays
continue the same task without repeating a point.
"""
    options = (
        Option("project", "ClearML project for the runs' tasks", metavar="NAME"),
        Option(
            "task_name",
            "task name; {run} is replaced by the run id (default: %(default)s)",
            default=DEFAULT_TASK_NAME,
            metavar="TEMPLATE",
        ),
        Option(
            "learner_names",
            "series names for parallel learners 0, 1, ... (named learners keep their names)",
            metavar="A,B,...",
        ),
        Option(
            "max_workers",
            "active runs with a live worker process at once (default: %(default)s)",
            type=int,
            default=DEFAULT_MAX_WORKERS,
            metavar="N",
        ),
    )
    #: A ClearML server that is down comes back: retry forever by default.
    max_attempts = None

    def build(
        self,
        *,
        project: str | None = None,
        task_name: str = DEFAULT_TASK_NAME,
        learner_names: str | list[str] | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        state_dir: Path | None = None,
    ) -> ClearMLSink:
        if not project:
            raise ValueError("the ClearML sink needs --project NAME")
        state = self.state_dir(state_dir, project=project)
        return ClearMLSink(
            project,
            state / "clearml-runs",
            task_name=task_name,
            learner_names=split_list(learner_names) or None,
            max_workers=max_workers,
        )

    def default_state_dir(self, *, project: str | None = None, **_: Any) -> Path:
        from rose.events.identity import sanitize_run_name

        return STATE_ROOT / f"clearml-{sanitize_run_name(project or '') or 'default'}"

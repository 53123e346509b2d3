"""ClearMLTracker: a run as one ClearML task, written in the learner's process.

    pip install -e '.[clearml]'   # from the repository clone

    learner.add_tracker(ClearMLTracker(project_name="ROSE-Materials-UQ",
                                       task_name="ensemble-run-01"))

Hyperparameters, per-learner scalar curves and stop tags, as laid out in
:mod:`rose.integrations.clearml_mapping` (the same mapping the ClearML sink
uses, so this tracker, the sink and a replay produce the same task).  ClearML
allows one open task per process: one ClearMLTracker run at a time here; for
many concurrent runs, publish with ``bus.BusTracker`` and run
``rose sink clearml``.  Offline (no server): ``CLEARML_OFFLINE_MODE=1``.
Needs the ``clearml`` extra; without it the constructor raises ImportError
with the install command (:mod:`rose.extras`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from rose.events.feed import EventTracker
from rose.extras import require
from rose.integrations.clearml_mapping import INHERITED_ENV, ClearMLWriter, init_task

log = logging.getLogger(__name__)


class ClearMLTracker(EventTracker):
    """Log a run to a ClearML task; ``learner_names`` name parallel learners' series."""

    def __init__(
        self,
        project_name: str,
        task_name: str,
        learner_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        require("clearml", "clearml", "ClearMLTracker")  # here, not later inside add_tracker()
        if not project_name or not task_name:
            raise ValueError("ClearMLTracker needs a project_name and a task_name")
        self.project_name = project_name
        self.task_name = task_name
        self.learner_names = list(learner_names) if learner_names else None
        self._writer: ClearMLWriter | None = None
        self._env_before: dict[str, str | None] = {}
        self.task: Any = None

    @property
    def task_id(self) -> str | None:
        return None if self.task is None else str(self.task.id)

    def emit(self, event: dict[str, Any]) -> None:
        if event["kind"] == "start" or self._writer is None:
            self.close()  # a tracker reused for a second run starts a fresh task
            self._env_before = {k: os.environ.get(k) for k in INHERITED_ENV}
            self.task = init_task(self.project_name, self.task_name)
            self._writer = ClearMLWriter(self.task, self.learner_names)
            log.info("run %s → ClearML task %s", event["run"], self.task.id)
        self._writer.apply(event)
        if event["kind"] == "stop":
            self.close()

    def close(self) -> None:
        """Close the task (flushing it); safe to call twice."""
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            finally:
                self._restore_env()

    def _restore_env(self) -> None:
        # ClearML leaves "<pid>:" in CLEARML_PROC_MASTER_ID after close; a child process
        # of the learner that inherits it gets a stub task from its own Task.init.
        for key, value in self._env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._env_before = {}

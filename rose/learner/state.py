"""The learner's state registry: values shared between tasks, the loop and callbacks.

Task results and values the user registers by hand land here; every update is
told to the registered callbacks.  A callback that raises is logged once with
its traceback and counted after, and the end of the run says how often.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rose.logonce import RepeatLog

log = logging.getLogger(__name__)

StateCallback = Callable[[str, Any], None]


class StateRegistry:
    """Named values and the callbacks told of every update."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.callbacks: list[StateCallback] = []
        self.errors = RepeatLog(log)

    def register(self, key: str, value: Any) -> None:
        self.update({key: value})

    def update(self, values: dict[str, Any]) -> None:
        """Publish several values at once (a task's result); callbacks hear of each."""
        self.values.update(values)
        if not self.callbacks:
            return
        for key, value in values.items():
            self._tell(key, value)

    def _tell(self, key: str, value: Any) -> None:
        for callback in list(self.callbacks):
            try:
                callback(key, value)
            except Exception:
                self.errors(
                    id(callback),
                    "state callback %r raised for %r; the run continues (further "
                    "failures of this callback are counted, and told at the end of the run)",
                    callback,
                    key,
                    level=logging.ERROR,
                    exc_info=True,
                )

    def add_callback(self, callback: StateCallback) -> None:
        self.callbacks.append(callback)

    def remove_callback(self, callback: StateCallback) -> None:
        if callback in self.callbacks:
            self.callbacks.remove(callback)

    def summarize(self) -> None:
        """At the end of a run: how many callbacks failed more than once, and how often."""
        failed = sum(1 for n in self.errors.counts.values() if n > 1)
        if failed:
            log.warning("%d state callback(s) raised %d times in all", failed, self.errors.total)

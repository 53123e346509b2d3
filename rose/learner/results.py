"""Reading task results: the JSON object a task prints last, and a threshold task's number.

A task result arrives as a Python value (function tasks) or as stdout
(executables); both spellings read the same way here, so a learner family
never parses output itself.
"""

from __future__ import annotations

import json
import numbers
from typing import Any


def json_object_from_stdout(stdout: str) -> dict | None:
    """The JSON object on the last non-empty line of ``stdout``, or None."""
    lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
    if lines and lines[-1].lstrip().startswith("{"):
        try:
            obj = json.loads(lines[-1])
        except ValueError:
            return None
        return obj if isinstance(obj, dict) else None
    return None


def metric_value(result: Any, metric_name: str) -> float:
    """A threshold task's result as a number: itself, its dict's ``metric_name``, or the
    last line of its output; anything else is a clear error naming the metric."""
    value = result
    if isinstance(result, dict):
        if metric_name not in result:
            raise ValueError(
                f"stop criterion task returned a dict without the metric {metric_name!r} "
                f"(keys: {sorted(map(str, result))})"
            )
        value = result[metric_name]
    if isinstance(value, str):
        lines = [ln.strip() for ln in value.strip().splitlines() if ln.strip()]
        try:
            return float(lines[-1]) if lines else float("")
        except ValueError:
            raise ValueError(
                f"stop criterion task must produce a number for {metric_name!r}; its output "
                f"ends with {value.strip()[-80:]!r}"
            ) from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"stop criterion task must produce a number for {metric_name!r}, "
            f"got {type(value).__name__}"
        )
    return float(value)

"""Events → Slack messages: the one formatting shared by SlackTracker and the Slack sink.

:class:`RunMessages` follows one run's events and says which messages they
call for:

* on ``stop`` (always): iterations, stop reason and final metric, the classic
  ``ROSE run finished — 4 iterations, reason: criterion_met, final metric:
  0.0090`` with the run id added; one line per learner for parallel runs;
* on ``start`` (``notify_start``): learner type and stop criterion;
* on criterion milestones (``milestones``): the first iteration at which a
  learner's metric passes each given value, in the criterion's direction.

Its state (iterations and last metric per learner, milestones passed) is
plain data (:meth:`to_dict` / :meth:`from_dict`), so a restarted sink
formats exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rose import metrics


@dataclass(frozen=True)
class SlackOptions:
    """What to announce besides the end of a run."""

    notify_start: bool = False
    #: Metric values whose first crossing (per learner) is announced.
    milestones: tuple[float, ...] = ()
    #: Names of parallel learners 0, 1, ... (named learners keep their names).
    learner_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for m in self.milestones:
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
                raise ValueError(f"milestones must be finite numbers, got {m!r}")


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _json_safe(x: Any) -> Any:
    """A deep copy of ``x`` with non-finite floats as {"float": "inf"} (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return {"float": repr(x)}
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def _from_json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        if len(x) == 1 and x.get("float") in _NON_FINITE:
            return _NON_FINITE[x["float"]]
        return {k: _from_json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_from_json_safe(v) for v in x]
    return x


def format_metric(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "N/A"
    return f"{value:.4f}"


@dataclass
class RunMessages:
    """The messages of one run, event by event (see the module docstring)."""

    run: str
    options: SlackOptions = field(default_factory=SlackOptions)
    learner_type: str = ""
    parallel: bool = False
    criterion: dict[str, Any] | None = None
    #: learner key → {"label", "iterations", "metric", "passed": [milestone indexes]}
    learners: dict[str, dict[str, Any]] = field(default_factory=dict)

    # ------------------------------------------------------------ state

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the sink's journal, which is strict JSON: nan/inf become text."""
        return _json_safe({
            "learner_type": self.learner_type,
            "parallel": self.parallel,
            "criterion": self.criterion,
            "learners": self.learners,
        })

    @classmethod
    def from_dict(cls, run: str, options: SlackOptions, data: dict[str, Any] | None) -> RunMessages:
        out = cls(run, options)
        if data:
            out.learner_type = str(data.get("learner_type", ""))
            out.parallel = bool(data.get("parallel", False))
            out.criterion = _from_json_safe(data.get("criterion"))
            out.learners = _from_json_safe(dict(data.get("learners") or {}))
        return out

    def copy(self) -> RunMessages:
        return RunMessages.from_dict(self.run, self.options, self.to_dict())

    # ------------------------------------------------------------ events

    def messages(self, event: dict[str, Any]) -> list[str]:
        """Fold ``event`` into the state; return the texts to post for it, in order."""
        kind, body = event["kind"], event["body"]
        if kind == "start":
            return self._start(body)
        if kind == "iteration":
            return self._iteration(body)
        return self._stop(body)

    def _label(self, learner_id: int | str | None) -> str:
        names = self.options.learner_names
        if isinstance(learner_id, int) and names and 0 <= learner_id < len(names):
            return str(names[learner_id])
        return str(learner_id)

    def _learner(self, learner_id: int | str | None) -> dict[str, Any]:
        key = "" if learner_id is None else f"{type(learner_id).__name__}:{learner_id}"
        entry = self.learners.get(key)
        if entry is None:
            entry = {
                "label": self._label(learner_id),
                "iterations": 0,
                "metric": None,
                "passed": [],
            }
            self.learners[key] = entry
        if learner_id is not None:
            self.parallel = True
        return entry

    def _start(self, body: dict[str, Any]) -> list[str]:
        self.learner_type = body.get("learner_type", "")
        self.parallel = self.parallel or bool(body.get("parallel_count"))
        crit = body.get("criterion")
        if crit is not None:
            op = _operator(crit["metric_name"], crit.get("operator", ""))
            self.criterion = {
                "metric_name": crit["metric_name"],
                "threshold": crit["threshold"],
                "operator": op,
            }
        if not self.options.notify_start:
            return []
        text = f"ROSE run {self.run} started — {self.learner_type}"
        if body.get("parallel_count"):
            text += f", {body['parallel_count']} parallel learners"
        if self.criterion is not None:
            c = self.criterion
            text += f", stops when {c['metric_name']} {c['operator'] or '?'} {c['threshold']}"
        return [text]

    def _iteration(self, body: dict[str, Any]) -> list[str]:
        entry = self._learner(body.get("learner_id"))
        entry["iterations"] += 1
        value = body.get("metric_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return []
        entry["metric"] = value
        name = body.get("metric_name") or (self.criterion or {}).get("metric_name") or "metric"
        op = (self.criterion or {}).get("operator") or _operator(name)
        out = []
        for i, milestone in enumerate(self.options.milestones):
            if i in entry["passed"] or not op or not math.isfinite(value):
                continue
            if metrics.compare(value, milestone, op):
                entry["passed"].append(i)
                who = f" learner {entry['label']}:" if body.get("learner_id") is not None else ""
                out.append(
                    f"ROSE run {self.run}{who} {name} = {format_metric(value)} passed "
                    f"milestone {milestone} at iteration {body['iteration']}"
                )
        return out

    def _stop(self, body: dict[str, Any]) -> list[str]:
        reason = body["reason"]
        final = body.get("final_state")
        if not self.parallel and not (final and final.get("learner_id") is not None):
            entry = self.learners.get("", {"iterations": 0})
            metric = format_metric(final.get("metric_value")) if final else "N/A"
            return [
                f"ROSE run {self.run} finished — {entry['iterations']} iterations, "
                f"reason: {reason}, final metric: {metric}"
            ]
        if final is not None:
            self._learner(final.get("learner_id"))  # a learner that never iterated still shows
        lines = [f"ROSE run {self.run} finished — reason: {reason}"]
        for _, entry in sorted(self.learners.items(), key=lambda kv: _order(kv[0])):
            lines.append(
                f"• learner {entry['label']}: {entry['iterations']} iterations, "
                f"final metric: {format_metric(entry['metric'])}"
            )
        return ["\n".join(lines)]


def _order(key: str) -> tuple[int, int, str]:
    """Learners in id order: integers numerically, then names."""
    kind, _, value = key.partition(":")
    if kind == "int":
        return (0, int(value), "")
    return (1, 0, value)


def _operator(metric_name: str, operator: str = "") -> str:
    """The criterion's direction, or "" when the metric has none (then no milestones)."""
    try:
        return metrics.resolve_operator(metric_name, operator)
    except ValueError:
        return ""


def milestone_list(values: Sequence[float] | str | None) -> tuple[float, ...]:
    """``"0.1,0.05"`` or a sequence → a tuple of floats; ValueError names a bad entry."""
    if values is None:
        return ()
    if isinstance(values, str):
        parts = [p.strip() for p in values.split(",") if p.strip()]
        try:
            return tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"milestones must be numbers separated by commas, got {values!r}"
            ) from None
    return tuple(float(v) for v in values)

"""Events → ClearML: the one mapping shared by ClearMLTracker and the ClearML sink.

The mapping is split in two so that both halves can be reasoned about alone:

* :func:`event_ops` turns one event into a list of plain operations
  (:class:`Params`, :class:`Scalar`, :class:`Tags`, :class:`Comment`,
  :class:`Failed`).  It is pure and stateless: an event maps to the same
  operations whenever and wherever it is applied, so a restarted sink, a
  replay and the in-process tracker write the same thing.
* :class:`ClearMLWriter` performs those operations on a ClearML ``Task``.

The layout is ROSE 0.3's (docs/compat.md); what this project adds is in the
hyperparameter section ``rose`` and the tag ``rose``:

* ``start``: hyperparameters in the default section (``General``):
  ``learner_type``, ``parallel_learners``, ``criterion/metric_name`` /
  ``threshold`` / ``operator``, ``task/<task>/as_executable`` and
  ``task/<task>/<key>`` per ``log_params`` entry.  Section ``rose``: the run
  id (``run``), its origin (``origin/*``) and the criterion's own
  ``task/criterion/*``.  Tag ``rose``.
* ``iteration``: one scalar per number (the graph title: the criterion
  metric, or ``metric`` when it has no name; each numeric state value;
  numeric config kwargs as ``config/<task>/<key>``, see
  :mod:`rose.integrations.tracked_config`); the series is ``value`` for a
  sequential run, the learner's name for a parallel one
  (``learner_names[i]`` for learner ``i`` when given, else the id as text).
  String config kwargs go to section ``current_config`` as ``<task>/<key>``.
* ``stop``: tags ``stop:<reason>`` and, when the last state is a sequential
  run's, ``final_iter:<n>``; section ``rose`` holds ``stop_reason``,
  ``final_iteration`` and (parallel runs) ``final_learner``.  On ``error``
  also a comment and ``mark_failed`` (which ClearML ignores offline, hence
  the comment).

``clearml`` is imported only by :func:`init_task`, so building operations
costs nothing.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rose.integrations.tracked_config import (
    CONFIG_ROLES,
    EXTRA_ROLE_PREFIX,
    config_entries,
    config_name,
)

log = logging.getLogger(__name__)

#: Every framework binding ClearML knows, all off: a tracker must not patch user code.
FRAMEWORKS = (
    "catboost",
    "fastai",
    "gradio",
    "hydra",
    "joblib",
    "lightgbm",
    "matplotlib",
    "megengine",
    "pytorch",
    "scikit",
    "tensorboard",
    "tensorflow",
    "tfdefines",
    "xgboost",
    "jsonargparse",
)

#: Task.init options that keep ClearML quiet and fast: no monitor threads, no
#: stdout capture, no argparse/framework hooks, no repository scan.
QUIET_INIT_KWARGS: dict[str, Any] = {
    "auto_resource_monitoring": False,
    "auto_connect_arg_parser": False,
    "auto_connect_streams": False,
    "auto_connect_frameworks": {**dict.fromkeys(FRAMEWORKS, False), "detect_repository": False},
}

#: Environment a ClearML child process must not inherit: with them, Task.init
#: silently returns a stub task bound to the parent's task.
INHERITED_ENV = (
    "CLEARML_PROC_MASTER_ID",
    "CLEARML_TASK_ID",
    "TRAINS_PROC_MASTER_ID",
    "TRAINS_TASK_ID",
)

MAX_PARAM_CHARS = 1000


# ---------------------------------------------------------------- operations


@dataclass(frozen=True)
class Params:
    """Hyperparameters of one section (None: ClearML's default one), connected on the task."""

    section: str | None
    values: dict[str, Any]


@dataclass(frozen=True)
class Scalar:
    title: str
    series: str
    value: float
    iteration: int


@dataclass(frozen=True)
class Tags:
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Comment:
    text: str


@dataclass(frozen=True)
class Failed:
    reason: str


Op = Params | Scalar | Tags | Comment | Failed

#: The series of a sequential run's scalars.
SEQUENTIAL_SERIES = "value"
ROSE_SECTION = "rose"
CONFIG_SECTION = "current_config"


def series_name(learner_id: int | str | None, learner_names: Sequence[str] | None = None) -> str:
    """The series of one learner: ``value`` when sequential, its name, or its id as text."""
    if learner_id is None:
        return SEQUENTIAL_SERIES
    if isinstance(learner_id, int) and learner_names and 0 <= learner_id < len(learner_names):
        return str(learner_names[learner_id])
    return str(learner_id)


def previous_series_name(
    learner_id: int | str | None, title: str, learner_names: Sequence[str] | None = None
) -> str:
    """The series the previous layout gave a scalar: the title when sequential, ``learner-<i>``.

    Only for a sink that resumes a run an older version was writing, so a
    scalar it already holds under that name is not written again.
    """
    if learner_id is None:
        return title
    if isinstance(learner_id, int) and not (learner_names and 0 <= learner_id < len(learner_names)):
        return f"learner-{learner_id}"
    return series_name(learner_id, learner_names)


def _number(value: Any) -> float | None:
    if not isinstance(value, (bool, int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _param_value(value: Any) -> Any:
    """What ClearML can store as a parameter: scalars as they are, maps (ClearML flattens
    them to ``a/b``) and lists of scalars too, the rest as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value[:MAX_PARAM_CHARS] if isinstance(value, str) else value
    if isinstance(value, dict) and value:
        return {str(k): _param_value(v) for k, v in value.items()}
    if isinstance(value, list) and all(
        v is None or isinstance(v, (bool, int, float, str)) for v in value
    ):
        return list(value)
    text = value.hex() if isinstance(value, bytes) else str(value)
    return text[:MAX_PARAM_CHARS]


def _manifest_params(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The default section's hyperparameters, and the criterion's own ones for section rose."""
    crit = body.get("criterion")
    flat: dict[str, Any] = {
        "learner_type": body["learner_type"],
        "parallel_learners": body.get("parallel_count"),
        "criterion/metric_name": crit["metric_name"] if crit else None,
        "criterion/threshold": crit["threshold"] if crit else None,
        "criterion/operator": crit["operator"] if crit else None,
    }
    for name, task in body["tasks"].items():
        flat[f"task/{name}/as_executable"] = task["as_executable"]
        for key, value in (task["log_params"] or {}).items():
            flat[f"task/{name}/{key}"] = value
    extra: dict[str, Any] = {}
    if crit:
        extra["task/criterion/as_executable"] = crit["as_executable"]
        for key, value in (crit["log_params"] or {}).items():
            extra[f"task/criterion/{key}"] = value
    return (
        {k: _param_value(v) for k, v in flat.items()},
        {k: _param_value(v) for k, v in extra.items()},
    )


def _iteration_ops(body: dict[str, Any], learner_names: Sequence[str] | None) -> list[Op]:
    it = body["iteration"]
    series = series_name(body.get("learner_id"), learner_names)
    ops: list[Op] = []
    metric = _number(body.get("metric_value"))
    if metric is not None:
        ops.append(Scalar(body.get("metric_name") or "metric", series, metric, it))
    for key, value in (body.get("state") or {}).items():
        number = _number(value)
        if number is not None:
            ops.append(Scalar(key, series, number, it))
    strings: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for role, key, value in config_entries(body.get("current_config")):
        number = _number(value)
        name = config_name(role, key)
        if number is not None:
            ops.append(Scalar(name, series, number, it))
        elif isinstance(value, str):
            if role in CONFIG_ROLES:
                strings[f"{role}/{key}"] = _param_value(value)
            else:
                extra[name.removeprefix(EXTRA_ROLE_PREFIX)] = _param_value(value)
    if strings:
        ops.append(Params(CONFIG_SECTION, strings))
    if extra:
        ops.append(Params(ROSE_SECTION, extra))
    return ops


def _stop_ops(event: dict[str, Any]) -> list[Op]:
    body = event["body"]
    reason = body["reason"]
    final = body.get("final_state")
    final_it = final["iteration"] if final is not None else None
    rose: dict[str, Any] = {"stop_reason": reason, "final_iteration": final_it}
    ops: list[Op] = [Tags((f"stop:{reason}",))]
    if final is not None and final.get("learner_id") is None:
        ops.append(Tags((f"final_iter:{final_it}",)))
    elif final is not None:
        rose["final_learner"] = _param_value(final["learner_id"])
    ops.insert(0, Params(ROSE_SECTION, rose))
    if reason == "error":
        where = f"at iteration {final_it}" if final_it is not None else "before its first iteration"
        text = f"ROSE run {event['run']} failed {where} (stop reason: error)"
        ops += [Comment(text), Failed(text)]
    return ops


def event_ops(event: dict[str, Any], learner_names: Sequence[str] | None = None) -> list[Op]:
    """The ClearML operations of one (validated) event; pure, never touches ClearML."""
    kind = event["kind"]
    if kind == "start":
        origin = {k: _param_value(v) for k, v in (event.get("origin") or {}).items()}
        general, criterion = _manifest_params(event["body"])
        rose = {"run": event["run"], **{f"origin/{k}": v for k, v in origin.items()}}
        return [
            Params(None, general),
            Params(ROSE_SECTION, {**rose, **criterion}),
            Tags(("rose",)),
        ]
    if kind == "iteration":
        return _iteration_ops(event["body"], learner_names)
    return _stop_ops(event)


# ---------------------------------------------------------------- ClearML side


def quiet_clearml() -> None:
    """Make ClearML report from a thread of this process, not a forked reporter.

    With the default (a reporter subprocess on Linux) every ``close()`` waits
    about ten seconds and back-to-back tasks can hang.
    """
    from clearml import Task
    from clearml.config import ConfigWrapper

    if bool(ConfigWrapper.get("sdk.development.report_use_subprocess", True)):
        ConfigWrapper.set_overrides({"sdk": {"development": {"report_use_subprocess": False}}})
    # The class attribute is evaluated lazily and cached: pin it for tasks created from now on.
    Task._report_subprocess_enabled = False


def init_task(project_name: str, task_name: str, *, continue_task_id: str | None = None) -> Any:
    """Open a ClearML task quietly: a new one, or continue ``continue_task_id`` in place."""
    quiet_clearml()
    from clearml import Task

    current = Task.current_task()
    if current is not None:
        raise RuntimeError(
            f"a ClearML task ({current.id}) is already open in this process and ClearML allows "
            "one per process: close it first, or track through the bus (rose sink clearml)"
        )
    if continue_task_id is None:
        return Task.init(
            project_name=project_name,
            task_name=task_name,
            reuse_last_task_id=False,
            **QUIET_INIT_KWARGS,
        )
    # An int continue_last_task keeps our own iteration numbers (True would shift them).
    return Task.init(
        project_name=project_name,
        task_name=task_name,
        reuse_last_task_id=continue_task_id,
        continue_last_task=0,
        **QUIET_INIT_KWARGS,
    )


def clean_child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: os.environ) a ClearML child process can start from."""
    out = dict(os.environ if env is None else env)
    for key in INHERITED_ENV:
        out.pop(key, None)
    return out


class ClearMLWriter:
    """Applies events to one open ClearML task through :func:`event_ops`."""

    def __init__(self, task: Any, learner_names: Sequence[str] | None = None) -> None:
        self.task = task
        self.learner_names = list(learner_names) if learner_names else None
        self.failed: str | None = None
        self._logger = task.get_logger()
        self._params: dict[str | None, dict[str, Any]] = {}

    def apply(self, event: dict[str, Any]) -> None:
        for op in event_ops(event, self.learner_names):
            self.perform(op)

    def perform(self, op: Op) -> None:
        if isinstance(op, Scalar):
            self._logger.report_scalar(
                title=op.title, series=op.series, value=op.value, iteration=op.iteration
            )
        elif isinstance(op, Params):
            known = self._params.setdefault(op.section, {})
            changed = {k: v for k, v in op.values.items() if k not in known or known[k] != v}
            if changed:  # re-setting an unchanged parameter would only rewrite the task
                if op.section is None:
                    self.task.connect(dict(changed))
                else:
                    self.task.connect(dict(changed), name=op.section)
                known.update(changed)
        elif isinstance(op, Tags):
            self.task.add_tags(list(op.tags))
        elif isinstance(op, Comment):
            self.task.set_comment(op.text)
        elif isinstance(op, Failed):
            self.failed = op.reason

    def flush(self) -> None:
        """Hand everything reported so far to ClearML's storage (offline: the session files)."""
        self.task.flush(wait_for_uploads=True)

    def close(self) -> None:
        """Close the task; a failed run is marked failed after ``close`` marked it completed."""
        task, failed = self.task, self.failed
        task.close()
        if failed is not None:
            try:
                task.mark_failed(status_reason=failed[:255], force=True)
            except Exception:  # offline, or a server that refuses: the tag and comment remain
                log.debug("mark_failed refused", exc_info=True)

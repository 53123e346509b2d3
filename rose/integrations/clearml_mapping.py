"""Events → ClearML: the one mapping shared by ClearMLTracker and the ClearML sink.

The mapping is split in two so that both halves can be reasoned about alone:

* :func:`event_ops` turns one event into a list of plain operations
  (:class:`Params`, :class:`Scalar`, :class:`Tags`, :class:`Comment`,
  :class:`Failed`).  It is pure and stateless: an event maps to the same
  operations whenever and wherever it is applied, so a restarted sink, a
  replay and the in-process tracker write the same thing.
* :class:`ClearMLWriter` performs those operations on a ClearML ``Task``.

What lands where:

* ``start``: the manifest, flattened, as the connected hyperparameter section
  ``manifest``; the run id and its origin as section ``rose``; tag ``rose``.
* ``iteration``: one scalar per numeric metric/state key (the graph title),
  one series per learner (``learner_names[i]`` for an int learner id when
  given, the id itself for named learners, the title for sequential runs);
  string state values and the task configuration as parameters in section
  ``config``.
* ``stop``: tags ``stop:<reason>`` and ``final_iteration:<n>``, the same in
  section ``rose``; on ``error`` also tag ``failed``, a comment, and
  ``mark_failed`` (which ClearML ignores offline, hence the tag and comment).

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
    """Hyperparameters of one section, connected (set) on the task."""

    section: str
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


def series_name(
    learner_id: int | str | None, title: str, learner_names: Sequence[str] | None = None
) -> str:
    """The series of one learner: its name, ``learner-<i>``, or ``title`` when sequential."""
    if learner_id is None:
        return title
    if isinstance(learner_id, int) and learner_names and 0 <= learner_id < len(learner_names):
        return str(learner_names[learner_id])
    if isinstance(learner_id, int):
        return f"learner-{learner_id}"
    return str(learner_id)


def _learner_label(learner_id: int | str | None, learner_names: Sequence[str] | None) -> str:
    return "" if learner_id is None else series_name(learner_id, "", learner_names)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _param_value(value: Any) -> Any:
    """What ClearML can store as a parameter: scalars as they are, the rest as text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value.hex() if isinstance(value, bytes) else str(value)
    return text[:MAX_PARAM_CHARS]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested maps → ``a/b/c`` keys (ClearML's own separator), leaves as parameter values."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    return {prefix or "value": _param_value(value)}


def _manifest_params(body: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {
        "learner_type": body["learner_type"],
        "parallel_count": body.get("parallel_count"),
    }
    for name, task in body["tasks"].items():
        flat[f"tasks/{name}/func"] = f"{task['func_module']}.{task['func_name']}"
        flat[f"tasks/{name}/as_executable"] = task["as_executable"]
        flat.update(
            flatten(task["log_params"], f"tasks/{name}/log_params") if task["log_params"] else {}
        )
    crit = body.get("criterion")
    if crit is not None:
        flat["criterion/func"] = f"{crit['func_module']}.{crit['func_name']}"
        flat["criterion/metric_name"] = crit["metric_name"]
        flat["criterion/threshold"] = crit["threshold"]
        flat["criterion/operator"] = crit["operator"]
        if crit["log_params"]:
            flat.update(flatten(crit["log_params"], "criterion/log_params"))
    return {k: _param_value(v) for k, v in flat.items()}


def _iteration_ops(body: dict[str, Any], learner_names: Sequence[str] | None) -> list[Op]:
    it = body["iteration"]
    lid = body.get("learner_id")
    ops: list[Op] = []
    metric = _number(body.get("metric_value"))
    if body.get("metric_name") and metric is not None:
        title = body["metric_name"]
        ops.append(Scalar(title, series_name(lid, title, learner_names), metric, it))
    config: dict[str, Any] = {}
    label = _learner_label(lid, learner_names)
    prefix = f"{label}/" if label else ""
    for key, value in flatten_state(body.get("state") or {}).items():
        number = _number(value)
        if number is not None:
            ops.append(Scalar(key, series_name(lid, key, learner_names), number, it))
        elif isinstance(value, str):
            config[f"{prefix}state/{key}"] = _param_value(value)
    if body.get("current_config"):
        for key, value in flatten(body["current_config"]).items():
            config[f"{prefix}{key}"] = value
    if config:
        ops.append(Params("config", config))
    return ops


def flatten_state(state: dict[str, Any]) -> dict[str, Any]:
    """State keys to report: nested maps become ``a/b`` keys, other leaves stay as they are."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, dict) and value:
            for sub, leaf in flatten_state(value).items():
                out[f"{key}/{sub}"] = leaf
        else:
            out[str(key)] = value
    return out


def _stop_ops(event: dict[str, Any]) -> list[Op]:
    body = event["body"]
    reason = body["reason"]
    final = body.get("final_state")
    final_it = final["iteration"] if final is not None else None
    tags = [f"stop:{reason}", f"final_iteration:{final_it if final_it is not None else 'none'}"]
    ops: list[Op] = [Params("rose", {"stop_reason": reason, "final_iteration": final_it})]
    if reason == "error":
        where = f"at iteration {final_it}" if final_it is not None else "before its first iteration"
        text = f"ROSE run {event['run']} failed {where} (stop reason: error)"
        tags.append("failed")
        ops += [Tags(tuple(tags)), Comment(text), Failed(text)]
    else:
        ops.append(Tags(tuple(tags)))
    return ops


def event_ops(event: dict[str, Any], learner_names: Sequence[str] | None = None) -> list[Op]:
    """The ClearML operations of one (validated) event; pure, never touches ClearML."""
    kind = event["kind"]
    if kind == "start":
        origin = {k: _param_value(v) for k, v in (event.get("origin") or {}).items()}
        return [
            Params("manifest", _manifest_params(event["body"])),
            Params("rose", {"run": event["run"], **{f"origin/{k}": v for k, v in origin.items()}}),
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
        self._params: dict[str, dict[str, Any]] = {}

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

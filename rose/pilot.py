"""RADICAL-Pilot under ROSE learners: task requirements, ``shell``, and a dead pilot.

Learners call :func:`adapt` on their engine; it does nothing unless the engine
runs on rhapsody's ``RadicalExecutionBackend``.  Then it

* turns a task's ``decor_kwargs`` into radical.pilot ``TaskDescription`` keys
  (:func:`task_requirements`), so ``ranks=4, num_gpus=4`` or upstream ROSE's
  ``task_description={"shell": True}`` reach RADICAL-Pilot instead of killing
  the engine's submit loop with ``TDKeyError``;
* runs the tasks in one folder of the pilot's sandbox, so that a task reads
  the files the previous one wrote, as in a ROSE script's working directory;
* makes a dead pilot fail every task (running and later ones) with one
  :class:`PilotError` naming the cause and the sandbox log, instead of the
  bare ``pilot died`` or a hang.

radical.pilot is imported lazily: this module loads without it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: ROSE keywords for a task's whole need, split evenly over its ranks.
TOTALS = {
    "num_gpus": "gpus_per_rank",
    "gpus": "gpus_per_rank",
    "num_cores": "cores_per_rank",
    "cores": "cores_per_rank",
    "cpus": "cores_per_rank",
    "memory": "mem_per_rank",
}
#: The task folder (under the pilot's sandbox) a learner's tasks share.
SHARED_SANDBOX = "rose.tasks"
#: Other spellings of radical.pilot keys.
ALIASES = {"num_ranks": "ranks", "mpi_ranks": "ranks", "env": "environment"}

_VENV_HINT = (
    "run from the client's activated virtual environment (VIRTUAL_ENV names it, its bin/ "
    "on PATH): the local agent runs in it"
)
_HINTS = (
    ("no nodes left", "give the pilot `cores` (or `nodes`) in its resource description"),
    ("command not found", _VENV_HINT),
    ("virtual env", _VENV_HINT),
    ("virtenv", _VENV_HINT),
    ("insufficient cores", "ask the pilot for no more cores than the machine has"),
)


class PilotError(RuntimeError):
    """The RADICAL-Pilot pilot ended, so no task of this engine can run."""


def task_requirements(description: dict[str, Any], schema: set[str] | None = None) -> dict:
    """radical.pilot TaskDescription keys for a ROSE task description.

    ``ranks`` (``num_ranks``), ``cores_per_rank``, ``gpus_per_rank``, ``mem_per_rank``
    pass as they are; ``num_gpus``/``gpus``, ``num_cores``/``cores``/``cpus`` and
    ``memory`` (MB) are the task's total, divided over its ranks.  ``shell=True``
    is dropped: radical.pilot runs an executable task's command line from a bash
    script, which is what ``shell=True`` asks for.  Any other key must be one of
    ``schema`` (radical.pilot's TaskDescription keys), else ``ValueError``.
    """
    out = {ALIASES.get(k, k): v for k, v in description.items() if k not in TOTALS}
    shell = out.pop("shell", True)
    if not shell:
        raise ValueError(
            "shell=False cannot be honoured on RADICAL-Pilot: it runs every executable "
            "task's command line through bash; drop the key"
        )
    ranks = out.get("ranks", 1)
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise ValueError(f"ranks must be an int >= 1, got {ranks!r}")
    for key, per_rank in TOTALS.items():
        if key not in description:
            continue
        total = description[key]
        if isinstance(total, bool) or not isinstance(total, (int, float)) or total < 0:
            raise ValueError(f"{key} must be a number >= 0, got {total!r}")
        if per_rank in out:
            raise ValueError(f"give {key} or {per_rank}, not both")
        share = total / ranks
        out[per_rank] = share if per_rank == "gpus_per_rank" else math.ceil(share)
    if schema is not None:
        unknown = sorted(set(out) - schema)
        if unknown:
            raise ValueError(
                f"RADICAL-Pilot tasks accept no {', '.join(map(repr, unknown))}: use "
                f"{', '.join(sorted(TOTALS))}, or a radical.pilot TaskDescription key "
                "(ranks, cores_per_rank, gpus_per_rank, mem_per_rank, pre_exec, environment, ...)"
            )
    return out


def adapt(engine: Any) -> None:
    """Prepare ``engine`` for ROSE tasks if it runs on RADICAL-Pilot (idempotent)."""
    backend = getattr(engine, "backend", None)
    if type(backend).__name__ != "RadicalExecutionBackend" or getattr(
        backend, "_rose_adapted", False
    ):
        return
    import radical.pilot as rp

    backend._rose_adapted = True
    logging.getLogger(backend.__module__).addFilter(_raptor_noise)
    _fix_raptor_task_dicts(rp)
    schema = set(rp.TaskDescription._schema)
    watch = _PilotWatch(backend, rp)
    build_task = backend.build_task
    submit_tasks = backend.submit_tasks
    fail_component = engine.handle_component_failure

    def build(uid: str, task_desc: dict, kwargs: dict) -> Any:
        try:
            kwargs = task_requirements(kwargs, schema)
        except ValueError as exc:
            _fail(engine, uid, exc, fail_component)
            return None
        linked = any("SRC_TASK_ID" in str(cmd) for cmd in kwargs.get("pre_exec", []))
        if not linked:
            # Learners hand results on as values, so rhapsody links no sandboxes; tasks
            # that pass files (sim.py writes, train.py reads) share one folder instead.
            kwargs.setdefault("sandbox", SHARED_SANDBOX)
        return build_task(uid, task_desc, kwargs)

    async def submit(tasks: list) -> Any:
        error = watch.error()
        if error is None:
            return await submit_tasks(tasks)
        for task in tasks:
            _fail(engine, task["uid"], error, fail_component)
        return []

    def handle_failure(component: dict, future: Any, override_error_message: Any = None) -> None:
        error = watch.error()
        fail_component(component, future, error if error is not None else override_error_message)

    async def shutdown() -> None:
        try:
            await close()
        finally:
            _forget_uids(backend)

    close = backend.shutdown
    backend.build_task = build
    backend.submit_tasks = submit
    backend.shutdown = shutdown
    engine.handle_component_failure = handle_failure


def _forget_uids(backend: Any) -> None:
    """radical.pilot refuses a task uid seen before in this process, while every new
    engine numbers its tasks from task.000001: forget a closed session's uids, so that
    a second engine in the same process (a notebook, a test suite) can run."""
    from radical.pilot import task as rp_task

    gone = set(getattr(backend, "tasks", {}))
    for item in getattr(backend, "masters", []) + getattr(backend, "workers", []):
        gone.update(t.uid for t in (item if isinstance(item, list) else [item]))
    rp_task._uids[:] = [uid for uid in rp_task._uids if uid not in gone]


def _raptor_noise(record: logging.LogRecord) -> bool:
    """rhapsody warns on every state change of the raptor master and workers, which are
    not tasks of the workflow: keep the log for what matters."""
    return not (
        record.levelno == logging.WARNING
        and str(record.msg).startswith("No original task found for UID flow.")
    )


def _fail(engine: Any, uid: str, error: BaseException, fail_component: Any) -> None:
    comp = engine.components.get(uid)
    if comp is not None:
        fail_component(comp["description"], comp["future"], error)


class _PilotWatch:
    """Knows when the backend's pilot ended, and why (read once from its sandbox)."""

    def __init__(self, backend: Any, rp: Any) -> None:
        self.backend = backend
        self.final = set(rp.FINAL)
        self._error: PilotError | None = None

    def error(self) -> PilotError | None:
        pilot = getattr(self.backend, "resource_pilot", None)
        if self._error is None and pilot is not None and pilot.state in self.final:
            if getattr(self.backend, "_backend_state", None) is not None and (
                str(getattr(self.backend._backend_state, "value", "")).lower() == "shutdown"
            ):
                return None
            self._error = PilotError(pilot_failure(pilot))
            log.error("%s", self._error)
        return self._error


def pilot_failure(pilot: Any) -> str:
    """One line: which pilot ended, the cause found in its sandbox, where to look, the fix."""
    where = _sandbox_path(getattr(pilot, "pilot_sandbox", None))
    resource = getattr(pilot, "resource", None) or pilot.description.get("resource")
    head = f"RADICAL-Pilot pilot {pilot.uid} on {resource} ended ({pilot.state})"
    if where is None or not where.is_dir():
        return f"{head}; its sandbox is {pilot.pilot_sandbox} (agent_0.err, bootstrap_0.out)"
    cause, logfile = _cause(where)
    for _ in range(20):  # the agent's last words may reach the sandbox after its state
        if cause:
            break
        time.sleep(0.25)
        cause, logfile = _cause(where)
    msg = f"{head}: {cause or 'no cause found in its logs'}; see {logfile}"
    hint = next((h for pat, h in _HINTS if cause and pat in cause), None)
    return f"{msg}; {hint}" if hint else msg


_ERROR_LINE = re.compile(
    r"^\s*(ERROR:.*|\w+(Error|Exception)\b.*|.*(command not found|No such file or directory|failed!).*)$"
)


def _cause(sandbox: Path) -> tuple[str | None, Path]:
    for name in ("agent_0.err", "bootstrap_0.err", "bootstrap_0.out", "agent_0.out"):
        path = sandbox / name
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        hits = [ln.strip() for ln in lines if _ERROR_LINE.match(ln)]
        if hits:
            return " / ".join(hits[-2:]), path
    return None, sandbox / "agent_0.err"


def _sandbox_path(url: Any) -> Path | None:
    if not url:
        return None
    text = str(url)
    if text.startswith("file://"):
        text = text[len("file://") :]
        text = text[text.index("/") :] if "/" in text else text
    return Path(text) if text.startswith("/") else None


_slots_fixed = False


def _fix_raptor_task_dicts(rp: Any) -> None:
    """radical.pilot's ``Task.as_dict`` raises ``KeyError: 0`` for raptor (function)
    tasks, whose slots are a dict, not a list; rhapsody calls it on every state
    change, so a function task's result never arrived.  Read such slots as they are."""
    global _slots_fixed
    if _slots_fixed:
        return
    original = rp.Task.slots

    def slots(self: Any) -> Any:
        if isinstance(self._slots, dict) and 0 not in self._slots:
            return self._slots
        return original.fget(self)

    rp.Task.slots = property(slots, doc=original.__doc__)
    _slots_fixed = True

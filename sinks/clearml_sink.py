"""The ClearML sink: one ClearML task per run, each run in its own worker process.

ClearML allows one open task per process, and a ClearML call that hangs or
crashes must not take the sink down, so every active run gets a worker
process (``python -c 'from sinks.clearml_sink import worker_main; ...'``)
started with the inherited ClearML variables cleared and its own session.
The worker applies events through :mod:`rose.integrations.clearml_mapping`,
the mapping ClearMLTracker uses, so the sink, the tracker and a replay
write the same task.

Exactly once across restarts.  Each run has a journal
``JOURNAL_DIR/<run>.json``: the ClearML task id, the next seq to apply, and
the batch in flight.  Before a batch the worker records it as in flight;
after ClearML flushed it, it advances ``next_seq``.  A restarted run
continues the same task (``Task.init(continue_last_task=...)``, which also
works offline), and for a batch left in flight it skips every scalar the
task already holds (parameters and tags are set-like, so repeating them is
harmless).  A dead or hung worker is a retry: the runtime backs off and the
next attempt starts a fresh worker, which recovers the same way.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from rose.events.jsonl import from_json_line, to_json_line
from rose.events.schema import EventError
from rose.fileio import atomic_write_json, read_json
from sinks.base import ApplyResult, RunSink
from sinks.journal import JournaledSink

log = logging.getLogger(__name__)

DEFAULT_TASK_NAME = "{run}"
DEFAULT_REPLY_TIMEOUT_S = 120.0
DEFAULT_MAX_WORKERS = 32
#: How long a closing worker may take to close its task before it is killed.
CLOSE_TIMEOUT_S = 60.0
#: How long a new worker waits for an old one of the same run (e.g. orphaned by a
#: killed sink, finishing its batch) to let go of the run.
LOCK_TIMEOUT_S = 60.0
JOURNAL_VERSION = 1


def read_journal(path: Path) -> dict[str, Any]:
    data = read_json(path)
    if not isinstance(data, dict) or data.get("v") != JOURNAL_VERSION:
        return {
            "v": JOURNAL_VERSION,
            "task_id": None,
            "next_seq": 0,
            "inflight": None,
            "closed": False,
        }
    return data


class WorkerError(RuntimeError):
    """The worker process died, hung, or answered nonsense."""


class ClearMLSink(JournaledSink):
    """Writes each run to a ClearML task in ``project``; idempotent across restarts."""

    name = "clearml"

    def __init__(
        self,
        project: str,
        journal_dir: str | os.PathLike[str],
        *,
        task_name: str = DEFAULT_TASK_NAME,
        learner_names: list[str] | None = None,
        reply_timeout_s: float = DEFAULT_REPLY_TIMEOUT_S,
        max_workers: int = DEFAULT_MAX_WORKERS,
        env: dict[str, str] | None = None,
    ) -> None:
        if not project:
            raise ValueError("the ClearML sink needs a project name (--project NAME)")
        try:
            task_name.format(run="x")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"--task-name {task_name!r}: only {{run}} may be used ({exc})"
            ) from None
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        self.project = project
        self.task_name = task_name
        self.learner_names = list(learner_names) if learner_names else None
        super().__init__(journal_dir)
        self.reply_timeout_s = reply_timeout_s
        self.max_workers = max_workers
        self.env = env
        self._live: OrderedDict[str, ClearMLRunSink] = OrderedDict()

    def open_run(self, run: str) -> RunSink:
        return ClearMLRunSink(self, run)

    def _started(self, run_sink: ClearMLRunSink) -> None:
        """A worker started: keep at most ``max_workers``, parking the least recently used."""
        self._live[run_sink.run] = run_sink
        self._live.move_to_end(run_sink.run)
        while len(self._live) > self.max_workers:
            _, oldest = self._live.popitem(last=False)
            log.info(
                "clearml: parking run %s (more than %d active runs)", oldest.run, self.max_workers
            )
            oldest.stop_worker()

    def _stopped(self, run_sink: ClearMLRunSink) -> None:
        if self._live.get(run_sink.run) is run_sink:
            del self._live[run_sink.run]

    def shutdown(self) -> None:
        for run_sink in list(self._live.values()):
            run_sink.stop_worker()
        self._live.clear()


class ClearMLRunSink(RunSink):
    """One run: talks to its worker process over a pipe, one JSON line each way."""

    def __init__(self, sink: ClearMLSink, run: str) -> None:
        self.sink = sink
        self.run = run
        self.journal = sink.journal_path(run)
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def resume_seq(self) -> int | None:
        seq = read_journal(self.journal)["next_seq"]
        return seq or None

    # ------------------------------------------------------------ RunSink

    def apply(
        self, events: list[dict[str, Any]], lines: list[str | None] | None = None
    ) -> ApplyResult:
        payload = [
            (ln if ln else to_json_line(ev)).rstrip("\n")
            for ev, ln in zip(events, lines or [None] * len(events), strict=True)
        ]
        try:
            reply = self._request({"op": "apply", "events": payload}, self.sink.reply_timeout_s)
        except WorkerError as exc:
            self.stop_worker(kill=True)
            return ApplyResult.retry(self._applied_by_journal(events), str(exc))
        done = max(0, min(len(events), int(reply.get("next_seq", 0)) - events[0]["seq"]))
        if reply.get("ok") and done == len(events):
            return ApplyResult.ok(done)
        error = str(reply.get("error") or "the worker applied part of a batch")
        if reply.get("reject"):
            return ApplyResult.reject(done, error)
        self.stop_worker()  # a fresh worker recovers from the journal
        return ApplyResult.retry(done, error)

    def flush(self) -> bool:
        if self._proc is None:
            return True
        try:
            return bool(self._request({"op": "flush"}, self.sink.reply_timeout_s).get("ok"))
        except WorkerError as exc:
            log.warning("clearml: run %s: flush failed: %s", self.run, exc)
            self.stop_worker(kill=True)
            return False

    def close(self) -> None:
        self.stop_worker()

    # ------------------------------------------------------------ worker

    def _applied_by_journal(self, events: list[dict[str, Any]]) -> int:
        next_seq = read_journal(self.journal)["next_seq"]
        return max(0, min(len(events), next_seq - events[0]["seq"]))

    def _spawn(self) -> None:
        from rose.integrations.clearml_mapping import clean_child_env

        env = clean_child_env(self.sink.env)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from sinks.clearml_sink import worker_main; worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # terminal signals go to the sink, which closes workers itself
        )
        self._buf = b""
        hello = {
            "run": self.run,
            "project": self.sink.project,
            "task_name": self.sink.task_name.format(run=self.run),
            "learner_names": self.sink.learner_names,
            "journal": str(self.journal),
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        self._send(hello)
        self.sink._started(self)

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(msg).encode() + b"\n")
            self._proc.stdin.flush()
        except OSError as exc:
            raise WorkerError(f"run {self.run}: the ClearML worker is gone ({exc})") from None

    def _request(self, msg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self._proc is None or self._proc.poll() is not None:
            self.stop_worker(kill=True)
            self._spawn()
        self._send(msg)
        return self._reply(timeout_s)

    def _reply(self, timeout_s: float) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise WorkerError(
                    f"run {self.run}: the ClearML worker did not answer in {timeout_s:.0f}s"
                )
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self._proc.wait(timeout=5)
                raise WorkerError(f"run {self.run}: the ClearML worker exited with status {code}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:
            raise WorkerError(f"run {self.run}: unreadable reply from the ClearML worker") from None
        if not isinstance(reply, dict):
            raise WorkerError(f"run {self.run}: unreadable reply from the ClearML worker")
        return reply

    def stop_worker(self, *, kill: bool = False) -> None:
        """Let the worker flush and exit (its task is closed only if the run stopped)."""
        proc, self._proc = self._proc, None
        self.sink._stopped(self)
        if proc is None:
            return
        try:
            if not kill and proc.poll() is None:
                try:
                    assert proc.stdin is not None
                    proc.stdin.write(b'{"op": "close"}\n')
                    proc.stdin.close()
                except OSError:
                    pass
                try:
                    proc.wait(timeout=CLOSE_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    log.warning("clearml: run %s: worker did not exit; killing it", self.run)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        finally:
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass


# ---------------------------------------------------------------- worker process


class _Worker:
    """Inside the worker process: one run, one ClearML task, the journal."""

    def __init__(self, hello: dict[str, Any]) -> None:
        self.run = hello["run"]
        self.project = hello["project"]
        self.task_name = hello["task_name"]
        self.learner_names = hello.get("learner_names")
        self.path = Path(hello["journal"])
        self.journal = read_journal(self.path)
        self.writer: Any = None
        self._present: set[tuple[str, str, int]] | None = None

    def _save(self) -> None:
        atomic_write_json(self.path, self.journal)

    def lock(self, timeout_s: float = LOCK_TIMEOUT_S) -> None:
        """Own the run: one worker per run, also across sink restarts (held until exit)."""
        fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise RuntimeError(
                        f"run {self.run} is still held by another ClearML worker"
                    ) from None
                time.sleep(0.05)
        self._lock_fd = fd  # released by the kernel when this process exits
        self.journal = read_journal(self.path)  # what the previous owner left

    def _open(self) -> None:
        from rose.integrations.clearml_mapping import ClearMLWriter, init_task

        task_id = self.journal.get("task_id")
        task = init_task(self.project, self.task_name, continue_task_id=task_id)
        if task_id is None:
            self.journal.update(task_id=str(task.id), closed=False)
            self._save()
            log.info("clearml: run %s → new task %s", self.run, task.id)
        else:
            self.journal["closed"] = False
            log.info("clearml: run %s continues task %s", self.run, task.id)
        self.writer = ClearMLWriter(task, self.learner_names)
        if self.journal.get("inflight"):
            self._present = reported_scalars(task)

    def apply(self, lines: list[str]) -> dict[str, Any]:
        from rose.integrations.clearml_mapping import Scalar, event_ops

        try:
            events = [from_json_line(line) for line in lines]
        except EventError as exc:
            return {
                "ok": False,
                "reject": True,
                "error": str(exc),
                "next_seq": self.journal["next_seq"],
            }
        events = [e for e in events if e["seq"] >= self.journal["next_seq"]]
        if not events:
            return {"ok": True, "next_seq": self.journal["next_seq"]}
        if self.writer is None:
            self._open()
        inflight = self.journal.get("inflight")
        last = events[-1]["seq"]
        # Seqs a crashed attempt may have written stay suspect until applied, even when a
        # smaller batch comes first: the journal keeps the union until then.
        suspect = inflight[1] if inflight is not None and inflight[1] > last else None
        self.journal["inflight"] = [events[0]["seq"], suspect if suspect is not None else last]
        self._save()
        stopped = False
        for event in events:
            # Only scalars are not set-like: skip those a crashed attempt already wrote.
            replayed = inflight is not None and inflight[0] <= event["seq"] <= inflight[1]
            lid = event["body"].get("learner_id")
            for op in event_ops(event, self.writer.learner_names):
                if (
                    replayed
                    and isinstance(op, Scalar)
                    and self._present is not None
                    and self._holds(op, lid)
                ):
                    continue
                self.writer.perform(op)
            stopped = stopped or event["kind"] == "stop"
        self.writer.flush()
        if stopped:
            writer, self.writer = self.writer, None
            writer.close()
            self.journal["closed"] = True
        self.journal.update(
            next_seq=last + 1, inflight=None if suspect is None else [last + 1, suspect]
        )
        if suspect is None:
            self._present = None
        self._save()
        return {"ok": True, "next_seq": self.journal["next_seq"]}

    def _holds(self, op: Any, learner_id: Any) -> bool:
        """The task has this scalar, under its name or the one an older version gave it."""
        from rose.integrations.clearml_mapping import previous_series_name

        assert self._present is not None
        old = previous_series_name(learner_id, op.title, self.writer.learner_names)
        return any((op.title, s, op.iteration) in self._present for s in (op.series, old))

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def finish(self) -> None:
        """Leaving: flush; a stopped run's task is already closed, a live one stays open."""
        self.flush()


def reported_scalars(task: Any) -> set[tuple[str, str, int]]:
    """(title, series, iteration) of every scalar the task holds."""
    out: set[tuple[str, str, int]] = set()
    folder = task.get_offline_mode_folder() if hasattr(task, "get_offline_mode_folder") else None
    if folder is not None:
        metrics = Path(folder) / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text(errors="replace").splitlines():
                try:
                    batch = json.loads(line)
                except ValueError:
                    continue  # a torn last line: those scalars were never fully written
                for e in batch if isinstance(batch, list) else []:
                    if isinstance(e, dict) and e.get("type") == "training_stats_scalar":
                        out.add((e.get("metric"), e.get("variant"), e.get("iter")))
        return out
    for title, series_map in (task.get_reported_scalars() or {}).items():
        for series, points in series_map.items():
            for x in points.get("x", []):
                out.add((title, series, int(x)))
    return out


def worker_main() -> None:
    """Entry point of a worker process: JSON requests on stdin, replies on the original stdout."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # ClearML prints banners; keep them off the protocol and the console
    os.close(devnull)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    hello = json.loads(sys.stdin.readline() or "{}")
    logging.basicConfig(
        level=hello.get("log_level", logging.WARNING),
        format="%(asctime)s clearml-worker[%(process)d] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not hello:
        return
    worker = _Worker(hello)
    try:
        worker.lock()
    except RuntimeError as exc:
        log.warning("clearml: %s", exc)
        os._exit(3)  # the parent sees a dead worker: a retry, later

    def reply(msg: dict[str, Any]) -> None:
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    for raw in sys.stdin:
        try:
            msg = json.loads(raw)
        except ValueError:
            reply({"ok": False, "error": "unreadable request"})
            continue
        op = msg.get("op")
        if op == "close":
            break
        try:
            if op == "apply":
                reply(worker.apply(list(msg.get("events") or [])))
            elif op == "flush":
                worker.flush()
                reply({"ok": True})
            else:
                reply({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as exc:
            log.warning("clearml: run %s: %s failed", worker.run, op, exc_info=True)
            reply(
                {
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "next_seq": worker.journal["next_seq"],
                }
            )
            break  # the task's state is uncertain: a fresh worker recovers from the journal
    try:
        worker.finish()
    except Exception:
        log.warning("clearml: run %s: final flush failed", worker.run, exc_info=True)
    os._exit(0)  # skip ClearML's exit hooks: an open task stays open for the next worker

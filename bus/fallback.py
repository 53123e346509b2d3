"""The fallback log: where a tracker keeps the events the broker did not acknowledge.

One JSONL file per run in the fallback directory (default
:func:`default_fallback_dir`), written by a :class:`~bus.spool.Spooler` opened
on first use.  Whatever lands there is told once per batch, with the number,
the cause and the ``rose replay ... --publish`` command that delivers it.
An event over the bus's size limit is kept whole in ``<run>.oversized.jsonl``,
with a warning naming the state key that made it big.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from bus.spool import Spooler
from rose.eventlog import EventLogWriter
from rose.logonce import RepeatLog

# The tracker's messages keep the one logger name users filter on and the docs show.
log = logging.getLogger("bus.tracker")

#: Environment variable naming the fallback directory.
ENV_FALLBACK = "ROSE_FALLBACK_DIR"
#: How often the fallback log is fsynced while it is written.
SYNC_INTERVAL_S = 0.5


def default_fallback_dir() -> Path:
    """Where unacknowledged events go by default: ``$ROSE_FALLBACK_DIR``, else
    ``$XDG_STATE_HOME/rose-tracking/fallback`` (``~/.local/state/rose-tracking/fallback``).
    """
    env = os.environ.get(ENV_FALLBACK)
    if env:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
    return Path(state).expanduser() / "rose-tracking" / "fallback"


def fallback_dir_of(fallback: str | os.PathLike[str] | bool | None) -> Path | None:
    """The directory a ``fallback=`` argument names (None: no fallback log); ValueError if bad."""
    if fallback is True or fallback is None:
        return default_fallback_dir()
    if fallback is False:
        return None
    directory = Path(fallback).expanduser()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"BusTracker: fallback={fallback!s} is not a directory")
    return directory


def _size(value: Any, depth: int = 0) -> int:
    """About how many bytes a value takes encoded, without encoding it."""
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if depth < 4 and isinstance(value, dict):
        return sum(len(str(k)) + _size(v, depth + 1) for k, v in value.items())
    if depth < 4 and isinstance(value, (list, tuple)):
        return sum(_size(v, depth + 1) for v in value)
    return 9


def biggest_key(event: dict[str, Any]) -> tuple[str, int]:
    """The path of the largest value in an event's body (``state['x']``) and its size."""
    value: Any = event.get("body")
    path = ""
    while isinstance(value, dict) and value:
        key, item = max(value.items(), key=lambda kv: _size(kv[1]))
        path = f"{path}[{key!r}]" if path else str(key)
        value = item
        if not isinstance(value, dict) or _size(value) < 1024:
            break
    return path or "body", _size(value)


class FallbackLog:
    """One tracker's fallback log; ``directory=None``: there is none (events are dropped)."""

    def __init__(
        self,
        directory: Path | None,
        endpoint: str,
        publish_target: str,
        client_key: str | None,
    ) -> None:
        self.directory = directory
        self.endpoint = endpoint
        #: What ``rose replay --publish`` needs to reach this broker again.
        self.publish_target = publish_target
        self.client_key = client_key
        self.count = 0  # events handed to the log (oversized ones aside)
        self.dropped = 0  # events with nowhere to go (no fallback log)
        self._reported = 0  # ... of which the user was told
        self._spooler: Spooler | None = None
        self._failed_reported = 0
        self._told = RepeatLog(log)

    def _open(self) -> Spooler | None:
        if self._spooler is None and self.directory is not None:
            try:
                self._spooler = Spooler(self.directory, SYNC_INTERVAL_S, None, per_run=True)
            except OSError as exc:
                log.error("cannot create the fallback directory %s: %s", self.directory, exc)
                self.directory = None
        return self._spooler

    def keep(self, payloads: list[bytes], why: str) -> None:
        """Keep these sent events (``why`` they were not acknowledged), or drop and count them."""
        spooler = self._open()
        if spooler is None:
            self._drop(len(payloads), why)
            return
        for payload in payloads:
            spooler.put(payload)
        self.count += len(payloads)

    def _drop(self, n: int, why: str) -> None:
        self.dropped += n
        self._told(
            "drop",
            "BusTracker to %s: dropping events: %s, and fallback=False. "
            "Further drops are counted and summarized at close.",
            self.endpoint,
            why,
        )

    def put_oversized(
        self, event: dict[str, Any], payload: bytes, built: bool, limit: int
    ) -> None:
        """Keep an event too large to send, whole, and say so (or drop it: no log).

        ``built``: the tracker built ``event`` itself (its dict can be written as it is).
        """
        spooler = self._open()
        if spooler is not None:
            spooler.put(payload, event if built else None, ".oversized")
            kept = f"kept whole in {self.directory}/{event['run']}.oversized.jsonl"
        else:
            self.dropped += 1
            kept = "dropped (fallback=False)"
        where, size = biggest_key(event)
        log.warning(
            "BusTracker: %s event seq %d of run %s is %d bytes encoded, over the bus limit "
            "of %d bytes, so it is not sent (the broker would refuse it); %s. Most of it is "
            "%s (about %d bytes): log a summary of it, or save it as an artifact file.",
            event["kind"],
            event["seq"],
            event["run"],
            len(payload),
            limit,
            kept,
            where,
            size,
        )

    def after_close(self, event: dict[str, Any]) -> None:
        """An event after the tracker closed: written at once (rare, not hot), told once."""
        if self.directory is None:
            self._drop(1, "the tracker is closed")
            return
        with EventLogWriter(self.directory / f"{event['run']}.jsonl") as writer:
            writer.append(event)
        self.count += 1
        self._reported += 1  # told here, not at a close that already happened
        self._told(
            "closed",
            "BusTracker to %s is closed: further events go to the fallback log %s; "
            "deliver them with: rose replay %s --publish %s",
            self.endpoint,
            writer.path,
            writer.path,
            self.publish_target,
        )

    @property
    def lost(self) -> int:
        """Events with nowhere to go: no fallback log, or writing it failed."""
        return self.dropped + (self._spooler.failed if self._spooler is not None else 0)

    def report(self, cause: str, timeout_s: float = 10.0) -> None:
        """One warning for everything handed to the log since the last one."""
        count = self.count - self._reported
        if count <= 0 or self._spooler is None:
            return
        self._reported = self.count
        written = self._spooler.settle(timeout_s)
        failed = self._spooler.failed - self._failed_reported
        self._failed_reported = self._spooler.failed
        if failed:
            log.error(
                "BusTracker to %s: %d of %d event(s) not acknowledged by the broker (%s) "
                "could not be written to the fallback log %s either (see the error above) "
                "and are lost; give BusTracker(fallback=DIR) a writable directory",
                self.endpoint,
                failed,
                count,
                cause,
                self.directory,
            )
            count -= failed
            if count <= 0:
                return
        files = sorted(str(p) for k, p in self._spooler.files.items() if "." not in k)
        logs = " ".join(files) if files else str(self.directory)
        key = f" --client-key {self.client_key}" if self.client_key else ""
        log.warning(
            "BusTracker to %s: %d event(s) were not acknowledged by the broker (%s). "
            "They are %s the fallback log %s; deliver them with: "
            "rose replay %s --publish %s%s",
            self.endpoint,
            count,
            cause,
            "in" if written else "still being written to",
            logs,
            logs,
            self.publish_target,
            key,
        )

    def close(self, timeout_s: float = 10.0) -> None:
        if self._spooler is not None:
            self._spooler.close(timeout_s)

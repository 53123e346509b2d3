"""Any TrackerBase as a sink: one tracker instance per run, driven by EventFeed.

``rose sink tracker mypkg.trackers:MyTracker --arg url=... --arg every=5``
builds ``MyTracker(url="...", every=5)`` for each run it sees.  An exception
from a callback is a failed event: the runtime logs it and retries it with
backoff, then (after ``--max-attempts``) skips it, as an in-process learner
would have (a tracker's error never stops the run).
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rose.events.feed import EventFeed
from rose.tracking import TrackerBase
from sinks.base import ApplyResult, RunSink, Sink
from sinks.kinds import STATE_ROOT, Option, SinkKind

log = logging.getLogger(__name__)


def load_object(spec: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted); ValueError says what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"expected module:Class, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def parse_kwargs(pairs: list[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` → kwargs; values that read as JSON (3, true, [1]) become that."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--arg expects key=value with a Python identifier key, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


class TrackerSink(Sink):
    """Drive a fresh tracker from ``factory()`` for every run."""

    name = "tracker"
    idempotent = False

    def __init__(self, factory: Callable[[], TrackerBase], *, label: str | None = None) -> None:
        self.factory = factory
        self.label = label or getattr(factory, "__name__", "tracker")

    @classmethod
    def from_spec(cls, spec: str, kwargs: dict[str, Any] | None = None) -> TrackerSink:
        """``module:Class`` plus keyword arguments; checks the arguments fit up front."""
        target = load_object(spec)
        if not callable(target):
            raise ValueError(f"{spec} is not a class or factory")
        kwargs = dict(kwargs or {})

        def factory() -> TrackerBase:
            return target(**kwargs)

        try:  # check the arguments without building a tracker (it may have side effects)
            inspect.signature(target).bind(**kwargs)
        except TypeError as exc:
            raise ValueError(f"cannot build {spec}({_kw(kwargs)}): {exc}") from None
        except ValueError:
            pass  # no introspectable signature (a builtin): let the first run tell
        return cls(factory, label=spec)

    def open_run(self, run: str) -> RunSink:
        return TrackerRunSink(self.factory())


class TrackerRunSink(RunSink):
    """One run's tracker; events go through EventFeed exactly as a learner calls them."""

    def __init__(self, tracker: TrackerBase) -> None:
        self.tracker = tracker
        self.feed = EventFeed(tracker)

    def apply(
        self, events: list[dict[str, Any]], lines: list[str | None] | None = None
    ) -> ApplyResult:
        for i, event in enumerate(events):
            try:
                self.feed(event)
            except Exception as exc:
                log.debug("tracker raised on %s#%s", event["run"], event["seq"], exc_info=True)
                return ApplyResult.retry(i, f"{event['kind']} raised {type(exc).__name__}: {exc}")
        return ApplyResult.ok(len(events))

    def close(self) -> None:
        _close(self.tracker)


def _close(tracker: Any) -> None:
    close = getattr(tracker, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.exception("closing tracker %r failed", tracker)


def _kw(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# ------------------------------------------------------------------ the kind (sinks.registry)


class TrackerKind(SinkKind):
    name = "tracker"
    help = "drive any TrackerBase (module:Class), one instance per run"
    epilog = """\
examples:
  rose sink tracker mypkg.trackers:PrintTracker --bus ~/rose-tracking/store/bus.json
  rose sink tracker rose.integrations.file_tracker:FileTracker --arg path=copy/ \\
      --bus ~/rose-tracking/store/bus.json
  rose replay runs/*.jsonl --into tracker --tracker mypkg.trackers:PrintTracker

--arg values are parsed as JSON when they can be (3, true, "x", [1, 2]),
else taken as strings.  The module must be importable (PYTHONPATH).  A
callback that raises is retried with backoff, then skipped after
--max-attempts, as a learner would skip it in-process.
"""
    options = (
        Option("tracker", "the tracker class to drive", metavar="module:Class", positional=True),
        Option(
            "arg",
            "keyword argument for the tracker's constructor (repeatable)",
            metavar="KEY=VALUE",
            repeat=True,
        ),
    )
    max_attempts = 5

    def build(
        self,
        *,
        tracker: str | None = None,
        arg: list[str] | None = None,
        state_dir: Path | None = None,
    ) -> TrackerSink:
        if not tracker:
            raise ValueError(
                "the tracker sink needs module:Class (--tracker module:Class on replay)"
            )
        return TrackerSink.from_spec(tracker, parse_kwargs(arg))

    def default_state_dir(self, *, tracker: str | None = None, **_: Any) -> Path:
        from rose.events.identity import sanitize_run_name

        return STATE_ROOT / f"tracker-{sanitize_run_name(tracker or '') or 'tracker'}"

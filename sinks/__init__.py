"""Sinks: processes that persist the bus's events (files, any tracker, later MLflow/ClearML/Slack).

The runtime (:mod:`sinks.runtime`) does ordering, dedupe, gap filling,
retries and checkpoints once for every sink; a sink kind only implements the
small :class:`Sink` / :class:`RunSink` interface of :mod:`sinks.base`.
"""

from bus.wire import StoredEvent
from sinks.base import ApplyResult, Outcome, RunSink, Sink
from sinks.file_sink import FileSink
from sinks.memory import InMemorySink
from sinks.runconfig import Counters, RuntimeConfig
from sinks.runtime import SinkRuntime
from sinks.sources import ListSource, LogSource, MemoryStore
from sinks.tracker_sink import TrackerSink

__all__ = [
    "ApplyResult",
    "Counters",
    "FileSink",
    "InMemorySink",
    "ListSource",
    "LogSource",
    "MemoryStore",
    "Outcome",
    "RunSink",
    "RuntimeConfig",
    "Sink",
    "SinkRuntime",
    "StoredEvent",
    "TrackerSink",
]

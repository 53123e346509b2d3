"""Sink kinds by name: the built-in ones, then those other packages declare.

A built-in kind is a small loader below (its module, and its backend's
library, are imported only when the kind is used, so ``rose --help`` stays
fast and works without MLflow).  A package adds a kind with an entry point in
the ``rose.sinks`` group naming its :class:`sinks.kinds.SinkKind` subclass::

    [project.entry-points."rose.sinks"]
    csv = "csv_sink:CsvKind"

A kind that cannot be loaded is reported in one line and left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points

from sinks.kinds import SinkKind

log = logging.getLogger(__name__)

#: The entry-point group third-party sink kinds register in.
ENTRY_POINT_GROUP = "rose.sinks"


def _file() -> type[SinkKind]:
    from sinks.file_sink import FileKind

    return FileKind


def _tracker() -> type[SinkKind]:
    from sinks.tracker_sink import TrackerKind

    return TrackerKind


def _mlflow() -> type[SinkKind]:
    from sinks.mlflow_sink import MLflowKind

    return MLflowKind


def _clearml() -> type[SinkKind]:
    from sinks.clearml_kind import ClearMLKind

    return ClearMLKind


def _slack() -> type[SinkKind]:
    from sinks.slack_sink import SlackKind

    return SlackKind


BUILTIN: dict[str, Callable[[], type[SinkKind]]] = {
    "file": _file,
    "tracker": _tracker,
    "mlflow": _mlflow,
    "clearml": _clearml,
    "slack": _slack,
}

_reported: set[str] = set()


def _plugins() -> dict[str, Callable[[], type[SinkKind]]]:
    return {ep.name: ep.load for ep in entry_points(group=ENTRY_POINT_GROUP)
            if ep.name not in BUILTIN}  # fmt: skip


def _load(name: str, loader: Callable[[], type[SinkKind]]) -> SinkKind | None:
    try:
        kind = loader()
        if not (isinstance(kind, type) and issubclass(kind, SinkKind)):
            raise TypeError(f"{kind!r} is not a sinks.kinds.SinkKind subclass")
        return kind()
    except Exception as exc:
        if name not in _reported:  # once per process, not per parser built
            _reported.add(name)
            log.warning("sink kind %r cannot be loaded (left out): %s: %s",
                        name, type(exc).__name__, exc)  # fmt: skip
        return None


def load_kind(name: str) -> SinkKind | None:
    """The kind called ``name``, or None when no such kind is installed."""
    loader = BUILTIN.get(name) or _plugins().get(name)
    return None if loader is None else _load(name, loader)


def available_kinds() -> dict[str, SinkKind]:
    """Every kind that loads: the built-in ones first, then the plugins by name."""
    out = {}
    for name, loader in {**BUILTIN, **dict(sorted(_plugins().items()))}.items():
        kind = _load(name, loader)
        if kind is not None:
            out[name] = kind
    return out

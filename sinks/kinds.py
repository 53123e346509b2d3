"""A sink kind: what ``rose sink KIND`` and ``rose replay --into KIND`` need to know of a sink.

A kind is a plain class: its options are data (:class:`Option`), and
:meth:`SinkKind.build` takes them as keyword arguments, so a kind is built the
same way from Python, from the command line (which turns ``options`` into its
arguments) or in a replay's worker process.  Building does no network I/O;
:meth:`SinkKind.check` is the explicit step that reaches the backend early,
so that a typo in a URL ends the command at once instead of being retried.

Built-in kinds are listed in :mod:`sinks.registry`; other packages add theirs
through the ``rose.sinks`` entry-point group (docs/custom-sink.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sinks.base import Sink

#: Where a kind keeps its checkpoint and status without --state (``rose status`` looks here).
STATE_ROOT = Path(".rose-sink")


@dataclass(frozen=True)
class Option:
    """One keyword argument of :meth:`SinkKind.build`, and its command-line option.

    ``name`` is the keyword (``tracking_uri``); the flag is ``--tracking-uri``.
    ``positional``: on ``rose sink KIND`` it is a positional argument (shown as
    ``metavar``); ``rose replay``, where all kinds share one parser, takes it as
    the flag.  ``switch``: a flag without value (False unless given).
    ``repeat``: may be given several times (a list).  Secrets never are options:
    an option names where the secret is (an environment variable, a 0600 file).
    """

    name: str
    help: str
    type: Callable[[str], Any] | None = None
    default: Any = None
    metavar: str | None = None
    positional: bool = False
    switch: bool = False
    repeat: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


class SinkKind:
    """The base of every sink kind; subclasses set the class attributes and :meth:`build`."""

    #: The KIND of ``rose sink KIND``.
    name: ClassVar[str] = ""
    #: One line for ``rose sink --help``.
    help: ClassVar[str] = ""
    #: Examples and notes for ``rose sink KIND --help``.
    epilog: ClassVar[str | None] = None
    options: ClassVar[tuple[Option, ...]] = ()
    #: Tries per event before it is skipped; None = retry forever.
    max_attempts: ClassVar[int | None] = None
    #: Runs are independent and :meth:`build` works in other processes: a large
    #: ``rose replay`` may split the logs over processes.
    parallel_replay: ClassVar[bool] = False
    #: Environment variables the backend's library reads, with the values the
    #: command line sets when the user did not (see :meth:`environment`).
    env_defaults: ClassVar[dict[str, str]] = {}

    def default_state_dir(self, **options: Any) -> Path:
        """Where ``rose sink KIND`` keeps its checkpoint and status without --state."""
        return STATE_ROOT / self.name

    def build(self, *, state_dir: Path | None = None, **options: Any) -> Sink:
        """The sink for these options; ValueError (printed as one line) for a user mistake.

        ``state_dir``: the sink's state directory, for kinds that keep journals
        of their own beside the checkpoint (default: :meth:`default_state_dir`).
        """
        raise NotImplementedError

    def check(self, sink: Sink, **options: Any) -> None:
        """Reach the backend now; ValueError when it can never work (a typo), else nothing.

        The command line calls it after :meth:`build`; a slow or failing backend is
        only logged here (the runtime retries it).
        """

    def environment(self) -> None:
        """Set :attr:`env_defaults` in ``os.environ`` where the user has not set them."""
        for key, value in self.env_defaults.items():
            os.environ.setdefault(key, value)

    def state_dir(self, state_dir: str | os.PathLike[str] | None, **options: Any) -> Path:
        """``state_dir`` (a --state value) expanded, else :meth:`default_state_dir`."""
        if state_dir:
            return Path(state_dir).expanduser()
        return Path(self.default_state_dir(**options))


def split_list(value: Any) -> list[str]:
    """``"A,B"`` (from the command line) or a list (from Python) as a list of non-empty names."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]

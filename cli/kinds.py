"""Sink kinds on the command line: their declared options as arguments, and building them.

``rose sink KIND`` gives each kind a parser of its own (positional options as
positionals); ``rose replay --into KIND`` puts every kind's options in one
parser, where an option several kinds declare (``--out``) is added once and
belongs to each of them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.options import user_errors
from sinks.kinds import Option, SinkKind


def _add_option(target: Any, option: Option, *, positional: bool, kind: str) -> None:
    if option.positional and positional:
        target.add_argument(option.name, metavar=option.metavar, help=option.help)
        return
    help = option.help + (f" (--into {kind})" if option.positional else "")
    kw: dict[str, Any] = {"dest": option.name, "help": help}
    if option.switch:
        kw["action"] = "store_true"
    else:
        kw.update(metavar=option.metavar, default=option.default)
        if option.type is not None:
            kw["type"] = option.type
        if option.repeat:
            kw["action"] = "append"
    target.add_argument(option.flag, **kw)


def add_kind_options(parser: argparse.ArgumentParser, kind: SinkKind) -> None:
    """``rose sink KIND``: the kind's options, its positional ones as positionals."""
    for option in kind.options:
        _add_option(parser, option, positional=True, kind=kind.name)


def add_all_kind_options(
    parser: argparse.ArgumentParser, kinds: dict[str, SinkKind]
) -> dict[str, tuple[set[str], Any]]:
    """``rose replay``: every kind's options in a group each; returns dest → (kinds, default)."""
    owners: dict[str, tuple[set[str], Any]] = {}
    for name, kind in kinds.items():
        group = parser.add_argument_group(f"--into {name} options")
        for option in kind.options:
            if option.name not in owners:  # a flag another kind has is that kind's too
                _add_option(group, option, positional=False, kind=name)
                owners[option.name] = (set(), False if option.switch else option.default)
            owners[option.name][0].add(name)
    return owners


def foreign_options(args: argparse.Namespace, kind: str) -> list[str]:
    """The flags given on ``rose replay`` that belong to other kinds than ``kind``."""
    return [
        "--" + dest.replace("_", "-")
        for dest, (kinds, default) in args._kind_dests.items()
        if kind not in kinds and getattr(args, dest, default) != default
    ]


def kind_options(args: argparse.Namespace, kind: SinkKind) -> dict[str, Any]:
    """The keyword arguments of ``kind.build`` from the parsed command line."""
    return {o.name: getattr(args, o.name) for o in kind.options}


def build_checked(kind: SinkKind, options: dict[str, Any], state_dir: Path | str | None) -> Any:
    """Set the backend's environment defaults, build the sink and check it can work.

    A mistake (ValueError, or an OSError such as an unwritable directory) is the
    user's one-line error.
    """
    kind.environment()
    with user_errors(ValueError, OSError):
        sink = kind.build(state_dir=state_dir, **options)
        kind.check(sink, **options)
    return sink


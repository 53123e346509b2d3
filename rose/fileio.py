"""Small files written whole: a reader sees the old content or the new, never a torn file.

Checkpoints, status files, journals, the broker's bus.json and the store's
metadata all go through :func:`atomic_write_json`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def atomic_write_json(
    path: Path, obj: Any, *, fsync: bool = True, indent: int | None = None
) -> None:
    """Replace ``path`` by ``obj`` as strict JSON in one rename (fsynced unless told not to)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    separators = None if indent else (",", ":")
    text = json.dumps(obj, separators=separators, indent=indent, allow_nan=False)
    data = (text + "\n").encode() if indent else text.encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """The JSON content of ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None

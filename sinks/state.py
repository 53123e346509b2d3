"""A sink's state directory: checkpoint, status file and an exclusive lock.

Both files are written whole and atomically (temp file, fsync, rename), so
a reader or a restarted sink sees the old version or the new one, never a
torn one.  The lock keeps two sinks from sharing one checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from rose.fileio import atomic_write_json, read_json

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.json"
STATUS_FILE = "status.json"
LOCK_FILE = "lock"
CHECKPOINT_VERSION = 1


def _lock(path: Path) -> tuple[int | None, str]:
    """Take an exclusive flock on ``path`` and write our pid into it.

    ``(fd, "")`` when taken; ``(None, pid)`` with the holder's pid when another
    process has it.
    """
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        return None, holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd, ""


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class StateDirBusy(RuntimeError):
    """Another live process holds this state directory."""


class OutputBusy(ValueError):
    """Another live sink writes the same output (directory, MLflow experiment, ...)."""


class OutputLock:
    """An exclusive flock on ``path`` held while a sink writes what it guards.

    The kernel drops it when the process ends (also after ``kill -9``), so a
    stale lock file never blocks anybody.
    """

    def __init__(self, path: str | os.PathLike[str], busy_message: str) -> None:
        self.path = Path(path)
        self.busy_message = busy_message
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; raise OutputBusy (message with the holder's pid) when taken."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, holder = _lock(self.path)
        if fd is None:
            raise OutputBusy(self.busy_message.format(pid=holder))
        self._fd = fd

    def release(self) -> None:
        _unlock(self._fd)
        self._fd = None


class StateDir:
    """Owns ``DIR/checkpoint.json`` and ``DIR/status.json`` for one sink process."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.checkpoint_path = self.path / CHECKPOINT_FILE
        self.status_path = self.path / STATUS_FILE
        self._lock_fd: int | None = None

    def acquire(self) -> None:
        """Create the directory and lock it; raise StateDirBusy if another sink has it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd, holder = _lock(self.path / LOCK_FILE)
        if fd is None:
            raise StateDirBusy(
                f"state directory {self.path} is in use by another sink (pid {holder}); "
                "give each sink its own --state DIR"
            )
        self._lock_fd = fd

    def release(self) -> None:
        _unlock(self._lock_fd)
        self._lock_fd = None

    def load_checkpoint(self) -> dict[str, Any]:
        data = read_json(self.checkpoint_path)
        if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
            if data is not None:
                log.warning("%s: unknown checkpoint format; starting from scratch", self.path)
            return {}
        runs = data.get("runs")
        offset = data.get("offset")
        if not isinstance(runs, dict) or not isinstance(offset, int):
            log.warning("%s: malformed checkpoint; starting from scratch", self.path)
            return {}
        data["runs"] = {
            str(k): v for k, v in runs.items() if isinstance(v, int) and not isinstance(v, bool)
        }
        return data

    def save_checkpoint(
        self,
        store_id: str | None,
        offset: int,
        runs: dict[str, int],
        *,
        generation: int | None = None,
    ) -> None:
        """``generation``: the store generation ``offset`` belongs to (None: unknown)."""
        data: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "store_id": store_id,
            "offset": offset,
            "runs": runs,
        }
        if generation is not None:
            data["generation"] = generation
        atomic_write_json(self.checkpoint_path, data)

    def save_status(self, status: dict[str, Any]) -> None:
        # Status is advisory and rewritten every second: no fsync needed.
        atomic_write_json(self.status_path, status, fsync=False)


def read_status(state_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A sink's last status (for ``rose status``), or None when it never wrote one."""
    data = read_json(Path(state_dir) / STATUS_FILE)
    return data if isinstance(data, dict) else None

"""A process a test started: every way of ending it is bounded, and works on a stopped one."""

from __future__ import annotations

import signal
import subprocess


class ChildProcess:
    """Holds ``proc`` once started; subclasses start it and may set the two bounds."""

    #: Seconds ``terminate`` waits for the exit after SIGTERM, and ``kill`` after SIGKILL.
    TERMINATE_WAIT_S = 20.0
    KILL_WAIT_S = 10.0

    proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def terminate(self, timeout: float | None = None) -> int:
        """SIGTERM (after a SIGCONT, in case it is stopped); the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        return self.proc.wait(self.TERMINATE_WAIT_S if timeout is None else timeout)

    def kill(self) -> None:
        """SIGKILL, if it still runs (a no-op otherwise): for every exit path of a test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(self.KILL_WAIT_S)

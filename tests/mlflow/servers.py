"""Real tracking servers on loopback for the tests and the benchmark.

:class:`PostgresServer` runs a throwaway PostgreSQL cluster (``initdb`` in a
temporary directory, ``pg_ctl`` on 127.0.0.1 and a free port); PostgreSQL
refuses to run as root, so as root it runs as the ``postgres`` user (created
when missing).  :class:`MLflowServer` runs ``mlflow server`` on 127.0.0.1 in
its own process group, on SQLite or on a PostgreSQL database.  Every start
waits a bounded time; every stop is a kill that also takes the workers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.polling import free_port

PG_USER = "postgres"  # the OS user that runs the cluster when we are root
PG_SUPERUSER = "rose"  # the database superuser initdb creates


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are ($ROSE_PG_BINDIR, PATH, then Debian's layout), or None."""
    candidates = [os.environ.get("ROSE_PG_BINDIR", "")]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    return None


def postgres_missing() -> str | None:
    """Why a PostgreSQL-backed server cannot run here (None: it can)."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install -e '.[dev]')"
    if postgres_bindir() is None:
        return (
            "PostgreSQL server binaries (initdb, pg_ctl) not found; install them "
            "(apt-get install postgresql) or set ROSE_PG_BINDIR"
        )
    return None


def _as_user_prefix() -> list[str]:
    """The command prefix that runs PostgreSQL as a non-root user ([] when we are not root)."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            timeout=30,
        )
    return ["runuser", "-u", PG_USER, "--"]


class PostgresServer:
    """A PostgreSQL cluster of its own on 127.0.0.1:``port``; ``durable=False`` skips fsync."""

    def __init__(self, *, durable: bool = False, port: int | None = None) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError(postgres_missing() or "no PostgreSQL")
        self.bindir = bindir
        self.durable = durable
        self.port = port or free_port()
        self.root: Path | None = None
        self._prefix = _as_user_prefix()

    def _run(self, *args: str, timeout: float = 60.0) -> None:
        subprocess.run(
            [*self._prefix, *args],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def start(self, timeout: float = 60.0) -> PostgresServer:
        # /tmp, not pytest's tmp dir: the postgres user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="rose-pg-"))
        if self._prefix:
            shutil.chown(self.root, PG_USER)
        try:
            self._init_and_start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _init_and_start(self, timeout: float) -> None:
        assert self.root is not None
        data = self.root / "data"
        self._run(
            str(self.bindir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER,
            "--auth=trust", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(data), "-o", options,
            "-l", str(self.root / "postgres.log"), "-w", "-t", str(int(timeout)), "start",
        )  # fmt: skip

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg2://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database; returns its SQLAlchemy URI."""
        import psycopg2

        conn = psycopg2.connect(self.uri("postgres").replace("+psycopg2", ""), connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return self.uri(name)

    def stop(self) -> None:
        if self.root is None:
            return
        data = self.root / "data"
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                      "-t", "30", "stop", timeout=40)  # fmt: skip
        except (subprocess.SubprocessError, OSError):
            pid_file = data / "postmaster.pid"
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None


class MLflowServer:
    """``mlflow server`` on 127.0.0.1 in its own process group (so a kill takes its workers)."""

    def __init__(
        self, root: Path, port: int | None = None, backend_uri: str | None = None, workers: int = 1
    ) -> None:
        self.root = root
        self.port = port or free_port()
        self.backend_uri = backend_uri or f"sqlite:///{root / 'server.db'}"
        self.workers = workers
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 120.0) -> MLflowServer:
        self.starts += 1
        log = (self.root / f"mlflow-server-{self.starts}.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--backend-store-uri", self.backend_uri,
                "--default-artifact-root", str(self.root / "artifacts"),
                "--workers", str(self.workers),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self.proc.returncode}; see {self.root}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"mlflow server not up within {timeout}s")

    def kill(self) -> None:
        """SIGKILL the server and its workers (a crash, not a shutdown)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)
        self.proc = None

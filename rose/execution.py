"""Workflow engines for learners: threads on one machine, a Dask cluster, or RADICAL-Pilot.

    async with rose.execution.engine() as eng:                  # thread pool, this machine
    async with rose.execution.engine("dask", workers=4) as eng:  # a LocalCluster of processes
    async with rose.execution.engine("dask", address="tcp://scheduler:8786") as eng:
    async with rose.execution.engine("radical") as eng:          # a pilot on local.localhost
    async with rose.execution.engine("radical", pilot={"resource": "tacc.frontera",
                                                       "cores": 4096, "runtime": 60}) as eng:

Each engine leaves an ``asyncflow.session.<id>/`` folder; these go under
``$ROSE_SESSION_DIR`` (default ``$XDG_CACHE_HOME/rose/sessions``), not into
the user's working directory.  Learners make their Dask task keys unique, so
several learner jobs can share one scheduler.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from radical.asyncflow import WorkflowEngine


def session_dir() -> Path:
    """Where engine session folders go (created on demand)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rose" / "sessions"
    path = Path(os.environ.get("ROSE_SESSION_DIR", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


@asynccontextmanager
async def engine(
    kind: str = "threads",
    *,
    workers: int | None = None,
    address: str | None = None,
    work_dir: str | os.PathLike[str] | None = None,
    pilot: dict[str, Any] | None = None,
) -> AsyncIterator[WorkflowEngine]:
    """A ready WorkflowEngine, shut down (with any cluster it started) on exit.

    ``kind`` is ``"threads"`` (function tasks in a thread pool of ``workers``)
    or ``"dask"``: a scheduler at ``address`` when given, else a LocalCluster of
    ``workers`` processes started here (``pip install -e '.[dask]'`` in the repository), or
    ``"radical"``: one RADICAL-Pilot pilot of description ``pilot`` (default
    local.localhost with this machine's cores) and ``workers`` raptor workers
    for function tasks (default 1, 0 for executable tasks only; the raptor
    master and each worker hold one core of the pilot) (``pip install -e '.[radical]'``).
    """
    from rhapsody.backends import ConcurrentExecutionBackend

    cluster: Any = None
    if kind == "threads":
        backend = await ConcurrentExecutionBackend(ThreadPoolExecutor(max_workers=workers))
    elif kind == "dask":
        try:
            from dask.distributed import LocalCluster
            from rhapsody.backends import DaskExecutionBackend
        except ImportError as exc:
            from rose.extras import install_hint

            raise ImportError(f"Dask execution needs the dask extra: {install_hint('dask')}") from exc
        if address:
            backend = await DaskExecutionBackend(resources={"address": address})
        else:
            cluster = await LocalCluster(
                n_workers=workers or 2,
                threads_per_worker=1,
                processes=True,
                asynchronous=True,
                host="127.0.0.1",
                dashboard_address=None,
            )
            backend = await DaskExecutionBackend(cluster=cluster)
    elif kind == "radical":
        backend = await radical_backend(pilot, workers=1 if workers is None else workers)
    else:
        raise ValueError(f"unknown engine kind {kind!r}: use 'threads', 'dask' or 'radical'")
    eng = await WorkflowEngine.create(backend, work_dir=str(work_dir or session_dir()))
    try:
        yield eng
    finally:
        try:
            await eng.shutdown()
        finally:
            if cluster is not None:
                await cluster.close()


async def radical_backend(pilot: dict[str, Any] | None = None, *, workers: int = 1) -> Any:
    """A started RadicalExecutionBackend: one pilot, ``workers`` raptor workers.

    The local agent runs in the client's virtual environment: when this Python
    runs in one that is not activated, ``VIRTUAL_ENV`` and ``PATH`` are set for
    the processes radical.pilot starts.  Client session folders go under
    :func:`session_dir` unless ``RADICAL_PILOT_BASE`` says otherwise.
    """
    try:
        import radical.pilot  # noqa: F401
        from rhapsody.backends import RadicalExecutionBackend
    except ImportError as exc:
        from rose.extras import install_hint

        raise ImportError(f"RADICAL-Pilot execution needs: {install_hint('radical')}") from exc
    activate_venv()
    os.environ.setdefault("RADICAL_PILOT_BASE", str(session_dir()))
    raptor_cores = 1 + workers if workers else 0
    desc = dict(pilot or {"resource": "local.localhost"})
    desc.setdefault("runtime", 30)
    if desc.get("resource", "").startswith("local.") and not desc.get("nodes"):
        desc.setdefault("cores", (os.cpu_count() or 1) + raptor_cores)
    raptor = None
    if workers:
        raptor = {"masters": [{"ranks": 1, "workers": [{"ranks": 1}] * workers}]}
    backend = RadicalExecutionBackend(desc, raptor)
    try:
        return await backend
    except BaseException as exc:
        session = getattr(backend, "session", None)
        if session is not None:
            session.close(download=False)  # else its threads keep the process alive
        if isinstance(exc, Exception):
            from rose.pilot import PilotError

            raise PilotError(
                f"RADICAL-Pilot could not start a pilot on {desc.get('resource')!r}: {exc} "
                "(radical-pilot-resources lists the resource names)"
            ) from exc
        raise


def activate_venv() -> None:
    """Point ``VIRTUAL_ENV`` and ``PATH`` at this interpreter's venv for child processes."""
    if sys.prefix == sys.base_prefix:
        return
    bin_dir = str(Path(sys.prefix) / "bin")
    os.environ.setdefault("VIRTUAL_ENV", sys.prefix)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join(filter(None, [bin_dir, path]))

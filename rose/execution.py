"""Workflow engines for learners: threads on one machine, or a Dask cluster.

    async with rose.execution.engine() as eng:                  # thread pool, this machine
    async with rose.execution.engine("dask", workers=4) as eng:  # a LocalCluster of processes
    async with rose.execution.engine("dask", address="tcp://scheduler:8786") as eng:

Each engine leaves an ``asyncflow.session.<id>/`` folder; these go under
``$ROSE_SESSION_DIR`` (default ``$XDG_CACHE_HOME/rose/sessions``), not into
the user's working directory.  Learners make their Dask task keys unique, so
several learner jobs can share one scheduler.
"""

from __future__ import annotations

import os
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
) -> AsyncIterator[WorkflowEngine]:
    """A ready WorkflowEngine, shut down (with any cluster it started) on exit.

    ``kind`` is ``"threads"`` (function tasks in a thread pool of ``workers``)
    or ``"dask"``: a scheduler at ``address`` when given, else a LocalCluster of
    ``workers`` processes started here (``pip install -e '.[dask]'`` in the repository).
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
    else:
        raise ValueError(f"unknown engine kind {kind!r}: use 'threads' or 'dask'")
    eng = await WorkflowEngine.create(backend, work_dir=str(work_dir or session_dir()))
    try:
        yield eng
    finally:
        try:
            await eng.shutdown()
        finally:
            if cluster is not None:
                await cluster.close()

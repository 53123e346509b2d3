"""Replaying event logs: several logs as one source, a progress bar, and parallel replay.

:class:`ChainSource` reads logs and broker stores one after another;
:func:`open_logs` opens them.  Large replays of JSONL logs run in parallel:
runs are independent, so logs split by run.

Parsing and validating a line of JSON costs about 10 µs in CPython, which caps
one process well under the 100k events/s docs/benchmarks.md targets for a file replay.
Runs never share state, so :func:`plan_groups` scans the logs' envelopes
(a regex per line, no JSON), groups logs that share a run, and
:func:`replay_parallel` gives each group of logs to its own process running
the ordinary runtime.  Every event is still fully validated.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sinks.runconfig import Counters, RuntimeConfig
from sinks.runtime import SinkRuntime
from sinks.sources import BoundedSource, LogSource

log = logging.getLogger(__name__)

#: Below this many bytes of logs, starting processes costs more than it saves.
MIN_PARALLEL_BYTES = 16 * 1024 * 1024
MAX_JOBS = 8

_RUN_RE = re.compile(rb'^\{"v":\d+,"run":"([A-Za-z0-9._-]{1,128})"', re.M)


class ChainSource(BoundedSource):
    """Several bounded sources one after another, with offsets renumbered."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def subscribe(self, from_offset: int = 0) -> Iterator[Any]:
        n = 0
        for part in self.parts:
            for item in part.subscribe(0):
                if item is None:
                    continue
                item.offset = n
                n += 1
                yield item

    @property
    def bad_lines(self) -> int:
        """Lines of the logs that were not events (skipped)."""
        return sum(getattr(part, "bad_lines", 0) for part in self.parts)

    def close(self) -> None:
        for part in self.parts:
            part.close()


def open_logs(
    logs: list[tuple[str, Path]], on_bytes: Callable[[int], None] | None = None
) -> ChainSource:
    """One source over ``logs``: ``("log", path)`` JSONL logs, ``("store", dir)`` broker stores.

    A log or store that cannot be opened raises ValueError or OSError (nothing stays open).
    """
    parts: list[Any] = []
    try:
        for kind, path in logs:
            if kind == "store":
                from sinks.bus_source import StoreSource

                parts.append(StoreSource(path))
            else:
                parts.append(LogSource([path], on_bytes=on_bytes))
    except (ValueError, OSError):
        for part in parts:
            part.close()
        raise
    return ChainSource(parts)


class ReplayProgress:
    """A rich progress bar on stderr for large logs; silent otherwise."""

    MIN_BYTES = 4 * 1024 * 1024

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar: Any = None
        if enabled and total >= self.MIN_BYTES and sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                TextColumn("replay"),
                BarColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self.task = self.bar.add_task("replay", total=total)
            self.bar.start()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def runs_of(path: Path) -> set[str] | None:
    """The run ids in a log (from each line's envelope), or None when a line hides it."""
    data = path.read_bytes()
    found = _RUN_RE.findall(data)
    lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    if len(found) != lines and len(found) != sum(1 for x in data.split(b"\n") if x.strip()):
        return None
    return {r.decode() for r in found}


def plan_groups(paths: list[Path], jobs: int) -> list[list[Path]] | None:
    """Split ``paths`` into at most ``jobs`` groups with no run in two groups (None: don't)."""
    parent: dict[int, int] = {}

    def find(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, path in enumerate(paths):
        runs = runs_of(path)
        if runs is None:
            return None
        find(i)
        for run in runs:
            j = owner.setdefault(run, i)
            parent[find(i)] = find(j)
    clusters: dict[int, list[int]] = {}
    for i in range(len(paths)):
        clusters.setdefault(find(i), []).append(i)
    if len(clusters) < 2:
        return None
    sizes = {
        root: sum(paths[i].stat().st_size for i in members) for root, members in clusters.items()
    }
    bins: list[tuple[int, list[int]]] = [(0, []) for _ in range(min(jobs, len(clusters)))]
    for root in sorted(clusters, key=sizes.__getitem__, reverse=True):
        k = min(range(len(bins)), key=lambda b: bins[b][0])
        size, members = bins[k]
        bins[k] = (size + sizes[root], members + clusters[root])
    # keep the command line's order inside each group (it matters for duplicates only)
    return [[paths[i] for i in sorted(members)] for _, members in bins if members]


def _replay_group(
    build_sink: Callable[[], Any], config: RuntimeConfig, paths: list[Path]
) -> tuple[dict[str, int], int]:
    source = LogSource(paths)
    # the parent process holds the sink's outputs for all its groups
    counters = SinkRuntime(build_sink(), source, config=config, claim_outputs=False).run()
    return asdict(counters), source.bad_lines


def default_jobs() -> int:
    """The CPUs this process may use, capped at MAX_JOBS."""
    affinity = getattr(os, "sched_getaffinity", None)
    cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    return max(1, min(MAX_JOBS, cpus))


def replay_parallel(
    build_sink: Callable[[], Any],
    paths: list[Path],
    config: RuntimeConfig,
    *,
    jobs: int,
    on_done: Callable[[int], None] | None = None,
) -> tuple[Counters, int] | None:
    """Replay ``paths`` in up to ``jobs`` processes; None when they cannot be split.

    ``build_sink`` must be picklable (a module-level function or a partial of
    one): each process builds its own sink.  Returns summed counters and bad lines.
    """
    if jobs < 2 or sum(p.stat().st_size for p in paths) < MIN_PARALLEL_BYTES:
        return None
    groups = plan_groups(paths, jobs)
    if groups is None:
        return None
    log.info("replaying %d log(s) in %d processes", len(paths), len(groups))
    total = Counters()
    bad = 0
    # fork is cheap but only safe without other threads (a progress bar has one)
    method = "fork" if threading.active_count() == 1 and os.name == "posix" else "spawn"
    with ProcessPoolExecutor(len(groups), mp_context=get_context(method)) as pool:
        futures = [pool.submit(_replay_group, build_sink, config, g) for g in groups]
        for group, future in zip(groups, futures, strict=True):
            counts, bad_lines = future.result()
            for f in fields(Counters):
                setattr(total, f.name, getattr(total, f.name) + counts[f.name])
            bad += bad_lines
            if on_done is not None:
                on_done(sum(p.stat().st_size for p in group))
    return total, bad

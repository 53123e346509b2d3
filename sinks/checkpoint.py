"""Where a sink resumes: its checkpoint, read at start and written as runs move.

The checkpoint holds the store id, the store generation, the offset to resume
from (nothing before it is left unapplied) and each run's next seq.  A
checkpoint of another store is not resumed by offset: the new store is read
from its start, and events already applied are skipped by (run, seq).  A
store that lost events after the sink's position hands out those offsets
again (a :class:`~sinks.sources.Rewind`): the loss is counted and reported.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from sinks.runconfig import Counters
from sinks.runstate import RunState
from sinks.sources import EventSource, Rewind
from sinks.state import StateDir

# The runtime's parts log under its name: its lines are listed by that name for users.
log = logging.getLogger("sinks.runtime")

#: Store losses kept for the status file.
LOSSES_KEPT = 20


class Checkpointer:
    """Reads and writes one runtime's checkpoint; keeps the store's recent losses."""

    def __init__(self, name: str, state: StateDir | None, source: EventSource,
                 counters: Counters) -> None:  # fmt: skip
        self.name = name
        self.state = state
        self.source = source
        self.counters = counters
        #: Next seq of the runs in the checkpoint not seen since the start.
        self.runs: dict[str, int] = {}
        self.losses: list[dict[str, Any]] = []
        self.restored = False

    def restore(self, store_id: str | None) -> int:
        """Read the checkpoint for the source's store ``store_id``: the offset to resume at."""
        ckpt = self.state.load_checkpoint() if self.state is not None else {}
        self.runs = dict(ckpt.get("runs", {}))
        offset = int(ckpt.get("offset", 0)) if store_id is not None else 0
        generation = ckpt.get("generation")
        self._resume_generation(generation if isinstance(generation, int) else None)
        old_id = ckpt.get("store_id")
        if ckpt and old_id != store_id and store_id is not None:
            # A replaced store reuses offsets: start it from 0, keep dedupe by (run, seq).
            log.warning(
                "%s: the broker store changed (checkpoint had %s, now %s); reading the new "
                "store from its start, skipping events already applied",
                self.name, old_id, store_id,
            )  # fmt: skip
            self.counters.store_changes += 1
            offset = 0
            self._resume_generation(None)
        if ckpt:
            log.info("%s: resuming at offset %d with %d known run(s)", self.name, offset,
                     len(self.runs))  # fmt: skip
        self.restored = True
        return offset

    def _resume_generation(self, generation: int | None) -> None:
        if hasattr(self.source, "resume_generation"):
            self.source.resume_generation = generation

    def save(self, store_id: str | None, offset: int, runs: Iterable[RunState]) -> bool:
        """Flush the runs' backends and write the checkpoint; False when it must wait."""
        if self.state is None or not self.restored:
            return True
        runs = list(runs)
        for run in runs:
            if run.call is not None:
                continue  # its backend is busy; its unapplied events hold the low water
            if run.backend is not None and not safe_flush(run):
                log.warning("%s: run %s did not flush; checkpoint deferred", self.name, run.name)
                return False
        seqs = dict(self.runs)
        seqs.update({r.name: r.next_seq for r in runs})
        for run in runs:
            offset = run.low_offset(offset)
        generation = getattr(self.source, "generation", None)
        try:
            self.state.save_checkpoint(store_id, offset, seqs, generation=generation)
        except OSError as exc:
            log.error("%s: cannot write checkpoint: %s", self.name, exc)
            return False
        return True

    def rewound(self, r: Rewind) -> None:
        """The store went back to offset ``r.offset``; count and report what it lost."""
        if not r.lost:
            log.info("%s: store generation %s; re-reading from offset %d", self.name,
                     r.generation, r.offset)  # fmt: skip
            return
        self.counters.store_lost += r.lost
        self.losses.append(
            {"lost": r.lost, "after": r.after, "generation": r.generation, "time": time.time()}
        )
        del self.losses[:-LOSSES_KEPT]
        log.warning(
            "%s: the store lost %d event(s) after offset %d (it is at generation %s now); "
            "re-reading from offset %d and skipping events already applied; events it lost "
            "that learners do not send again are missing from this sink",
            self.name, r.lost, r.after, r.generation, r.offset,
        )  # fmt: skip


def safe_flush(run: RunState) -> bool:
    """Flush ``run``'s backend; False (logged) when it did not."""
    try:
        return bool(run.backend.flush()) if run.backend is not None else True
    except Exception:
        log.exception("flushing run %s failed", run.name)
        return False

"""Sources backed by the bus: a live broker (BusClient) and a store directory.

Kept apart from :mod:`sinks.sources` so that replaying files needs no zmq.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bus.wire import BUS_FILE, DEFAULT_LIMIT, StoredEvent
from sinks.sources import BoundedSource, Rewind, SourceChanged

log = logging.getLogger(__name__)

DEFAULT_IDLE_MS = 200


class BusSource:
    """The broker's store: catch-up from an offset then live, gap fill by run."""

    refetchable = True

    def __init__(self, client: Any, *, idle_ms: int = DEFAULT_IDLE_MS) -> None:
        self.client = client
        self.idle_ms = idle_ms
        #: The store generation the next ``subscribe`` offset belongs to (a checkpoint's).
        self.resume_generation: int | None = None

    @property
    def generation(self) -> int | None:
        """The store generation of the broker's latest reply."""
        return self.client.generation

    @classmethod
    def connect(
        cls,
        *,
        backend: str | None = None,
        replay: str | None = None,
        bus_file: str | os.PathLike[str] | None = None,
        timeout_ms: int = 5000,
        idle_ms: int = DEFAULT_IDLE_MS,
        server_key: str | None = None,
        client_key: str | None = None,
    ) -> BusSource:
        """``server_key``/``client_key``: CURVE keys (see :mod:`bus.security`); bad ones raise
        ValueError."""
        from bus.client import BusClient

        keys = {"server_key": server_key, "client_key": client_key}
        if bus_file is not None:
            client = BusClient.from_file(bus_file, timeout_ms=timeout_ms, **keys)
        else:
            if not backend or not replay:
                raise ValueError("give --bus FILE, or both --backend EP and --replay EP")
            client = BusClient(backend, replay, timeout_ms=timeout_ms, **keys)
        return cls(client, idle_ms=idle_ms)

    def store_id(self) -> str | None:
        return self.client.store_id()

    def subscribe(self, from_offset: int) -> Iterator[StoredEvent | Rewind | None]:
        """See EventSource.subscribe."""
        from bus.client import StoreChangedError

        rewinds: list[dict[str, Any]] = []
        stream = self.client.subscribe(
            from_offset,
            idle_timeout_ms=self.idle_ms,
            generation=self.resume_generation,
            on_rewind=rewinds.append,
        )
        try:
            for ev in stream:
                while rewinds:
                    r = rewinds.pop(0)
                    yield Rewind(r["offset"], r["lost"], r["after"], r["generation"])
                yield ev
        except StoreChangedError as exc:
            raise SourceChanged(str(exc)) from None

    def run_events(self, run: str, from_seq: int) -> list[StoredEvent]:
        return self.client.run_events(run, from_seq)

    def head_offset(self) -> int | None:
        """The newest stored offset, from what the subscription knows (refreshed every few s)."""
        return self.client.head() - 1

    def next_offset(self) -> int:
        """The store's next offset, asked of the broker now."""
        return self.client.head(max_age_s=0.0)

    def close(self) -> None:
        self.client.close()


def is_store_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / "store.json").is_file()


class StoreSource(BoundedSource):
    """Every event of a broker's store directory, for ``rose replay STORE``.

    Reads through the running broker when its ``bus.json`` answers, otherwise
    opens the store itself (the broker's lock makes that exclusive).
    """

    def __init__(self, directory: str | os.PathLike[str], *, timeout_ms: int = 2000) -> None:
        self.dir = Path(directory)
        self._client: Any = None
        self._store: Any = None
        bus_json = self.dir / BUS_FILE
        if bus_json.is_file():
            from bus.client import BusClient, BusError

            client = BusClient.from_file(bus_json, timeout_ms=timeout_ms)
            try:
                self._id = client.store_id()
                self._client = client
            except BusError:
                client.close()
        if self._client is None:
            from bus.store import EventStore, StoreError

            try:
                self._store = EventStore(self.dir)
            except StoreError as exc:
                raise ValueError(str(exc)) from None
            self._id = self._store.store_id

    # store_id() is None: offsets here are the store's own; replay dedupes by (run, seq)

    def events(self) -> int:
        if self._store is not None:
            return int(self._store.next_offset)
        return self._client.head(max_age_s=0.0)

    def subscribe(self, from_offset: int = 0) -> Iterator[StoredEvent | None]:
        offset = from_offset
        while True:
            if self._store is not None:
                page = self._store.read(offset, DEFAULT_LIMIT)
            else:
                page = self._client.fetch(offset, DEFAULT_LIMIT)
            if not page:
                return
            yield from page
            offset = page[-1].offset + 1

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._store is not None:
            self._store.close()

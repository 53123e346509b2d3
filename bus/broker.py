"""The broker: receives events from learners, stores them durably, forwards them to sinks.

Three sockets, all bound by the broker:

- frontend (XSUB, learners connect their BusTracker): the broker subscribes to
  everything at once, so a learner's XPUB sees ``\\x01`` as "broker up";
- backend (XPUB, sinks connect a SUB): every *new* event, with its offset in the
  header, after it reached the store;
- replay (ROUTER, BusClient connects a DEALER): catch-up and status requests.

What happens to each received event (checks, dedupe, store, forward,
acknowledgements, holding while the store cannot be written) is in
:mod:`bus.ingest`; the requests it answers are in :mod:`bus.requests`.

With ``curve_secret_key`` and ``authorized_keys`` every socket is a CURVE
server: traffic is encrypted and only clients whose public key is in the
authorized-keys directory get anything in or out (:mod:`bus.security`).

``Broker`` is only the logic; ``Broker.run()`` blocks in whatever thread calls
it until ``stop()``.  ``BrokerThread`` runs it in a thread (tests, demos, embedded
use); ``rose bus`` runs it in the main thread of its own process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from bus.checks import at_least
from bus.ingest import Counters, Ingest
from bus.requests import serve
from bus.security import RELOAD_INTERVAL_S, Authorizer, CurveError, KeyPair, load_keypair
from bus.sockets import BrokerError, bind, raise_open_files_limit, write_bus_file
from bus.store import STORE_OPTIONS, EventStore
from bus.wire import (
    BUS_FILE,
    DEFAULT_BACKEND,
    DEFAULT_FRONTEND,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_REPLAY,
)

log = logging.getLogger(__name__)

DEFAULT_HWM = 100_000
POLL_MS = 100


class Broker:
    """Broker logic: bind, then serve until ``stop()``.  See the module docstring."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        frontend: str = DEFAULT_FRONTEND,
        backend: str = DEFAULT_BACKEND,
        replay: str = DEFAULT_REPLAY,
        *,
        hwm: int = DEFAULT_HWM,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        write_bus_file: bool = True,
        curve_secret_key: str | os.PathLike[str] | None = None,
        authorized_keys: str | os.PathLike[str] | None = None,
        **store_options: Any,
    ) -> None:
        """``store_options`` go to the EventStore (``segment_bytes``, ``fsync_interval_s``:
        also how often learners get acknowledgements, ``new_store_id``)."""
        unknown = set(store_options) - set(STORE_OPTIONS)
        if unknown:
            raise TypeError(f"Broker() got unknown option(s): {', '.join(sorted(unknown))}")
        at_least("Broker", 1, hwm=hwm, max_event_bytes=max_event_bytes)
        if max_event_bytes > DEFAULT_MAX_EVENT_BYTES:
            # learners never send more than the system's one limit; a lower one is for tests
            raise ValueError(f"Broker: max_event_bytes must be <= {DEFAULT_MAX_EVENT_BYTES}")
        self.curve: KeyPair | None = None
        self.authorizer: Authorizer | None = None
        if (curve_secret_key is None) != (authorized_keys is None):
            raise CurveError(
                "CURVE needs both the broker's secret key (--curve-secret-key FILE) and the "
                "directory of the clients' public keys (--authorized-keys DIR)"
            )
        if curve_secret_key is not None and authorized_keys is not None:
            self.curve = load_keypair(curve_secret_key, "broker secret key file")
            self.authorizer = Authorizer(authorized_keys)
        self.store_dir = Path(store_dir)
        self.requested = {"frontend": frontend, "backend": backend, "replay": replay}
        self.hwm = hwm
        self.max_event_bytes = max_event_bytes
        self.store_options = store_options
        self.write_bus_file = write_bus_file
        self.counters = Counters()
        self.endpoints: dict[str, str] = {}
        self.store_id = ""
        #: Set once the sockets are bound and bus.json is written (or startup failed).
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._started = time.time()
        self._store: EventStore | None = None
        self._ingest: Ingest | None = None
        self._next_key_check = 0.0

    @property
    def bus_file(self) -> Path:
        return self.store_dir / BUS_FILE

    def stop(self) -> None:
        """Ask ``run()`` to flush and return; safe from any thread and from signal handlers."""
        self._stopping.set()

    # ------------------------------------------------------------ lifecycle

    def run(self, on_ready: Callable[[Broker], None] | None = None) -> None:
        """Bind, serve until ``stop()``, then flush the store and close everything.

        ``on_ready(broker)`` runs once the endpoints are bound and bus.json is written.
        """
        raise_open_files_limit()
        ctx: zmq.Context | None = None
        sockets: list[zmq.Socket] = []
        try:
            self._store = EventStore(self.store_dir, **self.store_options)
            self.store_id = self._store.store_id
            ctx = zmq.Context()
            if self.authorizer is not None:
                self.authorizer.start(ctx)
            front, back, rep, self.endpoints = bind(
                ctx, sockets, self.requested, hwm=self.hwm, max_event_bytes=self.max_event_bytes,
                curve=self.curve,
            )  # fmt: skip
            if self.write_bus_file:
                self._write_bus_file()
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            self._close(ctx, sockets)
            raise
        log.info(
            "broker up: learners -> %s, sinks -> %s, requests -> %s, store %s (id %s)%s",
            self.endpoints["frontend"],
            self.endpoints["backend"],
            self.endpoints["replay"],
            self.store_dir,
            self.store_id,
            "" if self.curve is None else f", CURVE key {self.curve.public.decode()}",
        )
        self.ready.set()
        try:
            if on_ready is not None:
                on_ready(self)
            self._loop(front, back, rep)
        finally:
            self._close(ctx, sockets)
            if self._ingest is not None:
                self._ingest.log_rejects(final=True)
            log.info(
                "broker stopped: received %d, stored %d, duplicates %d, rejected %d",
                self.counters.received,
                self.counters.stored,
                self.counters.duplicates,
                self.counters.rejected,
            )

    def _write_bus_file(self) -> None:
        generation = self._store.generation if self._store is not None else 0
        write_bus_file(self.bus_file, self.endpoints, self.store_id, generation, self.curve)

    def _close(self, ctx: zmq.Context | None, sockets: list[zmq.Socket]) -> None:
        for sock in sockets:
            sock.close(linger=0)
        if self._store is not None:
            unstored = self._store.buffered
            try:
                self._store.close()
            except OSError as exc:
                log.error(
                    "closing the store %s failed: %s; %d received event(s) were not stored "
                    "(learners re-send their recent events to the next broker)",
                    self.store_dir,
                    exc.strerror or exc,
                    unstored,
                )
            self._store = None
        if self.authorizer is not None:
            self.authorizer.stop()  # its ZAP socket must close before the context ends
        if ctx is not None:
            ctx.term()

    # ------------------------------------------------------------ serving

    def _loop(self, front: zmq.Socket, back: zmq.Socket, rep: zmq.Socket) -> None:
        store = self._store
        assert store is not None
        ingest = self._ingest = Ingest(store, self.counters, max_event_bytes=self.max_event_bytes)
        poller = zmq.Poller()
        for sock in (front, back, rep):
            poller.register(sock, zmq.POLLIN)
        reading = True
        while not self._stopping.is_set():
            timeout = POLL_MS
            if ingest.to_ack:  # wake for the next acknowledgement
                timeout = max(1, min(POLL_MS, int((ingest.ack_at - time.monotonic()) * 1000) + 1))
            ready = dict(poller.poll(timeout))
            now = time.monotonic()
            if ingest.held and now >= ingest.retry_at:
                ingest.store_held(back)
            if front in ready:
                ingest.pump(front, back)
            if back in ready:
                ingest.drain_subscriptions(back)
            if rep in ready:
                serve(rep, store, self)
            if reading == bool(ingest.held):  # hold back learners while the store fails
                reading = not ingest.held
                if reading:
                    poller.register(front, zmq.POLLIN)
                else:
                    poller.unregister(front)
            now = time.monotonic()
            if not ingest.held:
                if ingest.to_ack and now >= ingest.ack_at:
                    ingest.acknowledge(front, now)
                else:
                    ingest.sync(now)
            if self.counters.rejected:
                ingest.log_rejects(now=now)
            if self.authorizer is not None and now >= self._next_key_check:
                self._next_key_check = now + RELOAD_INTERVAL_S
                self.authorizer.maybe_reload()

    def stats(self, store: EventStore | None = None) -> dict[str, Any]:
        """Counters and per-run progress (served to ``rose status`` and tests)."""
        store = store or self._store
        c = self.counters  # each counter under its own name
        runs = {} if store is None else {r: i.last_seq for r, i in store.runs.items()}
        return {
            **dataclasses.asdict(c),
            "store_error": "" if self._ingest is None else self._ingest.store_error,
            "held": 0 if self._ingest is None else len(self._ingest.held),
            "auth_denied": 0 if self.authorizer is None else self.authorizer.denied,
            "curve": self.curve is not None,
            "events": 0 if store is None else store.durable_offset,
            "runs": runs,
            "store_id": self.store_id,
            "generation": 0 if store is None else store.generation,
            "recovered": [] if store is None else [
                {"first": d.first, "last": d.last, "bytes": d.nbytes, "quarantine": d.quarantine}
                for d in store.damage
            ],
            "endpoints": dict(self.endpoints),
            "pid": os.getpid(),
            "uptime_s": time.time() - self._started,
        }


class BrokerThread:
    """Run a Broker in a background thread: ``with BrokerThread(dir) as b: b.frontend ...``.

    Endpoints default to random free loopback ports; the bound ones are in
    ``frontend``, ``backend``, ``replay`` and in ``bus_file``.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        frontend: str = "tcp://127.0.0.1:*",
        backend: str = "tcp://127.0.0.1:*",
        replay: str = "tcp://127.0.0.1:*",
        **options: Any,
    ) -> None:
        self.broker = Broker(store_dir, frontend, backend, replay, **options)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> BrokerThread:
        self._thread = threading.Thread(target=self._run, name="rose-bus-broker", daemon=True)
        self._thread.start()
        if not self.broker.ready.wait(timeout):
            self.stop()
            raise BrokerError(f"broker did not start within {timeout}s")
        if self.broker.error is not None:
            raise BrokerError(str(self.broker.error)) from self.broker.error
        return self

    def _run(self) -> None:
        try:
            self.broker.run()
        except Exception:
            if self.broker.error is None:
                log.exception("broker thread failed")

    def stop(self, timeout: float = 10.0) -> None:
        self.broker.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("broker thread did not stop within %.1fs", timeout)

    @property
    def frontend(self) -> str:
        return self.broker.endpoints["frontend"]

    @property
    def backend(self) -> str:
        return self.broker.endpoints["backend"]

    @property
    def replay(self) -> str:
        return self.broker.endpoints["replay"]

    @property
    def bus_file(self) -> Path:
        return self.broker.bus_file

    @property
    def store_id(self) -> str:
        return self.broker.store_id

    def __enter__(self) -> BrokerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "Broker",
    "BrokerError",
    "BrokerThread",
    "Counters",
    "raise_open_files_limit",
]

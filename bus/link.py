"""What the tracker knows of its connection to the broker, and how it opens it.

ZeroMQ hides connections; its monitor socket tells connects, retries,
disconnects and CURVE handshake failures, and the XPUB socket itself tells
each (re)subscription of the broker (``\\x01``) and carries its
acknowledgements up.  The tracker reads both without blocking, at most every
millisecond (:meth:`Link.check`), and asks: is the broker subscribed, is it
reachable (``state``, since when), did it refuse this learner (``refusal``,
warned once with the fix).  Acks go to the outbox; a (re)subscription makes
the outbox queue every unacknowledged event again.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import zmq

from bus.outbox import Outbox
from bus.security import ClientCurve
from bus.wire import ACK_MARK, ENV_BUS, is_endpoint, locate_bus, read_bus_file

# The tracker's messages keep the one logger name users filter on and the docs show.
log = logging.getLogger("bus.tracker")

#: The monitor events the link follows.
MONITORED = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def find_broker(
    endpoint: str | None, bus: str | os.PathLike[str] | None
) -> tuple[str, str | os.PathLike[str] | None, dict[str, Any] | None]:
    """The broker's frontend, the bus file named (if any) and what it holds.

    From ``endpoint``, else ``bus=<bus.json>``, else $ROSE_BUS (either); ValueError if none.
    """
    if endpoint is not None and bus is not None:
        raise ValueError("BusTracker: give either an endpoint or bus=<bus.json>, not both")
    if endpoint is None and bus is None:
        where = locate_bus()
        if where is None:
            raise ValueError(
                "BusTracker needs the broker: BusTracker('tcp://host:5555'), "
                f"BusTracker(bus='<store>/bus.json'), or {ENV_BUS}=<bus.json or endpoint>"
            )
        if is_endpoint(where):
            endpoint = where
        else:
            bus = where
    info = None
    if bus is not None:
        info = read_bus_file(bus)
        endpoint = info["frontend"]
    assert endpoint is not None
    return endpoint, bus, info


def connect(
    ctx: zmq.Context,
    endpoint: str,
    curve: ClientCurve | None,
    *,
    sndhwm: int,
    reconnect_ivl_ms: int,
) -> tuple[zmq.Socket, zmq.Socket]:
    """The tracker's XPUB socket, connected to the broker, and its monitor socket."""
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every (re)subscription of the broker
    sock.setsockopt(zmq.XPUB_NODROP, 1)  # HWM reached: zmq.Again, not a silent drop
    sock.setsockopt(zmq.SNDHWM, sndhwm)
    sock.setsockopt(zmq.LINGER, 0)  # close() waits for acks, not for the socket
    sock.setsockopt(zmq.RECONNECT_IVL, reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, max(reconnect_ivl_ms, 1000))
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 20)  # the broker only sends subscriptions and acks
    if curve is not None:
        curve.apply(sock)
    # Before connect, so the monitor sees the first connection attempt.
    monitor = sock.get_monitor_socket(MONITORED)
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close(linger=0)
        raise ValueError(f"BusTracker: bad endpoint {endpoint!r}: {exc}") from None
    return sock, monitor


class Link:
    """The link's state: "" (nothing known yet), "connected", "retrying" or "refused"."""

    __slots__ = ("endpoint", "monitor", "box", "state", "since", "refusal", "subscribed",
                 "subscriptions")  # fmt: skip

    def __init__(self, endpoint: str, monitor: zmq.Socket | None, box: Outbox) -> None:
        self.endpoint = endpoint
        self.monitor = monitor
        self.box = box
        self.state = ""
        self.since = time.monotonic()
        self.refusal = ""  # why the broker refused this learner, once it did
        self.subscribed = False
        self.subscriptions = 0  # 1 at the first connect, +1 at each broker restart

    def check(self, sock: zmq.Socket) -> None:
        """Read what the monitor and the broker said, without blocking."""
        mon = self.monitor
        if mon is not None and mon.get(_EVENTS) & _POLLIN and self.read(mon) and self.subscribed:
            self.subscribed = False
            log.info("lost the broker at %s: keeping events locally", self.endpoint)
        if sock.get(_EVENTS) & _POLLIN:
            self.read_incoming(sock)

    def read_incoming(self, sock: zmq.Socket) -> None:
        """Subscriptions (``\\x01``: broker up) and acknowledgements, without blocking."""
        subscribed = False
        while sock.get(_EVENTS) & _POLLIN:
            msg = sock.recv(zmq.NOBLOCK)
            first = msg[:1]
            if first == b"\x01":
                subscribed = True
            elif first == ACK_MARK and self.box.on_ack(msg) and self.state != "connected":
                self.set("connected")
        if subscribed:
            self._on_subscribed()

    def _on_subscribed(self) -> None:
        """The broker (re)subscribed: queue every unacknowledged sent event again, in order."""
        self.subscriptions += 1
        self.subscribed = True
        self.set("connected")
        again = self.box.requeue()
        if self.subscriptions > 1 and again:
            log.info(
                "broker at %s subscribed again (restart?): re-sending %d unacknowledged event(s)",
                self.endpoint,
                again,
            )

    def close(self, sock: zmq.Socket) -> None:
        if self.monitor is not None:
            sock.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None

    def set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.since = time.monotonic()

    def refused(self, cause: str) -> None:
        self.set("refused")
        if not self.refusal:
            self.refusal = cause
            log.warning(
                "BusTracker to %s: %s. Events are kept locally and go to the fallback log.",
                self.endpoint,
                cause,
            )

    def read(self, mon: zmq.Socket) -> bool:
        """Read every waiting monitor event; True when the broker disconnected."""
        lost = False
        while mon.get(_EVENTS) & _POLLIN:
            frames = mon.recv_multipart(zmq.NOBLOCK)
            event = int.from_bytes(frames[0][:2], "little")
            value = int.from_bytes(frames[0][2:6], "little")
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.set("connected")
            elif event == zmq.EVENT_CONNECTED:  # TCP only: a refused key reconnects too
                if self.state != "refused":
                    self.set("connected")
            elif event == zmq.EVENT_CONNECT_RETRIED:
                if self.state != "refused":
                    self.set("retrying")
            elif event == zmq.EVENT_DISCONNECTED:
                if self.state != "refused":
                    self.set("retrying")
                lost = True
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.refused(
                    f"the broker refused this learner's CURVE key (status {value}): add its "
                    "public key to the broker's authorized keys directory"
                )
            elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self.refused(
                    f"the security handshake failed (ZMTP protocol error {value:#x}): is the "
                    "server key the broker's, and do both sides use CURVE?"
                )
            elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                self.refused(
                    f"the handshake with the broker failed ({zmq.strerror(value)}): wrong "
                    "server key, or a broker without CURVE?"
                )
        return lost

    def cause(self, waited_s: float) -> str:
        """Why events were not acknowledged, as the warning says it."""
        if self.refusal:
            return self.refusal
        if not self.subscriptions:
            return (
                "the broker never answered: is `rose bus` running and reachable at "
                f"{self.endpoint}?"
            )
        return f"the broker did not acknowledge them within {waited_s:.1f}s"

    def unreachable(self) -> bool:
        """The broker refuses this learner, or was never reached and refuses connections."""
        return self.state == "refused" or (self.state == "retrying" and not self.subscriptions)

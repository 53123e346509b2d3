"""The broker's three sockets: their options, binding, and where clients find them (bus.json).

Also the one process limit a broker needs raised: each connected learner
holds one file descriptor.
"""

from __future__ import annotations

import logging
import os
import resource
import socket
from pathlib import Path

import zmq

from bus.requests import MAX_REQUEST_BYTES
from bus.security import KeyPair, apply_server
from rose.fileio import atomic_write_json

log = logging.getLogger("bus.broker")  # the name its messages have in the log (docs/troubleshooting.md)

#: A broker with fewer open files than this cannot serve a large ensemble.
WANTED_OPEN_FILES = 4096
#: Pending connections the frontend queues: a whole ensemble may connect at once.
FRONTEND_BACKLOG = 1024


class BrokerError(RuntimeError):
    """The broker cannot start (endpoint in use, store locked, ...)."""


def raise_open_files_limit(wanted: int = WANTED_OPEN_FILES) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; warn when even that is low.

    Each connected learner holds one file descriptor in the broker.
    """
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-files limit: %s", exc)
        return -1
    if soft < wanted:
        log.warning(
            "open-files limit is %d even after raising it to the hard limit: this broker "
            "can serve only about %d concurrent learners; ask for a higher hard limit "
            "(ulimit -Hn, /etc/security/limits.conf) for large ensembles",
            soft,
            max(soft - 64, 0),
        )
    return soft


def connectable(sock: zmq.Socket) -> str:
    """The endpoint a client should connect to (resolves port ``*`` and wildcard hosts)."""
    ep = sock.getsockopt_string(zmq.LAST_ENDPOINT)
    for wildcard in ("tcp://0.0.0.0:", "tcp://[::]:"):
        if ep.startswith(wildcard):
            return f"tcp://{socket.gethostname()}:{ep[len(wildcard) :]}"
    return ep


def bind(
    ctx: zmq.Context,
    sockets: list[zmq.Socket],
    requested: dict[str, str],
    *,
    hwm: int,
    max_event_bytes: int,
    curve: KeyPair | None,
) -> tuple[zmq.Socket, zmq.Socket, zmq.Socket, dict[str, str]]:
    """Make and bind the frontend, backend and replay sockets (each appended to ``sockets``).

    Returns them and the endpoints clients connect to; BrokerError when one cannot bind.
    """
    front = ctx.socket(zmq.XSUB)
    sockets.append(front)
    front.setsockopt(zmq.RCVHWM, hwm)
    front.setsockopt(zmq.BACKLOG, FRONTEND_BACKLOG)
    # Learners never send more than max_event_bytes.  libzmq silently disconnects a
    # peer sending more than this; smaller oversized messages (an old or foreign
    # publisher's) reach the loop, where they are counted, logged and skipped.
    front.setsockopt(zmq.MAXMSGSIZE, 4 * max_event_bytes)
    back = ctx.socket(zmq.XPUB)
    sockets.append(back)
    back.setsockopt(zmq.SNDHWM, hwm)
    back.setsockopt(zmq.MAXMSGSIZE, 4096)  # sinks only send subscriptions
    rep = ctx.socket(zmq.ROUTER)
    sockets.append(rep)
    rep.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
    rep.setsockopt(zmq.SNDHWM, 1000)
    for sock in sockets:
        sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            apply_server(sock, curve)
    endpoints: dict[str, str] = {}
    for name, sock in zip(("frontend", "backend", "replay"), sockets, strict=True):
        ep = requested[name]
        try:
            sock.bind(ep)
        except zmq.ZMQError as exc:
            raise BrokerError(f"cannot bind the {name} endpoint {ep}: {exc}") from None
        endpoints[name] = connectable(sock)
    front.send(b"\x01")  # subscribe to everything: "broker up" for every learner
    return front, back, rep, endpoints


def write_bus_file(
    path: Path, endpoints: dict[str, str], store_id: str, generation: int, curve: KeyPair | None
) -> None:
    """Write the connection file clients read with :func:`bus.wire.read_bus_file`."""
    info = {
        "version": 1,
        **endpoints,
        "store": str(path.parent.resolve()),
        "store_id": store_id,
        "generation": generation,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    if curve is not None:
        info["curve_public_key"] = curve.public.decode()
    atomic_write_json(path, info, indent=2)  # people read it too

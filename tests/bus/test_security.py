"""CURVE on the bus: keys, clear key errors, and nobody unknown gets anything in or out."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import msgpack
import pytest
import zmq

from bus import BrokerThread, BusClient, BusError, BusTracker
from bus.security import ENV_CLIENT_KEY, ENV_SERVER_KEY, CurveError, generate_keypair, load_keypair
from bus.wire import make_header, topic_for
from cli.main import main as rose_main
from rose.eventlog import read_events
from rose.tracking import IterationState, PipelineManifest
from tests.polling import wait_until

from .conftest import REPO

MANIFEST = PipelineManifest(learner_type="Secure")


@pytest.fixture(autouse=True)
def _no_key_env(monkeypatch):
    for name in (ENV_SERVER_KEY, ENV_CLIENT_KEY):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    d = tmp_path / "keys"
    assert rose_main(["keys", "generate", str(d)]) == 0
    return d


@pytest.fixture
def secure(tmp_path: Path, keys: Path):
    with BrokerThread(
        tmp_path / "store",
        curve_secret_key=keys / "broker.key_secret",
        authorized_keys=keys / "authorized",
    ) as b:
        yield b


def _stranger(tmp_path: Path) -> Path:
    """A well-formed key pair the broker has never heard of."""
    _public, secret = generate_keypair(tmp_path / "stranger", "stranger")
    return secret


def _intruders(zctx, kind: int, endpoint: str, keys: Path, tmp_path: Path) -> list[zmq.Socket]:
    """Two sockets of ``kind`` connected to ``endpoint``: one with a key the broker does
    not know, one without CURVE at all."""
    stranger = load_keypair(_stranger(tmp_path))
    server = load_keypair(keys / "broker.key_secret").public
    socks = []
    for pair in (stranger, None):
        sock = zctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if pair is not None:
            sock.curve_serverkey = server
            sock.curve_publickey = pair.public
            sock.curve_secretkey = pair.secret
        if kind == zmq.SUB:
            sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(endpoint)
        socks.append(sock)
    return socks


def _publish_run(bus_file: Path, client_key: Path, iterations: int) -> BusTracker:
    """A whole run (start, ``iterations`` iterations, stop) through a CURVE BusTracker, closed."""
    tracker = BusTracker(bus=bus_file, client_key=client_key)
    tracker.on_start(MANIFEST)
    for i in range(iterations):
        tracker.on_iteration(IterationState(iteration=i))
    tracker.on_stop(None, "max_iter_reached")
    tracker.close()
    return tracker


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_keys_generate_writes_private_secrets_and_never_overwrites(tmp_path, keys, capsys):
    assert _mode(keys) == 0o700
    for name in ("broker", "client"):
        assert _mode(keys / f"{name}.key_secret") == 0o600
        assert _mode(keys / f"{name}.key") == 0o644
        load_keypair(keys / f"{name}.key_secret")  # well-formed, pair matches
    assert (keys / "authorized" / "client.key").is_file()
    assert "secret" not in (keys / "authorized" / "client.key").read_text()
    assert not list(keys.glob(".rose-keys-*"))  # no scratch left behind
    before = (keys / "broker.key_secret").read_bytes()
    capsys.readouterr()
    assert rose_main(["keys", "generate", str(keys)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (keys / "broker.key_secret").read_bytes() == before
    assert rose_main(["keys", "generate", str(keys), "--name", "sinks", "--authorize"]) == 0
    assert _mode(keys / "sinks.key_secret") == 0o600
    assert (keys / "authorized" / "sinks.key").is_file()


def test_key_mistakes_are_clear_errors(tmp_path, keys, capsys):
    auth = keys / "authorized"
    garbage = tmp_path / "garbage.key_secret"
    garbage.write_text("hello\n")
    garbage.chmod(0o600)
    short = tmp_path / "short.key_secret"
    short.write_text('curve\n    public-key = "abc"\n    secret-key = "def"\n')
    short.chmod(0o600)
    loose = tmp_path / "loose.key_secret"
    loose.write_bytes((keys / "broker.key_secret").read_bytes())
    loose.chmod(0o644)
    mixed = tmp_path / "mixed.key_secret"
    b_pub, _ = load_keypair(keys / "broker.key_secret").public, None
    c = load_keypair(keys / "client.key_secret")
    mixed.write_text(
        f'curve\n    public-key = "{b_pub.decode()}"\n    secret-key = "{c.secret.decode()}"\n'
    )
    mixed.chmod(0o600)
    cases = [
        (tmp_path / "missing.key_secret", auth, "does not exist"),
        (garbage, auth, "no public-key line"),
        (short, auth, "expected 40 z85 characters"),
        (loose, auth, "readable by others"),
        (keys / "broker.key", auth, "holds only a public key"),
        (mixed, auth, "does not belong"),
        (keys / "broker.key_secret", tmp_path / "nope", "authorized keys directory"),
        (keys / "broker.key_secret", None, "needs both"),
    ]
    for secret, authorized, message in cases:
        with pytest.raises(CurveError, match=message):
            BrokerThread(tmp_path / "s", curve_secret_key=secret, authorized_keys=authorized)
    # The CLI says it in one line, exit status 2, before binding anything.
    argv = ["bus", "--store", str(tmp_path / "s"), "--curve-secret-key", str(loose)]
    assert rose_main([*argv, "--authorized-keys", str(auth)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "chmod 600" in err and "Traceback" not in err
    # Clients too: no client key for a CURVE broker, a bad server key.
    with pytest.raises(ValueError, match="client_key"):
        BusTracker("tcp://127.0.0.1:1", server_key=keys / "broker.key")
    with pytest.raises(ValueError, match="not a CURVE key"):
        BusClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", server_key="~" * 40, client_key=loose)
    with pytest.raises(ValueError, match="broker's public key"):
        BusClient("tcp://127.0.0.1:1", "tcp://127.0.0.1:2", client_key=keys / "client.key_secret")


def test_authorized_learner_and_sink_over_curve(secure, keys):
    info = json.loads(secure.bus_file.read_text())
    assert info["curve_public_key"] == load_keypair(keys / "broker.key_secret").public.decode()
    client_key = keys / "client.key_secret"
    # The broker's key comes from bus.json; the client's own pair from the argument.
    with BusClient.from_file(secure.bus_file, client_key=client_key, timeout_ms=10_000) as client:
        stream = client.subscribe(0, idle_timeout_ms=100)
        tracker = _publish_run(secure.bus_file, client_key, 50)
        assert tracker.dropped == 0
        got = []
        for ev in stream:
            if ev is not None:
                got.append(ev.seq)
            if len(got) == 52:
                break
        assert got == list(range(52))
        assert client.stats()["curve"] is True


def test_unknown_and_plain_publishers_get_nothing_in(secure, keys, tmp_path, zctx, caplog):
    caplog.set_level(logging.WARNING, logger="bus.security")
    intruders = _intruders(zctx, zmq.XPUB, secure.frontend, keys, tmp_path)
    # A BusTracker with the stranger's key: constructed fine, never let in.
    rogue = BusTracker(bus=secure.bus_file, client_key=_stranger(tmp_path / "b"), start_wait_ms=0)
    with BusClient.from_file(
        secure.bus_file, client_key=keys / "client.key_secret", timeout_ms=10_000
    ) as client:

        def hammer() -> None:
            for n, sock in enumerate(intruders):
                run = f"intruder{n}"
                for seq in range(20):
                    frames = [topic_for(run, "iteration"), make_header(run, seq, "iteration")]
                    with contextlib.suppress(zmq.Again):
                        sock.send_multipart([*frames, b"\x80"], zmq.NOBLOCK)
            rogue.on_iteration(IterationState(iteration=0))

        # Knock until the broker has refused both CURVE intruders (libzmq does not
        # reconnect after a refusal, so each is refused once).
        assert wait_until(lambda: (hammer(), client.stats()["auth_denied"] >= 2)[1])
        friend = BusTracker(bus=secure.bus_file, client_key=keys / "client.key_secret")
        friend.on_start(MANIFEST)
        friend.close()
        assert wait_until(lambda: client.stats()["stored"] == 1)
        hammer()
        stats = client.stats()
        assert stats["stored"] == 1 and stats["received"] == 1 and stats["rejected"] == 0
        assert [r["run"] for r in client.runs()] == [friend._own_run]
    assert rogue.subscriptions == 0 and rogue.sent == 0
    rogue.close(timeout_ms=0)
    refusals = [r.getMessage() for r in caplog.records if "unknown CURVE key" in r.getMessage()]
    assert len(refusals) == 2  # once per unknown key, however often it knocks


def test_unknown_subscribers_and_requesters_get_nothing_out(secure, keys, tmp_path, zctx):
    subs = _intruders(zctx, zmq.SUB, secure.backend, keys, tmp_path)
    client_key = keys / "client.key_secret"
    with BusClient.from_file(secure.bus_file, client_key=client_key, timeout_ms=10_000) as friend:
        stream = friend.subscribe(0, idle_timeout_ms=50)
        assert next(stream) is None  # caught up (nothing yet), now live
        _publish_run(secure.bus_file, client_key, 30)
        live = [ev for ev in _take(stream, 32)]
        assert [ev.seq for ev in live] == list(range(32))
        # Both intruders were connected all along: neither holds a single frame.
        for sub in subs:
            assert sub.poll(200) == 0
        # A request with the stranger's key, or without CURVE, is never answered.
        with (
            BusClient(
                secure.backend,
                secure.replay,
                server_key=keys / "broker.key",
                client_key=_stranger(tmp_path / "c"),
                timeout_ms=300,
            ) as foe,
            pytest.raises(BusError, match="authorized-keys"),
        ):
            foe.stats()
        plain = BusClient(secure.backend, secure.replay, timeout_ms=300)
        with plain, pytest.raises(BusError, match="did not answer"):
            plain.fetch(0)
        assert friend.stats()["auth_denied"] >= 2


def _take(stream, n: int) -> list:
    out = []
    for ev in stream:
        if ev is not None:
            out.append(ev)
        if len(out) == n:
            return out
    return out


def test_keys_added_while_running_are_picked_up(secure, keys, tmp_path, monkeypatch):
    import bus.broker

    monkeypatch.setattr(bus.broker, "RELOAD_INTERVAL_S", 0.0)
    newcomer = tmp_path / "new"
    public, secret = generate_keypair(newcomer, "newcomer")
    with BusClient.from_file(secure.bus_file, client_key=secret, timeout_ms=200) as client:
        with pytest.raises(BusError):
            client.stats()
        os.replace(public, keys / "authorized" / "newcomer.key")
        assert wait_until(lambda: _answers(client))


def _answers(client: BusClient) -> bool:
    try:
        client.stats()
        return True
    except BusError:
        return False


class _Tap:
    """A TCP relay that keeps a copy of every byte it forwards (a wiretap on loopback)."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.stopping = False
        self.threads = [threading.Thread(target=self._accept, daemon=True, name="tap")]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            up = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((conn, up), (up, conn)):
                t = threading.Thread(target=self._pipe, args=(a, b), daemon=True, name="tap")
                t.start()
                self.threads.append(t)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        a.settimeout(0.2)
        while not self.stopping:
            try:
                data = a.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            with self.lock:
                self.seen += data
            try:
                b.sendall(data)
            except OSError:
                break
        for s in (a, b):
            s.close()

    def close(self) -> None:
        self.stopping = True
        self.server.close()
        for t in self.threads:
            t.join(5)


@pytest.mark.parametrize("curve", [True, False])
def test_events_on_the_wire_are_encrypted(tmp_path, keys, curve):
    marker = "plaintext-marker-4f1d"
    options = {}
    if curve:
        options = dict(
            curve_secret_key=keys / "broker.key_secret", authorized_keys=keys / "authorized"
        )
    with BrokerThread(tmp_path / f"store{curve}", **options) as broker:
        tap = _Tap(int(broker.frontend.rsplit(":", 1)[1]))
        try:
            client_key = keys / "client.key_secret" if curve else None
            server_key = keys / "broker.key" if curve else None
            tracker = BusTracker(
                f"tcp://127.0.0.1:{tap.port}", server_key=server_key, client_key=client_key
            )
            tracker.on_start(PipelineManifest(learner_type=marker))
            tracker.close()
            assert tracker.dropped == 0
            with BusClient(
                broker.backend,
                broker.replay,
                server_key=server_key,
                client_key=client_key,
                timeout_ms=10_000,
            ) as client:
                assert wait_until(lambda: client.stats()["stored"] == 1)
                assert marker.encode() in client.fetch(0)[0].payload
        finally:
            tap.close()
        assert (marker.encode() in bytes(tap.seen)) is not curve


def test_cli_broker_with_curve(tmp_path, keys):
    store = tmp_path / "store"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "cli", "bus", "--store", str(store),
            "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
            "--replay", "tcp://127.0.0.1:*",
            "--curve-secret-key", str(keys / "broker.key_secret"),
            "--authorized-keys", str(keys / "authorized"),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        bus_file = store / "bus.json"
        assert wait_until(lambda: bus_file.exists() or proc.poll() is not None)
        assert "curve_public_key" in json.loads(bus_file.read_text())
        client_key = keys / "client.key_secret"
        with BusClient.from_file(bus_file, client_key=client_key, timeout_ms=10_000) as c:
            assert c.stats()["curve"] is True
            reply = c.request("hello")
            assert msgpack.packb(reply)  # a real answer over CURVE
        proc.terminate()
        assert proc.wait(30) == 0
        assert b"CURVE on (1 client key(s))" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stderr.close()


def test_sink_process_and_learner_over_curve(tmp_path, secure, keys):
    """`rose sink file --client-key` follows a CURVE broker; without a key it says why."""
    from tests.sinks.conftest import SinkProcess

    out, state = tmp_path / "out", tmp_path / "state"
    args = ["file", "--bus", str(secure.bus_file), "--out", str(out), "--state", str(state)]
    env = {k: v for k, v in os.environ.items() if k not in (ENV_SERVER_KEY, ENV_CLIENT_KEY)}
    keyless = SinkProcess(args, tmp_path / "keyless.log", env).start()
    assert keyless.proc.wait(60) == 2
    assert "--client-key" in keyless.output() and "Traceback" not in keyless.output()
    sink = SinkProcess(
        [*args, "--client-key", str(keys / "client.key_secret")], tmp_path / "sink.log", env
    ).start()
    try:
        tracker = _publish_run(secure.bus_file, keys / "client.key_secret", 20)
        path = out / f"{tracker._own_run}.jsonl"
        assert wait_until(lambda: path.exists() and path.read_bytes().count(b"\n") == 22)
        assert sink.terminate() == 0
    finally:
        sink.kill()
    assert "Traceback" not in sink.output()


@pytest.mark.parametrize("mistake", ["unknown client key", "wrong server key"])
def test_a_refused_learner_is_told_why_once_and_keeps_its_events(
    secure, keys, tmp_path, caplog, mistake, _fallback_dir
):
    if mistake == "unknown client key":
        options = {"bus": secure.bus_file, "client_key": _stranger(tmp_path)}
        cause = "refused this learner's CURVE key"
    else:
        generate_keypair(tmp_path / "other", "other")
        options = {
            "endpoint": secure.frontend,
            "server_key": tmp_path / "other" / "other.key",
            "client_key": keys / "client.key_secret",
        }
        cause = "handshake with the broker failed"
    tracker = BusTracker(**options)
    with caplog.at_level(logging.WARNING, logger="bus.tracker"):
        tracker.on_start(MANIFEST)
        for i in range(20):
            tracker.on_iteration(IterationState(iteration=i))
        tracker.close()  # gives up after unreachable_ms, not flush_timeout_ms
    messages = [r.getMessage() for r in caplog.records]
    refusals = [m for m in messages if cause in m and "kept locally" in m]
    assert len(refusals) == 1, messages
    (warning,) = [m for m in messages if "not acknowledged" in m]
    assert "21 event(s)" in warning and cause in warning
    assert tracker.fallback == 21 and tracker.sent == 0 and tracker.dropped == 0
    run = tracker._own_run
    assert len(list(read_events(_fallback_dir / f"{run}.jsonl"))) == 21

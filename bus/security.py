"""CURVE encryption and authentication for the bus: a thin layer over ``zmq.auth``.

Keys are ZeroMQ certificate files as ``zmq.auth.create_certificates`` writes
them: ``NAME.key`` holds a public key, ``NAME.key_secret`` the public and the
secret key.  ``rose keys generate DIR`` makes a broker pair, a client pair and
``DIR/authorized/`` holding the client's public key.

- The broker binds every socket as a CURVE server with its secret key and lets
  in only clients whose public key is a ``*.key`` file in its authorized-keys
  directory (:class:`Authorizer`, a ZAP handler run by pyzmq's
  ``ThreadAuthenticator``); everyone else gets nothing in and nothing out.
- Clients (BusTracker, BusClient, sinks) connect as CURVE clients: they need the
  broker's public key (``server_key``, or the ``curve_public_key`` the broker
  writes into its bus.json) and their own key pair (``client_key``).

Secret key files are created 0600 and refused when others can read them, like
ssh does; every key problem is a one-line :class:`CurveError`.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from rose.logonce import RepeatLog

log = logging.getLogger(__name__)

#: Environment variables clients read when no argument is given.
ENV_SERVER_KEY = "ROSE_SERVER_KEY"
ENV_CLIENT_KEY = "ROSE_CLIENT_KEY"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
AUTHORIZED_DIR = "authorized"
#: How often the broker looks for added or removed authorized keys.
RELOAD_INTERVAL_S = 2.0
#: Unknown keys remembered (each told once, then counted); beyond, refusals are only counted.
MAX_REFUSED_KEYS = 10_000

_Z85_LEN = 40


def _path(p: str | os.PathLike[str]) -> Path:
    # os.path.expanduser leaves "~nobody..." alone where Path.expanduser raises.
    return Path(os.path.expanduser(os.fspath(p)))


class CurveError(ValueError):
    """A missing, unreadable, malformed or too widely readable key, or a bad key set-up."""


@dataclass(frozen=True)
class KeyPair:
    """A CURVE key pair, both keys z85-encoded (40 ASCII bytes each)."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:  # never print a secret by accident
        return f"KeyPair(public={self.public.decode()!r}, secret=<hidden>)"


def check_z85_key(key: bytes | str, what: str = "key") -> bytes:
    """A 40-character z85 key as bytes; CurveError when it is not one."""
    raw = key.encode() if isinstance(key, str) else bytes(key)
    raw = raw.strip()
    if len(raw) != _Z85_LEN:
        raise CurveError(f"{what} is not a CURVE key: expected 40 z85 characters, got {len(raw)}")
    try:
        decoded = z85.decode(raw)
    except (ValueError, KeyError, IndexError):
        raise CurveError(f"{what} is not a CURVE key: not z85-encoded") from None
    if len(decoded) != 32:
        raise CurveError(f"{what} is not a CURVE key: decodes to {len(decoded)} bytes, not 32")
    return raw


def _read_certificate(path: Path, what: str) -> tuple[bytes, bytes | None]:
    if not path.exists():
        raise CurveError(
            f"{what} {path} does not exist (create keys with `rose keys generate DIR`)"
        )
    if path.is_dir():
        raise CurveError(f"{what} {path} is a directory, not a key file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError:
        raise CurveError(f"{what} {path} holds no public-key line: not a CURVE key file") from None
    except OSError as exc:
        raise CurveError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    public = check_z85_key(public, f"the public key in {path}")
    if secret is not None:
        secret = check_z85_key(secret, f"the secret key in {path}")
    return public, secret


def load_keypair(path: str | os.PathLike[str], what: str = "secret key file") -> KeyPair:
    """A key pair from a ``*.key_secret`` file that only its owner can read."""
    p = _path(path)
    public, secret = _read_certificate(p, what)
    if secret is None:
        raise CurveError(
            f"{what} {p} holds only a public key; give the NAME{SECRET_SUFFIX} file instead"
        )
    mode = stat.S_IMODE(p.stat().st_mode)
    if mode & 0o077:
        raise CurveError(f"{what} {p} is readable by others (mode {mode:04o}); run `chmod 600 {p}`")
    if zmq.curve_public(secret) != public:
        raise CurveError(f"{what} {p}: the public key does not belong to the secret key")
    return KeyPair(public, secret)


def load_public_key(spec: str | os.PathLike[str] | bytes, what: str = "server key") -> bytes:
    """A public key given as a key file (``.key`` or ``.key_secret``) or as 40 z85 characters."""
    if isinstance(spec, bytes):
        return check_z85_key(spec, what)
    text = os.fspath(spec)
    if len(text.strip()) == _Z85_LEN and not _path(text).exists():
        return check_z85_key(text, what)
    public, _secret = _read_certificate(_path(text), what)
    return public


def load_authorized_keys(directory: str | os.PathLike[str]) -> set[bytes]:
    """The public keys (``*.key`` files) in ``directory``; CurveError on a bad file."""
    d = _path(directory)
    if not d.is_dir():
        raise CurveError(
            f"authorized keys directory {d} does not exist (it holds the clients' *.key files)"
        )
    keys = set()
    for path in sorted(d.glob(f"*{PUBLIC_SUFFIX}")):
        public, _ = _read_certificate(path, "authorized key")
        keys.add(public)
    return keys


# ------------------------------------------------------------------ generating


def generate_keypair(
    directory: str | os.PathLike[str], name: str, *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0644) and ``NAME.key_secret`` (0600) into ``directory``.

    The files are made by ``zmq.auth.create_certificates`` inside a private
    (0700) scratch directory and moved into place with their final modes, so
    the secret is never readable by others, not even for a moment.
    """
    if not name or "/" in name or name.startswith("."):
        raise CurveError(f"bad key name {name!r}: use letters, digits, '-' or '_'")
    d = _path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    public_path, secret_path = d / f"{name}{PUBLIC_SUFFIX}", d / f"{name}{SECRET_SUFFIX}"
    if not force and (public_path.exists() or secret_path.exists()):
        raise CurveError(f"{secret_path} already exists; pass --force to replace it")
    scratch = Path(tempfile.mkdtemp(prefix=".rose-keys-", dir=d))
    try:
        made_public, made_secret = zmq.auth.create_certificates(scratch, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret_path)
        os.replace(made_public, public_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return public_path, secret_path


def authorize(
    public_key_file: str | os.PathLike[str], authorized_dir: str | os.PathLike[str]
) -> Path:
    """Copy a client's public key file into an authorized-keys directory."""
    src = _path(public_key_file)
    public, _ = _read_certificate(src, "public key file")
    d = _path(authorized_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = src.name[: -len(SECRET_SUFFIX)] if src.name.endswith(SECRET_SUFFIX) else src.stem
    dest = d / f"{name}{PUBLIC_SUFFIX}"
    # Only the public half goes there, whatever file it came from.
    dest.write_text(f'curve\n    public-key = "{public.decode()}"\n')
    os.chmod(dest, 0o644)
    return dest


# ------------------------------------------------------------------ socket options


def apply_server(sock: zmq.Socket, keys: KeyPair) -> None:
    """Make ``sock`` a CURVE server (before bind)."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True


@dataclass(frozen=True)
class ClientCurve:
    """What a client socket needs: the broker's public key and its own pair."""

    server_public: bytes
    client: KeyPair

    def apply(self, sock: zmq.Socket) -> None:
        """Make ``sock`` a CURVE client of the broker (before connect)."""
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.client.public
        sock.curve_secretkey = self.client.secret

    def __repr__(self) -> str:
        return f"ClientCurve(server={self.server_public.decode()!r}, client={self.client!r})"


def client_curve(
    server_key: str | os.PathLike[str] | bytes | None = None,
    client_key: str | os.PathLike[str] | None = None,
    *,
    bus_info: dict[str, Any] | None = None,
) -> ClientCurve | None:
    """Resolve a client's CURVE settings; None when the broker does not use CURVE.

    The broker's key: ``server_key``, else $ROSE_SERVER_KEY, else the
    ``curve_public_key`` of its bus.json (``bus_info``).  The client's pair:
    ``client_key``, else $ROSE_CLIENT_KEY.  A broker key without a client pair
    (or the reverse, given explicitly) is a mistake, reported at once.
    """
    server_spec: Any = server_key or os.environ.get(ENV_SERVER_KEY) or None
    if server_spec is None and bus_info is not None and bus_info.get("curve_public_key"):
        server_spec = str(bus_info["curve_public_key"]).encode()
    client_spec = client_key or os.environ.get(ENV_CLIENT_KEY) or None
    if server_spec is None:
        if client_key is not None:
            raise CurveError(
                "a client key was given but not the broker's public key: pass server_key= / "
                "--server-key FILE (or a bus.json of a broker started with --curve-secret-key)"
            )
        return None
    if client_spec is None:
        raise CurveError(
            "the broker uses CURVE: pass this client's key pair with client_key= / "
            f"--client-key FILE.key_secret (or set {ENV_CLIENT_KEY}); create one with "
            "`rose keys generate DIR` and put its public .key file in the broker's "
            "--authorized-keys directory"
        )
    return ClientCurve(
        load_public_key(server_spec, "server key"), load_keypair(client_spec, "client key file")
    )


# ------------------------------------------------------------------ the broker's gate


class Authorizer:
    """Lets in the clients whose public keys are in a directory; counts the others.

    Runs pyzmq's ``ThreadAuthenticator`` (a ZAP handler thread on the broker's
    context) with this object as its CURVE credentials callback.  Each refused
    key is logged once (then counted); ``maybe_reload`` picks up keys added to
    or removed from the directory while the broker runs.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = _path(directory)
        self._keys = load_authorized_keys(self.directory)
        self._stamp = self._dir_stamp()
        self._lock = threading.Lock()
        self._refused = RepeatLog(log)  # by key: the first refusal of each is told
        self.denied = 0
        self.allowed = 0
        self._auth: ThreadAuthenticator | None = None
        if not self._keys:
            log.warning(
                "authorized keys directory %s holds no *.key file: no client can connect",
                self.directory,
            )

    @property
    def keys(self) -> frozenset[bytes]:
        return frozenset(self._keys)

    def start(self, ctx: zmq.Context) -> None:
        auth = ThreadAuthenticator(ctx, log=logging.getLogger("bus.security.zap"))
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=self)
        self._auth = auth

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP decision for one CURVE handshake (called on the authenticator's thread)."""
        if key in self._keys:
            self.allowed += 1
            return True
        with self._lock:
            self.denied += 1
            if len(self._refused.counts) < MAX_REFUSED_KEYS or key in self._refused.counts:
                self._refused(
                    key,
                    "refused a client with an unknown CURVE key %s (not in %s); further "
                    "attempts with this key are only counted",
                    key.decode(errors="replace"),
                    self.directory,
                )
        return False

    def _dir_stamp(self) -> tuple[int, int]:
        try:
            st = self.directory.stat()
        except OSError:
            return (0, 0)
        files = sum(1 for _ in self.directory.glob(f"*{PUBLIC_SUFFIX}"))
        return (st.st_mtime_ns, files)

    def maybe_reload(self) -> bool:
        """Re-read the directory when it changed; True when the key set changed."""
        stamp = self._dir_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            keys = load_authorized_keys(self.directory)
        except CurveError as exc:
            log.error("keeping the previous authorized keys: %s", exc)
            return False
        if keys == self._keys:
            return False
        log.info(
            "authorized keys in %s changed: %d key(s), was %d",
            self.directory,
            len(keys),
            len(self._keys),
        )
        self._keys = keys
        return True

    def refused(self) -> dict[str, int]:
        """Refused handshakes per unknown key (z85 text)."""
        with self._lock:
            return {k.decode(errors="replace"): n for k, n in self._refused.counts.items()}


__all__ = [
    "AUTHORIZED_DIR",
    "ENV_CLIENT_KEY",
    "ENV_SERVER_KEY",
    "Authorizer",
    "ClientCurve",
    "CurveError",
    "KeyPair",
    "apply_server",
    "authorize",
    "check_z85_key",
    "client_curve",
    "generate_keypair",
    "load_authorized_keys",
    "load_keypair",
    "load_public_key",
]

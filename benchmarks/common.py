"""What every benchmark suite shares: ports, a broker process, the results file,
and the previous design as a whole tree to measure side by side with this one.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
#: The design before the refactor that gave each concept one home (docs/benchmarks.md).
DEFAULT_BASELINE = "7d7be2b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProc:
    """A broker as its own process (``rose bus``), as in production."""

    def __init__(self, store: Path, root: Path = ROOT) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.frontend, self.backend, self.replay = (f"tcp://127.0.0.1:{p}" for p in self.ports)
        self.store = store
        self.bus_file = store / "bus.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *broker_module(root), "--store", str(store), "--frontend", self.frontend,
             "--backend", self.backend, "--replay", self.replay],
            cwd=root, env=env_for(root), stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.bus_file.exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the broker did not start")
            time.sleep(0.02)

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def add_output_args(ap: argparse.ArgumentParser, suite: str) -> None:
    """``--json PATH`` (where the results go) and ``--baseline REF`` (the previous design)."""
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / f"{suite}.json"))
    ap.add_argument(
        "--baseline",
        metavar="REF",
        default=DEFAULT_BASELINE,
        help=f"git commit of the previous design to compare with [{DEFAULT_BASELINE}; none]",
    )


def write_results(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


def broker_module(root: Path) -> list[str]:
    """How ``root``'s tree runs its broker: ``-m cli bus`` now, ``-m bus`` before the cli package."""
    return ["cli", "bus"] if (root / "cli").is_dir() else ["bus"]


def env_for(root: Path) -> dict[str, str]:
    """The environment of a process that imports bus, rose and sinks from ``root``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


def baseline_tree(ref: str) -> Path:
    """The whole tree of commit ``ref``, with this tree's benchmarks/ in it, in a temp dir.

    The same harness then measures both designs: a process started in that tree
    (``cwd`` and ``PYTHONPATH``) imports the previous bus, rose and sinks.
    Removed at interpreter exit.  RuntimeError when git cannot give ``ref``.
    """
    tmp = Path(tempfile.mkdtemp(prefix="rose-bench-baseline-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    tree = tmp / "tree"
    tree.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", ref],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        why = detail.decode(errors="replace").strip() or exc
        raise RuntimeError(f"cannot check out {ref}: {why}") from None
    shutil.rmtree(tree / "benchmarks", ignore_errors=True)
    skip = shutil.ignore_patterns("results", "__pycache__")
    shutil.copytree(ROOT / "benchmarks", tree / "benchmarks", ignore=skip)
    (tree / "benchmarks" / "results").mkdir()
    # Compiled now, not in the first timed process that imports it (this tree's are).
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree)], check=False,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    return tree


def run_in(root: Path, args: list[str], timeout_s: float = 1800) -> Any:
    """Run ``python ARGS`` in ``root``'s design; the JSON its last stdout line holds."""
    proc = subprocess.run(
        [sys.executable, *args], cwd=root, env=env_for(root), capture_output=True, text=True,
        timeout=timeout_s,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} in {root} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])

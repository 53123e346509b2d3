"""Helpers for running the documentation's own code blocks and commands, as printed."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.polling import wait_until as _poll

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
BIN = Path(sys.executable).parent  # the environment's rose, mlflow, python


def blocks(page: str, lang: str) -> list[str]:
    """Every fenced ``lang`` code block of a docs page (or README.md), in page order."""
    path = REPO / page if page == "README.md" else DOCS / page
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def block(page: str, lang: str, containing: str) -> str:
    """The one ``lang`` block of ``page`` that contains ``containing``."""
    found = [b for b in blocks(page, lang) if containing in b]
    assert len(found) == 1, f"{page}: {len(found)} {lang} blocks contain {containing!r}"
    return found[0]


def commands(text: str) -> list[str]:
    """The shell commands of a bash block: comments dropped, continuation lines joined."""
    out: list[str] = []
    for line in text.replace("\\\n", " ").splitlines():
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if line:
            out.append(line)
    return out


def shell_env(**extra: str) -> dict[str, str]:
    """A plain shell whose PATH starts with this environment's bin/ (an activated venv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROSE_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
    env.update(extra)
    return env


def sh(cmd: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120,
       ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env or shell_env(),
                          capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{cmd}\nexit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


#: The tests' poll, with the longer bound that commands run as processes need.
wait_until = functools.partial(_poll, timeout=30.0, every=0.05)


def pattern(message: str) -> re.Pattern:
    """A documented message as a regex for a whole line: ``<…>`` and ``…`` stand for any text."""
    parts = re.split(r"<[^>]*>|…", message)
    return re.compile("^" + ".+?".join(re.escape(p) for p in parts) + "$")

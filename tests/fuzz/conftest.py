"""Fuzzing helpers: count the inputs each target was given and print them at the end."""

from __future__ import annotations

from collections import Counter
from typing import Any

#: Inputs tried per fuzz target, printed in the terminal summary.
TRIED: Counter[str] = Counter()


def tried(target: str, n: int = 1) -> None:
    TRIED[target] += n


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TRIED:
        terminalreporter.section("fuzz targets: inputs tried")
        for target, n in sorted(TRIED.items()):
            terminalreporter.write_line(f"{target}: {n}")

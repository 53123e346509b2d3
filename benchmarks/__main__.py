"""Run every benchmark, or the ones named: ``python -m benchmarks [bus sinks mlflow] [--quick]``.

Each prints its table and writes its JSON under benchmarks/results/; numbers are
ratios measured side by side in one run, so they mean something on any machine.
"""

from __future__ import annotations

import importlib
import sys

SUITES = ("bus", "sinks", "mlflow")


def main(argv: list[str]) -> int:
    names = [a for a in argv if a in SUITES] or list(SUITES)
    rest = [a for a in argv if a not in SUITES]
    if "-h" in rest or "--help" in rest:
        print(__doc__)
        return 0
    status = 0
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        module = importlib.import_module(f"benchmarks.bench_{name}")
        status |= module.main(rest)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

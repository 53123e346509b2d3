"""The UQ example as a user runs it: its numbers must read as the docs say they do."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "uq" / "run_me.py"
LINE = re.compile(r"iteration +(\d+) +labeled +(\d+) +mean test MSE ([\d.]+) +predictive variance ([\d.]+)")


@pytest.mark.timeout(180)
def test_variance_and_mse_fall_as_points_are_labeled(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--out", str(tmp_path), "--max-iter", "10"],
        capture_output=True, text=True, timeout=170, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [tuple(map(float, m.groups())) for m in LINE.finditer(proc.stdout)]
    assert len(rows) >= 3
    labeled = [r[1] for r in rows]
    mse = [r[2] for r in rows]
    variance = [r[3] for r in rows]
    assert labeled == sorted(labeled) and len(set(labeled)) == len(labeled)
    assert all(b < a for a, b in zip(variance, variance[1:], strict=False)), variance
    assert mse[-1] < 0.05 < mse[0] and mse[-1] < mse[0] / 100, mse
    assert "(stop criterion met)" in proc.stdout
    assert "what it shows:" in proc.stdout

"""ClearML offline-mode fixtures: a per-test cache dir, and readers for offline sessions.

ClearML reads CLEARML_OFFLINE_MODE when it is imported, so it is set here,
before any test module imports clearml.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.sinks.conftest import sink_process  # noqa: F401 - the shared fixture

os.environ["CLEARML_OFFLINE_MODE"] = "1"
for _key in (
    "CLEARML_PROC_MASTER_ID",
    "CLEARML_TASK_ID",
    "TRAINS_PROC_MASTER_ID",
    "TRAINS_TASK_ID",
):
    os.environ.pop(_key, None)

pytest.importorskip("clearml")


@pytest.fixture
def clearml_cache(tmp_path, monkeypatch) -> Path:
    """Offline ClearML for this test: sessions land under the returned directory."""
    from clearml import Task

    cache = tmp_path / "clearml-cache"
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(cache))
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")
    Task.set_offline(True)
    yield cache
    current = Task.current_task()
    if current is not None:  # a test that failed mid-run must not leak its task
        current.close()


def sessions(cache: Path) -> list[dict[str, Any]]:
    """Every offline session under ``cache``: its task.json and its scalar events."""
    out = []
    root = cache / "offline"
    for folder in sorted(p for p in root.glob("offline-*") if p.is_dir()) if root.is_dir() else []:
        task = json.loads((folder / "task.json").read_text())
        scalars: list[dict[str, Any]] = []
        metrics = folder / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                if line.strip():
                    scalars += [
                        e for e in json.loads(line) if e.get("type") == "training_stats_scalar"
                    ]
        out.append({"folder": folder, "task": task, "scalars": scalars})
    return out


def normalized(session: dict[str, Any], *, with_name: bool = True) -> dict[str, Any]:
    """What a session says about the run, minus what ClearML stamps itself (ids, times)."""
    task = session["task"]
    params = {
        f"{section}/{name}": (p.get("value"), p.get("type"))
        for section, entries in (task.get("hyperparams") or {}).items()
        for name, p in entries.items()
    }
    scalars = sorted((e["metric"], e["variant"], e["iter"], e["value"]) for e in session["scalars"])
    out = {
        "project": task.get("project_name"),
        "params": params,
        "tags": sorted(task.get("tags") or []),
        "comment": task.get("comment") or "",
        "scalars": scalars,
    }
    if with_name:
        out["name"] = task.get("name")
    return out


def by_run(cache: Path) -> dict[str, dict[str, Any]]:
    """Sessions keyed by the ROSE run id recorded in their ``rose/run`` parameter."""
    out = {}
    for s in sessions(cache):
        run = s["task"]["hyperparams"]["rose"]["run"]["value"]
        assert run not in out, f"run {run} has more than one ClearML task"
        out[run] = s
    return out


_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    # ClearML's bundled config parser calls pyparsing's deprecated names on every import.
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.filterwarnings("ignore::DeprecationWarning"))

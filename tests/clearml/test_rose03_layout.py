"""ClearML tasks laid out as ROSE 0.3's ClearMLTracker lays them out, in process and replayed.

For a sequential, a parallel and a UQ run (tests/rose03_layout.py holds the
runs and the expected layout as data), the offline session's task.json
(hyperparameters with ClearML's types, tags) and its scalars equal ROSE
0.3's; what this project adds is the ``rose`` section, the ``rose`` tag and
``rose.*`` scalars.
"""

from __future__ import annotations

import os

import pytest

from rose.integrations.clearml_tracker import ClearMLTracker
from rose.integrations.file_tracker import FileTracker
from sinks.clearml_sink import ClearMLSink
from sinks.runtime import RuntimeConfig, SinkRuntime
from sinks.sources import LogSource
from tests.clearml.conftest import by_run, normalized
from tests.rose03_layout import OPERATOR_HERE, RUNS

ROSE_KEYS = {"run", "origin/host", "origin/pid", "origin/user", "origin/rose", "stop_reason"}


def layout(session: dict) -> tuple[dict, dict]:
    """ROSE 0.3's part of a session, and what this project adds."""
    task = session["task"]
    sections = {
        section: {k: (p.get("value"), p.get("type")) for k, p in entries.items()}
        for section, entries in (task.get("hyperparams") or {}).items()
    }
    rose = sections.pop("rose", {})
    scalars = sorted((e["metric"], e["variant"], e["iter"], e["value"]) for e in session["scalars"])
    tags = sorted(task.get("tags") or [])
    upstream = {
        "hyperparams": sections,
        "tags": [t for t in tags if t != "rose"],
        "scalars": [s for s in scalars if not s[0].startswith("rose.")],
    }
    extra = {
        "rose": set(rose),
        "tags": [t for t in tags if t == "rose"],
        "scalars": {s[0] for s in scalars if s[0].startswith("rose.")},
    }
    return upstream, extra


@pytest.mark.parametrize("name", sorted(RUNS))
async def test_task_is_laid_out_as_rose03_writes_it(name, engine, tmp_path, clearml_cache):
    spec = RUNS[name]
    logs = tmp_path / "logs"
    logs.mkdir()
    names = list(spec.learner_names) if spec.learner_names else None

    def add_trackers(learner):
        learner.add_tracker(FileTracker(logs))
        learner.add_tracker(ClearMLTracker("compat", name, learner_names=names))

    run = await spec.run(engine, add_trackers)
    inproc = by_run(clearml_cache)[run]
    upstream, extra = layout(inproc)

    general = dict(spec.clearml["hyperparams"]["General"])
    if general["criterion/operator"] == ("", "str"):
        general["criterion/operator"] = (OPERATOR_HERE["criterion/operator"], "str")
    expected = {
        "hyperparams": {**spec.clearml["hyperparams"], "General": general},
        "tags": sorted(spec.clearml["tags"]),
        "scalars": sorted(spec.clearml["scalars"]),
    }
    assert upstream == expected
    has_criterion = general["criterion/metric_name"][1] is not None
    final = {"final_iteration"} | ({"final_learner"} if names else set())
    assert extra == {
        "rose": ROSE_KEYS | final | ({"task/criterion/as_executable"} if has_criterion else set()),
        "tags": ["rose"],
        "scalars": set(spec.clearml_extra_scalars),
    }

    # The ClearML sink writes the same task from the event log (`rose replay --into clearml`).
    cache = tmp_path / "sink-cache"
    env = {**os.environ, "CLEARML_CACHE_DIR": str(cache), "CLEARML_OFFLINE_MODE": "1"}
    sink = ClearMLSink("compat", tmp_path / "journal", task_name=name, learner_names=names, env=env)
    config = RuntimeConfig(retry_initial_ms=10, retry_max_ms=50, max_attempts=20)
    counters = SinkRuntime(sink, LogSource(sorted(logs.glob("*.jsonl"))), config=config).run()
    assert counters.failed == 0
    assert normalized(by_run(cache)[run]) == normalized(inproc)

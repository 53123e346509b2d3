"""MLflow runs laid out as ROSE 0.3's MLflowTracker lays them out, in process and replayed.

For a sequential, a parallel and a UQ run (tests/rose03_layout.py holds the
runs and the expected layout as data), the MLflow run's params, metric
histories, tags and status equal ROSE 0.3's; what this project adds is named
``rose.*``, and MLflow's own ``mlflow.*`` system tags are left out of both.
"""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow")

from rose.integrations.file_tracker import FileTracker  # noqa: E402
from rose.integrations.mlflow_tracker import MLflowTracker  # noqa: E402
from sinks.mlflow_sink import MLflowSink  # noqa: E402
from sinks.runtime import RuntimeConfig, SinkRuntime  # noqa: E402
from sinks.sources import LogSource  # noqa: E402
from tests.mlflow.helpers import mlflow_content, sqlite_uri  # noqa: E402
from tests.rose03_layout import OPERATOR_HERE, RUNS  # noqa: E402

ORIGIN_TAGS = {"rose.run_id", "rose.host", "rose.pid", "rose.version", "rose.next_seq"}


def split(entries: dict) -> tuple[dict, set[str]]:
    """ROSE 0.3's part of a name → value map, and the names this project adds."""
    ours = {k for k in entries if k.startswith("rose.")}
    return {k: v for k, v in entries.items() if k not in ours}, ours


def layout(run: dict) -> tuple[dict, dict[str, set[str]]]:
    params, extra_params = split(run["params"])
    tags, extra_tags = split({k: v for k, v in run["tags"].items() if not k.startswith("mlflow.")})
    metrics, extra_metrics = split(
        {k: [(step, value) for step, _, value in hist] for k, hist in run["metrics"].items()}
    )
    upstream = {"status": run["status"], "params": params, "metrics": metrics, "tags": tags}
    return upstream, {"params": extra_params, "tags": extra_tags, "metrics": extra_metrics}


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[str, str]:
    """An in-process and a replay store shared by the three runs (one experiment each):
    creating an MLflow SQLite schema costs seconds."""
    root = tmp_path_factory.mktemp("rose03-mlflow")
    return sqlite_uri(root / "inproc.db"), sqlite_uri(root / "replay.db")


@pytest.mark.parametrize("name", sorted(RUNS))
async def test_run_is_laid_out_as_rose03_writes_it(name, engine, tmp_path, stores):
    spec = RUNS[name]
    inproc_uri, replay_uri = stores
    exp = f"rose03-{name}"
    logs = tmp_path / "logs"
    logs.mkdir()

    def add_trackers(learner):
        learner.add_tracker(FileTracker(logs))
        learner.add_tracker(MLflowTracker(exp, tracking_uri=inproc_uri))

    run = await spec.run(engine, add_trackers)
    inproc = mlflow_content(inproc_uri, exp)[run]
    upstream, extra = layout(inproc)

    expected = {**spec.mlflow, "params": {**spec.mlflow["params"]}}
    if expected["params"]["criterion/operator"] == "":
        expected["params"].update(OPERATOR_HERE)
    assert upstream == expected
    assert extra == {
        "params": set(spec.mlflow_extra_params),
        "tags": ORIGIN_TAGS | spec.mlflow_extra_tags,
        "metrics": set(spec.mlflow_extra_metrics),
    }
    assert inproc["tags"]["rose.run_id"] == run

    # The MLflow sink writes the same run from the event log (what `rose replay --into
    # mlflow` and a bus sink do).
    config = RuntimeConfig(retry_initial_ms=10, retry_max_ms=50, max_attempts=20)
    sink = MLflowSink(replay_uri, exp)
    counters = SinkRuntime(sink, LogSource(sorted(logs.glob("*.jsonl"))), config=config).run()
    assert counters.failed == 0
    assert mlflow_content(replay_uri, exp)[run] == inproc

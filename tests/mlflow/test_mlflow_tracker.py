"""MLflowTracker in process, on real MLflow (SQLite in tmp_path)."""

from __future__ import annotations

import asyncio
import logging

import pytest

pytest.importorskip("mlflow")

from rose.integrations.file_tracker import FileTracker, replay  # noqa: E402
from rose.integrations.mlflow_tracker import MLflowTracker  # noqa: E402
from rose.metrics import MEAN_SQUARED_ERROR_MSE  # noqa: E402
from tests.mlflow.helpers import (  # noqa: E402
    build_learner,
    mlflow_content,
    run_learner,
    sqlite_uri,
)

EXP = "surrogate-v1"


@pytest.fixture
def uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return sqlite_uri(tmp_path / "mlflow.db")


async def test_sequential_run_params_metrics_tags_status(engine, uri):
    learner = build_learner(engine, run_name="gp")
    tracker = MLflowTracker(experiment_name=EXP, tracking_uri=uri)
    learner.add_tracker(tracker)
    states = await run_learner(learner)
    (run,) = mlflow_content(uri, EXP).values()

    assert run["params"] == {
        "learner_type": "SequentialActiveLearner",
        "parallel_learners": "None",
        "criterion/metric_name": MEAN_SQUARED_ERROR_MSE,
        "criterion/threshold": "0.011",
        "criterion/operator": "<",
        "rose.task.criterion.as_executable": "False",
        "task.simulation.as_executable": "False",
        "task.simulation.pool": "1500",
        "task.simulation.sampler": "lhs",
        "task.training.as_executable": "False",
        "task.training.kernel": "rbf",
        "task.training.opt": "{'lr': 0.1, 'steps': 5}",  # a nested value as its text
        "task.active_learn.as_executable": "False",
    }
    assert "num_gpus" not in str(run["params"])  # decor_kwargs never leave the process
    metrics = run["metrics"]
    steps = list(range(len(states)))
    for key in (MEAN_SQUARED_ERROR_MSE, "n_labeled", "train_mse", "max_std"):
        assert [m[0] for m in metrics[key]] == steps, key
    assert [m[2] for m in metrics[MEAN_SQUARED_ERROR_MSE]] == [s.metric_value for s in states]
    assert [m[2] for m in metrics["converged"]] == [0.0, 1.0, 0.0, 1.0]  # bools as 0/1
    assert [m[2] for m in metrics["lml"]] == [-10.0, "nan", -30.0, -40.0]  # NaN kept
    # Strings, None, lists and maps in state are not metrics.
    assert not {"label_source", "notes", "picked", "losses"} & set(metrics)
    assert not any(k.startswith("losses/") for k in metrics)
    # Numeric config kwargs are metrics, string ones tags (the latest value).
    assert [m[2] for m in metrics["config/training/lr"]] == [0.1, 0.1, 0.01, 0.01]
    assert run["tags"]["config/training/optimizer"] == "sgd"
    # Metric timestamps are the events' emit times, not the clock of whoever logged them.
    assert all(m[1] > 0 for m in metrics["train_mse"])

    tags = run["tags"]
    assert tags["rose.run_id"] == learner.run_id
    assert tags["stop_reason"] == "max_iter_reached"
    assert tags["final_iteration"] == "3"
    assert tags["rose.next_seq"] == str(len(states) + 2)  # start, iterations, stop
    assert run["status"] == "FINISHED"
    assert run["run_name"] == learner.run_id  # default name: the rose run id
    assert run["end_time"] >= run["start_time"] > 0
    assert tracker.mlflow_run_id is not None


async def test_run_name_and_tracking_uri_from_env(engine, tmp_path, monkeypatch):
    uri = sqlite_uri(tmp_path / "env.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    learner = build_learner(engine)
    tracker = MLflowTracker(experiment_name=EXP, run_name="gp-adaptive-kernel")
    assert tracker.tracking_uri == uri
    learner.add_tracker(tracker)
    await run_learner(learner, max_iter=1)
    (run,) = mlflow_content(uri, EXP).values()
    assert run["run_name"] == "gp-adaptive-kernel"


def test_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Relative SQLite paths are pinned to the directory the tracker was made in.
    assert MLflowTracker("x").tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert MLflowTracker("x").tracking_uri == f"sqlite:///{tmp_path}/env.db"
    arg = f"sqlite:///{tmp_path}/arg.db"
    assert MLflowTracker("x", tracking_uri=arg).tracking_uri == arg
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert MLflowTracker("x").tracking_uri == "http://127.0.0.1:5000"
    with pytest.raises(ValueError, match="experiment_name"):
        MLflowTracker("")


async def test_default_store_is_sqlite_in_the_working_directory(engine, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    learner = build_learner(engine)
    learner.add_tracker(MLflowTracker(experiment_name=EXP))
    await run_learner(learner, max_iter=1)
    assert (tmp_path / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists()  # no artifacts, no file store
    run = mlflow_content(sqlite_uri(tmp_path / "mlflow.db"), EXP)[learner.run_id]
    assert run["status"] == "FINISHED"


async def test_error_marks_the_run_failed(engine, uri):
    learner = build_learner(engine, fail_at=2)
    learner.add_tracker(MLflowTracker(EXP, tracking_uri=uri))
    with pytest.raises(RuntimeError, match="exploded"):
        await run_learner(learner)
    run = mlflow_content(uri, EXP)[learner.run_id]
    assert run["status"] == "FAILED"
    assert run["tags"]["stop_reason"] == "error"
    assert run["tags"]["final_iteration"] == "1"
    assert [m[0] for m in run["metrics"]["train_mse"]] == [0, 1]


async def test_parallel_learners_keep_their_series_apart(engine, uri):
    learner = build_learner(engine, parallel=True)
    learner.add_tracker(MLflowTracker(EXP, tracking_uri=uri))
    states = await run_learner(learner, parallel=True, max_iter=3)
    run = mlflow_content(uri, EXP)[learner.run_id]
    assert run["params"]["parallel_learners"] == "2"
    assert run["params"]["learner_type"] == "ParallelActiveLearner"
    metrics = run["metrics"]
    for lid in (0, 1):
        mine = [s for s in states if s.learner_id == lid]
        key = f"{lid}/{MEAN_SQUARED_ERROR_MSE}"
        assert [(m[0], m[2]) for m in metrics[key]] == [(s.iteration, s.metric_value) for s in mine]
        assert [m[0] for m in metrics[f"{lid}/train_mse"]] == [s.iteration for s in mine]
    assert MEAN_SQUARED_ERROR_MSE not in metrics and "train_mse" not in metrics
    # Only learner 0 has a config schedule.
    assert "0/config/training/lr" in metrics and "1/config/training/lr" not in metrics
    assert run["tags"]["0/config/training/optimizer"] == "sgd"


async def test_users_own_active_run_is_left_alone(engine, tmp_path, uri):
    import mlflow

    user_uri = sqlite_uri(tmp_path / "user.db")
    mlflow.set_tracking_uri(user_uri)
    try:
        with mlflow.start_run() as user_run:
            mlflow.log_param("mine", "yes")
            learner = build_learner(engine)
            learner.add_tracker(MLflowTracker(EXP, tracking_uri=uri))
            await run_learner(learner, max_iter=2)
            assert mlflow.active_run().info.run_id == user_run.info.run_id
            mlflow.log_metric("after", 1.0)
        assert mlflow.get_tracking_uri() == user_uri
        data = mlflow.get_run(user_run.info.run_id).data
        assert data.params == {"mine": "yes"} and set(data.metrics) == {"after"}
    finally:
        mlflow.set_tracking_uri(None)
    assert mlflow_content(uri, EXP)[learner.run_id]["status"] == "FINISHED"


async def test_in_process_equals_replay_of_its_event_log(engine, tmp_path, uri):
    """The replay leg of the contract: FileTracker's log replayed == tracked in process."""
    learner = build_learner(engine, parallel=True)
    file_tracker = FileTracker(tmp_path)
    learner.add_tracker(file_tracker)
    learner.add_tracker(MLflowTracker(EXP, tracking_uri=uri))
    await run_learner(learner, parallel=True, max_iter=3)

    replay_uri = sqlite_uri(tmp_path / "replayed.db")
    replay(file_tracker.path, MLflowTracker(EXP, tracking_uri=replay_uri))
    assert mlflow_content(replay_uri, EXP) == mlflow_content(uri, EXP)

    # Replaying into the store that already holds the run changes nothing.
    before = mlflow_content(uri, EXP)
    replay(file_tracker.path, MLflowTracker(EXP, tracking_uri=uri))
    assert mlflow_content(uri, EXP) == before


async def test_a_failed_call_is_retried_with_the_next_callback(engine, uri, caplog):
    learner = build_learner(engine)
    tracker = MLflowTracker(EXP, tracking_uri=uri)
    learner.add_tracker(tracker)
    real = tracker.client.log_batch
    failures = {"left": 2}

    def flaky(*args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise ConnectionError("tracking server unreachable")
        return real(*args, **kwargs)

    tracker.client.log_batch = flaky
    with caplog.at_level(logging.ERROR):
        states = await run_learner(learner)
    await asyncio.sleep(0)
    run = mlflow_content(uri, EXP)[learner.run_id]
    # Two iterations failed and were sent again with the next one: nothing lost, nothing twice.
    assert [m[0] for m in run["metrics"]["train_mse"]] == [s.iteration for s in states]
    assert run["status"] == "FINISHED"
    assert "MLflowTracker" in caplog.text  # the learner logged the tracker's failure


def test_without_mlflow_the_constructor_names_the_install_command(monkeypatch):
    import subprocess
    import sys

    from rose.extras import install_hint

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now raises ImportError
    with pytest.raises(ImportError) as err:
        MLflowTracker(EXP)
    assert install_hint("mlflow") in str(err.value) and "MLflowTracker" in str(err.value)
    assert install_hint("mlflow") == "pip install -e '.[mlflow]' (in this project's repository clone)"
    # The module itself imports without mlflow, so the error comes from the constructor.
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "from rose.integrations.mlflow_tracker import MLflowTracker\n"
        "try:\n    MLflowTracker('x')\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert install_hint("mlflow") in out.stdout

"""The event → MLflow mapping: pure parts by hand, batching and idempotency on real MLflow."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("mlflow")

from mlflow import MlflowClient  # noqa: E402

from rose.events import iteration_event, start_event, stop_event  # noqa: E402
from rose.integrations import mlflow_mapping as mm  # noqa: E402
from rose.integrations.mlflow_mapping import Position, event_update, mlflow_key, plan  # noqa: E402
from rose.integrations.mlflow_writer import RunWriter, experiment_id  # noqa: E402
from rose.tracking import (  # noqa: E402
    CriterionManifest,
    EventContext,
    IterationState,
    PipelineManifest,
    TaskManifest,
)
from tests.mlflow.helpers import mlflow_content, sqlite_uri  # noqa: E402

RUN = "bench-0123456789abcdef"


def ctx(seq: int) -> EventContext:
    return EventContext(
        run=RUN,
        seq=seq,
        ts=1_700_000_000.0 + seq,
        origin={"host": "h", "pid": 7, "user": "u", "rose": "0.1.0"},
    )


def manifest() -> PipelineManifest:
    return PipelineManifest(
        learner_type="SequentialActiveLearner",
        tasks={"training": TaskManifest("train", "m", False, {"num_gpus": 4}, {"kernel": "rbf"})},
        criterion=CriterionManifest("crit", "m", True, {}, {}, "mse", 0.01, "<"),
    )


def events(n_iter: int, keys: int = 20, learner_id=None) -> list[dict]:
    out = [start_event(ctx(0), manifest())]
    for i in range(n_iter):
        state = IterationState(
            iteration=i,
            metric_name="mse",
            metric_value=1.0 / (i + 1),
            learner_id=learner_id,
            state={f"k{j}": float(i * j) for j in range(keys)},
        )
        out.append(iteration_event(ctx(i + 1), state))
    out.append(stop_event(ctx(n_iter + 1), None, "criterion_met"))
    return out


def test_keys_become_valid_mlflow_names():
    assert mlflow_key("train loss/val:1") == "train loss/val:1"
    assert mlflow_key("a*b?c") == "a_b_c"
    assert mlflow_key("/abs//x/") == "_/abs/_/x/_"
    assert mlflow_key("../up") == "_/up"
    assert mlflow_key("") == "_"
    assert len(mlflow_key("x" * 400)) == 250
    assert mlflow_key("x" * 248 + "/../y") == "x" * 248 + "/_"


def test_values_are_handled_deliberately():
    state = IterationState(
        iteration=3,
        metric_name="mse",
        metric_value=float("inf"),
        learner_id="A",
        current_config={
            "training": {"args": [], "kwargs": {"lr": 0.1, "opt": "adam", "l": [1], "--v": 1}},
            "uncertainty": {"args": [], "kwargs": {"t": 0.5}},
        },
        state={
            "b": True,
            "n": np.int64(7),
            "nan": float("nan"),
            "one": np.array([2.5]),
            "arr": np.zeros(3),
            "s": "text",
            "none": None,
            "nested": {"x": 1, "y": {"z": 2.0}},
            "huge": 2**70,
        },
    )
    ev = iteration_event(EventContext(RUN, 1, 10.0), state)
    upd = event_update(ev)
    metrics = {m.key: m.value for m in upd.metrics}
    assert metrics.pop("A/nan") != metrics.get("A/nan", 0)  # NaN kept as NaN
    assert metrics == {
        "A/mse": math.inf,
        "A/b": 1.0,
        "A/n": 7.0,
        "A/one": 2.5,
        "A/config/training/lr": 0.1,
        # not a role of ROSE 0.3's LearnerConfig: this project's addition, named rose.*
        "rose.A/config/uncertainty/t": 0.5,
    }
    assert {(m.step, m.timestamp) for m in upd.metrics} == {(3, 10_000)}
    assert {t.key: t.value for t in upd.tags} == {"A/config/training/opt": "adam"}
    assert sorted(upd.skipped) == [
        "A/arr: ndarray",
        "A/huge: Repr",
        "A/nested: dict",
        "A/none: NoneType",
        "A/s: str",
    ]


def test_start_and_stop_updates():
    start, *_, stop = events(1)
    upd = event_update(start)
    assert {p.key: p.value for p in upd.params} == {
        "learner_type": "SequentialActiveLearner",
        "parallel_learners": "None",
        "criterion/metric_name": "mse",
        "criterion/threshold": "0.01",
        "criterion/operator": "<",
        "rose.task.criterion.as_executable": "True",
        "task.training.kernel": "rbf",
        "task.training.as_executable": "False",
    }
    assert {t.key: t.value for t in upd.tags} == {
        "rose.run_id": RUN,
        "rose.host": "h",
        "rose.pid": "7",
        "rose.version": "0.1.0",
        "mlflow.user": "u",
    }
    done = event_update(stop)
    assert (done.status, done.end_time) == ("FINISHED", 1_700_000_002_000)
    assert {t.key: t.value for t in done.tags} == {"stop_reason": "criterion_met"}
    err = stop_event(ctx(5), IterationState(iteration=4), "error")
    assert event_update(err).status == "FAILED"
    assert {t.key: t.value for t in event_update(err).tags} == {
        "stop_reason": "error",
        "final_iteration": "4",
    }
    # A parallel run's last state is one learner's: not the run's final_iteration.
    par = stop_event(ctx(5), IterationState(iteration=2, learner_id=1), "max_iter_reached")
    assert {t.key: t.value for t in event_update(par).tags} == {
        "stop_reason": "max_iter_reached",
        "rose.final_iteration": "2",
        "rose.final_learner": "1",
    }
    # Without a criterion the criterion params are "None", as ROSE 0.3 logs them.
    bare = start_event(ctx(0), PipelineManifest(learner_type="ParallelActiveLearner"))
    params = {p.key: p.value for p in event_update(bare).params}
    assert params["criterion/metric_name"] == params["parallel_learners"] == "None"


def test_plan_packs_events_within_mlflow_limits():
    evs = events(200, keys=20)  # 21 metrics per iteration
    calls = plan(evs)
    assert sum(c.events for c in calls) == len(evs)
    assert sum(len(c.metrics) for c in calls) == 200 * 21
    for c in calls:
        assert len(c.metrics) <= 1000 and len(c.params) <= 100 and len(c.tags) <= 100
        assert len(c.metrics) + len(c.params) + len(c.tags) <= 1000
        assert c.tags[-1].key == mm.POSITION_TAG
        assert c.tags[-1].value == c.position.tag_value()
    assert len(calls) == 5  # 47 iterations a call, not one call per event
    assert [c.position.seq for c in calls][-1] == len(evs)
    assert calls[-1].status == "FINISHED"
    # Resuming from a position leaves out what is held.
    later = plan(evs, Position(150))
    assert sum(c.events for c in later) == len(evs) - 150
    assert later[0].metrics[0].step == 149


def test_an_event_too_big_for_one_call_gets_numbered_parts():
    big = events(1, keys=2500)[1]
    calls = plan([big])
    assert [c.position for c in calls] == [Position(1, 1), Position(1, 2), Position(2)]
    assert [c.events for c in calls] == [0, 0, 1]
    assert sum(len(c.metrics) for c in calls) == 2501
    resumed = plan([big], Position(1, 2))
    assert len(resumed) == 1 and resumed[0].metrics == calls[2].metrics
    assert Position.parse("1:2") == Position(1, 2) and Position.parse(None) == Position(0)
    assert Position.parse("garbage") == Position(0)


@pytest.fixture
def store(tmp_path):
    uri = sqlite_uri(tmp_path / "m.db")
    client = MlflowClient(tracking_uri=uri)
    return uri, client, experiment_id(client, "exp")


def test_writer_resumes_from_the_run_and_never_logs_a_step_twice(store):
    uri, client, exp = store
    evs = events(60, keys=20)
    first = RunWriter(client, exp, RUN)
    assert first.open() == Position(0)
    assert first.apply(evs[:30]) == 30
    # A restarted writer (new process) finds the run by its rose.run_id tag ...
    again = RunWriter(client, exp, RUN)
    assert again.open() == Position(30)
    # ... and is handed everything again: what the run holds is left out.
    assert again.apply(evs) == len(evs)
    assert again.apply(evs[10:20]) == 10  # old news: counted as held, nothing written
    content = mlflow_content(uri, "exp")[RUN]
    for key, hist in content["metrics"].items():
        steps = [h[0] for h in hist]
        assert steps == list(range(60)), key
    assert content["status"] == "FINISHED"
    assert content["tags"]["rose.next_seq"] == str(len(evs))


def test_a_call_that_landed_without_a_reply_is_not_repeated(store):
    uri, client, exp = store
    evs = events(5)
    writer = RunWriter(client, exp, RUN)
    writer.apply(evs[:2])
    real = client.log_batch
    state = {"lost": True}

    def reply_lost(*args, **kwargs):
        real(*args, **kwargs)
        if state["lost"]:
            state["lost"] = False
            raise ConnectionError("connection reset after the write")

    client.log_batch = reply_lost
    with pytest.raises(ConnectionError):
        writer.apply(evs[2:])
    assert writer.applied_through(evs[2:]) == 0  # it does not know the write landed
    assert writer.apply(evs[2:]) == len(evs) - 2  # reads the position back first
    content = mlflow_content(uri, "exp")[RUN]
    assert [h[0] for h in content["metrics"]["mse"]] == list(range(5))


def test_resume_in_the_middle_of_a_split_event(store):
    uri, client, exp = store
    evs = events(2, keys=2500)
    writer = RunWriter(client, exp, RUN)
    real = client.log_batch
    calls = {"n": 0}

    def dies_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ConnectionError("down")
        return real(*args, **kwargs)

    client.log_batch = dies_on_third
    with pytest.raises(ConnectionError):
        writer.apply(evs)
    client.log_batch = real
    restarted = RunWriter(client, exp, RUN)
    assert restarted.open() == Position(1, 1)  # start, then 1 of event 1's 3 parts
    assert restarted.apply(evs) == len(evs)
    content = mlflow_content(uri, "exp")[RUN]
    assert len(content["metrics"]) == 2501
    assert all([h[0] for h in hist] == [0, 1] for hist in content["metrics"].values())

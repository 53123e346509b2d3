"""The MLflow sink on a real bus: broker thread, `rose sink mlflow` processes, real MLflow.

The contract for MLflow: the content of an MLflow run (params, every metric
history, tags, status, times) is the same whether it was tracked in process,
through BusTracker → broker → MLflow sink, or by replaying the run's event
log; on SQLite and on a tracking server backed by PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from bus import BusTracker  # noqa: E402
from cli.main import main as rose_main  # noqa: E402
from rose.integrations.file_tracker import FileTracker  # noqa: E402
from rose.integrations.mlflow_tracker import MLflowTracker  # noqa: E402
from sinks.mlflow_sink import MLflowSink  # noqa: E402
from sinks.runtime import SinkRuntime  # noqa: E402
from sinks.sources import ListSource  # noqa: E402
from sinks.state import read_status  # noqa: E402
from tests.mlflow.helpers import (  # noqa: E402
    build_learner,
    build_selector,
    mlflow_content,
    run_learner,
    sqlite_uri,
)
from tests.polling import wait_until  # noqa: E402
from tests.sinks.helpers import Publisher, interleave, publish, run_events  # noqa: E402

BOUND_S = 90.0
EXP = "contract"


class Store:
    """Where a test's MLflow runs go: SQLite files, or the PostgreSQL-backed server."""

    def __init__(self, kind: str, tmp_path: Path, server=None) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.server = server

    def place(self, name: str) -> tuple[str, str]:
        """A fresh (tracking URI, experiment) pair for ``name``."""
        if self.server is not None:  # one server per session: experiments keep tests apart
            return self.server.uri, f"{name}-{uuid.uuid4().hex[:8]}"
        return init_store(sqlite_uri(self.tmp_path / f"{name}.db")), name


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path) -> Store:
    server = request.getfixturevalue("pg_mlflow") if request.param == "postgres" else None
    return Store(request.param, tmp_path, server)


def init_store(uri: str) -> str:
    """Create the SQLite schema now, so the test's polling never races the sink's migration."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def positions(uri: str, experiment: str) -> dict[str, str]:
    """rose run → its MLflow run's position tag, for runs that exist so far."""
    try:
        content = mlflow_content(uri, experiment)
    except AssertionError:  # no experiment yet
        return {}
    return {run: c["tags"].get("rose.next_seq", "0") for run, c in content.items()}


def wait_complete(uri: str, experiment: str, runs: dict[str, list[dict]]) -> None:
    want = {run: str(len(events)) for run, events in runs.items()}
    wait_until(
        lambda: positions(uri, experiment) == want,
        timeout=BOUND_S,
        what=f"every run complete in {uri}",
    )


def assert_exactly_once(uri: str, experiment: str, runs: dict[str, list[dict]]) -> None:
    """Every metric step of every run present once, with the value the events carried."""
    content = mlflow_content(uri, experiment)
    assert set(content) == set(runs)
    for run, events in runs.items():
        iterations = [e["body"] for e in events if e["kind"] == "iteration"]
        metrics = content[run]["metrics"]
        assert [(m[0], m[2]) for m in metrics["mean_squared_error_mse"]] == [
            (b["iteration"], b["metric_value"]) for b in iterations
        ], run
        assert [m[0] for m in metrics["loss"]] == [b["iteration"] for b in iterations], run
        assert content[run]["status"] == "FINISHED"


async def test_contract_in_process_equals_bus_equals_replay(
    tmp_path, engine, broker, mlflow_sink, store
):
    bus_uri, bus_exp = store.place("bus")
    sink = mlflow_sink(
        "--bus", str(broker.bus_file), "--tracking-uri", bus_uri, "--experiment", bus_exp,
        "--state", str(tmp_path / "state"),
    )  # fmt: skip
    inproc_uri, inproc_exp = store.place("inproc")
    logs = tmp_path / "logs"
    logs.mkdir()

    async def one(kind: str, name: str) -> str:
        if kind == "select":
            learner = build_selector(engine, run_name=name)
        else:
            learner = build_learner(engine, parallel=kind == "par", run_name=name)
        bus_tracker = BusTracker(bus=broker.bus_file)
        learner.add_tracker(FileTracker(logs))
        learner.add_tracker(MLflowTracker(inproc_exp, tracking_uri=inproc_uri))
        learner.add_tracker(bus_tracker)
        try:
            if kind == "select":
                assert (await learner.start(max_iter=4))["best_algorithm"] == "greedy"
            else:
                await run_learner(learner, parallel=kind == "par", max_iter=4)
        finally:
            bus_tracker.close()
        assert bus_tracker.dropped == 0
        return learner.run_id

    # Three learners at once (sequential, parallel, algorithm selection): concurrent MLflow runs.
    runs = await asyncio.gather(one("seq", "seq"), one("par", "par"), one("select", "select"))
    expected = mlflow_content(inproc_uri, inproc_exp)
    assert set(expected) == set(runs)
    par = expected[runs[1]]["metrics"]
    assert {"0/train_mse", "1/train_mse"} <= set(par) and "train_mse" not in par
    sel = expected[runs[2]]
    assert {"greedy/train_mse", "random/train_mse"} <= set(sel["metrics"])
    assert sel["params"]["learner_type"] == "AlgorithmSelector"

    want = {run: expected[run]["tags"]["rose.next_seq"] for run in runs}
    wait_until(lambda: positions(bus_uri, bus_exp) == want, timeout=BOUND_S, what="bus sink")
    assert sink.terminate() == 0
    assert mlflow_content(bus_uri, bus_exp) == expected

    # Replay of the event logs into a fresh store, through the CLI (two workers).
    replay_uri, replay_exp = store.place("replay")
    argv = ["replay", *map(str, sorted(logs.glob("*.jsonl"))), "--into", "mlflow"]
    argv += ["--tracking-uri", replay_uri, "--experiment", replay_exp, "--no-progress"]
    argv += ["--workers", "2"]
    assert rose_main(argv) == 0
    assert mlflow_content(replay_uri, replay_exp) == expected
    # Replaying again, or the broker's whole store, into the same MLflow changes nothing.
    assert rose_main(argv) == 0
    again = ["replay", str(broker.bus_file.parent), "--into", "mlflow", "--no-progress"]
    assert rose_main([*again, "--tracking-uri", replay_uri, "--experiment", replay_exp]) == 0
    assert mlflow_content(replay_uri, replay_exp) == expected
    assert "Traceback" not in sink.output()


def test_kill_9_mid_run_and_restart(tmp_path, broker, mlflow_sink, store):
    runs = {f"k{i}": run_events(f"k{i}", 400) for i in range(3)}
    uri, exp = store.place("k9")
    args = (
        "--bus", str(broker.bus_file), "--tracking-uri", uri, "--experiment", exp,
        "--state", str(tmp_path / "state"), "--batch", "20",
        *(("--workers", "3") if store.server is not None else ()),
    )  # fmt: skip
    first = mlflow_sink(*args, name="first")
    publisher = Publisher(broker.bus_file, runs, pace_every=10)

    def progress() -> int:
        return sum(int(p.split(":")[0]) for p in positions(uri, exp).values())

    wait_until(lambda: progress() > 60, timeout=BOUND_S, what="progress before the kill")
    first.signal(signal.SIGKILL)
    first.proc.wait(10)
    killed_at = progress()
    mlflow_sink(*args, name="second")
    publisher.join(BOUND_S)
    total = sum(len(e) for e in runs.values())
    assert 0 < killed_at < total
    wait_complete(uri, exp, runs)
    assert_exactly_once(uri, exp, runs)


def test_store_failures_are_retried_without_loss_or_duplicates(tmp_path):
    """Calls that fail, and calls that land but whose reply is lost, in one backlog."""
    from sinks.runtime import RuntimeConfig

    uri = sqlite_uri(tmp_path / "m.db")
    runs = {f"f{i}": run_events(f"f{i}", 120) for i in range(3)}
    sink = MLflowSink(uri, "flaky")
    assert sink.prepare()
    real = sink._client.log_batch
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 3 == 1:
            raise ConnectionError("tracking store unreachable")
        real(*args, **kwargs)
        if calls["n"] % 3 == 2:
            raise ConnectionError("reply lost after the write")

    sink._client.log_batch = flaky
    config = RuntimeConfig(max_batch=25, retry_initial_ms=1, retry_max_ms=5)
    counters = SinkRuntime(sink, ListSource(interleave(*runs.values())), config=config).run()
    assert counters.failed == 0 and counters.gaps == 0 and counters.retries >= 20
    assert counters.applied == sum(len(e) for e in runs.values())
    assert_exactly_once(uri, "flaky", runs)
    assert positions(uri, "flaky") == {r: str(len(e)) for r, e in runs.items()}


@pytest.mark.slow  # two mlflow server start-ups
def test_tracking_server_outage_loses_and_duplicates_nothing(
    tmp_path, broker, mlflow_sink, mlflow_server
):
    outage(tmp_path, broker, mlflow_sink, mlflow_server.start(), "outage")


def test_postgres_backed_server_outage_loses_and_duplicates_nothing(
    tmp_path, broker, mlflow_sink, pg_mlflow
):
    """The session's server is killed and started again (PostgreSQL keeps the data)."""
    outage(tmp_path, broker, mlflow_sink, pg_mlflow, f"outage-{uuid.uuid4().hex[:8]}", "2")


def outage(tmp_path, broker, mlflow_sink, server, exp: str, workers: str = "1") -> None:
    runs = {f"o{i}": run_events(f"o{i}", 120) for i in range(2)}
    first_half = {r: e[:60] for r, e in runs.items()}
    second_half = {r: e[60:] for r, e in runs.items()}
    state = tmp_path / "state"
    sink = mlflow_sink(
        "--bus", str(broker.bus_file), "--tracking-uri", server.uri, "--experiment", exp,
        "--state", str(state), "--retry-max", "1", "--batch", "25", "--workers", workers,
    )  # fmt: skip
    publish(broker.bus_file, interleave(*first_half.values())).close()
    wait_until(
        lambda: positions(server.uri, exp) == {r: "60" for r in runs},
        timeout=BOUND_S,
        what="first half through the server",
    )

    server.kill()  # the tracking server crashes; the learner keeps publishing
    publish(broker.bus_file, interleave(*second_half.values())).close()

    def retrying() -> bool:
        status = read_status(state) or {}
        return status.get("counters", {}).get("retries", 0) >= 2

    wait_until(retrying, timeout=BOUND_S, what="the sink retrying while the server is down")
    server.start()
    wait_complete(server.uri, exp, runs)
    assert_exactly_once(server.uri, exp, runs)
    assert sink.terminate() == 0
    status = json.loads((state / "status.json").read_text())
    assert status["counters"]["failed"] == 0 and status["counters"]["gaps"] == 0
    assert "Traceback" not in sink.output()


def test_cli_refuses_a_password_on_the_command_line(tmp_path, capsys):
    argv = ["sink", "mlflow", "--backend", "tcp://127.0.0.1:1", "--replay", "tcp://127.0.0.1:2"]
    argv += ["--tracking-uri", "http://alice:s3cret@127.0.0.1:5000"]
    assert rose_main(argv) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_PASSWORD" in err and "s3cret" not in err


@pytest.mark.parametrize("workers", ["0", "33"])
def test_cli_refuses_a_worker_count_out_of_range(workers, capsys):
    argv = ["sink", "mlflow", "--backend", "tcp://127.0.0.1:1", "--replay", "tcp://127.0.0.1:2"]
    assert rose_main([*argv, "--workers", workers]) == 2
    assert "--workers must be between 1 and 32" in capsys.readouterr().err


def test_many_runs_in_one_pass_and_an_event_mlflow_refuses(tmp_path, caplog):
    """Runs interleaved in one backlog each get their run; a refused event is skipped alone."""
    from mlflow import MlflowClient

    uri = sqlite_uri(tmp_path / "m.db")
    runs = {f"r{i}": run_events(f"r{i}", 30) for i in range(4)}
    # r3's MLflow run already holds a different learner_type: MLflow refuses to change a param.
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("many")
    other = client.create_run(exp, tags={"rose.run_id": "r3"})
    client.log_param(other.info.run_id, "learner_type", "SomethingElse")

    counters = SinkRuntime(MLflowSink(uri, "many"), ListSource(interleave(*runs.values()))).run()
    assert counters.applied == sum(len(e) for e in runs.values()) - 1
    assert counters.failed == 1  # r3's start event, and nothing else
    content = mlflow_content(uri, "many")
    for run, events in runs.items():
        iterations = [e["body"]["iteration"] for e in events if e["kind"] == "iteration"]
        assert [m[0] for m in content[run]["metrics"]["loss"]] == iterations
        assert content[run]["status"] == "FINISHED"
    assert content["r3"]["params"] == {"learner_type": "SomethingElse"}
    assert content["r0"]["params"]["learner_type"] == "SequentialActiveLearner"
    assert "skipping seq 0" in caplog.text

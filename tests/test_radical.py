"""Learners on RADICAL-Pilot local.localhost: a real pilot, its agent, executable and
function (raptor) tasks; tracking through the bus; a pilot that dies."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "radical.pilot", reason="RADICAL-Pilot is not installed: pip install -e '.[radical]'"
)

from rose.al import SequentialActiveLearner  # noqa: E402
from rose.execution import engine  # noqa: E402
from rose.metrics import MEAN_SQUARED_ERROR_MSE  # noqa: E402
from tests.conftest import Recorder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pilot_dirs(tmp_path, monkeypatch):
    """Client sessions and pilot sandboxes under tmp_path, removed afterwards; the
    agent's processes see this interpreter's venv as activated."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROSE_SESSION_DIR", str(tmp_path / "sessions"))
    monkeypatch.setenv("RADICAL_PILOT_BASE", str(tmp_path / "client"))
    monkeypatch.setenv("RADICAL_BASE", str(tmp_path / "radical"))  # radical.utils' id counters
    if sys.prefix != sys.base_prefix:
        monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
        monkeypatch.setenv("PATH", f"{sys.prefix}/bin{os.pathsep}{os.environ.get('PATH', '')}")
    # function tasks defined in an importable module are shipped by reference
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    sandbox = tmp_path / "pilots"
    yield sandbox
    shutil.rmtree(sandbox, ignore_errors=True)
    shutil.rmtree(tmp_path / "client", ignore_errors=True)


def _training(*args, **kwargs):
    # runs in a raptor worker: radical.pilot ships the code without this module's globals
    import os

    return {"train_pid": os.getpid(), "n_deps": len(args)}


def _criterion(*args, **kwargs):
    return {"mean_squared_error_mse": 0.5}


async def test_tracked_learner_on_local_pilot_into_file_and_mlflow_sinks(
    tmp_path, pilot_dirs, monkeypatch
):
    pytest.importorskip("mlflow")
    from bus import BrokerThread, BusTracker
    from rose.eventlog import read_events
    from tests.mlflow.helpers import mlflow_content
    from tests.polling import wait_until
    from tests.sinks.conftest import SinkProcess

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with BrokerThread(tmp_path / "store") as broker:
        sinks = [
            SinkProcess(
                ["file", "--bus", str(broker.bus_file), "--out", str(tmp_path / "out")],
                tmp_path / "file.log",
            ).start(),
            SinkProcess(
                ["mlflow", "--bus", str(broker.bus_file), "--tracking-uri", uri,
                 "--experiment", "rp", "--state", str(tmp_path / "mlstate")],
                tmp_path / "mlflow.log",
            ).start(),
        ]  # fmt: skip
        try:
            bus_tracker = BusTracker(bus=broker.bus_file)
            rec = Recorder()
            try:
                states, described = await _run_on_pilot(pilot_dirs, [rec, bus_tracker])
            finally:
                bus_tracker.close()
            run = rec.calls[0][1][0]
            out = tmp_path / "out" / f"{run}.jsonl"
            n = 2 + len(states)
            wait_until(lambda: out.exists() and len(list(read_events(out))) >= n, timeout=90,
                       what="file sink output")  # fmt: skip
            wait_until(
                lambda: _next_seq(mlflow_content, uri, run) == str(n), timeout=90,
                what="MLflow sink caught up",
            )
            assert [s.terminate() for s in sinks] == [0, 0]
        finally:
            for s in sinks:
                s.kill()
    # executable tasks ran in the pilot, function tasks in its raptor worker
    assert len(states) == 2 and rec.stop_reason == "max_iter_reached"
    assert all(s.n_labeled == 8 and s.n_deps == 1 for s in states)
    assert all(s.train_pid != os.getpid() for s in states)
    # decor_kwargs (and upstream's shell=True) reached radical.pilot as requirements
    assert ("task.executable", 1, 2) in described  # simulation: num_cores=2 over 1 rank
    assert {mode for mode, _, _ in described} >= {"task.executable", "task.function"}
    # exactly once into both sinks
    events = list(read_events(out))
    assert [e["seq"] for e in events] == list(range(n))
    assert [e["kind"] for e in events] == ["start", "iteration", "iteration", "stop"]
    content = mlflow_content(uri, "rp", run)[run]
    assert content["tags"]["stop_reason"] == "max_iter_reached"
    assert [m[0] for m in content["metrics"]["mean_squared_error_mse"]] == [0, 1]
    assert not list(tmp_path.glob("rhapsody.session.*"))  # nothing in the working directory
    assert list(pilot_dirs.glob("radical.pilot.sandbox/*/pilot.0000"))


def _next_seq(content, uri: str, run: str) -> str | None:
    try:
        return content(uri, "rp", run).get(run, {}).get("tags", {}).get("rose.next_seq")
    except AssertionError:  # no experiment yet
        return None


async def _run_on_pilot(sandbox: Path, trackers: list) -> tuple[list, set]:
    pilot = {"resource": "local.localhost", "cores": 4, "runtime": 10, "sandbox": str(sandbox)}
    async with engine("radical", pilot=pilot, workers=1) as eng:
        learner = SequentialActiveLearner(eng)

        @learner.simulation_task(ranks=1, num_cores=2)
        async def simulation(*args, task_description={"shell": True}):  # noqa: B006
            return "echo '{\"n_labeled\": 8}'"

        learner.training_task(as_executable=False, num_ranks=1, cores_per_rank=1)(_training)

        @learner.active_learn_task
        async def active_learn(*args, **kwargs):
            return "echo '{}'"

        learner.as_stop_criterion(MEAN_SQUARED_ERROR_MSE, threshold=0.0, as_executable=False)(
            _criterion
        )
        for t in trackers:
            learner.add_tracker(t)
        states = [s async for s in learner.start(max_iter=2)]
        tasks = eng.backend.task_manager.get_tasks()
        described = {
            (t.description["mode"], t.description["ranks"], t.description["cores_per_rank"])
            for t in tasks
        }  # fmt: skip
    return states, described


async def test_a_dead_pilot_fails_the_learner_with_its_cause(tmp_path, pilot_dirs, monkeypatch):
    from radical.asyncflow import WorkflowEngine
    from rhapsody.backends import RadicalExecutionBackend

    from rose.pilot import PilotError

    # the agent activates this venv: it does not exist, so the agent never starts
    monkeypatch.setenv("VIRTUAL_ENV", str(tmp_path / "no-such-venv"))
    desc = {"resource": "local.localhost", "cores": 2, "runtime": 5, "sandbox": str(pilot_dirs)}
    backend = await RadicalExecutionBackend(desc)  # as upstream ROSE scripts build it
    eng = await WorkflowEngine.create(backend, work_dir=str(tmp_path / "sessions"))
    try:
        learner = SequentialActiveLearner(eng)
        for role in ("simulation", "training", "active_learn"):
            learner.register_task(role, _echo_task)
        recorders = [Recorder(), Recorder()]
        for rec in recorders:
            learner.add_tracker(rec)
        with pytest.raises(PilotError) as err:
            async for _ in learner.start(max_iter=3):
                pass
    finally:
        await eng.shutdown()
    msg = str(err.value)
    assert "pilot.0000" in msg and "local.localhost" in msg and "FAILED" in msg
    assert "no-such-venv" in msg and "activated virtual environment" in msg
    logfile = msg.split("; see ")[1].split(";")[0]
    assert Path(logfile).is_file() and Path(logfile).is_relative_to(pilot_dirs)
    assert [rec.stop_reason for rec in recorders] == ["error", "error"]


async def test_an_unknown_resource_fails_at_once_with_the_resource_named(pilot_dirs):
    from rose.pilot import PilotError

    pilot = {"resource": "no.such_machine", "cores": 2, "sandbox": str(pilot_dirs)}
    with pytest.raises(PilotError, match="'no.such_machine'.*radical-pilot-resources"):
        async with engine("radical", pilot=pilot):
            pass


async def _echo_task(*args, **kwargs):
    return "echo '{}'"


def test_task_requirements_map_rose_keywords_onto_radical_pilot():
    import radical.pilot as rp

    from rose.pilot import task_requirements

    schema = set(rp.TaskDescription._schema)
    got = task_requirements({"ranks": 4, "num_gpus": 2, "memory": 1000, "shell": True}, schema)
    assert got == {"ranks": 4, "gpus_per_rank": 0.5, "mem_per_rank": 250}
    got = task_requirements({"num_ranks": 2, "cores": 3, "pre_exec": ["module load x"]}, schema)
    assert got == {"ranks": 2, "cores_per_rank": 2, "pre_exec": ["module load x"]}
    assert task_requirements({"cores_per_rank": 8, "gpus_per_rank": 1}, schema) == {
        "cores_per_rank": 8, "gpus_per_rank": 1,
    }  # fmt: skip
    rp.TaskDescription(from_dict=got)  # radical.pilot accepts what comes out
    for bad, words in [
        ({"auth_token": "x"}, "'auth_token'"),
        ({"shell": False}, "shell=False"),
        ({"num_gpus": 2, "gpus_per_rank": 1}, "not both"),
        ({"ranks": 0}, "ranks must be"),
        ({"memory": "4G"}, "memory must be"),
    ]:
        with pytest.raises(ValueError, match=words):
            task_requirements(bad, schema)

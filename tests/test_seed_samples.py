"""The classic tracking samples (trackers written against ROSE's TrackerBase), run as written."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rose import IterationState, PipelineManifest, TrackerBase
from rose.al import ParallelActiveLearner, SequentialActiveLearner
from rose.metrics import MEAN_SQUARED_ERROR_MSE
from tests.conftest import Recorder


def register_seed_pipeline(learner, mse=(0.5, 0.1, 0.05, 0.009)):
    """The classic samples' pipeline: dict-returning function tasks and an MSE < 0.01 criterion."""
    values = iter(mse)
    last = {"v": mse[-1]}
    n = {"labeled": 20}

    @learner.simulation_task(as_executable=False)
    async def simulation(*args, **kwargs):
        return {"n_samples": 5}

    @learner.training_task(as_executable=False, num_gpus=4, log_params={"num_gpus": 4, "kernel": "rbf"})
    async def training(*args, **kwargs):
        return {"train_loss": 0.032, "val_loss": 0.041, "n_params": 125000,
                "log_marginal_likelihood": -10.1}

    @learner.active_learn_task(as_executable=False)
    async def active_learn(*args, **kwargs):
        n["labeled"] += 5
        return {"n_labeled": n["labeled"]}

    @learner.as_stop_criterion(metric_name=MEAN_SQUARED_ERROR_MSE, threshold=0.01, as_executable=False)
    async def check_mse(*args, **kwargs):
        last["v"] = next(values, last["v"])
        return last["v"]


async def test_reading_the_manifest_in_on_start(engine, capsys):
    class MyTracker(TrackerBase):
        def on_start(self, manifest: PipelineManifest) -> None:
            print(manifest.learner_type)  # "SequentialActiveLearner"
            print(manifest.tasks.keys())  # dict_keys(['simulation', 'training', 'active_learn'])
            print(manifest.criterion.metric_name)  # "mean_squared_error_mse"
            print(manifest.criterion.threshold)  # 0.01
            print(manifest.tasks["training"].as_executable)  # False
            print(manifest.tasks["training"].log_params)  # {"num_gpus": 4, "kernel": "rbf"}

    learner = SequentialActiveLearner(engine)
    register_seed_pipeline(learner)
    learner.add_tracker(MyTracker())
    assert capsys.readouterr().out.splitlines() == [
        "SequentialActiveLearner",
        "dict_keys(['simulation', 'training', 'active_learn'])",
        "mean_squared_error_mse",
        "0.01",
        "False",
        "{'num_gpus': 4, 'kernel': 'rbf'}",
    ]


async def test_loop_control_and_reading_state(engine):
    learner = SequentialActiveLearner(engine)
    register_seed_pipeline(learner)
    seen = []
    async for state in learner.start(max_iter=20):
        # control logic only — tracking is fully automatic
        seen.append((state.train_loss, state.n_labeled,
                     state.get("log_marginal_likelihood", default=None),
                     state.get("missing", default="d"),
                     sorted(k for k, _ in state.state.items())))
        if state.metric_value and state.metric_value < 0.001:
            break
    assert seen[0] == (0.032, 25, -10.1, "d",
                       ["log_marginal_likelihood", "n_labeled", "n_params", "n_samples",
                        "train_loss", "val_loss"])
    assert len(seen) == 4  # stopped by the criterion (0.009 < 0.01)


# The classic HPC_FileTracker sample, verbatim.
import json, time  # noqa: E401, E402, F811, I001
from pathlib import Path  # noqa: E402, F811
from rose import TrackerBase, PipelineManifest, IterationState  # noqa: E402, F811, I001
class HPC_FileTracker(TrackerBase):
    """Append-only JSON Lines tracker — safe for HPC job preemption."""
    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._path.write_text("")
        self._t0 = 0.0
    def on_start(self, manifest: PipelineManifest) -> None:
        self._t0 = time.time()
        self._write({
            "event": "start",
            "learner_type": manifest.learner_type,
            "criterion": {
                "metric": manifest.criterion.metric_name,
                "threshold": manifest.criterion.threshold,
            } if manifest.criterion else None,
        })
    def on_iteration(self, state: IterationState) -> None:
        self._write({
            "event": "iteration",
            "iteration": state.iteration,
            "elapsed_s": round(time.time() - self._t0, 3),
            "metric": state.metric_value,
            "should_stop": state.should_stop,
            **{k: v for k, v in state.state.items()
            if isinstance(v, (int, float, str, bool))},
        })
    def on_stop(self, final_state, reason: str) -> None:
        self._write({
            "event": "stop",
            "reason": reason,
            "elapsed_s": round(time.time() - self._t0, 3),
            "final_iteration": final_state.iteration if final_state else None,
        })
    def _write(self, record: dict) -> None:
        with self._path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class Broken(TrackerBase):
    def on_iteration(self, state):
        raise ConnectionError("tracking server unreachable")


async def test_hpc_file_tracker_and_stacking(engine, tmp_path):
    learner = SequentialActiveLearner(engine)
    register_seed_pipeline(learner)
    path = tmp_path / "run.jsonl"
    rec = Recorder()
    learner.add_tracker(HPC_FileTracker(str(path)))  # always-on safety net
    learner.add_tracker(Broken())  # a failing tracker affects nobody
    learner.add_tracker(rec)
    async for _state in learner.start(max_iter=20):
        ...  # all trackers fire at every lifecycle point
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in records] == ["start"] + ["iteration"] * 4 + ["stop"]
    assert records[0]["learner_type"] == "SequentialActiveLearner"
    assert records[0]["criterion"] == {"metric": "mean_squared_error_mse", "threshold": 0.01}
    assert [r["metric"] for r in records[1:5]] == [0.5, 0.1, 0.05, 0.009]
    assert records[4]["should_stop"] is True and records[1]["train_loss"] == 0.032
    assert records[-1]["reason"] == "criterion_met" and records[-1]["final_iteration"] == 3
    assert rec.stop_reason == "criterion_met"


async def test_parallel_learner_tracking_sample(engine):
    class MetricsTracker(TrackerBase):
        def __init__(self):
            self.logged = {}

        def log_metric(self, key, value, step):
            self.logged.setdefault(key, []).append((step, value))

        def on_iteration(self, state: IterationState) -> None:
            print(f"[{state.learner_id}] iter={state.iteration} metric={state.metric_value}")
            for key, value in state.state.items():
                if isinstance(value, (int, float)):
                    self.log_metric(f"{state.learner_id}/{key}", value, step=state.iteration)

    learner = ParallelActiveLearner(engine)
    register_seed_pipeline(learner, mse=(0.5,))
    tracker = MetricsTracker()
    learner.add_tracker(tracker)
    async for _ in learner.start(parallel_learners=2, max_iter=3):
        pass
    assert sorted(k for k in tracker.logged if k.endswith("train_loss")) == ["0/train_loss", "1/train_loss"]
    assert [s for s, _ in tracker.logged["0/train_loss"]] == [0, 1, 2]


class _Webhook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    _Webhook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/services/T000/B000/XXX", _Webhook.received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def test_custom_slack_tracker_sample(engine, webhook):
    url, received = webhook

    # The classic SlackTracker sample, verbatim.
    from rose import TrackerBase  # optional — provides default no-ops
    class SlackTracker(TrackerBase):
        """Post a Slack message when the run finishes."""
        def __init__(self, webhook_url: str) -> None:
            self._url = webhook_url
            self._iters = 0
        def on_iteration(self, state) -> None:
            self._iters += 1
        def on_stop(self, final_state, reason: str) -> None:
            import urllib.request, json as _json  # noqa: E401, I001
            metric = f"{final_state.metric_value:.4f}" if final_state else "N/A"
            msg = (f"ROSE run finished — {self._iters} iterations, "
                f"reason: {reason}, final metric: {metric}")
            data = _json.dumps({"text": msg}).encode()
            req = urllib.request.Request(
                self._url, data=data,
                headers={"Content-Type": "application/json"},
            )
            urllib.request.urlopen(req)

    learner = SequentialActiveLearner(engine)
    register_seed_pipeline(learner)
    learner.add_tracker(SlackTracker(url))
    async for _ in learner.start(max_iter=20):
        pass
    assert received == [
        ("application/json",
         {"text": "ROSE run finished — 4 iterations, reason: criterion_met, final metric: 0.0090"})
    ]

"""Secrets hygiene: what a user hands rose as a secret stays out of everything rose writes.

Three secrets, each where a user would put it: a token in a task's
``decor_kwargs`` (for the execution backend only), the Slack webhook URL in
the Slack sink's environment variable, and MLflow tracking credentials in the
MLflow sink's environment.  A learner runs through the broker into the file,
MLflow and Slack sinks with debug logging on; afterwards no secret appears in
any event, log, store segment, checkpoint, sink output or database under the
test's directory, nor in the process listing taken while everything ran.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from .conftest import Daemon, _sink_ready, wait_until

DECOR_SECRET = "decor-token-5ab1c0ffee"
SLACK_SECRET = "T000SECRET/B000SECRET/xoxbSlackHook77"
MLFLOW_PASSWORD = "mlflow-pass-9f8e7d"
MLFLOW_TOKEN = "mlflow-token-1a2b3c"
SECRETS = [DECOR_SECRET, SLACK_SECRET, MLFLOW_PASSWORD, MLFLOW_TOKEN]


@pytest.fixture
def fake_slack():
    from tests.slack.conftest import serving

    with serving(SLACK_SECRET) as fake:
        yield fake


def _process_listing() -> str:
    return subprocess.run(
        ["ps", "-eo", "pid,args", "-ww"], capture_output=True, text=True, timeout=30
    ).stdout


@pytest.mark.timeout(180)
def test_secrets_never_leave(stack, fake_slack):
    assert stack.mlflow_sink is not None
    stack.mlflow_sink.env = {
        "MLFLOW_TRACKING_USERNAME": "rose",
        "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
        "MLFLOW_TRACKING_TOKEN": MLFLOW_TOKEN,
    }
    for d in (stack.file_sink, stack.mlflow_sink):
        d.argv = ["-v", *d.argv]  # -v -v: debug logging, the chattiest there is
    slack_state = stack.root / "slack-state"
    slack = Daemon(
        "slack-sink",
        ["-v", "-v", "sink", "slack", "--bus", str(stack.bus_file), "--state", str(slack_state),
         "--notify-start", "--min-interval", "0"],
        stack.root,
        env={"ROSE_SLACK_WEBHOOK": fake_slack.url, "no_proxy": "*"},
        ready=_sink_ready(slack_state),
    )  # fmt: skip
    stack.broker.argv = ["-v", "-v", *stack.broker.argv]
    stack.start()
    slack.start()
    try:
        learner = stack.learner("secretive", 30, pace_ms=10, FAULTS_SECRET=DECOR_SECRET)
        listings = [_process_listing()]
        for _ in range(200):  # while it runs, bounded
            if not learner.running:
                break
            listings.append(_process_listing())
            time.sleep(0.2)
        stack.wait_delivered()
        wait_until(lambda: len(fake_slack.texts()) >= 2, "the Slack sink to post")
        listings.append(_process_listing())
        assert slack.terminate() == 0
        stack.stop_all()
    finally:
        slack.kill()
    stack.check_exactly_once("secrets hygiene (file + mlflow + slack sinks, debug logs)")
    # The webhook secret did its job: every post went to it.
    assert fake_slack.received
    assert all(r["path"] == f"/services/{SLACK_SECRET}" for r in fake_slack.received)
    assert any("secretive" in t for t in fake_slack.texts())
    # ... and went nowhere else.
    scanned = 0
    for path in stack.root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            scanned += 1
            for secret in SECRETS:
                assert secret.encode() not in data, f"{secret!r} found in {path}"
    assert scanned > 20
    for listing in listings:
        assert "-m cli " in listing  # the daemons were in it
        for secret in SECRETS:
            assert secret not in listing, f"{secret!r} in the process listing"

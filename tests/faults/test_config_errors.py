"""Mistakes end at once; a second sink on the same output is refused.

A tracking URI MLflow cannot use, a scheme it does not know, a host that
refuses connections, a Slack webhook nobody listens on: ``rose sink`` and
``rose replay`` exit non-zero with one line, no traceback, no retrying
forever (the subprocess timeout is the bound).  Two sinks writing one output
would write every event twice: the second is refused with a clear error and
the first goes on, every event once.
"""

from __future__ import annotations

import pytest

from tests.polling import free_port
from tests.sinks.helpers import run_events

from .conftest import REPORT, Daemon
from .test_store_damage import rose


def _one_error_line(res, cmd: str) -> str:
    assert res.returncode != 0, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith(f"rose {cmd}: error:")]
    assert len(errors) == 1, res.stderr
    return errors[0]


@pytest.mark.timeout(300)
def test_bad_backend_configuration_fails_fast(tmp_path, capsys):
    pytest.importorskip("mlflow")
    from rose.events import to_json_line

    logs = tmp_path / "runs"
    logs.mkdir()
    (logs / "r.jsonl").write_text("".join(to_json_line(e) for e in run_events("r", 3)))
    refused = f"http://127.0.0.1:{free_port()}"
    res = rose("replay", str(logs), "--into", "mlflow", "--tracking-uri", "nonsense",
               "--no-progress", cwd=tmp_path, timeout=60)  # fmt: skip
    assert "MLflow cannot use the tracking URI 'nonsense'" in _one_error_line(res, "replay")
    # The same check in this process (cheaper; the pytest timeout bounds it).
    from cli.main import main as rose_main

    for uri, why in {"foo://x": "does not know the scheme", refused: "connection refused"}.items():
        argv = ["replay", str(logs), "--into", "mlflow", "--tracking-uri", uri, "--no-progress"]
        assert rose_main(argv) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err
    res = rose("sink", "mlflow", "--tracking-uri", refused, "--backend", "tcp://127.0.0.1:1",
               "--replay", "tcp://127.0.0.1:2", "--state", str(tmp_path / "st"), cwd=tmp_path,
               timeout=60)  # fmt: skip
    assert "connection refused" in _one_error_line(res, "sink")
    res = rose("replay", str(logs), "--into", "slack", cwd=tmp_path, timeout=60,
               ROSE_SLACK_WEBHOOK=f"{refused}/services/T/B/x", http_proxy="", HTTP_PROXY="")  # fmt: skip
    assert "refuses connections" in _one_error_line(res, "replay")
    REPORT.append(
        "bad tracking URI / unknown scheme / refused host / refused webhook: 0 events applied, "
        "exit non-zero with one line each (5 cases)"
    )


@pytest.mark.timeout(240)
def test_a_second_sink_on_the_same_output_is_refused(stack):
    stack.start()
    twin_file = Daemon("twin-file-sink", ["sink", "file", "--out", str(stack.out), "--state",
                       str(stack.root / "twin-state"), "--bus", str(stack.bus_file)],
                       stack.root)  # fmt: skip
    twin_mlflow = Daemon("twin-mlflow-sink", ["sink", "mlflow", "--tracking-uri",
                         stack.mlflow_uri, "--experiment", "faults", "--state",
                         str(stack.root / "twin-mlflow"), "--bus", str(stack.bus_file)],
                         stack.root)  # fmt: skip
    for twin, what in ((twin_file, "another file sink"), (twin_mlflow, "another MLflow sink")):
        twin.start()
        assert twin.proc.wait(60) != 0
        log = twin.log()
        assert what in log and f"pid {stack.daemons[1 if twin is twin_file else 2].pid}" in log
        assert "Traceback" not in log
    stack.learner("alpha", 10)
    stack.wait_delivered()
    stack.stop_all()
    stack.check_exactly_once("a second file sink and a second MLflow sink refused")

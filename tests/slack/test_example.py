"""The Slack example runs as written against the local fake Slack; the URL comes from the env."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.slack.conftest import SECRET

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/integrations/tracking/slack/run_me.py"


def run(tmp_path, env_extra, *args):
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--work-dir", str(tmp_path / "runs"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_example_posts_start_and_stop(tmp_path, slack):
    proc = run(tmp_path, {"ROSE_SLACK_WEBHOOK": slack.url}, "--max-iter", "3", "--milestones")
    assert proc.returncode == 0, proc.stderr[-2000:]
    texts = slack.texts()
    assert len(texts) == 2
    assert (
        texts[0].startswith("ROSE run branin-gp-")
        and "started — SequentialActiveLearner" in texts[0]
    )
    assert "finished — 3 iterations, reason: max_iter_reached, final metric: " in texts[1]
    assert SECRET not in proc.stdout + proc.stderr


def test_example_without_a_webhook_says_how_to_set_it(tmp_path):
    proc = run(tmp_path, {"ROSE_SLACK_WEBHOOK": ""}, "--max-iter", "1")
    assert proc.returncode == 2
    assert "set ROSE_SLACK_WEBHOOK" in proc.stderr and "Traceback" not in proc.stderr

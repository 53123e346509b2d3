"""docs/deployment.md on one machine: keys, rose-daemons start/status/stop, a learner, watching.

$HOME is a temporary directory, so ROSE_HOME takes its default (~/rose-tracking) as on a
cluster; only ROSE_LISTEN (loopback) and the ports differ from the page.
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess

import pytest

from tests.polling import free_port

from .conftest import REPO, block, commands, sh, shell_env, wait_until

pytest.importorskip("mlflow")

DAEMONS = REPO / "scripts" / "slurm" / "rose-daemons"


@pytest.fixture
def home(tmp_path):
    ports = ",".join(str(free_port()) for _ in range(3))
    env = shell_env(HOME=str(tmp_path), ROSE_PORTS=ports)
    yield tmp_path, env
    # Whatever failed above, nothing the test started outlives it.
    subprocess.run([str(DAEMONS), "stop"], cwd=tmp_path, env=env, capture_output=True,
                   timeout=120)


def _page_exports() -> list[str]:
    """§3's exports, minus ROSE_LISTEN: the name compute nodes reach a login node by."""
    cmds = commands(block("deployment.md", "bash", "rose-daemons start"))
    exports = [c for c in cmds if c.startswith("export ") and "ROSE_LISTEN" not in c]
    assert [e.split("=")[0] for e in exports] == [
        "export ROSE_HOME", "export ROSE_KEYS", "export ROSE_SINKS"]
    return exports


@pytest.mark.timeout(240)
def test_keys_daemons_learner_and_watching_as_the_page_says(home, tmp_path):
    home_dir, env = home
    rose_home = home_dir / "rose-tracking"
    keys = block("deployment.md", "bash", "rose keys generate")
    sh(keys.strip(), home_dir, env=env)
    assert oct((rose_home / "keys").stat().st_mode & 0o777) == "0o700"
    assert oct((rose_home / "keys" / "client.key_secret").stat().st_mode & 0o777) == "0o600"

    prefix = " && ".join(_page_exports())
    daemons = f"{prefix} && {DAEMONS}"
    start = sh(f"{daemons} start", home_dir, env=env, timeout=150)
    for name in ("bus", "sink-file", "sink-mlflow"):
        assert re.search(rf"^started {name} \(pid \d+\), log ", start.stdout, re.M), start.stdout
    status = sh(f"{daemons} status", home_dir, env=env)
    assert "bus: running (pid " in status.stdout
    assert "sink file [running] pid" in status.stdout and "sink mlflow [running]" in status.stdout

    # §4: the learner finds the broker and its key through ROSE_BUS / ROSE_CLIENT_KEY, as
    # learner.sbatch sets them; its tracker line is the page's.
    line = block("deployment.md", "python", "BusTracker(spool=").strip().splitlines()[-1]
    learner = block("quickstart.md", "python", 'FileTracker("runs/")').replace(
        '        learner.add_tracker(FileTracker("runs/"))     # runs/<run id>.jsonl',
        f"        import os\n        from bus import BusTracker\n        {line}")
    (home_dir / "my_learner.py").write_text(learner)
    job = dict(env, ROSE_BUS=str(rose_home / "store/bus.json"),
               ROSE_CLIENT_KEY=str(rose_home / "keys/client.key_secret"))
    sh("python my_learner.py", home_dir, env=job)
    runs = lambda: list((rose_home / "runs").glob("my-first-run-*.jsonl"))  # noqa: E731
    assert wait_until(lambda: len(runs()) == 1 and len(runs()[0].read_text().splitlines()) == 5)

    # §7, as printed (minus the MLflow UI, a server).
    watch = commands(block("deployment.md", "bash", "rose tail --bus"))
    tail, status_cmd, plot = watch[:3]
    out = sh(f"{status_cmd}", home_dir, env=env).stdout
    assert "5 event(s) of 1 run(s)" in out  # the broker, through CURVE
    assert wait_until(lambda: "applied 5," in sh(status_cmd, home_dir, env=env).stdout)
    out = sh(status_cmd, home_dir, env=env).stdout
    assert re.search(r"sink file \[running\] pid \d+ \(.*/rose-tracking/state/file\): applied 5,",
                     out), out
    assert "sink mlflow [running]" in out
    lines = sh(f"{tail} --last 5 --count 5", home_dir, env=env).stdout.splitlines()
    assert len(lines) == 5 and " stop criterion_met " in lines[-1]
    assert sh(plot, home_dir, env=env).stdout.startswith("wrote metrics.png: 1 run(s)")

    stop = sh(f"{daemons} stop", home_dir, env=env, timeout=60)
    assert stop.stdout.splitlines() == ["stopped sink-file", "stopped sink-mlflow", "stopped bus"]
    after = sh(f"{daemons} status", home_dir, env=env, ok=False)
    assert after.returncode == 1 and after.stdout.strip() == f"nothing started from {rose_home}"

    # A broker that dies at once (its port is taken) is reported at once, whatever stale
    # bus.json the last run left, and no sink is started against it.
    assert (rose_home / "store" / "bus.json").is_file()
    front = int(env["ROSE_PORTS"].split(",")[0])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", front))
        taken.listen()
        failed = sh(f"{daemons} start", home_dir, env=env, ok=False, timeout=60)
    assert failed.returncode == 1
    assert "started" not in failed.stdout
    assert failed.stderr.startswith(f"bus exited at once; the end of {rose_home}/logs/bus.log:")
    assert "Address already in use" in failed.stderr
    assert not list((rose_home / "run").glob("*.pid"))


@pytest.mark.timeout(120)
def test_run_keeps_one_daemon_in_the_foreground_as_the_systemd_units_do(home):
    home_dir, env = home
    rose_home = home_dir / "rose-tracking"
    unit = (REPO / "scripts/slurm/systemd/rose-bus.service").read_text()
    assert "ExecStart=/bin/bash %h/rose-tracking/rose-daemons run bus" in unit
    proc = subprocess.Popen([str(DAEMONS), "run", "bus"], cwd=home_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        bus_json = rose_home / "store" / "bus.json"
        assert wait_until(lambda: bus_json.is_file()
                          and f'"pid": {proc.pid}' in bus_json.read_text())  # exec'd: same pid
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    bad = sh(f"{DAEMONS} run sink-nope", home_dir, env=env, ok=False)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        "rose-daemons: unknown daemon 'sink-nope' (bus, or sink-file|mlflow|clearml|slack)")

"""The docs walked as a newcomer walks them: their code blocks and commands, run as printed.

One working directory stands for the repository checkout of the quick start (with
``examples/`` in it): the quick start's learner runs there first, and the replay and
custom-sink pages' commands then run on the log it wrote, in one shell each, as the
pages say. The code comes from the pages themselves, so a page edited into something
that does not run fails here. The only liberty taken: brokers listen on free ports, not
5555-5557, so that tests can run side by side.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.polling import free_port

from .conftest import BIN, REPO, block, commands, pattern, sh, shell_env, wait_until

pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A directory laid out like the repository, where the quick start's learner has run."""
    work = tmp_path_factory.mktemp("checkout")
    (work / "examples").symlink_to(REPO / "examples")
    learner = block("quickstart.md", "python", 'FileTracker("runs/")')
    (work / "my_learner.py").write_text(learner)
    return work


@pytest.fixture(scope="module")
def quickstart_run(checkout) -> subprocess.CompletedProcess:
    return sh("python my_learner.py", checkout)


def test_quickstart_learner_prints_its_iterations_and_plots(checkout, quickstart_run):
    assert quickstart_run.stdout.splitlines() == ["0 0.5 0.1", "1 0.1 0.1", "2 0.005 0.1"]
    (log,) = (checkout / "runs").glob("my-first-run-*.jsonl")
    assert len(log.read_text().splitlines()) == 5  # start, 3 iterations, stop
    page = (REPO / "docs" / "quickstart.md").read_text()
    (plot,) = re.findall(r"`(rose plot runs/\*\.jsonl[^`]*)`", page)
    out = sh(plot, checkout)
    assert out.stdout.startswith("wrote metrics.png: 1 run(s), 1 curve(s)")
    assert (checkout / "metrics.png").stat().st_size > 10_000


def test_replay_page_into_sinks_and_from_python(checkout, quickstart_run, tmp_path):
    env = shell_env(HOME=str(tmp_path))  # ClearML's offline session goes under $HOME
    into_sink = [
        c for c in commands(block("replay.md", "bash", "rose replay runs/ --into file --out copy/"))
        if "rose-store/" not in c  # the broker's store: in the bus test below
    ]
    assert len(into_sink) == 4
    for cmd in into_sink:
        out = sh(cmd, checkout, env=env, timeout=180)
        assert re.search(r"rose replay: 5 event\(s\) into \w+: 5 applied", out.stderr), (cmd, out)
    assert (checkout / "summary.txt").read_text() == (
        "SequentialActiveLearner: 3 iterations, criterion_met, mean_squared_error_mse=0.005\n"
    )
    # "Into a new MLflow experiment, later": each command says what its comment says.
    mlflow_block = block("replay.md", "bash", "--experiment first")
    expected = [pattern(line[2:]) for line in mlflow_block.splitlines() if line.startswith("# ")]
    replays = [c for c in commands(mlflow_block) if c.startswith("rose replay")]
    assert len(replays) == len(expected) == 3
    for cmd, want in zip(replays, expected, strict=True):
        last = sh(cmd, checkout, timeout=180).stderr.strip().splitlines()[-1]
        assert want.match(last), (cmd, last)
    # "Reading logs in Python": the snippets, pasted one after the other.
    page = (REPO / "docs" / "replay.md").read_text()
    reading = page.split("## Reading logs in Python", 1)[1]
    code = "\n".join(re.findall(r"^```python\n(.*?)^```", reading, flags=re.S | re.M))
    (checkout / "snippets.py").write_text(code)
    out = sh("python snippets.py", checkout)
    lines = out.stdout.splitlines()
    assert lines[:3] == ["0 0.5 {'n_labeled': 10, 'train_loss': 0.1, 'picked': 5}",
                         "1 0.1 {'n_labeled': 10, 'train_loss': 0.1, 'picked': 5}",
                         "2 0.005 {'n_labeled': 10, 'train_loss': 0.1, 'picked': 5}"]
    assert lines[3] == "criterion_met 2 0.005"
    assert "body.state.train_loss" in out.stdout


def test_custom_sink_page_replays_into_a_tracker_and_the_csv_kind(checkout, quickstart_run,
                                                                  tmp_path):
    work = tmp_path / "checkout"  # its own copy: the replay page wrote a summary.txt too
    (work / "examples").mkdir(parents=True)
    for entry in (REPO / "examples").iterdir():  # custom_sink copied: pip builds in its tree
        if entry.name == "custom_sink":
            shutil.copytree(entry, work / "examples" / entry.name,
                            ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        else:
            (work / "examples" / entry.name).symlink_to(entry)
    shutil.copytree(checkout / "runs", work / "runs")
    tracker = [c for c in commands(block("custom-sink.md", "bash", "export PYTHONPATH="))
               if "--bus" not in c]  # `rose sink tracker` follows a broker: the bus test's part
    assert len(tracker) == 2
    sh(" && ".join(tracker), work)
    page = (REPO / "docs" / "custom-sink.md").read_text()
    (shown,) = re.findall(r"^\$ cat summary\.txt\n(.*?)^```", page, flags=re.S | re.M)
    assert sh("cat summary.txt", work).stdout == shown
    lines = (REPO / "docs" / "custom-sink.md").read_text().splitlines()
    (install,) = [ln[2:] for ln in lines if ln.startswith("$ pip install examples/custom_sink")]
    cmds = [ln[2:] for ln in lines if ln.startswith("$ rose replay runs/ --into csv")]
    assert len(cmds) == 2
    # The one liberty: pip installs into a directory of the test's, not into this venv.
    site = tmp_path / "site"
    env = shell_env(PIP_TARGET=str(site), PYTHONPATH=str(site))
    sh(install, work, env=env, timeout=300)
    first = sh(cmds[0], work, env=env).stderr
    second = sh(cmds[1], work, env=env).stderr
    assert "5 event(s) into csv: 5 applied" in first
    assert "5 event(s) into csv: 1 applied, 4 duplicate(s) skipped" in second
    (table,) = (work / "table").glob("my-first-run-*.csv")
    rows = table.read_text().splitlines()
    assert rows[0] == ("seq,ts,iteration,learner_id,metric_name,metric_value,should_stop,"
                       "train_loss,picked")
    assert len(rows) == 4 and rows[-1].endswith(",2,,mean_squared_error_mse,0.005,True,0.1,5")


def _popen(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=cwd, env=shell_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


@pytest.mark.timeout(240)
def test_quickstart_bus_in_three_commands_then_status_tail_and_replay(checkout, quickstart_run):
    ports = [free_port() for _ in range(3)]
    bus_cmd = [str(BIN / "rose"), "bus", *(
        f"--{name}=tcp://127.0.0.1:{p}" for name, p in zip(("frontend", "backend", "replay"),
                                                             ports, strict=True))]
    broker = _popen(bus_cmd, checkout)
    sink = None
    try:
        bus_json = checkout / "rose-store" / "bus.json"
        assert wait_until(lambda: bus_json.is_file() and str(broker.pid) in bus_json.read_text())
        sink = _popen(["rose", "sink", "file", "--out", "runs/"], checkout)  # as printed
        # The learner of the quick start with its tracker line replaced as the comment says.
        bus_block = block("quickstart.md", "bash", "rose sink file --out runs/")
        new = [ln.split("#", 1)[1].strip() for ln in bus_block.splitlines()
               if ln.startswith("#        ")]
        assert new == ["from bus import BusTracker",
                       'learner.add_tracker(BusTracker(bus="rose-store/bus.json"))']
        code = block("quickstart.md", "python", 'FileTracker("runs/")').replace(
            '        learner.add_tracker(FileTracker("runs/"))     # runs/<run id>.jsonl',
            f"        {new[0]}\n        {new[1]}")
        assert "BusTracker" in code
        (checkout / "my_bus_learner.py").write_text(code)
        run = sh("python my_bus_learner.py", checkout)
        assert run.stdout.splitlines()[-1] == "2 0.005 0.1"
        logs = lambda: sorted((checkout / "runs").glob("my-first-run-*.jsonl"))  # noqa: E731
        assert wait_until(lambda: len(logs()) == 2 and all(
            len(p.read_text().splitlines()) == 5 for p in logs()))
        # The sink writes its status every second: wait for the one after the run.
        assert wait_until(lambda: "applied 5," in sh("rose status", checkout).stdout)
        status = sh("rose status", checkout).stdout
        assert status.startswith("broker pid ") and "5 event(s) of 1 run(s)" in status
        assert re.search(r"sink file \[running\] pid \d+ \(runs/\.rose-sink\): applied 5,", status)
        assert ": finished, iteration 2, mean_squared_error_mse=0.005; next seq 5" in status
        tail = sh("rose tail --last 5 --count 5", checkout).stdout.splitlines()
        assert [line.split(" #")[1].split()[0] for line in tail] == ["0", "1", "2", "3", "4"]
        assert "iteration 2 mean_squared_error_mse=0.005" in tail[3]
        # A second sink on the live sink's --out would write every event twice: refused.
        busy = sh("rose replay rose-store/ --into file --out runs/", checkout, ok=False)
        assert busy.returncode == 2 and "is being written by another file sink" in busy.stderr
        replay = sh("rose replay rose-store/ --into file --out stored/", checkout).stderr
        assert "5 event(s) into file: 5 applied" in replay
        (stored,) = (checkout / "stored").glob("*.jsonl")
        assert stored.read_bytes() == (checkout / "runs" / stored.name).read_bytes()
        code, err = _stop(sink, signal.SIGINT)  # Ctrl-C: finishes, checkpoints, exits 0
        assert code == 0 and err.startswith("rose sink file: following the broker of rose-store/")
        sink = again = _popen(["rose", "sink", "file", "--out", "runs/"], checkout)
        assert wait_until(lambda: re.search(rf'"pid": ?{again.pid}\b', (
            checkout / "runs/.rose-sink/status.json").read_text()))
        assert all(len(p.read_text().splitlines()) == 5 for p in logs())  # nothing twice
    finally:
        if sink is not None:
            _stop(sink)
        code, _ = _stop(broker)
    assert code == 0
    # The broker is gone: rose status says so once, above the sink it still finds (exit 1).
    down = sh("rose status", checkout, ok=False)
    assert down.returncode == 1
    first = down.stdout.splitlines()[0]
    assert pattern("broker: broker at <ep> did not answer 'stats' within <ms> ms "
                   "(is `rose bus` running there?)").match(first), first
    assert "sink file [stopped]" in down.stdout
    # With no sink to show either, the broker's silence is the one line (exit 2).
    alone = checkout / "no-sinks-here"
    alone.mkdir()
    down = sh("rose status --bus ../rose-store/bus.json", alone, ok=False)
    assert down.returncode == 2 and down.stdout == ""
    (line,) = down.stderr.splitlines()
    assert line.startswith("rose status: error: broker at tcp://127.0.0.1:") and "'stats'" in line

"""docs/troubleshooting.md: the messages it quotes are the ones rose prints.

Each case names a documented message (as the page writes it, ``<…>`` for the parts that
change), checks that the page holds it, makes rose print it and matches the line. In
process and without a broker, so the whole batch takes a few seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cli.main import main

from .conftest import DOCS, pattern

PAGE = (DOCS / "troubleshooting.md").read_text()

LOG = (
    '{"v":1,"run":"t-0123456789abcdef0123456789abcdef","seq":0,"kind":"start","ts":1.0,'
    '"origin":{},"body":{"learner_type":"SequentialActiveLearner","tasks":{},'
    '"criterion":null,"parallel_count":null}}\n'
    '{"v":1,"run":"t-0123456789abcdef0123456789abcdef","seq":1,"kind":"iteration","ts":2.0,'
    '"body":{"iteration":0,"learner_id":null,"metric_name":null,"metric_value":null,'
    '"metric_threshold":null,"should_stop":false,"current_config":{},"state":{"loss":0.5}}}\n'
)

# (documented message, argv, exit status); in argv, {log} is a valid event log, {txt} a text
# file, {empty} an empty directory, {keys} a directory of generated keys.
CASES = [
    ("rose replay: error: one of the arguments --into --publish is required",
     ["replay", "{log}"], 2),
    ("rose replay: error: argument --into: invalid choice: '<kind>' (choose from 'file', "
     "'tracker', 'mlflow', 'clearml', 'slack')", ["replay", "{log}", "--into", "nope"], 2),
    ("rose replay: error: no such file or directory: <path>",
     ["replay", "missing.jsonl", "--into", "file", "--out", "o"], 2),
    ("rose replay: error: <dir> holds no *.jsonl event logs and is not a broker store",
     ["replay", "{empty}", "--into", "file", "--out", "o"], 2),
    ("rose replay: error: --<option> does not apply to --into <kind>",
     ["replay", "{log}", "--into", "file", "--out", "o", "--experiment", "x"], 2),
    ("rose replay: error: --jobs must be >= 0 (0 = one per CPU)",
     ["replay", "{log}", "--into", "file", "--out", "o", "--jobs", "-1"], 2),
    ("rose replay: error: the logs hold no valid event (are they rose event logs?)",
     ["replay", "{txt}", "--into", "file", "--out", "o"], 1),
    ("rose replay: error: --publish <host>:<port>: an endpoint needs its transport, "
     "e.g. tcp://<host>:<port>", ["replay", "{log}", "--publish", "login1:5555"], 2),
    ("rose replay: error: no bus file at <target>: …",
     ["replay", "{log}", "--publish", "nowhere/bus.json"], 2),
    ("rose replay: error: bad --publish endpoint '<ep>': expected tcp://HOST:PORT or ipc://PATH",
     ["replay", "{log}", "--publish", "tcp://login1"], 2),
    ("rose status: error: nothing to report: no broker given or found (--bus FILE) and no "
     "sink state found (--state DIR)", ["status"], 2),
    ("rose status: error: no sink status in <dir> (is a sink using --state <dir>?)",
     ["status", "--state", "{empty}"], 2),
    ("rose plot: error: no such log file: <paths>", ["plot", "nope.jsonl", "-o", "m.png"], 2),
    ("rose plot: error: output must be a .png file, got '<name>'",
     ["plot", "{log}", "-o", "m.pdf"], 2),
    ("rose plot: error: the logs hold no readable events", ["plot", "{empty}", "-o", "m.png"], 2),
    ("rose plot: error: no iteration in the logs has a numeric state key '<key>'; the logs "
     "hold: <keys>", ["plot", "{log}", "-o", "m.png", "--keys", "nope"], 2),
    ("rose sink: error: which sink? one of: file, tracker, mlflow, clearml, slack", ["sink"], 2),
    ("rose sink: error: the file sink needs --out DIR", ["sink", "file"], 2),
    ("rose sink: error: where is the broker? give --bus STORE/bus.json (or set ROSE_BUS), or "
     "--backend EP and --replay EP; none given and no ./rose-store/bus.json here",
     ["sink", "file", "--out", "o"], 2),
    ("rose sink: error: give either --bus FILE or --backend/--replay, not both",
     ["sink", "file", "--out", "o", "--bus", "b.json", "--backend", "tcp://127.0.0.1:1"], 2),
    ("rose sink: error: --max-attempts must be >= 0 (0 = retry forever)",
     ["sink", "file", "--out", "o", "--max-attempts", "-1"], 2),
    ("rose sink: error: no Slack webhook: set ROSE_SLACK_WEBHOOK to the incoming-webhook URL "
     "(or give a 0600 webhook file)", ["sink", "slack"], 2),
    ("rose bus: error: --<name> '<ep>' is not an endpoint (like tcp://127.0.0.1:5555)",
     ["bus", "--store", "s", "--frontend", "login1:5555"], 2),
    ("rose bus: error: --hwm must be positive, --fsync-interval >= 0",
     ["bus", "--store", "s", "--hwm", "0"], 2),
    ("rose bus: error: CURVE needs both the broker's secret key (--curve-secret-key FILE) and "
     "the directory of the clients' public keys (--authorized-keys DIR)",
     ["bus", "--store", "s", "--curve-secret-key", "{keys}/broker.key_secret"], 2),
    ("… <file> is readable by others (mode <mode>); run `chmod 600 <file>` ",
     ["bus", "--store", "s", "--curve-secret-key", "{keys}/open.key_secret",
      "--authorized-keys", "{keys}/authorized"], 2),
    ("… <file> holds only a public key; give the NAME.key_secret file instead",
     ["bus", "--store", "s", "--curve-secret-key", "{keys}/broker.key",
      "--authorized-keys", "{keys}/authorized"], 2),
    ("rose keys: error: <file> already exists; pass --force to replace it",
     ["keys", "generate", "{keys}"], 2),
]


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith(("ROSE_", "MLFLOW_"))]:
        monkeypatch.delenv(var)
    (tmp_path / "run.jsonl").write_text(LOG)
    (tmp_path / "notes.txt").write_text("hello\nworld\n")
    (tmp_path / "empty").mkdir()
    keys = tmp_path / "keys"
    assert main(["keys", "generate", str(keys)]) == 0
    open_key = keys / "open.key_secret"
    open_key.write_bytes((keys / "broker.key_secret").read_bytes())
    open_key.chmod(0o644)
    return {"log": "run.jsonl", "txt": "notes.txt", "empty": "empty", "keys": str(keys)}


def test_every_quoted_message_is_printed_as_quoted(files, capsys):
    capsys.readouterr()
    for message, argv, status in CASES:
        quoted = f"`{message.rstrip()}`" if not message.endswith(" ") else f"`{message}`"
        assert quoted in PAGE or f"``{message}``" in PAGE, f"not on the page: {message}"
        args = [a.format(**files) for a in argv]
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == status, (args, code, err)
        assert err, args
        want = pattern(message.strip().lstrip("… "))
        line = err[-1]
        if message.startswith("…"):  # the page quotes the tail of the line
            line = line.split(": error: ", 1)[1]
            want = pattern("<…>" + message.strip()[1:])
        assert want.match(line), (args, line, want.pattern)


def test_a_missing_broker_in_the_learner_script_is_explained(monkeypatch, tmp_path):
    from bus import BusTracker

    monkeypatch.delenv("ROSE_BUS", raising=False)
    cases = [
        ({}, "ValueError: BusTracker needs the broker: BusTracker('tcp://host:5555'), "
             "BusTracker(bus='<store>/bus.json'), or ROSE_BUS=<bus.json or endpoint>"),
        ({"endpoint": "tcp://127.0.0.1:1", "bus": "b.json"},
         "ValueError: BusTracker: give either an endpoint or bus=<bus.json>, not both"),
        ({"bus": str(tmp_path / "bus.json")},
         "ValueError: no bus file at <path>: start the broker first (`rose bus --store <dir>`) "
         "or pass its endpoints explicitly"),
    ]
    for kwargs, message in cases:
        assert f"`{message}`" in PAGE or f"``{message}``" in PAGE, message
        with pytest.raises(ValueError) as info:
            BusTracker(**kwargs)
        assert pattern(message).match(f"ValueError: {info.value}"), (message, info.value)


def test_the_plot_rows_say_directories_are_taken(files, capsys):
    """The page once said a directory was refused; rose plot takes one."""
    Path("logs").mkdir()
    Path("logs/run.jsonl").write_text(LOG)
    assert main(["plot", "logs", "-o", "m.png"]) == 0
    assert "a directory is reported this way too" not in PAGE

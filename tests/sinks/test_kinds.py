"""Sink kinds are plain classes: built from keyword arguments, no argparse, no I/O in build."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sinks.file_sink import FileSink
from sinks.registry import BUILTIN, available_kinds, load_kind
from tests.bus.conftest import free_port


def test_every_builtin_kind_loads_and_declares_distinct_options():
    kinds = available_kinds()
    assert list(kinds)[: len(BUILTIN)] == list(BUILTIN)
    for name, kind in kinds.items():
        assert kind.name == name and kind.help
        flags = [o.flag for o in kind.options]
        assert len(flags) == len(set(flags)), name
    assert load_kind("no-such-kind") is None


def test_a_kind_is_built_from_python_keywords(tmp_path):
    kind = load_kind("file")
    sink = kind.build(out=str(tmp_path / "runs"))
    assert isinstance(sink, FileSink) and sink.out_dir == tmp_path / "runs" and sink.fsync
    assert kind.default_state_dir(out=str(tmp_path / "runs")) == tmp_path / "runs" / ".rose-sink"
    with pytest.raises(ValueError, match="needs --out DIR"):
        kind.build()
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        kind.build(out=str(tmp_path / "f"))


def test_mlflow_build_stays_offline_and_check_finds_the_refused_host(monkeypatch):
    pytest.importorskip("mlflow")
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, "-")  # so that the teardown restores what was there before
        monkeypatch.delenv(name)
    kind = load_kind("mlflow")
    uri = f"http://127.0.0.1:{free_port()}"
    sink = kind.build(tracking_uri=uri)  # nobody listens there: build does not ask
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    kind.environment()  # what the command line does before build
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    with pytest.raises(ValueError, match="connection refused"):
        kind.check(sink)


def test_the_parser_imports_no_backend_library():
    code = ("import sys; from cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('mlflow', 'clearml') if m in sys.modules))")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [["sink", "slack"], ["replay", "x.jsonl", "--into", "slack"]])
def test_state_with_a_tilde_is_one_place_for_checkpoint_and_journals(monkeypatch, tmp_path, command):
    """``--state=~/s`` reaches the program unexpanded; the checkpoint and the kind's
    journals must both go to $HOME/s, not one of them to ./~/s."""
    from cli.main import build_parser

    monkeypatch.setenv("HOME", str(tmp_path))
    args = build_parser().parse_args([*command, "--state=~/s"])
    kind = load_kind("slack")
    assert args.state == tmp_path / "s"
    assert kind.state_dir(args.state) == tmp_path / "s"

"""The event model's layout: one module per job, names found lazily, nothing loaded needlessly."""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rose.events as ev
from rose.events import (
    bodies,
    feed,
    identity,
    jsonl,
    msgpack_codec,
    schema,
    validation,
    values,
)

#: Bottom first: a module may import only modules before it.
LAYERS = [schema, values, identity, bodies, validation, msgpack_codec, jsonl, feed]

#: Every name ``rose.events`` offered as one module; users, docs and the tree import them.
PUBLIC_NAMES = (
    "SCHEMA_VERSION", "KINDS", "MAX_EVENT_BYTES", "JSON_EXPANSION", "MAX_JSON_LINE_BYTES",
    "MAX_DEPTH", "MAX_REPR_CHARS", "MAX_DECODE_DEPTH", "MAX_DECODE_ITEMS", "RUN_ID_RE",
    "EventError", "Repr", "to_plain", "plain_equal", "sanitize_run_name", "new_run_id",
    "check_run_id", "make_origin", "manifest_to_body", "config_snapshot",
    "config_from_snapshot", "state_to_body", "manifest_from_body", "state_from_body",
    "make_event", "start_event", "iteration_event", "stop_event", "validate", "pack", "unpack",
    "encode", "decode", "to_json_line", "json_line_is_small", "from_json_line", "EventFeed",
    "EventTracker", "STOP_REASONS", "CriterionManifest", "EventContext", "IterationState",
    "PipelineManifest", "TaskManifest", "TrackerBase", "delivering", "event_context",
)


def _loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_name_of_the_event_model_is_importable_from_the_package(name):
    value = getattr(ev, name)
    assert value is not None
    assert name in dir(ev)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ev.nope  # noqa: B018
    with pytest.raises(ImportError):
        from rose.events import nope  # noqa: F401


def _defined_in(module, lower: set[str]) -> list[str]:
    """The public functions, classes and constants ``module`` defines (not imports)."""
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if inspect.isfunction(value) or inspect.isclass(value):
            own = value.__module__ == module.__name__
        else:
            own = name.isupper() and name not in lower
        if own:
            names.append(name)
    return names


def test_each_public_name_of_a_module_is_in_the_package_index_under_that_module():
    for i, module in enumerate(LAYERS):
        lower = {name for m in LAYERS[:i] for name in vars(m)}
        for name in _defined_in(module, lower):
            assert getattr(ev, name) is getattr(module, name), f"{module.__name__}.{name}"


def test_the_modules_of_the_package_import_only_those_below_them():
    for i, module in enumerate(LAYERS):
        tree = ast.parse(Path(module.__file__).read_text())
        ours = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rose.events")
        }
        below = {m.__name__ for m in LAYERS[:i]}
        assert ours <= below, f"{module.__name__} imports {sorted(ours - below)}"


def test_the_codec_does_not_load_the_json_codec_or_the_tracker_feed():
    for code in ("import rose.events.msgpack_codec", "from rose.events import encode, decode"):
        loaded = _loaded_after(code)
        assert "rose.events.msgpack_codec" in loaded
        assert "rose.events.jsonl" not in loaded, code
        assert "rose.events.feed" not in loaded, code


def test_importing_the_package_or_a_daemon_name_loads_no_learner():
    loaded = _loaded_after("import rose, rose.events\nfrom rose.events import decode, to_json_line")
    assert not {"rose.learner", "rose.config", "radical.asyncflow", "pydantic"} & loaded
    assert "rose.events.feed" not in loaded
    bare = _loaded_after("import rose.events")
    assert not {m for m in bare if m.startswith("rose.events.")}


@pytest.mark.parametrize(
    "name, module",
    [
        ("Learner", "rose.learner"),
        ("LearnerConfig", "rose.config"),
        ("TaskConfig", "rose.config"),
        ("learner", "rose.learner"),
        ("al", "rose.al"),
        ("active_learner", "rose.al.active_learner"),
        ("selector", "rose.al.selector"),
        ("rl", "rose.rl"),
        ("reinforcement_learner", "rose.rl.reinforcement_learner"),
        ("uq", "rose.uq"),
        ("uq_learner", "rose.uq.uq_learner"),
        ("uq_active_learner", "rose.uq.uq_active_learner"),
        ("uq_scorer", "rose.uq.uq_scorer"),
    ],
)
def test_the_lazy_names_of_rose_come_from_their_modules(name, module):
    import rose

    value = getattr(rose, name)
    home = sys.modules[module]
    assert value is (home if inspect.ismodule(value) else getattr(home, name))
    assert name in dir(rose)


def test_rose_names_nothing_it_does_not_have():
    import rose

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        rose.nope  # noqa: B018

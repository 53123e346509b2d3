"""The event model: plain values, both codecs, validation, and driving trackers from events."""

from __future__ import annotations

import json
import math

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rose import CriterionManifest, IterationState, PipelineManifest, TaskManifest
from rose.events import (
    SCHEMA_VERSION,
    EventError,
    EventFeed,
    Repr,
    decode,
    encode,
    from_json_line,
    iteration_event,
    new_run_id,
    pack,
    plain_equal,
    start_event,
    stop_event,
    to_json_line,
    to_plain,
    unpack,
)
from rose.tracking import EventContext
from tests.conftest import Recorder

# ------------------------------------------------------------------ plain values

arrays = hnp.arrays(
    dtype=st.one_of(hnp.integer_dtypes(), hnp.floating_dtypes(), hnp.boolean_dtypes()),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.text(max_size=10).map(Repr),
    arrays,
)
plain_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(
                st.text(max_size=8), st.sampled_from(["__repr__", "__ndarray__", "__dict__"])
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


def strict_json(token):
    raise AssertionError(f"non-standard JSON token {token}")


@settings(max_examples=300, deadline=None)
@given(plain_values)
def test_msgpack_round_trip(value):
    assert plain_equal(unpack(pack(value)), value)


@settings(max_examples=300, deadline=None)
@given(plain_values)
def test_json_round_trip_through_an_event(value):
    ctx = EventContext(run="r1", seq=1, ts=1.5)
    event = iteration_event(ctx, IterationState(iteration=0, state={"x": value}))
    line = to_json_line(event)
    json.loads(line, parse_constant=strict_json)  # no NaN/Infinity tokens
    back = from_json_line(line)
    assert plain_equal(back, event)
    # and both codecs agree, which is what makes file sink output byte-identical
    assert to_json_line(decode(encode(event))) == line


def test_to_plain_reduces_python_and_numpy_values():
    class Thing:
        def __repr__(self):
            return "<thing>"

    out = to_plain(
        {
            "f32": np.float32(0.5),
            "i64": np.int64(7),
            "b": np.bool_(True),
            "t": (1, 2),
            "obj": Thing(),
            "huge": 2**70,
            3: "int key",
            "objarr": np.array([Thing()], dtype=object),
            "view": np.arange(6).reshape(2, 3)[:, 1],
        }
    )
    assert out["f32"] == 0.5 and type(out["f32"]) is float
    assert out["i64"] == 7 and type(out["i64"]) is int
    assert out["b"] is True
    assert out["t"] == [1, 2]
    assert out["obj"] == Repr("<thing>") and isinstance(out["obj"], Repr)
    assert isinstance(out["huge"], Repr)
    assert out["3"] == "int key"
    assert isinstance(out["objarr"], Repr)
    assert out["view"].tolist() == [1, 4] and out["view"].flags.c_contiguous


def test_to_plain_never_raises_on_hostile_objects():
    class BadRepr:
        def __repr__(self):
            raise RuntimeError("no")

    cyclic: list = []
    cyclic.append(cyclic)
    assert "unrepresentable" in to_plain(BadRepr())
    out = to_plain(cyclic)  # bounded by MAX_DEPTH instead of recursing forever
    assert isinstance(out, list)


# ------------------------------------------------------------------ events


def manifest() -> PipelineManifest:
    return PipelineManifest(
        learner_type="SequentialActiveLearner",
        tasks={
            "training": TaskManifest(
                "train", "m", False, decor_kwargs={"token": "SECRET"}, log_params={"k": 1}
            )
        },
        criterion=CriterionManifest("crit", "m", True, {}, {}, "mean_squared_error_mse", 0.01, "<"),
        parallel_count=None,
    )


def test_start_event_drops_decor_kwargs_and_rebuilds_manifest():
    event = start_event(EventContext("run-1", 0, 10.0, {"host": "h"}), manifest())
    assert "SECRET" not in to_json_line(event)
    assert event["v"] == SCHEMA_VERSION and event["origin"] == {"host": "h"}
    back = decode(encode(event))
    rec = Recorder()
    EventFeed(rec)(back)
    rebuilt = rec.calls[0][2]
    assert rebuilt["tasks"]["training"]["log_params"] == {"k": 1}
    assert rebuilt["criterion"]["threshold"] == 0.01


def test_feed_rebuilds_metric_history_per_learner():
    ctx = iter(EventContext("r", i, float(i)) for i in range(10))
    events = [start_event(next(ctx), manifest())]
    for it, lid, value in [(0, 0, 0.5), (0, 1, 0.4), (1, 0, 0.3), (1, 1, None), (2, 1, 0.1)]:
        events.append(
            iteration_event(
                next(ctx), IterationState(iteration=it, learner_id=lid, metric_value=value)
            )
        )
    events.append(
        stop_event(
            next(ctx),
            IterationState(iteration=2, learner_id=1, metric_value=0.1),
            "max_iter_reached",
        )
    )
    rec = Recorder()
    EventFeed(rec).feed(decode(encode(e)) for e in events)
    histories = [
        (c[2]["learner_id"], c[2]["metric_history"]) for c in rec.calls if c[0] == "iteration"
    ]
    assert histories == [(0, [0.5]), (1, [0.4]), (0, [0.5, 0.3]), (1, [0.4]), (1, [0.4, 0.1])]
    assert rec.calls[-1][2]["final_state"]["metric_history"] == [0.4, 0.1]
    assert [c[1] for c in rec.calls] == [("r", i, float(i)) for i in range(7)]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda e: e.update(v=2), "unsupported event schema version 2"),
        (lambda e: e.update(v=True), "schema version"),
        (lambda e: e.update(run="../../etc/x"), "invalid run id"),
        (lambda e: e.update(run=""), "invalid run id"),
        (lambda e: e.update(seq=-1), "invalid seq"),
        (lambda e: e.update(kind="explode"), "unknown event kind"),
        (lambda e: e.update(ts=float("nan")), "invalid ts"),
        (lambda e: e.update(body=[]), "body must be a map"),
        (lambda e: e["body"].update(iteration="3"), "'iteration' has type str"),
        (lambda e: e["body"].update(state=None), "'state' has type NoneType"),
        (lambda e: e["body"].update(learner_id=[1]), "learner_id"),
    ],
)
def test_decoder_rejects_bad_events_clearly(mutate, message):
    event = iteration_event(EventContext("r", 1, 1.0), IterationState(iteration=3))
    mutate(event)
    with pytest.raises(EventError, match=message):
        decode(encode(event))
    with pytest.raises(EventError, match=message):
        from_json_line(to_json_line(event))


def test_unknown_stop_reason_rejected():
    event = stop_event(EventContext("r", 1, 1.0), None, "criterion_met")
    event["body"]["reason"] = "because"
    with pytest.raises(EventError, match="unknown stop reason"):
        decode(encode(event))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"\x92\x01",  # truncated array
        msgpack.packb([1, 2, 3]),
        msgpack.packb({1: 2}),  # non-string map key
        msgpack.packb(msgpack.ExtType(1, msgpack.packb(["|O", [1], b"\0" * 8]))),  # object dtype
        msgpack.packb(msgpack.ExtType(1, msgpack.packb(["<f8", [2], b"\0" * 8]))),  # short data
        msgpack.packb(msgpack.ExtType(9, b"x")),
        b"\x91" * 100_000,  # deep nesting
    ],
)
def test_decoder_rejects_garbage_without_crashing(data):
    with pytest.raises(EventError):
        decode(data)


def test_oversized_input_rejected_before_parsing(monkeypatch):
    # Each codec reads the limit in its own module, so that is where it is lowered.
    from rose.events import jsonl, msgpack_codec

    monkeypatch.setattr(msgpack_codec, "MAX_EVENT_BYTES", 100)
    monkeypatch.setattr(jsonl, "MAX_JSON_LINE_BYTES", 900)
    with pytest.raises(EventError, match="exceeds"):
        msgpack_codec.decode(b"\x00" * 101)
    with pytest.raises(EventError, match="exceeds"):
        jsonl.from_json_line("x" * 901)


def test_json_marker_lookalikes_survive():
    value = {"__repr__": "not a repr", "nested": {"__float__": "nan"}}
    event = iteration_event(EventContext("r", 1, 1.0), IterationState(iteration=0, state=value))
    back = from_json_line(to_json_line(event))
    assert back["body"]["state"] == value
    assert not isinstance(back["body"]["state"]["__repr__"], Repr)


def test_non_finite_floats_are_strict_json():
    event = iteration_event(
        EventContext("r", 1, 1.0),
        IterationState(iteration=0, metric_value=math.inf, state={"x": math.nan}),
    )
    line = to_json_line(event)
    json.loads(line, parse_constant=strict_json)
    back = from_json_line(line)
    assert back["body"]["metric_value"] == math.inf and math.isnan(back["body"]["state"]["x"])


def test_run_ids():
    assert len(new_run_id()) == 32
    assert new_run_id("../../etc/passwd").startswith("etc-passwd-")
    assert len(new_run_id("...")) == 32  # nothing usable in the name → a plain uuid
    assert new_run_id("x" * 500).startswith("x" * 64 + "-")


def test_flat_dict_fast_path_keeps_the_rules():
    flat = {"a": 1, "b": 0.5, "c": "x", "d": None, "e": True}
    out = to_plain(flat)
    assert out == flat and out is not flat  # a copy: later changes to state do not leak
    assert isinstance(to_plain({"big": 2**70})["big"], Repr)  # beyond msgpack's int range
    assert to_plain({"f": np.float64(0.5)})["f"] == 0.5
    assert to_plain({1: 2}) == {"1": 2}


@pytest.mark.parametrize(
    "value",
    [
        [b""] * 5000,  # 2 bytes of msgpack, 17 of JSON each: the worst case
        [b"\x00"] * 5000,
        ["\x01" * 5000],  # control characters: \u0001
        [False] * 5000,
        [None] * 5000,
        [{}] * 5000,
        [float("nan")] * 5000,
        [Repr("")] * 5000,
        [np.zeros(0)] * 500,
        [{"__repr__": False}] * 2000,
        "\U0001f600" * 5000,
    ],
    ids=lambda v: type(v[0]).__name__ if isinstance(v, list) else "emoji",
)
def test_a_json_line_stays_within_its_derived_limit(value):
    """Whatever a store accepts (msgpack <= MAX_EVENT_BYTES), replay accepts as JSON."""
    import rose.events as ev

    event = iteration_event(
        EventContext("r", 1, 1.0), IterationState(iteration=0, state={"x": value})
    )
    packed, line = len(ev.encode(event)), len(ev.to_json_line(event).encode())
    assert line <= ev.JSON_EXPANSION * packed
    assert ev.MAX_JSON_LINE_BYTES >= ev.JSON_EXPANSION * ev.MAX_EVENT_BYTES


def test_a_states_config_snapshot_follows_its_config():
    """Made once per state for every tracker, and made again if the state's config changes."""
    from rose.config import LearnerConfig, TaskConfig
    from rose.events.bodies import state_to_body

    state = IterationState(iteration=1, current_config=LearnerConfig(training=TaskConfig(args=["a"])))
    first, second = state_to_body(state), state_to_body(state)
    assert first["current_config"] == second["current_config"] == {
        "training": {"args": ["a"], "kwargs": {}}
    }
    state.current_config = LearnerConfig(training={0: TaskConfig(args=["x"]), 1: TaskConfig(args=["b"])})
    assert state_to_body(state)["current_config"] == {"training": {"args": ["b"], "kwargs": {}}}
    state.iteration = 0
    assert state_to_body(state)["current_config"] == {"training": {"args": ["x"], "kwargs": {}}}

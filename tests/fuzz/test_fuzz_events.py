"""Fuzzing the event decoders: msgpack (`decode`), JSON lines (`from_json_line`) and the
JSON-line decoder fed bytes, as log files are read.

The property is the same for every input: a decoder returns a valid event or
raises EventError, nothing else, and its memory stays bounded whatever the
bytes claim.  tests/test_events.py holds the round trips and the named
rejections; this file throws volume and malice at the same functions.
"""

from __future__ import annotations

import json
import math
import tracemalloc

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rose.events import (
    KINDS,
    MAX_EVENT_BYTES,
    RUN_ID_RE,
    EventError,
    decode,
    encode,
    from_json_line,
    plain_equal,
    to_json_line,
    validate,
)

from .conftest import tried
from .strategies import (
    BOMB_NAMES,
    HOSTILE_RUN_IDS,
    anything,
    bomb,
    damaged_bytes,
    mutated_events,
    paths,
    replace,
    valid_events,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def from_json_line_bytes(text: str) -> dict:
    """The decoder's other entry point: a line as bytes, the way log files are read."""
    return from_json_line(text.encode("utf-8", errors="surrogatepass"))


def _accepts(decoder, data) -> dict | None:
    """The decoded event, or None when rejected with EventError; anything else fails."""
    try:
        event = decoder(data)
    except EventError:
        return None
    validate(event)  # whatever gets through is a valid event
    assert event["kind"] in KINDS and RUN_ID_RE.match(event["run"])
    return event


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    tried("decode: random bytes")
    _accepts(decode, data)


@FUZZ
@given(damaged_bytes())
def test_truncated_flipped_and_spliced_msgpack(data):
    tried("decode: truncated / flipped / spliced msgpack")
    _accepts(decode, data)


@FUZZ
@given(mutated_events())
def test_wrong_type_or_hostile_value_in_every_field(data):
    tried("decode: wrong type / hostile value / missing field")
    _accepts(decode, data)


@FUZZ
@given(valid_events(), st.sampled_from(HOSTILE_RUN_IDS))
def test_hostile_run_ids_are_refused_everywhere(event, run):
    tried("decode + JSON: hostile run ids")
    bad = replace(event, ("run",), run)
    assert _accepts(decode, msgpack.packb(bad, use_bin_type=True)) is None
    assert _accepts(from_json_line, json.dumps(bad, default=repr)) is None


@FUZZ
@given(valid_events(), st.sampled_from(["explode", "", "Start", "stop ", None, 3, ["start"]]))
def test_unknown_kinds_are_refused(event, kind):
    tried("decode: unknown kinds")
    bad = replace(event, ("kind",), kind)
    assert _accepts(decode, msgpack.packb(bad, use_bin_type=True)) is None


@FUZZ
@given(valid_events(), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_numbers(event, x):
    """NaN/inf: refused as a timestamp; kept exactly as metric values and state."""
    tried("decode + JSON: NaN/inf")
    assert _accepts(decode, encode(replace(event, ("ts",), x))) is None
    if event["kind"] == "iteration":
        body = dict(event["body"], metric_value=x, state={"v": x, "nested": [x]})
        ok = replace(event, ("body",), body)
        for got in (decode(encode(ok)), from_json_line(to_json_line(ok))):
            v = got["body"]["metric_value"]
            assert (math.isnan(v) and math.isnan(x)) or v == x


@FUZZ
@given(valid_events())
def test_valid_events_survive_both_codecs(event):
    tried("decode + JSON: valid hostile-content events")
    assert _accepts(decode, encode(event)) is not None
    line = to_json_line(event)
    a, b = _accepts(from_json_line, line), _accepts(from_json_line_bytes, line.rstrip("\n"))
    assert a is not None and b is not None
    # Equal as plain data (a NaN's payload bits are not kept by JSON).
    assert plain_equal(a, b) and plain_equal(a, decode(encode(event)))


@FUZZ
@given(
    st.one_of(
        st.text(max_size=400),
        st.builds(lambda v: json.dumps(v, default=repr), anything),
        st.builds(
            lambda e, p, v: json.dumps(replace(e, p, v), default=repr),
            *[valid_events(), st.just(("body",)), anything],
        ),
        st.builds(lambda e, cut: to_json_line(e)[:cut], valid_events(), st.integers(0, 300)),
        st.sampled_from(["NaN", "[NaN]", '{"ts": Infinity}', "-Infinity", "[" * 200, "{" * 5000]),
    )
)
def test_json_lines_as_str_and_bytes(text):
    tried("from_json_line (str and bytes): hostile lines")
    a = _accepts(from_json_line, text)
    b = _accepts(from_json_line_bytes, text)
    assert (a is None) == (b is None)


@settings(max_examples=60, deadline=None)
@given(valid_events(), st.data())
def test_every_field_path_with_every_kind_of_wrong_value(event, data):
    tried("decode + JSON: each field path x wrong value", len(paths(event)))
    for path in paths(event):
        value = data.draw(anything)
        bad = replace(event, path, value)
        _accepts(decode, msgpack.packb(bad, use_bin_type=True))
        try:
            line = json.dumps(bad, allow_nan=True, default=repr)
        except (ValueError, RecursionError):
            continue
        _accepts(from_json_line, line)


@pytest.mark.parametrize("name", BOMB_NAMES)
def test_decompression_bombs_stay_small(name):
    """Inputs at the size limit whose shape would cost gigabytes if decoded naively."""
    size = MAX_EVENT_BYTES - 64
    data = bomb(name, size)[:MAX_EVENT_BYTES]
    tracemalloc.start()
    try:
        _accepts(decode, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tried("decode: size-limit bombs (16 MB each)")
    assert peak < 128 * 1024 * 1024, f"{name}: decoding peaked at {peak / 1e6:.0f} MB"


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 3000 + "1" + "}" * 3000,
        "[" + "[]," * 2_000_000 + "[]]",
        '{"v":1,"run":"r","seq":0,"kind":"iteration","ts":1,"body":' + "[" * 90 + "]" * 90 + "}",
    ],
)
def test_json_bombs_stay_small(text):
    tracemalloc.start()
    try:
        assert _accepts(from_json_line, text) is None
        assert _accepts(from_json_line_bytes, text) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tried("from_json_line (str and bytes): JSON bombs")
    assert peak < 64 * 1024 * 1024

import logging

import pytest

from rose.logonce import RepeatLog


def test_first_of_each_key_is_logged_the_rest_counted(caplog):
    log = logging.getLogger("test.logonce")
    rl = RepeatLog(log)
    with caplog.at_level(logging.WARNING, logger="test.logonce"):
        logged = [rl("a", "problem %s", "a") for _ in range(3)] + [rl("b", "problem %s", "b")]
    assert logged == [True, False, False, True]
    assert [r.getMessage() for r in caplog.records] == ["problem a", "problem b"]
    assert (rl.count("a"), rl.count("b"), rl.total) == (3, 1, 4)


def test_limit(caplog):
    log = logging.getLogger("test.logonce2")
    rl = RepeatLog(log, limit=2)
    with caplog.at_level(logging.INFO, logger="test.logonce2"):
        for _ in range(5):
            rl("x", "x happened", level=logging.INFO)
    assert [r.getMessage() for r in caplog.records] == ["x happened", "x happened"]
    assert rl.count("x") == 5


def test_exc_info_carries_the_traceback(caplog):
    rl = RepeatLog(logging.getLogger("test.logonce3"))
    with caplog.at_level(logging.WARNING, logger="test.logonce3"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            rl("k", "failed", exc_info=True)
    assert caplog.records[0].exc_info[0] is RuntimeError


def test_bad_limit_is_refused():
    with pytest.raises(ValueError, match="limit"):
        RepeatLog(logging.getLogger("x"), limit=0)


def test_report_sums_up_what_went_unlogged_at_most_every_interval(caplog):
    rl = RepeatLog(logging.getLogger("test.logonce4"))
    with caplog.at_level(logging.WARNING, logger="test.logonce4"):
        rl("a", "first a")
        assert not rl.report("%d so far: %s", every_s=60, now=1000.0)  # all of it is logged
        rl("a", "first a")
        rl("b", "first b")
        assert rl.report("%d so far: %s", every_s=60, now=1000.0)
        rl("a", "first a")
        assert not rl.report("%d so far: %s", every_s=60, now=1030.0)  # too soon
        assert rl.report("%d so far: %s", every_s=60, now=1030.0, final=True)
        assert not rl.report("%d so far: %s", every_s=60, now=2000.0, final=True)  # nothing new
    assert [r.getMessage() for r in caplog.records] == [
        "first a",
        "first b",
        "3 so far: {'a': 2, 'b': 1}",
        "4 so far: {'a': 3, 'b': 1}",
    ]

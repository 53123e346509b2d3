"""The event → Slack message formatting, shared by SlackTracker and the Slack sink."""

from __future__ import annotations

import pytest

from rose.events import iteration_event, start_event, stop_event
from rose.integrations.slack_messages import RunMessages, SlackOptions, milestone_list
from rose.tracking import CriterionManifest, EventContext, IterationState, PipelineManifest

RUN = "demo-0123"
MANIFEST = PipelineManifest(
    learner_type="SequentialActiveLearner",
    criterion=CriterionManifest("check", "m", False, {}, {}, "mean_squared_error_mse", 0.01, ""),
)


def events(values, learner_ids=None, reason="criterion_met", parallel=None):
    manifest = PipelineManifest(
        learner_type=MANIFEST.learner_type, criterion=MANIFEST.criterion, parallel_count=parallel
    )
    out = [start_event(EventContext(RUN, 0, 1.0, {}), manifest)]
    ids = learner_ids or [None] * len(values)
    last = None
    for i, (v, lid) in enumerate(zip(values, ids, strict=True)):
        it = sum(1 for x in ids[:i] if x == lid)
        last = IterationState(it, "mean_squared_error_mse", v, 0.01, learner_id=lid)
        out.append(iteration_event(EventContext(RUN, i + 1, 2.0 + i), last))
    out.append(stop_event(EventContext(RUN, len(values) + 1, 99.0), last, reason))
    return out


def all_texts(evs, options=None):
    fmt = RunMessages(RUN, options or SlackOptions())
    return [t for e in evs for t in fmt.messages(e)]


def test_stop_message_is_the_seeds_with_the_run_id():
    assert all_texts(events([0.5, 0.1, 0.05, 0.009])) == [
        f"ROSE run {RUN} finished — 4 iterations, reason: criterion_met, final metric: 0.0090"
    ]


def test_stop_before_any_iteration_says_na():
    evs = [events([])[0], stop_event(EventContext(RUN, 1, 3.0), None, "error")]
    assert all_texts(evs) == [
        f"ROSE run {RUN} finished — 0 iterations, reason: error, final metric: N/A"
    ]


def test_parallel_runs_get_a_line_per_learner_with_names():
    evs = events([0.5, 0.4, 0.2, 0.3, 0.1], [0, 1, 0, 1, 0], "max_iter_reached", parallel=2)
    texts = all_texts(evs, SlackOptions(learner_names=("A", "B")))
    assert texts == [
        f"ROSE run {RUN} finished — reason: max_iter_reached\n"
        "• learner A: 3 iterations, final metric: 0.1000\n"
        "• learner B: 2 iterations, final metric: 0.3000"
    ]


def test_start_and_milestones_follow_the_criterion_direction():
    opts = SlackOptions(notify_start=True, milestones=(0.3, 0.06))
    texts = all_texts(events([0.5, 0.2, 0.25, 0.05, 0.009]), opts)
    assert texts == [
        f"ROSE run {RUN} started — SequentialActiveLearner, stops when mean_squared_error_mse < 0.01",
        f"ROSE run {RUN} mean_squared_error_mse = 0.2000 passed milestone 0.3 at iteration 1",
        f"ROSE run {RUN} mean_squared_error_mse = 0.0500 passed milestone 0.06 at iteration 3",
        f"ROSE run {RUN} finished — 5 iterations, reason: criterion_met, final metric: 0.0090",
    ]


def test_state_round_trips_so_a_restart_formats_the_same():
    opts = SlackOptions(milestones=(0.3, 0.06), learner_names=("A", "B"))
    evs = events([0.5, 0.2, 0.25, 0.05, 0.009], [0, 1, 0, 1, 0], parallel=2)
    whole = all_texts(evs, opts)
    for cut in range(len(evs)):
        first = RunMessages(RUN, opts)
        texts = [t for e in evs[:cut] for t in first.messages(e)]
        second = RunMessages.from_dict(RUN, opts, first.to_dict())
        texts += [t for e in evs[cut:] for t in second.messages(e)]
        assert texts == whole


def test_milestone_list_parses_and_rejects():
    assert milestone_list("0.1, 0.05") == (0.1, 0.05)
    assert milestone_list(None) == ()
    with pytest.raises(ValueError, match="numbers"):
        milestone_list("0.1,abc")
    with pytest.raises(ValueError, match="finite"):
        SlackOptions(milestones=(float("nan"),))

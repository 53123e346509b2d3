"""UQ scorers against values worked out by hand, and the UQ metric names in rose.metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rose import metrics
from rose.uq import uq_scorer as uq
from rose.uq.uq_scorer import UQ_REGISTRY, UQScorer, register_uq

LN2 = math.log(2)

# Two ensemble members (samples), three instances, two classes:
#   instance 0: members certain but disagree      -> mean (.5, .5)
#   instance 1: both members unsure in the same way -> mean (.5, .5)
#   instance 2: both lean to class 0              -> mean (.8, .2)
PROBS = np.array(
    [
        [[1.0, 0.0], [0.5, 0.5], [0.9, 0.1]],
        [[0.0, 1.0], [0.5, 0.5], [0.7, 0.3]],
    ]
)
H_08 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))  # 0.5004024...
H_09 = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
H_07 = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))

# Three regression samples, two instances: [1, 3, 5] and [2, 2, 2].
VALUES = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])


def test_predictive_entropy():
    assert uq.predictive_entropy(PROBS) == pytest.approx([LN2, LN2, H_08])


def test_mutual_information_separates_disagreement_from_shared_doubt():
    # H(mean) - mean(H(member)): 0 log 0 counts as 0 for the certain members
    expected = [LN2 - 0.0, LN2 - LN2, H_08 - (H_09 + H_07) / 2]
    assert uq.mutual_information(PROBS) == pytest.approx(expected)
    assert expected[0] > 0 and expected[1] == 0


def test_variation_ratio_and_margin():
    # votes: instance 0 -> (0, 1): the mode has 1 of 2 votes; ties go to class 0 (argmax)
    assert uq.variation_ratio(PROBS) == pytest.approx([0.5, 0.0, 0.0])
    assert uq.margin(PROBS) == pytest.approx([0.0, 0.0, 0.6])


def test_regression_scorers():
    assert uq.predictive_variance(VALUES) == pytest.approx([8 / 3, 0.0])
    assert uq.predictive_std(VALUES) == pytest.approx([math.sqrt(8 / 3), 0.0])
    # linear percentiles of [1, 3, 5]: 25th = 2, 75th = 4
    assert uq.predictive_interval_width(VALUES, coverage=0.5) == pytest.approx([2.0, 0.0])
    # a trailing axis of 1 (sklearn-style column outputs) is accepted
    assert uq.predictive_variance(VALUES[..., None]) == pytest.approx([8 / 3, 0.0])


def test_negative_log_likelihood():
    y = np.array([3.0, 2.0])
    var0 = 8 / 3
    nll = uq.negative_log_likelihood(VALUES, y_true=y)
    assert nll[0] == pytest.approx(0.5 * math.log(2 * math.pi * var0))  # y at the mean
    labels = np.array([1, 0, 0])
    got = uq.negative_log_likelihood(PROBS, y_true=labels, task_type="classification")
    assert got == pytest.approx([LN2, LN2, -math.log(0.8)])
    with pytest.raises(ValueError, match="needs y_true"):
        uq.negative_log_likelihood(VALUES)


def test_score_and_selection():
    assert uq.score(metrics.PREDICTIVE_VARIANCE, VALUES) == pytest.approx(4 / 3)
    idx, s = uq.select_top_uncertain(metrics.PREDICTIVE_ENTROPY, PROBS, k=2)
    assert list(idx) == [0, 1] and s == pytest.approx([LN2, LN2])  # ties keep order
    # for the margin a *small* score is uncertain
    idx, s = uq.select_top_uncertain(metrics.MARGIN, PROBS, k=1)
    assert list(idx) == [0] and s == pytest.approx([0.0])
    idx, _ = uq.select_top_uncertain(metrics.PREDICTIVE_VARIANCE, VALUES, k=5)
    assert list(idx) == [0, 1]


def test_stacking_lists_from_tasks_and_shape_errors():
    per_model = [[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]]  # what prediction tasks return
    assert uq.predictive_variance(per_model) == pytest.approx([8 / 3, 0.0])
    with pytest.raises(ValueError, match="different shapes"):
        uq.predictive_variance([[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="n_classes"):
        uq.predictive_entropy(VALUES)
    with pytest.raises(ValueError, match="no UQ scorer named 'nope'"):
        uq.score("nope", VALUES)


def test_uq_scorer_class_and_custom_metrics():
    reg = UQScorer("regression")
    out = reg.compute_uncertainty(VALUES)
    assert set(out) >= {"predictive_variance", "predictive_std", "predictive_interval_width"}
    assert "predictive_entropy" not in out and "negative_log_likelihood" not in out
    assert reg.select_top_uncertain(VALUES, k=1)[0].tolist() == [0]
    cls = UQScorer("classification")
    assert cls.default_metric == metrics.PREDICTIVE_ENTROPY
    assert set(cls.compute_uncertainty(PROBS, y_true=[1, 0, 0])) >= {
        "predictive_entropy",
        "mutual_information",
        "negative_log_likelihood",
    }
    with pytest.raises(ValueError, match="task_type"):
        UQScorer("ranking")

    @register_uq("test_range")
    def value_range(predictions):  # one parameter: called with the predictions only
        v = np.asarray(predictions)
        return v.max(axis=0) - v.min(axis=0)

    try:
        assert uq.score("test_range", VALUES) == pytest.approx(2.0)
    finally:
        UQ_REGISTRY.pop("test_range")


def test_uq_scorer_methods_match_the_registry():
    cls, reg = UQScorer("classification"), UQScorer("regression")
    assert cls.predictive_entropy(PROBS) == pytest.approx([LN2, LN2, H_08])
    assert cls.mutual_information(PROBS) == pytest.approx(uq.mutual_information(PROBS))
    assert cls.variation_ratio(PROBS) == pytest.approx([0.5, 0.0, 0.0])
    assert cls.margin(PROBS) == pytest.approx([0.0, 0.0, 0.6])
    assert reg.predictive_variance(VALUES) == pytest.approx([8 / 3, 0.0])
    assert reg.predictive_interval_width(VALUES, quantile=0.5) == pytest.approx([2.0, 0.0])
    assert reg.predictive_interval_width(VALUES) == pytest.approx([3.8, 0.0])  # 95 %: 1.1 .. 4.9
    assert cls.negative_log_likelihood(PROBS, [1, 0, 0]) == pytest.approx(
        [LN2, LN2, -math.log(0.8)]
    )
    # the registry holds functions called as f(scorer, mc_preds)
    assert UQ_REGISTRY[metrics.PREDICTIVE_ENTROPY](cls, PROBS) == pytest.approx([LN2, LN2, H_08])
    # validate_inputs (also spelled _validate_inputs) squeezes stray axes of 1
    preds, y = reg._validate_inputs(VALUES[..., None], [[3.0], [2.0]])
    assert preds.shape == (3, 2) and y.shape == (2,)
    with pytest.raises(ValueError, match="n_classes"):
        cls.validate_inputs(VALUES)


def test_custom_metric_gets_the_scorer_first_and_drives_selection():
    seen = []

    @register_uq(metrics.CUSTOM_UQ)
    def one_minus_max(self, mc_preds):
        seen.append(self)
        mc_preds, _ = self._validate_inputs(mc_preds)
        return 1.0 - mc_preds.mean(axis=0).max(axis=1)

    try:
        scorer = UQScorer(task_type="classification")
        idx, s = scorer.select_top_uncertain(PROBS, k=2, metric=metrics.CUSTOM_UQ)
        assert seen and seen[0] is scorer
        assert list(idx) == [0, 1] and s == pytest.approx([0.5, 0.5])
        assert metrics.CUSTOM_UQ in scorer.compute_uncertainty(PROBS)
        assert metrics.resolve_operator(metrics.CUSTOM_UQ) == "<"
    finally:
        UQ_REGISTRY.pop(metrics.CUSTOM_UQ)


def test_select_top_uncertain_upstream_signature():
    cls = UQScorer("classification")
    # positional (mc_preds, k, metric, y_true), as ROSE 0.3 scripts call it
    idx, s = cls.select_top_uncertain(PROBS, 1, metrics.NEGATIVE_LOG_LIKELIHOOD, [0, 0, 1])
    assert list(idx) == [2] and s == pytest.approx([-math.log(0.2)])
    # margin: the *smallest* margins are the uncertain ones (instance 2 is the confident one)
    idx, _ = cls.select_top_uncertain(mc_preds=PROBS, k=2, metric=metrics.MARGIN)
    assert 2 not in idx
    with pytest.raises(ValueError, match="needs y_true"):
        cls.select_top_uncertain(PROBS, 1, metrics.NEGATIVE_LOG_LIKELIHOOD)


def test_uq_metric_names_carry_their_operators():
    for name in metrics.UQ_METRICS:
        assert name in UQ_REGISTRY, name
        assert metrics.get_operator(name) in metrics.COMPARATORS
    assert metrics.resolve_operator(metrics.PREDICTIVE_ENTROPY) == "<"
    assert metrics.resolve_operator(metrics.PREDICTIVE_VARIANCE) == "<"
    assert metrics.resolve_operator(metrics.MARGIN) == ">"
    assert metrics.PREDICTIVE_ENTROPY == "predictive_entropy"


def test_compute_uncertainty_raises_what_a_metric_raises():
    @register_uq("test_broken")
    def broken(self, mc_preds):
        raise RuntimeError("broken metric")

    try:
        with pytest.raises(RuntimeError, match="broken metric"):  # not an "Error: ..." string
            UQScorer("regression").compute_uncertainty(VALUES)
    finally:
        UQ_REGISTRY.pop("test_broken")

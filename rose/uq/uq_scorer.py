"""UQ scorers: the ``rose.metrics`` UQ metrics computed from ensemble predictions.

Predictions are stacked along a first *sample* axis, one entry per model and
prediction (what a UQ learner's prediction tasks return):

- classification: class probabilities ``[n_samples, n_instances, n_classes]``;
- regression: values ``[n_samples, n_instances]`` (a trailing axis of 1 is dropped).

Each scorer returns one score per instance.  A scorer is a function
``f(scorer, mc_preds)`` whose first argument is the :class:`UQScorer` asking
(``negative_log_likelihood`` also gets ``y_true``); the built-in ones are the
``UQScorer`` methods of the same name, and :func:`register_uq` adds custom ones.
:func:`score` reduces scores to the single number an uncertainty task reports
to the learner, and :func:`select_top_uncertain` picks the ``query_size`` most
uncertain instances.  Logarithms are natural; ``0·log 0`` counts as 0.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rose import metrics

Scorer = Callable[..., np.ndarray]

#: Scorers by metric name, each called as ``f(scorer, mc_preds)``; :func:`register_uq` adds
#: custom ones (``metrics.CUSTOM_UQ`` is the conventional name of a single custom metric).
UQ_REGISTRY: dict[str, Scorer] = {}

#: Metrics for which a *larger* score means *more* confidence (so the most
#: uncertain instances are the smallest scores).
_CONFIDENCE_METRICS = {metrics.MARGIN}

_CLASSIFICATION = "classification"
_REGRESSION = "regression"


def register_uq(name: str, *, higher_is_confident: bool = False) -> Callable[[Scorer], Scorer]:
    """Register ``f(scorer, mc_preds) -> per-instance scores`` as the UQ metric ``name``.

    ``scorer`` is the :class:`UQScorer` computing it (its ``validate_inputs``
    checks and reshapes ``mc_preds``).  A function of one positional parameter
    is called as ``f(mc_preds)``.  ``higher_is_confident=True`` marks a metric
    whose *small* scores are the uncertain ones (like ``margin``), so that
    ``select_top_uncertain`` picks the smallest.
    """

    def register(func: Scorer) -> Scorer:
        UQ_REGISTRY[name] = func
        if higher_is_confident:
            _CONFIDENCE_METRICS.add(name)
        else:
            _CONFIDENCE_METRICS.discard(name)
        return func

    return register


def stack_predictions(predictions: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Stack per-model predictions (arrays or nested lists) into one float array."""
    if isinstance(predictions, np.ndarray):
        return predictions.astype(float, copy=False)
    arrays = [np.asarray(p, dtype=float) for p in predictions]
    if not arrays:
        raise ValueError("no predictions to score")
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise ValueError(f"predictions have different shapes: {shapes}")
    return np.stack(arrays)


def _probabilities(preds: Any) -> np.ndarray:
    p = stack_predictions(preds)
    if p.ndim != 3:
        squeezed = np.squeeze(p)
        if squeezed.ndim != 3:
            raise ValueError(
                "classification predictions must be [n_samples, n_instances, n_classes], "
                f"got shape {p.shape}"
            )
        p = squeezed
    return p


def _values(preds: Any) -> np.ndarray:
    v = stack_predictions(preds)
    if v.ndim == 3 and v.shape[-1] == 1:
        v = v[..., 0]
    if v.ndim != 2:
        raise ValueError(
            f"regression predictions must be [n_samples, n_instances], got shape {v.shape}"
        )
    return v


def _entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    safe = np.where(p > 0, p, 1.0)
    return -np.sum(np.where(p > 0, p * np.log(safe), 0.0), axis=axis)


# ---------------------------------------------------------------- the scorers as functions


def predictive_entropy(predictions: Any) -> np.ndarray:
    """Entropy of the mean class distribution: total uncertainty."""
    return _entropy(_probabilities(predictions).mean(axis=0))


def mutual_information(predictions: Any) -> np.ndarray:
    """Predictive entropy minus the mean per-sample entropy: disagreement between members."""
    p = _probabilities(predictions)
    return _entropy(p.mean(axis=0)) - _entropy(p).mean(axis=0)


def variation_ratio(predictions: Any) -> np.ndarray:
    """1 − (share of samples voting for the most voted class)."""
    p = _probabilities(predictions)
    votes = p.argmax(axis=2)  # [n_samples, n_instances]
    counts = np.stack([(votes == c).sum(axis=0) for c in range(p.shape[2])])
    return 1.0 - counts.max(axis=0) / p.shape[0]


def margin(predictions: Any) -> np.ndarray:
    """Gap between the two most probable classes of the mean distribution (small = unsure)."""
    mean = np.sort(_probabilities(predictions).mean(axis=0), axis=1)
    if mean.shape[1] < 2:
        raise ValueError("margin needs at least two classes")
    return mean[:, -1] - mean[:, -2]


def predictive_variance(predictions: Any) -> np.ndarray:
    """Variance across samples (population variance, ddof=0)."""
    return _values(predictions).var(axis=0)


def predictive_std(predictions: Any) -> np.ndarray:
    return _values(predictions).std(axis=0)


def predictive_interval_width(predictions: Any, coverage: float = 0.95) -> np.ndarray:
    """Width of the central ``coverage`` interval of the samples (linear percentiles)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    v = _values(predictions)
    lo, hi = np.percentile(v, [50 * (1 - coverage), 50 * (1 + coverage)], axis=0)
    return hi - lo


def negative_log_likelihood(
    predictions: Any, y_true: Any = None, task_type: str = _REGRESSION, eps: float = 1e-12
) -> np.ndarray:
    """−log p(y_true): Gaussian from the samples' mean and variance, or the mean class probability."""
    if y_true is None:
        raise ValueError("negative_log_likelihood needs y_true")
    y = np.asarray(y_true)
    if task_type == _CLASSIFICATION:
        p = _probabilities(predictions).mean(axis=0)
        return -np.log(p[np.arange(len(y)), y.astype(int)] + eps)
    v = _values(predictions)
    mean, var = v.mean(axis=0), v.var(axis=0) + eps
    return 0.5 * np.log(2 * np.pi * var) + 0.5 * (y.astype(float) - mean) ** 2 / var


# ---------------------------------------------------------------- the scorer class


class UQScorer:
    """All UQ metrics for one task type (``"classification"`` or ``"regression"``)."""

    def __init__(self, task_type: str = _REGRESSION) -> None:
        if task_type not in (_CLASSIFICATION, _REGRESSION):
            raise ValueError(
                f"task_type must be 'classification' or 'regression', not {task_type!r}"
            )
        self.task_type = task_type

    @property
    def default_metric(self) -> str:
        return (
            metrics.PREDICTIVE_ENTROPY
            if self.task_type == _CLASSIFICATION
            else metrics.PREDICTIVE_VARIANCE
        )

    def validate_inputs(self, mc_preds: Any, y_true: Any = None) -> tuple[np.ndarray, Any]:
        """``mc_preds`` as a float array of this task type's shape, and ``y_true`` as an array.

        Classification: ``[n_samples, n_instances, n_classes]``; regression:
        ``[n_samples, n_instances]`` (a trailing axis of 1 is dropped).
        """
        preds = _probabilities(mc_preds) if self.task_type == _CLASSIFICATION else _values(mc_preds)
        if y_true is not None:
            y_true = np.asarray(y_true)
            if y_true.ndim > (2 if self.task_type == _CLASSIFICATION else 1):
                y_true = np.squeeze(y_true)
        return preds, y_true

    # the name custom metrics written for ROSE 0.3 call
    _validate_inputs = validate_inputs

    # ---- classification
    def predictive_entropy(self, mc_preds: Any) -> np.ndarray:
        """Entropy of the mean class distribution: total uncertainty."""
        return predictive_entropy(mc_preds)

    def mutual_information(self, mc_preds: Any) -> np.ndarray:
        """Predictive entropy minus the mean per-sample entropy: disagreement between members."""
        return mutual_information(mc_preds)

    def variation_ratio(self, mc_preds: Any) -> np.ndarray:
        """1 − (share of samples voting for the most voted class)."""
        return variation_ratio(mc_preds)

    def margin(self, mc_preds: Any) -> np.ndarray:
        """Gap between the two most probable mean classes: *small* means uncertain."""
        return margin(mc_preds)

    # ---- regression
    def predictive_variance(self, mc_preds: Any) -> np.ndarray:
        """Variance across samples (population variance, ddof=0)."""
        return predictive_variance(mc_preds)

    def predictive_std(self, mc_preds: Any) -> np.ndarray:
        return predictive_std(mc_preds)

    def predictive_interval_width(self, mc_preds: Any, quantile: float = 0.95) -> np.ndarray:
        """Width of the central ``quantile`` interval of the samples."""
        return predictive_interval_width(mc_preds, coverage=quantile)

    def negative_log_likelihood(self, mc_preds: Any, y_true: Any) -> np.ndarray:
        """−log p(y_true) under this task type's predictive distribution."""
        return negative_log_likelihood(mc_preds, y_true=y_true, task_type=self.task_type)

    # ---- over the registry
    def _accepts(self, name: str) -> bool:
        classification = {
            metrics.PREDICTIVE_ENTROPY,
            metrics.MUTUAL_INFORMATION,
            metrics.VARIATION_RATIO,
            metrics.MARGIN,
        }
        regression = {
            metrics.PREDICTIVE_VARIANCE,
            metrics.PREDICTIVE_STD,
            metrics.PREDICTIVE_INTERVAL_WIDTH,
        }
        wrong = regression if self.task_type == _CLASSIFICATION else classification
        return name not in wrong

    def scores(self, metric: str, mc_preds: Any, y_true: Any = None, **kwargs: Any) -> np.ndarray:
        """Per-instance scores of the registered metric ``metric``."""
        try:
            func = UQ_REGISTRY[metric]
        except KeyError:
            raise ValueError(
                f"no UQ scorer named {metric!r}; known: {', '.join(sorted(UQ_REGISTRY))} "
                "(add one with @register_uq(name))"
            ) from None
        args: tuple = (mc_preds,)
        if metric == metrics.NEGATIVE_LOG_LIKELIHOOD:
            if y_true is None:
                raise ValueError("negative_log_likelihood needs y_true")
            args = (mc_preds, y_true)
        if _takes_scorer(func):
            args = (self, *args)
        return np.asarray(func(*args, **kwargs), dtype=float)

    def compute_uncertainty(self, mc_preds: Any, y_true: Any = None) -> dict[str, np.ndarray]:
        """Per-instance scores of every registered metric that fits this task type.

        ``negative_log_likelihood`` only when ``y_true`` is given.
        """
        out: dict[str, np.ndarray] = {}
        for name in list(UQ_REGISTRY):
            if not self._accepts(name):
                continue
            if name == metrics.NEGATIVE_LOG_LIKELIHOOD and y_true is None:
                continue
            out[name] = self.scores(name, mc_preds, y_true=y_true)
        return out

    def select_top_uncertain(
        self,
        mc_preds: Any,
        k: int = 10,
        metric: str | None = None,
        y_true: Any = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Indices and scores of the ``k`` most uncertain instances, most uncertain first.

        The most uncertain are the largest scores, except for metrics where a
        small score means uncertain (``margin``, custom ones registered with
        ``higher_is_confident=True``): there the smallest.  Ties keep instance
        order, so the choice is reproducible.
        """
        metric = metric or self.default_metric
        s = self.scores(metric, mc_preds, y_true=y_true, **kwargs)
        key = s if metric in _CONFIDENCE_METRICS else -s
        order = np.argsort(key, kind="stable")[: max(int(k), 0)]
        return order, s[order]


for _name in (
    metrics.PREDICTIVE_ENTROPY,
    metrics.MUTUAL_INFORMATION,
    metrics.VARIATION_RATIO,
    metrics.MARGIN,
    metrics.PREDICTIVE_VARIANCE,
    metrics.PREDICTIVE_STD,
    metrics.PREDICTIVE_INTERVAL_WIDTH,
    metrics.NEGATIVE_LOG_LIKELIHOOD,
):
    register_uq(_name, higher_is_confident=_name == metrics.MARGIN)(getattr(UQScorer, _name))


def _takes_scorer(func: Callable) -> bool:
    """Whether ``func`` takes the scorer first (two or more positional parameters, or *args)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in positional)


# ---------------------------------------------------------------- helpers by metric name


def _infer_task_type(predictions: Any) -> str:
    p = stack_predictions(predictions)
    return _CLASSIFICATION if p.ndim == 3 and p.shape[-1] > 1 else _REGRESSION


def scores(
    metric_name: str, predictions: Any, task_type: str | None = None, **kwargs: Any
) -> np.ndarray:
    """Per-instance scores of ``metric_name`` (a registered scorer).

    ``task_type`` defaults to what the predictions' shape says: classification
    for ``[n_samples, n_instances, n_classes]`` with more than one class.
    """
    scorer = UQScorer(task_type or _infer_task_type(predictions))
    return scorer.scores(metric_name, predictions, **kwargs)


def score(metric_name: str, predictions: Any, **kwargs: Any) -> float:
    """The mean per-instance score: the number an uncertainty task reports."""
    return float(np.mean(scores(metric_name, predictions, **kwargs)))


def select_top_uncertain(
    metric_name: str, predictions: Any, k: int, task_type: str | None = None, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """:meth:`UQScorer.select_top_uncertain` by metric name first (this project's helper)."""
    scorer = UQScorer(task_type or _infer_task_type(predictions))
    return scorer.select_top_uncertain(predictions, k, metric_name, **kwargs)

"""UQ scorers: the ``rose.metrics`` UQ metrics computed from ensemble predictions.

Predictions are stacked along a first *sample* axis, one entry per model and
prediction (what a UQ learner's prediction tasks return):

- classification: class probabilities ``[n_samples, n_instances, n_classes]``;
- regression: values ``[n_samples, n_instances]`` (a trailing axis of 1 is dropped).

Each scorer returns one score per instance; :func:`score` reduces them to the
single number an uncertainty task reports to the learner, and
:func:`select_top_uncertain` picks the ``query_size`` most uncertain instances.
Logarithms are natural; ``0·log 0`` counts as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rose import metrics

Scorer = Callable[..., np.ndarray]

#: Scorers by metric name; :func:`register_uq` adds custom ones.
UQ_REGISTRY: dict[str, Scorer] = {}

#: Metrics for which a *larger* score means *more* confidence (so the most
#: uncertain instances are the smallest scores).
_CONFIDENCE_METRICS = {metrics.MARGIN}


def register_uq(name: str, *, higher_is_confident: bool = False) -> Callable[[Scorer], Scorer]:
    """Register a scorer ``f(predictions, **kw) -> per-instance scores`` under ``name``."""

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
        raise ValueError(
            "classification predictions must be [n_samples, n_instances, n_classes], "
            f"got shape {p.shape}"
        )
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


# ---------------------------------------------------------------- classification


@register_uq(metrics.PREDICTIVE_ENTROPY)
def predictive_entropy(predictions: Any) -> np.ndarray:
    """Entropy of the mean class distribution: total uncertainty."""
    return _entropy(_probabilities(predictions).mean(axis=0))


@register_uq(metrics.MUTUAL_INFORMATION)
def mutual_information(predictions: Any) -> np.ndarray:
    """Predictive entropy minus the mean per-sample entropy: disagreement between members."""
    p = _probabilities(predictions)
    return _entropy(p.mean(axis=0)) - _entropy(p).mean(axis=0)


@register_uq(metrics.VARIATION_RATIO)
def variation_ratio(predictions: Any) -> np.ndarray:
    """1 − (share of samples voting for the most voted class)."""
    p = _probabilities(predictions)
    votes = p.argmax(axis=2)  # [n_samples, n_instances]
    counts = np.stack([(votes == c).sum(axis=0) for c in range(p.shape[2])])
    return 1.0 - counts.max(axis=0) / p.shape[0]


@register_uq(metrics.MARGIN, higher_is_confident=True)
def margin(predictions: Any) -> np.ndarray:
    """Gap between the two most probable classes of the mean distribution (small = unsure)."""
    mean = np.sort(_probabilities(predictions).mean(axis=0), axis=1)
    if mean.shape[1] < 2:
        raise ValueError("margin needs at least two classes")
    return mean[:, -1] - mean[:, -2]


# ---------------------------------------------------------------- regression


@register_uq(metrics.PREDICTIVE_VARIANCE)
def predictive_variance(predictions: Any) -> np.ndarray:
    """Variance across samples (population variance, ddof=0)."""
    return _values(predictions).var(axis=0)


@register_uq(metrics.PREDICTIVE_STD)
def predictive_std(predictions: Any) -> np.ndarray:
    return _values(predictions).std(axis=0)


@register_uq(metrics.PREDICTIVE_INTERVAL_WIDTH)
def predictive_interval_width(predictions: Any, coverage: float = 0.95) -> np.ndarray:
    """Width of the central ``coverage`` interval of the samples (linear percentiles)."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    v = _values(predictions)
    lo, hi = np.percentile(v, [50 * (1 - coverage), 50 * (1 + coverage)], axis=0)
    return hi - lo


@register_uq(metrics.NEGATIVE_LOG_LIKELIHOOD)
def negative_log_likelihood(
    predictions: Any, y_true: Any = None, task_type: str = "regression", eps: float = 1e-12
) -> np.ndarray:
    """−log p(y_true): Gaussian from the samples' mean and variance, or the mean class probability."""
    if y_true is None:
        raise ValueError("negative_log_likelihood needs y_true")
    y = np.asarray(y_true)
    if task_type == "classification":
        p = _probabilities(predictions).mean(axis=0)
        return -np.log(p[np.arange(len(y)), y.astype(int)] + eps)
    v = _values(predictions)
    mean, var = v.mean(axis=0), v.var(axis=0) + eps
    return 0.5 * np.log(2 * np.pi * var) + 0.5 * (y.astype(float) - mean) ** 2 / var


# ---------------------------------------------------------------- helpers


def scores(metric_name: str, predictions: Any, **kwargs: Any) -> np.ndarray:
    """Per-instance scores of ``metric_name`` (a registered scorer)."""
    try:
        func = UQ_REGISTRY[metric_name]
    except KeyError:
        raise ValueError(
            f"no UQ scorer named {metric_name!r}; known: {', '.join(sorted(UQ_REGISTRY))} "
            "(add one with @register_uq(name))"
        ) from None
    return np.asarray(func(predictions, **kwargs), dtype=float)


def score(metric_name: str, predictions: Any, **kwargs: Any) -> float:
    """The mean per-instance score: the number an uncertainty task reports."""
    return float(np.mean(scores(metric_name, predictions, **kwargs)))


def select_top_uncertain(
    metric_name: str, predictions: Any, k: int, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the ``k`` most uncertain instances, most uncertain first.

    Ties keep instance order, so the choice is reproducible.
    """
    s = scores(metric_name, predictions, **kwargs)
    key = s if metric_name in _CONFIDENCE_METRICS else -s
    order = np.argsort(key, kind="stable")[: max(int(k), 0)]
    return order, s[order]


class UQScorer:
    """All scorers for one task type (``"classification"`` or ``"regression"``)."""

    def __init__(self, task_type: str = "regression") -> None:
        if task_type not in ("classification", "regression"):
            raise ValueError(
                f"task_type must be 'classification' or 'regression', not {task_type!r}"
            )
        self.task_type = task_type

    @property
    def default_metric(self) -> str:
        return (
            metrics.PREDICTIVE_ENTROPY
            if self.task_type == "classification"
            else metrics.PREDICTIVE_VARIANCE
        )

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
        wrong = regression if self.task_type == "classification" else classification
        return name not in wrong

    def compute_uncertainty(self, predictions: Any, y_true: Any = None) -> dict[str, np.ndarray]:
        """Per-instance scores of every registered metric that fits this task type."""
        out: dict[str, np.ndarray] = {}
        for name in UQ_REGISTRY:
            if not self._accepts(name):
                continue
            if name == metrics.NEGATIVE_LOG_LIKELIHOOD:
                if y_true is None:
                    continue
                out[name] = scores(name, predictions, y_true=y_true, task_type=self.task_type)
            else:
                out[name] = scores(name, predictions)
        return out

    def select_top_uncertain(
        self, predictions: Any, k: int = 10, metric: str | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        return select_top_uncertain(metric or self.default_metric, predictions, k, **kwargs)

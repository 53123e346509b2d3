"""Known metric names and the comparison each one implies.

A stop criterion on a known metric needs no operator: ``MEAN_SQUARED_ERROR_MSE``
stops when the value drops below the threshold, ``MODEL_ACCURACY`` when it
reaches it.  Custom metric names must say their operator.
"""

from __future__ import annotations

import operator as _op
from collections.abc import Callable

LESS_THAN_THRESHOLD = "<"
GREATER_THAN_THRESHOLD = ">"
EQUAL_TO_THRESHOLD = "=="
LESS_THAN_OR_EQUAL_TO_THRESHOLD = "<="
GREATER_THAN_OR_EQUAL_TO_THRESHOLD = ">="

COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    "<": _op.lt,
    ">": _op.gt,
    "==": _op.eq,
    "=": _op.eq,
    "<=": _op.le,
    ">=": _op.ge,
}

MODEL_ACCURACY = "model_accuracy"
QUERY_EFFICIENCY = "query_efficiency"
LABELING_COST = "labeling_cost"
DIVERSITY_OF_SELECTED_SAMPLES = "diversity_of_selected_samples"
UNCERTAINTY = "uncertainty"
QUERY_REDUCTION = "query_reduction"
AREA_UNDER_LEARNING_CURVE_AUC = "area_under_learning_curve_auc"
EXPECTED_MODEL_IMPROVEMENT_EMI = "expected_model_improvement_emi"
SAMPLING_BIAS = "sampling_bias"
PREDICTION_CONFIDENCE = "prediction_confidence"
CLASS_DISTRIBUTION_SHIFT = "class_distribution_shift"
CUMULATIVE_ERROR_REDUCTION = "cumulative_error_reduction"
QUERY_SELECTION_STRATEGY_PERFORMANCE = "query_selection_strategy_performance"
NUMBER_OF_ITERATIONS = "number_of_iterations"
F1_SCORE = "f1_score"
PRECISION = "precision"
RECALL = "recall"
INFORMATION_GAIN = "information_gain"
TIME_TO_CONVERGENCE = "time_to_convergence"
MODEL_COMPLEXITY = "model_complexity"
DATA_LABELING_REDUNDANCY = "data_labeling_redundancy"
GENERALIZATION_ERROR = "generalization_error"
LEARNING_RATE = "learning_rate"
TRAINING_TIME = "training_time"
CONFIDENCE_INTERVAL_WIDTH = "confidence_interval_width"
OVERFITTING = "overfitting"
ACTIVE_LEARNING_EFFICIENCY = "active_learning_efficiency"
EXPLORATION_VS_EXPLOITATION = "exploration_vs_exploitation"
MEAN_SQUARED_ERROR_MSE = "mean_squared_error_mse"
MEAN_ABSOLUTE_ERROR_MAE = "mean_absolute_error_mae"
ROOT_MEAN_SQUARED_ERROR_RMSE = "root_mean_squared_error_rmse"
R2_SCORE = "r2_score"
REWARD = "reward"
EPISODE_RETURN = "episode_return"

#: The operator each known metric implies.
OPERATORS: dict[str, str] = {
    MODEL_ACCURACY: ">=",
    QUERY_EFFICIENCY: ">",
    LABELING_COST: "<",
    DIVERSITY_OF_SELECTED_SAMPLES: ">",
    UNCERTAINTY: "<",
    QUERY_REDUCTION: ">",
    AREA_UNDER_LEARNING_CURVE_AUC: ">",
    EXPECTED_MODEL_IMPROVEMENT_EMI: ">",
    SAMPLING_BIAS: "<",
    PREDICTION_CONFIDENCE: ">",
    CLASS_DISTRIBUTION_SHIFT: "<",
    CUMULATIVE_ERROR_REDUCTION: ">",
    QUERY_SELECTION_STRATEGY_PERFORMANCE: ">",
    NUMBER_OF_ITERATIONS: "<",
    F1_SCORE: ">",
    PRECISION: ">",
    RECALL: ">",
    INFORMATION_GAIN: ">",
    TIME_TO_CONVERGENCE: "<",
    MODEL_COMPLEXITY: "<",
    DATA_LABELING_REDUNDANCY: "<",
    GENERALIZATION_ERROR: "<",
    LEARNING_RATE: "<",
    TRAINING_TIME: "<",
    CONFIDENCE_INTERVAL_WIDTH: "<",
    OVERFITTING: "<",
    ACTIVE_LEARNING_EFFICIENCY: ">",
    EXPLORATION_VS_EXPLOITATION: ">",
    MEAN_SQUARED_ERROR_MSE: "<",
    MEAN_ABSOLUTE_ERROR_MAE: "<",
    ROOT_MEAN_SQUARED_ERROR_RMSE: "<",
    R2_SCORE: ">=",
    REWARD: ">=",
    EPISODE_RETURN: ">=",
}

# Uncertainty-quantification metrics (rose.uq.uq_scorer computes them).  The
# operator says when a UQ learner may stop: when the ensemble is confident enough.
PREDICTIVE_ENTROPY = "predictive_entropy"
MUTUAL_INFORMATION = "mutual_information"
VARIATION_RATIO = "variation_ratio"
MARGIN = "margin"
PREDICTIVE_VARIANCE = "predictive_variance"
PREDICTIVE_STD = "predictive_std"
PREDICTIVE_INTERVAL_WIDTH = "predictive_interval_width"
NEGATIVE_LOG_LIKELIHOOD = "negative_log_likelihood"
#: The conventional name of a user's own UQ metric (``@register_uq(CUSTOM_UQ)``); lower is
#: more confident, like the built-in ones.
CUSTOM_UQ = "custom_uq"

#: The UQ metric names, a subset of OPERATORS.
UQ_METRICS: tuple[str, ...] = (
    PREDICTIVE_ENTROPY,
    MUTUAL_INFORMATION,
    VARIATION_RATIO,
    MARGIN,
    PREDICTIVE_VARIANCE,
    PREDICTIVE_STD,
    PREDICTIVE_INTERVAL_WIDTH,
    NEGATIVE_LOG_LIKELIHOOD,
)

OPERATORS.update(
    {
        PREDICTIVE_ENTROPY: "<",
        MUTUAL_INFORMATION: "<",
        VARIATION_RATIO: "<",
        MARGIN: ">",  # a wide gap between the top two classes means confidence
        PREDICTIVE_VARIANCE: "<",
        PREDICTIVE_STD: "<",
        PREDICTIVE_INTERVAL_WIDTH: "<",
        NEGATIVE_LOG_LIKELIHOOD: "<",
        CUSTOM_UQ: "<",
    }
)


def is_supported_metric(metric_name: str) -> bool:
    return metric_name in OPERATORS


def get_operator(metric_name: str) -> str | None:
    return OPERATORS.get(metric_name)


def resolve_operator(metric_name: str, operator: str = "") -> str:
    """The operator a criterion uses: the explicit one, else the metric's own."""
    op = operator or OPERATORS.get(metric_name, "")
    if not op:
        raise ValueError(
            f"metric {metric_name!r} is not a known rose.metrics name, so its stop criterion "
            f"needs an operator: as_stop_criterion({metric_name!r}, threshold, operator='<') "
            f"(one of {', '.join(sorted(set(COMPARATORS) - {'='}))})"
        )
    if op not in COMPARATORS:
        raise ValueError(f"unknown operator {op!r}: use one of {', '.join(COMPARATORS)}")
    return op


def compare(value: float, threshold: float, operator: str) -> bool:
    return bool(COMPARATORS[operator](value, threshold))

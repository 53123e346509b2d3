"""Metric curves from event logs: ``rose plot LOG... -o metrics.png``.

One panel for the criterion metric (a line per run and learner, the threshold
dashed, log scale when the values span decades), one panel per chosen state key.
Titles and axes use the names people write (``MSE``, not ``mean_squared_error_mse``),
the figure names its run(s) and their outcome, and the legend sits beside the curves.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from rose.history import RunHistory, run_name, short_run
from rose.metrics import label


def _label(h: RunHistory, lid: object, many_runs: bool) -> str:
    """Learner (and run, when several are drawn); the outcome stands in the title."""
    learner = None if lid is None else f"learner {lid}"
    if not many_runs:
        return learner or short_run(h.run)
    return f"{short_run(h.run)} · {learner}" if learner else short_run(h.run)


def _by_id(learners: dict) -> list:
    return sorted(learners.items(), key=lambda kv: (kv[0] is not None, str(kv[0])))


def _log_scale_helps(values: list[float]) -> bool:
    positive = [v for v in values if v is not None and v > 0]
    return len(positive) == len([v for v in values if v is not None]) and len(positive) > 1 and (
        max(positive) / min(positive) >= 100
    )


def _outcome(h: RunHistory) -> str:
    n = len(h.learners)
    done = f"{n} learners, {h.iterations} iterations in all" if n > 1 else (
        f"{h.iterations} iteration(s)")
    if h.reason is None:
        return f"still running ({done} so far)"
    return f"{h.reason.replace('_', ' ')} ({done})"


def figure_title(runs: dict[str, RunHistory]) -> str:
    """What the figure shows: the run (or problem) name, the learner, the outcome."""
    if len(runs) == 1:
        (h,) = runs.values()
        name = run_name(h.run) or short_run(h.run)
        return f"{name}: {h.learner_type}, {_outcome(h)}"
    names = sorted({run_name(h.run) or short_run(h.run) for h in runs.values()})
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    done = sum(h.reason is not None for h in runs.values())
    return f"{len(runs)} runs ({shown}): {done} finished, {len(runs) - done} running"


def plot(
    runs: dict[str, RunHistory],
    out: str | os.PathLike[str],
    keys: Sequence[str] = (),
    log_scale: bool | None = None,
) -> Path:
    """Draw ``runs`` into the PNG at ``out``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = ["__metric__", *keys]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(9, 3.2 * len(panels) + 0.6), squeeze=False, sharex=True
    )
    many = len(runs) > 1
    metric_names = sorted({h.metric_name for h in runs.values() if h.metric_name})
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        values: list[float] = []
        for h in runs.values():
            for lid, series in _by_id(h.learners):
                ys = series.metric if panel == "__metric__" else series.keys.get(panel)
                if not ys or all(y is None for y in ys):
                    continue
                ys_plot = [math.nan if y is None else y for y in ys]
                ax.plot(series.iterations, ys_plot, marker="o", markersize=3,
                        label=_label(h, lid, many))
                values += [y for y in ys if y is not None]
        if panel == "__metric__":
            name = " / ".join(label(n, unit=True) for n in metric_names) or "criterion metric"
            ax.set_ylabel(name)
            thresholds = sorted({h.threshold for h in runs.values() if h.threshold is not None})
            for t in thresholds:
                ax.axhline(t, linestyle="--", color="grey", linewidth=1, label=f"threshold {t:g}")
                values.append(t)
            ops = sorted({h.operator for h in runs.values() if h.operator})
            goal = (
                f" {' / '.join(ops)} {', '.join(f'{t:g}' for t in thresholds)}"
                if thresholds and ops else ""
            )
            ax.set_title(f"stop criterion: {name}{goal}", loc="left", fontsize="medium")
        else:
            ax.set_ylabel(label(panel, unit=True))
            ax.set_title(label(panel, unit=True), loc="left", fontsize="medium")
        if (log_scale is None and _log_scale_helps(values)) or log_scale:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      borderaxespad=0.0, frameon=False)
    axes[-1, 0].set_xlabel("iteration")
    fig.suptitle(figure_title(runs), fontsize="large")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out

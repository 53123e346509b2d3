"""Metric curves from event logs: ``rose plot LOG... -o metrics.png``.

One panel for the criterion metric (a line per run and learner, the threshold
dashed, log scale when the values span decades), one panel per chosen state key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from rose.history import RunHistory


def _label(h: RunHistory, lid: object, many_runs: bool) -> str:
    """Learner (and run, when several are drawn); the stop reason stands in the title."""
    learner = None if lid is None else f"learner {lid}"
    if not many_runs:
        return learner or h.run[:24]
    run = f"{h.run[:24]} ({h.reason or 'running'})"
    return f"{run} · {learner}" if learner else run


def _by_id(learners: dict) -> list:
    return sorted(learners.items(), key=lambda kv: (kv[0] is not None, str(kv[0])))


def _log_scale_helps(values: list[float]) -> bool:
    positive = [v for v in values if v is not None and v > 0]
    return len(positive) == len([v for v in values if v is not None]) and len(positive) > 1 and (
        max(positive) / min(positive) >= 100
    )


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

    panels = ["__metric__", *keys]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(8, 3.2 * len(panels)), squeeze=False, sharex=True
    )
    many = len(runs) > 1
    metric_names = {h.metric_name for h in runs.values() if h.metric_name}
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
            name = " / ".join(sorted(metric_names)) or "criterion metric"
            ax.set_ylabel(name)
            for t in sorted({h.threshold for h in runs.values() if h.threshold is not None}):
                ax.axhline(t, linestyle="--", color="grey", linewidth=1, label=f"threshold {t:g}")
                values.append(t)
            reasons = sorted({h.reason or "running" for h in runs.values()})
            ax.set_title(f"{name} per iteration — stop: {', '.join(reasons)}")
        else:
            ax.set_ylabel(panel)
            if not values:
                ax.text(0.5, 0.5, f"no numeric values for {panel!r}", ha="center",
                        transform=ax.transAxes)
        if (log_scale is None and _log_scale_helps(values)) or log_scale:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="best")
    axes[-1, 0].set_xlabel("iteration")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

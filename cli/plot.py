"""``rose plot``: metric curves from event logs into a PNG (no broker needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.options import UsageError, add_command

PLOT_EPILOG = """\
examples:
  rose plot runs/*.jsonl -o metrics.png
  rose plot runs/my-run.jsonl -o curves.png --keys train_mse,max_std
  rose plot spool.jsonl -o m.png --log
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "plot",
        help="draw metric curves from event logs into a PNG",
        description="Draw the criterion metric of each run and learner (threshold dashed), "
        "and any numeric state keys you name, from event logs (file-sink output, "
        "FileTracker logs, spools).",
        epilog=PLOT_EPILOG,
    )
    p.add_argument("logs", nargs="+", metavar="LOG",
                   help="event log files (JSON lines), or directories of them")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png", help="where to write the PNG")
    p.add_argument("--keys", default="", help="comma-separated state keys to plot, one panel each")
    scale = p.add_mutually_exclusive_group()
    scale.add_argument("--log", dest="log_scale", action="store_true", default=None,
                       help="log scale for every panel (default: where values span decades)")
    scale.add_argument("--linear", dest="log_scale", action="store_false", help="linear scales")
    p.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from rose import history

    paths: list[Path] = []
    for given in map(Path, args.logs):  # a directory stands for the logs in it
        paths += sorted(given.glob("*.jsonl")) if given.is_dir() else [given]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UsageError(f"no such log file: {', '.join(missing)}")
    if not args.output.lower().endswith(".png"):
        raise UsageError(f"output must be a .png file, got {args.output!r}")
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        from rose.extras import install_hint

        raise UsageError(
            f"rose plot needs matplotlib: pip install matplotlib, or {install_hint('plot')}"
        ) from None
    try:
        runs = history.load(paths)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read logs: {exc}") from None
    if not paths or not runs:
        raise UsageError("the logs hold no readable events")
    from rose.plot import plot

    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    known = sorted({k for h in runs.values() for s in h.learners.values() for k in s.keys})
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise UsageError(
            f"no iteration in the logs has a numeric state key {', '.join(map(repr, unknown))}; "
            f"the logs hold: {', '.join(known) or 'no numeric state keys'}"
        )
    out = plot(runs, args.output, keys=keys, log_scale=args.log_scale)
    curves = sum(len(h.learners) for h in runs.values())
    print(f"wrote {out}: {len(runs)} run(s), {curves} curve(s)")
    return 0

"""Experience banks: transitions collected by environment tasks, as named columns.

An environment task hands its transitions to the update task as an
:class:`ExperienceBank` (or a plain dict of equal-length columns).  A bank is
not a dict on purpose: dict results of tasks go into ``IterationState.state``
(and so into every tracker), while a bank is bulk data that should only flow
to the update.  ``ParallelExperience`` merges the banks of its environments
into one with :func:`merge_banks`.

Banks persist as ``.npz`` files (``allow_pickle=False``), so executable tasks
can write one and print its path.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rose.learner import _json_object_from_stdout


class ExperienceBank:
    """Transitions as named numpy columns of equal length (``obs``, ``action``, ``reward``…)."""

    def __init__(self, columns: Mapping[str, Any] | None = None, **more: Any) -> None:
        cols = {str(k): np.asarray(v) for k, v in {**(columns or {}), **more}.items()}
        lengths = {k: (len(v) if v.ndim else 1) for k, v in cols.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"experience columns differ in length: {lengths}")
        self._columns = {k: (v if v.ndim else v.reshape(1)) for k, v in cols.items()}

    @property
    def columns(self) -> dict[str, np.ndarray]:
        return dict(self._columns)

    def __len__(self) -> int:
        return len(next(iter(self._columns.values()))) if self._columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self._columns[name]

    def __contains__(self, name: object) -> bool:
        return name in self._columns

    def __repr__(self) -> str:
        return f"ExperienceBank({len(self)} transitions; columns {sorted(self._columns)})"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the bank as ``.npz`` (no pickle) and return the path written."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        np.savez(path, **self._columns)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExperienceBank:
        with np.load(path, allow_pickle=False) as data:
            return cls({k: data[k] for k in data.files})


def as_bank(result: Any, source: str = "environment task") -> ExperienceBank | None:
    """Read one environment task's result as a bank (None when it returned nothing).

    Accepts a bank, a dict of columns, a path to a saved ``.npz`` bank, or an
    executable's stdout whose last line is such a path or a JSON object of columns.
    """
    if result is None or isinstance(result, ExperienceBank):
        return result
    if isinstance(result, Mapping):
        return ExperienceBank(result)
    if isinstance(result, (str, os.PathLike)):
        text = os.fspath(result).strip()
        last = text.splitlines()[-1].strip() if text else ""
        if last.endswith(".npz") and Path(last).is_file():
            return ExperienceBank.load(last)
        obj = _json_object_from_stdout(text)
        if obj is not None:
            return ExperienceBank(obj)
    raise TypeError(
        f"{source} returned {type(result).__name__}; ParallelExperience merges experience "
        "banks: return an ExperienceBank or a dict of equal-length columns (executables: "
        "print the path of ExperienceBank.save() or a JSON object of columns)"
    )


def merge_banks(banks: Iterable[ExperienceBank | None]) -> ExperienceBank:
    """Concatenate banks column by column; every non-empty bank must have the same columns."""
    present = [b for b in banks if b is not None and len(b)]
    if not present:
        return ExperienceBank()
    names = set(present[0].columns)
    for b in present[1:]:
        if set(b.columns) != names:
            raise ValueError(
                f"experience banks have different columns: {sorted(names)} vs {sorted(b.columns)}"
            )
    return ExperienceBank({k: np.concatenate([b[k] for b in present]) for k in sorted(names)})

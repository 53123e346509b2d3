"""Experience banks: the transitions environment tasks collect for the update task.

A bank holds rows: :class:`Experience` transitions (``add``, ``add_batch``,
``create_experience``), or rows of named columns when built from columns
(``ExperienceBank(obs=..., reward=...)``).  Columns built from the five
Experience fields give Experience rows.  Either way ``bank["reward"]`` is a
column as a numpy array and ``sample``/``get_recent`` return rows.

An environment task hands its bank to the update task as a value (a bank is
not a dict on purpose: dict results of tasks go into ``IterationState.state``,
and so to every tracker, while a bank is bulk data that only the update needs).
``ParallelExperience`` merges the banks of its environments with
:func:`merge_banks`.

Banks persist as numpy ``.npz`` archives read with ``allow_pickle=False``,
whatever the file is named: loading a bank never runs code from the file.
Banks pickled by ROSE 0.3 load with ``load(path, allow_pickle=True)``, for
files you trust.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import pickle
import random
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from rose.learner.results import json_object_from_stdout

log = logging.getLogger(__name__)


@dataclass
class Experience:
    """One transition: what the agent saw, did and got."""

    state: Any
    action: Any
    reward: float
    next_state: Any
    done: bool
    info: dict | None = None


_FIELDS = tuple(f.name for f in fields(Experience))
_REQUIRED = _FIELDS[:-1]
_KIND_KEY = "__rose_bank__"


def create_experience(
    state: Any, action: Any, reward: float, next_state: Any, done: bool, info: dict | None = None
) -> Experience:
    """An :class:`Experience`; ``info`` defaults to an empty dict."""
    return Experience(state, action, reward, next_state, done, info or {})


class ExperienceBank:
    """A bounded store of transitions to add to, sample from, merge and save.

    ``max_size`` keeps only the newest transitions; ``session_id`` names the
    file ``save()`` writes when given no name.  Columns may be given as a
    mapping first, or as keywords: ``ExperienceBank(obs=[...], reward=[...])``.
    """

    def __init__(
        self,
        max_size: int | None = None,
        session_id: str | None = None,
        *,
        columns: Mapping[str, Any] | None = None,
        **more: Any,
    ) -> None:
        if isinstance(max_size, Mapping):  # ExperienceBank({"obs": ..., "reward": ...})
            columns, max_size = max_size, None
        if max_size is not None and (
            isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1
        ):
            raise ValueError(f"max_size must be an int >= 1 or None, got {max_size!r}")
        self.max_size = max_size
        if session_id is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d_%H%M%S")
            session_id = f"experience_bank_{stamp}_{uuid.uuid4().hex[:8]}"
        self.session_id = session_id
        self._rows: deque[Any] = deque(maxlen=max_size)
        self._rng = random.Random()
        cols = {**(columns or {}), **more}
        if cols:
            self._rows.extend(_rows_from_columns(cols))

    # ------------------------------------------------------------ rows

    def add(self, experience: Experience | Mapping[str, Any]) -> None:
        self._rows.append(_checked_row(experience))

    def add_batch(self, experiences: Iterable[Experience | Mapping[str, Any]]) -> None:
        self._rows.extend(_checked_row(e) for e in experiences)

    def sample(self, batch_size: int, replace: bool = True) -> list[Any]:
        """``batch_size`` random rows (with replacement unless ``replace=False``)."""
        if not self._rows:
            return []
        rows = list(self._rows)
        if replace:
            return self._rng.choices(rows, k=batch_size)
        if batch_size > len(rows):
            raise ValueError(
                f"cannot sample {batch_size} experiences without replacement from a bank "
                f"of {len(rows)}"
            )
        return self._rng.sample(rows, k=batch_size)

    def get_recent(self, n: int) -> list[Any]:
        """The ``n`` newest rows, oldest first (all of them if the bank holds fewer)."""
        rows = list(self._rows)
        return rows[-n:] if 0 < n <= len(rows) else (rows if n > 0 else [])

    def merge(self, other: ExperienceBank) -> ExperienceBank:
        """A new bank with this bank's rows then ``other``'s (the larger ``max_size`` holds)."""
        sizes = [s for s in (self.max_size, other.max_size) if s is not None]
        merged = ExperienceBank(max_size=max(sizes) if sizes else None)
        merged.add_batch(self._rows)
        merged.add_batch(other._rows)
        return merged

    def merge_inplace(self, other: ExperienceBank) -> None:
        self.add_batch(other._rows)

    def clear(self) -> None:
        self._rows.clear()

    # ------------------------------------------------------------ columns

    @property
    def column_names(self) -> list[str]:
        if not self._rows:
            return []
        first = self._rows[0]
        return list(_FIELDS) if isinstance(first, Experience) else list(first)

    @property
    def columns(self) -> dict[str, np.ndarray]:
        return {name: self[name] for name in self.column_names}

    def _column(self, name: str) -> np.ndarray:
        if name not in self.column_names:
            raise KeyError(name)
        first = self._rows[0]
        if isinstance(first, Experience):
            values = [getattr(r, name) for r in self._rows]
        else:
            values = [r[name] for r in self._rows]
        if name != "info":
            try:
                return np.asarray(values)
            except ValueError:  # values of different shapes: one object per row
                pass
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    # ------------------------------------------------------------ container

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def __getitem__(self, key: str | int | slice) -> Any:
        """A column by name, or rows by index or slice."""
        if isinstance(key, str):
            return self._column(key)
        return list(self._rows)[key]

    def __contains__(self, name: object) -> bool:
        return name in self.column_names

    def __repr__(self) -> str:
        return f"ExperienceBank({len(self)} transitions; columns {sorted(self.column_names)})"

    # ------------------------------------------------------------ files

    def save(self, work_dir: str | os.PathLike[str] = ".", bank_file: str | None = None) -> str:
        """Write the bank to ``work_dir/bank_file`` (default ``<session_id>.pkl``); returns
        the path.

        The file is an ``.npz`` archive whatever its name.  ``save("dir/bank")``,
        a path that is not a folder, writes ``dir/bank.npz``.
        """
        if bank_file is None and not Path(work_dir).is_dir():  # save(path): that file
            path = Path(work_dir)
            path = path if path.suffix == ".npz" else path.with_suffix(".npz")
        else:
            path = Path(work_dir, bank_file or f"{self.session_id}.pkl")
        arrays: dict[str, np.ndarray] = {}
        kind = "experience" if self._rows and isinstance(self._rows[0], Experience) else "columns"
        for name in self.column_names:
            if name == "info":
                arrays[name] = np.array([json.dumps(v or {}, default=str) for v in self["info"]])
                continue
            col = self[name]
            if col.dtype == object:
                raise TypeError(
                    f"ExperienceBank.save writes numeric arrays (no pickle): column {name!r} "
                    "holds values of different shapes or types"
                )
            arrays[name] = col
        arrays[_KIND_KEY] = np.array(kind)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
        return str(path)

    @classmethod
    def load(
        cls,
        filepath: str | os.PathLike[str],
        max_size: int | None = None,
        *,
        allow_pickle: bool = False,
    ) -> ExperienceBank:
        """Read a bank written by :meth:`save`; a missing file gives an empty bank.

        ``allow_pickle=True`` also reads banks pickled by ROSE 0.3: only for
        files you trust, since unpickling runs code from the file.
        """
        path = Path(filepath)
        bank = cls(max_size=max_size)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            log.warning("no experience bank at %s: starting from an empty bank", path)
            return bank
        if not raw.startswith(b"PK"):
            if not allow_pickle:
                raise ValueError(
                    f"{path} is not an ExperienceBank archive (a pickle written by ROSE 0.3?): "
                    "if you trust the file, load it with ExperienceBank.load(path, "
                    "allow_pickle=True)"
                )
            bank.add_batch(pickle.loads(raw))  # noqa: S301 - asked for, for trusted files
            return bank
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            cols = {k: data[k] for k in data.files if k != _KIND_KEY}
        if "info" in cols:
            cols["info"] = [json.loads(s) for s in cols["info"].tolist()]
        if cols:
            bank._rows.extend(_rows_from_columns(cols))
        return bank


def _checked_row(row: Any) -> Any:
    if isinstance(row, Experience):
        return row
    if isinstance(row, Mapping):
        return dict(row)
    raise TypeError(
        f"an ExperienceBank holds Experience objects (create_experience(...)) or dicts, "
        f"got {type(row).__name__}"
    )


def _rows_from_columns(cols: Mapping[str, Any]) -> list[Any]:
    """Rows from equal-length columns: Experience rows when the columns are its fields."""
    arrays = {str(k): (v if isinstance(v, list) else np.asarray(v)) for k, v in cols.items()}
    arrays = {
        k: (v.reshape(1) if isinstance(v, np.ndarray) and not v.ndim else v)
        for k, v in arrays.items()
    }
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"experience columns differ in length: {lengths}")
    n = next(iter(lengths.values()))
    # one-dimensional columns as Python scalars, others row by row as arrays
    values = {
        k: (v.tolist() if isinstance(v, np.ndarray) and v.ndim == 1 else v)
        for k, v in arrays.items()
    }
    names = set(values)
    if set(_REQUIRED) <= names <= set(_FIELDS):
        info = values.get("info")
        return [
            Experience(
                *(values[f][i] for f in _REQUIRED), info=(info[i] if info is not None else {})
            )
            for i in range(n)
        ]
    return [{k: v[i] for k, v in values.items()} for i in range(n)]


def as_bank(result: Any, source: str = "environment task") -> ExperienceBank | None:
    """Read one environment task's result as a bank (None when it returned nothing).

    Accepts a bank, a dict of columns, a path to a saved bank, or an
    executable's stdout whose last line is such a path or a JSON object of columns.
    """
    if result is None or isinstance(result, ExperienceBank):
        return result
    if isinstance(result, Mapping):
        return ExperienceBank(columns=result)
    if isinstance(result, (str, os.PathLike)):
        text = os.fspath(result).strip()
        last = text.splitlines()[-1].strip() if text else ""
        if last.endswith((".npz", ".pkl")) and Path(last).is_file():
            return ExperienceBank.load(last)
        obj = json_object_from_stdout(text)
        if obj is not None:
            return ExperienceBank(columns=obj)
    raise TypeError(
        f"{source} returned {type(result).__name__}; ParallelExperience merges experience "
        "banks: return an ExperienceBank or a dict of equal-length columns (executables: "
        "print the path of ExperienceBank.save() or a JSON object of columns, or save "
        "experience_bank_*.pkl files into the learner's work_dir)"
    )


def merge_banks(banks: Iterable[ExperienceBank | None]) -> ExperienceBank:
    """Concatenate banks in order; every non-empty bank must have the same columns."""
    present = [b for b in banks if b is not None and len(b)]
    merged = ExperienceBank()
    if not present:
        return merged
    names = set(present[0].column_names)
    for b in present[1:]:
        if set(b.column_names) != names:
            raise ValueError(
                f"experience banks have different columns: {sorted(names)} vs "
                f"{sorted(b.column_names)}"
            )
    for b in present:
        merged.merge_inplace(b)
    return merged

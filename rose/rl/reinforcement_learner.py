"""Reinforcement learners: environment → update, then a test (the stop criterion), per iteration.

Data flow between tasks (function tasks get Python values, executables the
previous task's stdout):

- the update task receives the environment task's result as its last
  positional argument (``ParallelExperience``: the merged ExperienceBank);
- the stop criterion receives the update task's result, so it can test the
  policy the update produced.

Dict results go into ``IterationState.state``; return an
:class:`~rose.rl.experience.ExperienceBank` (or any non-dict) for bulk
transitions that only the update should see.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from rose.config import LearnerConfig
from rose.learner.base import Learner
from rose.learner.deprecated import deprecated_run, final_state, final_states_by_id
from rose.learner.lanes import Lane
from rose.learner.parallel import ParallelLearner
from rose.learner.tasks import task_decorator
from rose.rl.experience import ExperienceBank, as_bank, merge_banks
from rose.tracking import IterationState

log = logging.getLogger(__name__)


class ReinforcementLearner(Learner):
    """Task registration and the per-lane loop shared by the RL learners."""

    roles = ("environment", "update")

    environment_task = task_decorator(
        "environment",
        "Register the task that runs the policy in the environment and "
        "collects experience (bare or with options, like every task decorator).",
    )
    update_task = task_decorator(
        "update", "Register the task that improves the policy from the collected experience."
    )

    def _begin(self) -> None:
        """Each run starts without a current state (ROSE 0.3's RL learners reset it)."""
        self._current_state = None

    def _check_tasks(self, max_iter: int, skip_environment_step: bool) -> None:
        self._require(*(("update",) if skip_environment_step else ("environment", "update")))
        self._check_max_iter(max_iter)

    async def _collect(self, lane: Lane, iteration: int, skip_environment_step: bool) -> list[Any]:
        """Run one environment → update step; returns the results, in order.

        The environment's result is awaited and passed as a value, not as a
        future dependency: radical.asyncflow 0.6 can take up to a second to
        release a task whose dependency finished while its scheduler was idle.
        """
        results = (
            [] if skip_environment_step else [await self.submit("environment", lane, iteration)]
        )
        return [*results, await self.submit("update", lane, iteration, *results)]

    def _lane(
        self, lane: Lane, max_iter: int, skip_pre_loop: bool, skip_environment_step: bool
    ) -> AsyncIterator[IterationState]:
        """One sequential RL loop.

        The pre-loop collects experience and updates once; each iteration then
        tests the updated policy (the criterion), yields, and runs the next
        environment → update step with the configuration then in effect.
        """
        return self._iterate(
            lane,
            max_iter,
            skip_pre_loop,
            step=lambda it: self._collect(lane, it, skip_environment_step),
            # the test sees the policy the last update produced (nothing if none ran yet)
            criterion_inputs=lambda results: tuple((results or [])[-1:]),
        )


class SequentialReinforcementLearner(ReinforcementLearner):
    """One RL loop; ``start()`` yields an IterationState per iteration.

    ``skip_environment_step=True`` runs only the update each step (experience
    comes from an existing pool, e.g. offline RL).
    """

    def start(
        self,
        max_iter: int = 0,
        skip_pre_loop: bool = False,
        skip_environment_step: bool = False,
        initial_config: LearnerConfig | None = None,
    ) -> AsyncIterator[IterationState]:
        self._begin()
        return self._start_sequential(
            initial_config, max_iter, skip_pre_loop, skip_environment_step
        )

    teach = deprecated_run(final_state, rename={"initial_config": "learner_config"})
    #: ``skip_simulation_step`` skips the environment task (``start()``'s
    #: ``skip_environment_step``); ``skip_emulation_step`` is its older name here.
    learn = deprecated_run(
        final_state,
        rename={"initial_config": "learner_config", "skip_environment_step": "skip_simulation_step"},
        aliases={"skip_emulation_step": "skip_simulation_step"},
    )


class ParallelReinforcementLearner(ParallelLearner, ReinforcementLearner):
    """Several RL loops at once (e.g. different seeds or hyper-parameters); states
    stream as they arrive, each stamped with its ``learner_id`` (0, 1, …)."""

    def start(
        self,
        parallel_learners: int | None = None,
        max_iter: int = 0,
        skip_pre_loop: bool = False,
        learner_configs: list[LearnerConfig | None] | None = None,
        skip_environment_step: bool = False,
    ) -> AsyncIterator[IterationState]:
        """Run ``parallel_learners`` loops (default: the constructor's count, else 2)."""
        self._begin()
        return self._start_parallel(
            parallel_learners, max_iter, skip_pre_loop, learner_configs, skip_environment_step
        )

    # ROSE 0.3 named it learn(); teach() is the name the other families use.
    teach = learn = deprecated_run(
        final_states_by_id, defaults={"parallel_learners": 2}, drop=("skip_environment_step",)
    )


class ParallelExperience(SequentialReinforcementLearner):
    """One RL loop fed by several named environments at once.

    Each step runs every environment task concurrently, merges their
    experience banks (:func:`~rose.rl.experience.merge_banks`, in registration
    order) and hands the merged bank to one update.  The state records the
    bank sizes (``experience_size``, ``experience_sizes``), not the banks.
    Every environment uses ``LearnerConfig.environment``.

    Environments that write their banks to files instead (executables that
    ``ExperienceBank.save()`` an ``experience_bank_*.pkl`` into ``work_dir``, as
    ROSE 0.3 scripts do) are merged from there by :meth:`merge_banks` into
    ``work_dir/experience_bank.pkl``, which the update then reads.
    """

    _ENV_PREFIX = "environment."
    #: The file merge_banks() writes, and the prefix of the files it merges.
    MERGED_BANK = "experience_bank.pkl"
    BANK_PREFIX = "experience_bank_"

    def __init__(self, asyncflow: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(asyncflow, *args, **kwargs)
        #: Where file-writing environments leave their banks (merge_banks() reads it).
        self.work_dir: str | os.PathLike[str] = "."

    def start(  # type: ignore[override]
        self,
        max_iter: int = 0,
        skip_pre_loop: bool = False,
        initial_config: LearnerConfig | None = None,
        *,
        skip_environment_step: bool = False,
    ) -> AsyncIterator[IterationState]:
        """Yield an IterationState per iteration (``skip_environment_step``: update only)."""
        return super().start(max_iter, skip_pre_loop, skip_environment_step, initial_config)

    teach = deprecated_run(final_state, rename={"initial_config": "learner_config"})
    learn = deprecated_run(
        final_state, rename={"initial_config": "learner_config"}, drop=("skip_environment_step",)
    )

    @property
    def environment_functions(self) -> dict[str, Callable]:
        """The registered environments' functions, by name."""
        return {n: self._tasks[self._ENV_PREFIX + n].func for n in self.environment_names}

    def merge_banks(self) -> ExperienceBank:
        """Merge the ``experience_bank_*`` files in ``work_dir`` into ``experience_bank.pkl``.

        The merged files are removed; the merged bank is returned (an empty one,
        and the previous merged file left as it is, when there are none).
        """
        folder = Path(self.work_dir)
        pieces = self._bank_files()
        if not pieces:
            log.warning("no %s* files in %s to merge", self.BANK_PREFIX, folder)
            return ExperienceBank()
        merged = merge_banks(ExperienceBank.load(p) for p in pieces)
        merged.save(folder, self.MERGED_BANK)
        for p in pieces:
            p.unlink(missing_ok=True)
        log.info("merged %d transitions from %d bank files", len(merged), len(pieces))
        return merged

    @property
    def roles(self) -> tuple[str, ...]:  # type: ignore[override]
        return (*(self._ENV_PREFIX + n for n in self.environment_names), "update")

    def environment_task(
        self, func: Callable | str | None = None, /, name: str | None = None, **options: Any
    ) -> Callable:
        """Register a named environment: ``@learner.environment_task(name="env_1")``.

        Bare ``@learner.environment_task`` names it after the function.
        """
        if isinstance(func, str):
            func, name = None, func

        def register(f: Callable) -> Callable:
            env_name = name or getattr(f, "__name__", "environment")
            role = self._ENV_PREFIX + env_name
            if role in self._tasks:
                raise ValueError(f"an environment named {env_name!r} is already registered")
            return self.register_task(role, f, **options)

        return register(func) if func is not None else register

    @property
    def environment_names(self) -> list[str]:
        return [r[len(self._ENV_PREFIX) :] for r in self._tasks if r.startswith(self._ENV_PREFIX)]

    def _check_tasks(self, max_iter: int, skip_environment_step: bool) -> None:
        if not skip_environment_step and not self.environment_names:
            raise ValueError(
                "ParallelExperience needs at least one environment: "
                "@learner.environment_task(name='env_1')"
            )
        super()._check_tasks(max_iter, skip_environment_step=True)

    async def _collect(self, lane: Lane, iteration: int, skip_environment_step: bool) -> list[Any]:
        """Run every environment, merge their banks, update once on the merged bank."""
        if skip_environment_step:
            return [await self.submit("update", lane, iteration)]
        names = self.environment_names
        config = lane.config.task_config("environment", iteration) if lane.config else None
        futures = [self._submit(self._tasks[self._ENV_PREFIX + n], config) for n in names]
        results = await asyncio.gather(*futures)
        banks = [self._read_bank(n, r) for n, r in zip(names, results, strict=True)]
        on_disk = any(b is _ON_DISK for b in banks)
        if on_disk:
            # ROSE 0.3 style: the environments saved their banks into work_dir, and the
            # update reads the merged file (it gets no argument, as there)
            merged = self.merge_banks()
            sizes = {n: None for n in names}
        else:
            merged = merge_banks(banks)  # type: ignore[arg-type]
            sizes = {n: (len(b) if b is not None else 0) for n, b in zip(names, banks, strict=True)}
        log.debug(
            "iteration %d: merged %d transitions from %d environments",
            iteration,
            len(merged),
            len(names),
        )
        summary = {"experience_size": len(merged), "experience_sizes": sizes}
        inputs = () if on_disk else (merged,)
        return [summary, await self.submit("update", lane, iteration, *inputs)]

    def _read_bank(self, name: str, result: Any) -> Any:
        """An environment's result as a bank, or _ON_DISK when it left its bank in work_dir."""
        try:
            bank = as_bank(result, f"environment {name!r}")
        except TypeError:
            if isinstance(result, str) and self._bank_files_waiting():
                return _ON_DISK
            raise
        return _ON_DISK if bank is None and self._bank_files_waiting() else bank

    def _bank_files(self) -> list[Path]:
        """The ``experience_bank_*`` files an environment task left to merge, sorted."""
        return sorted(
            p
            for p in Path(self.work_dir).iterdir()
            if p.is_file() and p.name.startswith(self.BANK_PREFIX) and p.suffix in (".pkl", ".npz")
        )

    def _bank_files_waiting(self) -> bool:
        try:
            return bool(self._bank_files())
        except OSError:
            return False


#: Marks an environment whose bank is a file in the learner's work_dir.
_ON_DISK = object()

"""ROSE 0.3's ``teach()``/``learn()``: run ``start()`` to its end, return what 0.3 returned.

Every family has such a wrapper, under its own name and with ROSE 0.3's
argument names; :class:`deprecated_run` writes them all from the family's
``start()`` signature, so they cannot drift from it.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import AsyncIterator, Callable
from typing import Any

from rose.tracking import IterationState

#: The last state of each learner of a run, by ``learner_id`` (None: a sequential one).
Finals = dict[Any, IterationState]
#: What a wrapper returns, from the learner, the final states and the start() arguments.
Result = Callable[[Any, Finals, dict[str, Any]], Any]


async def drain(states: AsyncIterator[IterationState]) -> Finals:
    """Run a ``start()`` to its end; the last state per learner."""
    finals: Finals = {}
    async for state in states:
        finals[state.learner_id] = state
    return finals


def final_state(learner: Any, finals: Finals, args: dict[str, Any]) -> IterationState | None:
    """the final state"""
    return finals.get(None)


def final_states_by_id(
    learner: Any, finals: Finals, args: dict[str, Any]
) -> list[IterationState | None]:
    """each learner's final state, by learner id (0, 1, …)"""
    return [finals.get(i) for i in range(args["parallel_learners"])]


class deprecated_run:  # noqa: N801 (used like a decorator, in a class body)
    """A class attribute that becomes the deprecated wrapper named like the attribute.

    Its signature is the class's ``start()`` with ``rename`` (start's name to
    ROSE 0.3's), ``defaults`` (0.3's defaults where they differ), ``drop``
    (start's parameters 0.3's wrapper lacks) and ``aliases`` (extra
    keyword-only names for a parameter, 0.3's older spellings); it warns, runs ``start()`` with the arguments and returns
    ``result(learner, finals, start_arguments)``, which its docstring names.
    """

    def __init__(
        self,
        result: Result,
        *,
        rename: dict[str, str] | None = None,
        defaults: dict[str, Any] | None = None,
        aliases: dict[str, str] | None = None,
        drop: tuple[str, ...] = (),
    ) -> None:
        self.result = result
        self.rename = dict(rename or {})
        self.defaults = dict(defaults or {})
        self.aliases = dict(aliases or {})
        self.drop = drop

    def __set_name__(self, owner: type, name: str) -> None:
        setattr(owner, name, self._build(owner, name))

    def _build(self, owner: type, name: str) -> Callable:
        start = owner.start  # type: ignore[attr-defined]
        start_params = list(inspect.signature(start).parameters.values())[1:]  # after self
        ours = {v: k for k, v in self.rename.items()}  # wrapper name -> start name
        params = [next(iter(inspect.signature(start).parameters.values()))]
        for p in start_params:
            if p.name in self.drop:
                continue
            new = self.rename.get(p.name, p.name)
            params.append(p.replace(name=new, default=self.defaults.get(new, p.default)))
        params += [
            inspect.Parameter(alias, inspect.Parameter.KEYWORD_ONLY, default=None)
            for alias in self.aliases
        ]
        returns = inspect.signature(self.result).return_annotation
        signature = inspect.Signature(params, return_annotation=returns)
        result, aliases = self.result, self.aliases

        async def run(learner: Any, *args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(learner, *args, **kwargs)
            bound.apply_defaults()
            given = dict(list(bound.arguments.items())[1:])
            for alias, target in aliases.items():
                value = given.pop(alias)
                if value is not None:
                    given[target] = value
            start_args = {ours.get(k, k): v for k, v in given.items()}
            warnings.warn(
                f"{name}() is deprecated; iterate over start() instead",
                DeprecationWarning,
                stacklevel=2,
            )
            call_args, call_kwargs = _as_call(start_params, start_args)
            finals = await drain(learner.start(*call_args, **call_kwargs))
            return result(learner, finals, start_args)

        run.__name__ = name
        run.__module__ = owner.__module__
        run.__qualname__ = f"{owner.__qualname__}.{name}"
        run.__doc__ = (
            f"Deprecated: run ``start()`` to its end and return {result.__doc__}.  "
            "Iterate over ``start()`` instead."
        )
        run.__signature__ = signature  # type: ignore[attr-defined]
        return run


def _as_call(
    params: list[inspect.Parameter], values: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """``values`` as start()'s arguments: positional up to the first one left out, as
    ROSE 0.3's wrappers passed them (a subclass's start() may name them otherwise)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    gap = False
    for p in params:
        if p.name not in values:
            gap = True
        elif p.kind is p.POSITIONAL_OR_KEYWORD and not gap:
            args.append(values[p.name])
        else:
            kwargs[p.name] = values[p.name]
    return args, kwargs

"""Which task configuration the trackers record: shared by the MLflow and ClearML mappings.

ROSE 0.3's trackers record the kwargs of the roles its ``LearnerConfig``
has (:data:`CONFIG_ROLES`, in that order) as ``config/<role>/<key>``, and
skip command-line flags (keys starting with ``--``).  The other roles a
learner of this project may configure (the UQ learners' ``uncertainty``)
are recorded too, under the ``rose.`` prefix, so they never take a name of
that layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

CONFIG_ROLES = (
    "simulation",
    "training",
    "prediction",
    "active_learn",
    "environment",
    "update",
    "criterion",
)
#: Name prefix of the roles ROSE 0.3's trackers do not record.
EXTRA_ROLE_PREFIX = "rose."


def config_entries(current_config: dict[str, Any] | None) -> Iterator[tuple[str, str, Any]]:
    """``(role, key, value)`` of every configuration kwarg the trackers record."""
    config = current_config or {}
    roles = [r for r in CONFIG_ROLES if r in config]
    roles += [r for r in config if r not in CONFIG_ROLES]
    for role in roles:
        task = config[role]
        kwargs = task.get("kwargs") if isinstance(task, dict) else None
        for key, value in (kwargs or {}).items():
            if str(key).startswith("--"):
                continue  # a flag for an executable task, not a hyper-parameter
            yield role, str(key), value


def config_name(role: str, key: str, learner_prefix: str = "") -> str:
    """``<learner_prefix>config/<role>/<key>``; a role ROSE 0.3 does not record gets
    ``rose.`` in front of it all, so that every addition starts with ``rose.``."""
    name = f"{learner_prefix}config/{role}/{key}"
    return name if role in CONFIG_ROLES else EXTRA_ROLE_PREFIX + name

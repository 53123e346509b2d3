"""Sink kinds by name: ``rose sink KIND`` and ``rose replay --into KIND``.

A kind is a module with these hooks (argparse only, no heavy imports at
module level, so ``rose --help`` stays fast and works without MLflow):

* ``CLI_HELP``, ``CLI_EPILOG``: one line and examples for ``--help``;
* ``add_cli_arguments(parser)``: the kind's options (for ``rose replay`` it is
  called with ``positional=False`` when it accepts that keyword);
* ``build_sink(args) -> Sink``: raises ValueError for a user mistake;
* ``default_state_dir(args) -> Path`` and ``DEFAULT_MAX_ATTEMPTS``.

Later kinds plug in by adding one line to KINDS (or :func:`register_kind`).
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

log = logging.getLogger(__name__)

KINDS: dict[str, str] = {
    "file": "sinks.file_sink",
    "tracker": "sinks.tracker_sink",
    "mlflow": "sinks.mlflow_sink",
    "clearml": "sinks.clearml_sink",
    "slack": "sinks.slack_sink",
}

_HOOKS = ("CLI_HELP", "add_cli_arguments", "build_sink", "default_state_dir")


def register_kind(name: str, module: str) -> None:
    """Make ``module`` (with the hooks above) available as sink kind ``name``."""
    KINDS[name] = module


def load_kind(name: str) -> ModuleType | None:
    """The kind's module, or None when it is not installed / not written yet."""
    module_name = KINDS.get(name)
    if module_name is None:
        return None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    missing = [h for h in _HOOKS if not hasattr(module, h)]
    if missing:
        log.debug("sink kind %s (%s) lacks %s; not offered", name, module_name, missing)
        return None
    return module


def available_kinds() -> dict[str, ModuleType]:
    """Every kind whose module is present, in KINDS order."""
    out = {}
    for name in KINDS:
        module = load_kind(name)
        if module is not None:
            out[name] = module
    return out

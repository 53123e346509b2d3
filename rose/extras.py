"""Optional dependencies: the one place that says how to install them.

This project is installed from its repository checkout (the ``rose`` on
PyPI is an unrelated package), so the hint names an editable install of
the checkout with the extra that brings the dependency.
"""

from __future__ import annotations

#: How to install an extra of this project; ``{extra}`` is e.g. ``mlflow``.
INSTALL_COMMAND = "pip install -e '.[{extra}]' (in this project's repository clone)"


def install_hint(extra: str) -> str:
    """The command that installs ``extra``, e.g. for a message to the user."""
    return INSTALL_COMMAND.format(extra=extra)


def require(module: str, extra: str, needed_by: str) -> None:
    """Import ``module`` or raise ImportError saying who needs it and how to install it."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{needed_by} needs {module}, which is not installed: {install_hint(extra)}"
        ) from exc

"""The ``rose`` command: one module per command, above rose/, bus/ and sinks/.

:mod:`cli.main` is the dispatcher; :mod:`cli.options` holds what the commands
share.  Nothing below this package imports it: bus/ and sinks/ raise
ValueError for user mistakes and the commands turn them into one-line errors.
"""

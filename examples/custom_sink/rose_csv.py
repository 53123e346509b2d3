"""The ``rose`` command with the example ``csv`` sink kind registered.

    python examples/custom_sink/rose_csv.py replay runs/ --into csv --out table/
    python examples/custom_sink/rose_csv.py sink csv --bus ~/rose-tracking/store/bus.json --out table/

Python puts this file's directory first on ``sys.path``, so ``csv_sink`` is
importable here.  To make a kind permanent, add it to ``KINDS`` in
``sinks/registry.py`` instead and use ``rose`` itself.
"""

import sys

from cli.main import main
from sinks.registry import register_kind

register_kind("csv", "csv_sink")

if __name__ == "__main__":
    sys.exit(main())

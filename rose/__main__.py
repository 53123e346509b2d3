"""``python -m rose ...`` is the ``rose`` command (a program entry, like the console script)."""

import sys

from cli.main import main

sys.exit(main())

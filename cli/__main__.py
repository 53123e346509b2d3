"""``python -m cli ...`` is the ``rose`` command."""

import sys

from cli.main import main

sys.exit(main())

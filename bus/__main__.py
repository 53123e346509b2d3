"""``python -m bus [options]`` runs the broker, like ``rose bus``."""

import sys

from rose.cli import main

if __name__ == "__main__":
    sys.exit(main(["bus", *sys.argv[1:]]))

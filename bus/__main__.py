"""``python -m bus [options]`` runs the broker, like ``rose bus`` (a program entry)."""

import sys

from cli.main import main

if __name__ == "__main__":
    sys.exit(main(["bus", *sys.argv[1:]]))

"""The `fluxfill` command line."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Run the command line."""
    del argv
    sys.stderr.write("fluxfill: no commands yet\n")
    return 2

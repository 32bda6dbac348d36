"""The `fluxfill` command's entry point: a Ctrl-C while the command line is still being imported (numpy,
Pillow, the Triton and Google clients: a few tenths of a second) is one line and exit 4, as it is once a
command runs (fluxfill.client.cli), not Python's traceback.

Nothing is imported here before the try but the standard library's `re` and `sys`, so the window that is
left is Python's own start.
"""

import re
import sys

# fluxfill.client.errors.EXIT_STOPPED; not imported from there, since that import is what may be interrupted
# (a test keeps the two equal).
EXIT_STOPPED = 4


def main() -> int:
    """Import the command line and run it; a Ctrl-C before it takes over ends with one line."""
    try:
        from fluxfill.client.cli import main as run_command

        return run_command()
    except KeyboardInterrupt:
        sys.stderr.write(f"{_program()}: interrupted (Ctrl-C)\n")
        return EXIT_STOPPED


def _program() -> str:
    """`fluxfill COMMAND` as the command line's own lines begin, read from the arguments (the parser is what
    was being imported): a first argument that is a word names the command."""
    first = sys.argv[1] if len(sys.argv) > 1 else ""
    return f"fluxfill {first}" if re.fullmatch(r"[a-z][a-z-]*", first) else "fluxfill"

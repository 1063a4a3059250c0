"""The ``ferry`` console script's entry: everything, imports included, under one Ctrl-C rule.

A Ctrl-C at any moment (even while Python is still importing Invoke) ends
the command quietly with status 130, as a shell expects of an interrupted
program; inside a task the task decides first (``run`` detaches from its job).
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .program import program

        program.run()
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(130)

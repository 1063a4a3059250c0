"""The ``ferry`` console script's entry: everything, imports included, under one Ctrl-C rule.

A Ctrl-C at any moment (even while Python is still importing Invoke) ends
the command quietly with status 130, as a shell expects of an interrupted
program; inside a task the task decides first (``run`` detaches from its job).
A closed stdout (``ferry --list | head -1``) ends it quietly with 141.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    try:
        from .program import program

        program.run()
        sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(130)
    except BrokenPipeError:  # whoever read our stdout went away (`| head`): stop quietly, as a pipeline would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)

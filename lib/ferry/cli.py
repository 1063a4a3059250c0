"""The ``ferry`` console script: ferry's task collection without needing a tasks.py.

It differs from ``inv`` in one way: a command line Invoke cannot parse is a
usage error, so it gets ferry's one-line ``error:``/``hint:`` and exit
status 2 (``inv`` itself exits 1 there).
"""

from __future__ import annotations

import sys

from invoke import Program
from invoke.exceptions import ParseError

from . import __version__
from .tasks import ns


class FerryProgram(Program):
    def _usage_error(self, exc: ParseError) -> None:
        print(f"error: {exc}", file=sys.stderr)
        print("hint: see ferry --list, or ferry --help TASK", file=sys.stderr)
        sys.exit(2)

    def parse_core(self, argv):
        try:
            super().parse_core(argv)
        except ParseError as exc:
            self._usage_error(exc)

    def parse_tasks(self):
        try:
            super().parse_tasks()
        except ParseError as exc:
            self._usage_error(exc)
        except ValueError as exc:  # Invoke casts flags with numeric defaults itself
            self._usage_error(ParseError(f"bad value: {exc}"))


program = FerryProgram(namespace=ns, name="ferry", binary="ferry", version=__version__)


def main() -> None:
    program.run()

"""The ``ferry`` console script: ferry's task collection without needing a tasks.py."""

from __future__ import annotations

from invoke import Program

from . import __version__
from .tasks import ns

program = Program(namespace=ns, name="ferry", binary="ferry", version=__version__)


def main() -> None:
    program.run()

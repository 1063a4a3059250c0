"""What people see: tables and notes for humans, or exactly one JSON document with --json.

Results go to stdout; progress and notes go to stderr, so ``--json`` output
and job output can be piped without noise.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Sequence


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table (rich would colour it; alignment is what matters in a terminal or a pipe)."""
    if not rows:
        return
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    sys.stdout.flush()


def age(since: float | None) -> str:
    """How long ago ``since`` (epoch seconds) was, the way the duration flags spell it."""
    from .durations import human

    return human(max(0.0, time.time() - since)) if since else "-"

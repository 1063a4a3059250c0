"""What people see: notes, errors, tables, progress, or exactly one JSON document with ``--json``.

Library code logs (``logging.getLogger("ferry....")``); this module turns
those records into lines on stderr, so a custom task or a recipe shows the
same ``synced ...`` / ``downloaded ...`` lines as the built-in tasks. Results
go to stdout; progress and notes to stderr, so ``--json`` output and job
output pipe without noise. Colour and live progress come from ``rich``, only
on a terminal and never with ``NO_COLOR``; rich is imported only when a
table, a bar or colour is actually drawn (it costs ~30 ms to import).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Sequence

from . import config

STATE_STYLES = {"running": "green", "RUNNING": "green", "succeeded": "green", "failed": "red", "lost": "red",
                "killed": "yellow", "timed_out": "yellow", "STOPPED": "yellow", "PENDING": "cyan",
                "ERROR": "red", "TERMINATED": "dim"}
PROGRESS_AFTER = 1.0  # seconds a transfer runs before its bar appears (short ones stay quiet)


def colour(stream=None) -> bool:
    """Colour and live redraws: only on a terminal, never with NO_COLOR set (https://no-color.org)."""
    stream = stream or sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return tty and not config.getenv("NO_COLOR") and config.getenv("TERM") != "dumb"


def terminal() -> bool:
    """Both ends of an interactive session are a terminal (what ssh and attach need)."""
    try:
        return sys.stdin.isatty() and sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def confirm(question: str) -> bool:
    """Ask on the terminal; False (never a hang) when there is none to ask on."""
    if not terminal():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _console(stream):
    from rich.console import Console

    return Console(file=stream, highlight=False, soft_wrap=True, no_color=not colour(stream),
                   force_terminal=colour(stream), emoji=False, markup=False)


def console(stream=None):
    """A rich Console on ``stream`` (stdout), coloured only on a terminal."""
    return _console(stream or sys.stdout)


_live_status = [False]  # a status line is on the terminal, to be cleared before anything else is printed


def _clear_status() -> None:
    if _live_status[0]:
        sys.stderr.write("\r\x1b[K")
        _live_status[0] = False


def note(message: str) -> None:
    _clear_status()
    print(message, file=sys.stderr, flush=True)


def error(message: str, hint: str | None = None) -> None:
    """The one presentation of an expected failure: ``error:`` (red) and ``hint:`` (dim) on stderr."""
    _clear_status()
    if colour():
        from rich.text import Text

        console = _console(sys.stderr)
        console.print(Text("error: ", style="bold red") + Text(message))
        if hint:
            console.print(Text(f"hint: {hint}", style="dim"))
        return
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.stderr.flush()


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


WRAPPABLE = frozenset({"AUTOSTOP", "SSH", "COMMAND", "LABEL", "PROJECT", "DESCRIPTION"})


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[str] = ()) -> None:
    """An aligned table on stdout, ``right`` columns (money) right-aligned; on a terminal rich's, states coloured."""
    if not rows:
        return
    if not colour(sys.stdout):
        cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        for row in cells:
            print("  ".join(c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(row, widths, headers)).rstrip())
        sys.stdout.flush()
        return
    from rich.table import Table
    from rich.text import Text

    grid = Table(box=None, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0), header_style="bold")
    for header in headers:  # on a narrow terminal the long text columns wrap; names, states and money never do
        grid.add_column(header, justify="right" if header in right else "left", no_wrap=header not in WRAPPABLE)
    for row in rows:
        cells = []
        for value in row:
            text = "" if value is None else str(value)
            style = STATE_STYLES.get(text.split(" ")[0], "")
            cells.append(Text(text, style=style))
        grid.add_row(*cells)
    _console(sys.stdout).print(grid)
    sys.stdout.flush()


def size(n: float) -> str:
    """Bytes as people read them: 512 B, 3.4 KB, 1.2 GB."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# -- progress -------------------------------------------------------------------------------------------
class TransferBar:
    """One live bar on stderr (rich), drawn only on a terminal and once a transfer has run ``after`` seconds."""

    def __init__(self, label: str, total: int | None = None, after: float | None = None):
        self.label, self.total = label, total
        self.after = PROGRESS_AFTER if after is None else after
        self.started = time.monotonic()
        self.enabled = colour(sys.stderr)
        self._progress = None
        self._task = None

    def update(self, done: int, percent: int | None = None, total: int | None = None) -> None:
        if not self.enabled or time.monotonic() - self.started < self.after:
            return
        total = total or self.total
        if total is None and percent:
            total = int(done * 100 / max(percent, 1))
        if self._progress is None:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self._progress = Progress(TextColumn(self.label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                      TimeRemainingColumn(), console=_console(sys.stderr), transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=total)
        self._progress.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# -- library logging, presented -------------------------------------------------------------------------
STATUS_EVERY = 10.0  # seconds between status lines when stderr is not a terminal


class _Lines(logging.Handler):
    """ferry's log records as plain lines on stderr (warnings carry their own ``warning:`` wording).

    A record with ``extra={"status": True}`` is a live status (what a launch
    waits for): on a terminal it redraws one line in place, elsewhere it is
    printed at most every STATUS_EVERY seconds. In a script (``own=False``)
    a record also propagates, and this handler stays quiet once the user has
    configured logging themselves.
    """

    def __init__(self, own: bool):
        super().__init__()
        self.own = own
        self.last_status = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if not self.own and logging.getLogger().handlers:
            return  # the user's own logging shows it
        try:
            message = record.getMessage()
            if getattr(record, "status", False):
                if colour(sys.stderr):
                    sys.stderr.write(f"\r\x1b[K{message}")
                    sys.stderr.flush()
                    _live_status[0] = True
                elif time.monotonic() - self.last_status >= STATUS_EVERY:
                    self.last_status = time.monotonic()
                    print(message, file=sys.stderr, flush=True)
                return
            _clear_status()
            print(message, file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break a command
            self.handleError(record)


def install_logging(debug: bool = False, own: bool = True) -> None:
    """Show the library's INFO lines (DEBUG with ``debug``) on stderr, once.

    ``own=True`` (the task layer): ferry presents its own lines, whatever
    Invoke's ``--debug`` did to the root logger. ``own=False`` (a script
    calling ferry.launch): only until the script configures logging itself.
    """
    logger = logging.getLogger("ferry")
    mine = [h for h in logger.handlers if isinstance(h, _Lines)]
    if not mine:
        if logger.handlers:  # the user configured ferry's logger: leave it alone
            return
        mine = [_Lines(own)]
        logger.addHandler(mine[0])
    if own:
        mine[0].own = True
        logger.propagate = False
    if logger.level == logging.NOTSET or own:
        logger.setLevel(logging.DEBUG if debug else logging.INFO)

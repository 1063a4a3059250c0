"""``sync --watch``: keep the instance in step with the tree, one sync per burst of changes.

watchfiles (inotify/FSEvents through Rust) reports changes; a burst (an
editor's save, a ``git checkout``) is gathered until the tree has been quiet
for ``debounce`` seconds, then one ordinary ``sync_up`` runs. That sync
re-reads the same file set and compares it with the local record of the last
sync, so it sends only what changed, deletes only what ferry sent and is gone,
and costs no network at all when the burst only touched ignored files.
Events under ``.git/``, ``.ferry/`` (where ferry writes its record: watching
it would loop) and directories wholly outside the set (a venv, a data dir)
are dropped before they wake us.

A failed sync keeps its changes pending: a lost connection is retried with
backoff (1 s doubling to ``max_backoff``), re-reading the instance from the
project's state file each time, so an instance restarted on a new port is
found again. A changed host key stops the watch; Ctrl-C (or SIGTERM, which
is all a watcher started in the background ever gets) stops it cleanly.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from pathlib import Path


from .backoff import Backoff
from .handle import Box, resolve
from .errors import FerryError, HostKeyError, UsageError
from .report import report
from .sync import upload

log = logging.getLogger(__name__)


class _Filter:
    """watchfiles filter: drop events that can never change the file set's contents."""

    def __init__(self, root: Path):
        self.root = str(root).rstrip("/") + "/"
        self.skip: set[str] = {".git", ".ferry"}

    def update(self, ignored_dirs: list[str]) -> None:
        self.skip = {".git", ".ferry", *ignored_dirs}

    def __call__(self, change, path: str) -> bool:
        if not path.startswith(self.root):
            return True
        rel = path[len(self.root):]
        cut = rel.find("/")
        while cut > 0:
            if rel[:cut] in self.skip:
                return False
            cut = rel.find("/", cut + 1)
        return rel not in self.skip


class _Watcher:
    """The loop's state: pending changes, the backoff after a failure, and how many syncs ran."""

    def __init__(self, box: Box, delete: str, max_backoff: float, keep: _Filter):
        self.box, self.delete, self.keep = box, delete, keep
        self.syncs = 0
        self.pending, self.first = True, True
        self.retry = Backoff(first=1.0, cap=max_backoff)
        self.next_try = 0.0

    def _say(self, line: str) -> None:
        log.info("%s %s", time.strftime("%H:%M:%S"), line)

    def step(self, changed: bool) -> None:
        """After a batch of changes (or a quiet timeout), sync if something is pending and backoff allows."""
        self.pending = self.pending or changed
        if not self.pending or time.monotonic() < self.next_try:
            return
        name = self.box.name
        try:
            # Re-read the record: a restarted instance may have a new port.
            self.box.instance = resolve(self.box.settings, name)
            result = upload(self.box, delete=self.delete, progress=False, announce=False)
        except (HostKeyError, UsageError):
            raise
        except FerryError as exc:
            delay = self.retry.failed()
            self.next_try = time.monotonic() + delay
            self._say(f"sync to {name} failed: {exc.message}; retrying in {delay:.0f}s (changes are kept)")
            return
        if self.retry.failing_since is not None:
            self._say(f"reconnected to {name}")
        self.retry.succeeded()
        self.pending = False
        if result.fileset is not None:
            self.keep.update(result.fileset.ignored_dirs())
        if self.first or result.how != "unchanged":
            self.syncs += 1
            if result.sent and not self.first:
                shown = ", ".join(result.sent[:8]) + (f" and {len(result.sent) - 8} more" if len(result.sent) > 8 else "")
                self._say(f"sent {shown}")
            if result.deleted:
                self._say(f"deleted {', '.join(result.deleted[:8])}" + (" ..." if len(result.deleted) > 8 else ""))
            report(result, "synced", say=self._say)
        self.first = False


def watch(box: Box, delete: str = "sent", debounce: float = 0.2, max_backoff: float = 30.0,
          stop: threading.Event | None = None) -> int:
    """Sync now, then after every burst of changes, until Ctrl-C, SIGTERM or ``stop``. Returns the sync count."""
    from watchfiles import watch as watch_tree  # a Rust extension: loaded only when watching

    if debounce < 0 or max_backoff <= 0:
        raise UsageError("debounce must be >= 0 and max_backoff > 0")
    project = box.project_dir
    keep = _Filter(project)
    watcher = _Watcher(box, delete, max_backoff, keep)
    log.info("watching %s for changes (Ctrl-C stops)", project)
    try:
        with _sigterm_as_interrupt():
            # The first sync runs at the first (timeout) yield, once the watcher is in place,
            # so nothing written while it runs is missed.
            for changes in watch_tree(
                project, watch_filter=keep, debounce=1600, step=max(1, int(debounce * 1000)),
                rust_timeout=500, yield_on_timeout=True, stop_event=stop, raise_interrupt=True,
            ):
                watcher.step(bool(changes))
    except KeyboardInterrupt:
        pass
    log.info("stopped watching after %d sync%s", watcher.syncs, "s" if watcher.syncs != 1 else "")
    return watcher.syncs


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM ends the watch like Ctrl-C (main thread only; elsewhere the caller's ``stop`` event does)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

"""Waiting well: one retry policy for cloud calls, one backoff for every reconnect loop.

``call`` retries a cloud API call that failed transiently (429, 5xx,
timeouts, dropped connections: a provider raises ``TransientError`` for
those) with exponential backoff and full jitter, bounded in attempts *and*
in time, never sooner than the server's ``Retry-After``. The provider
registry applies it to every verb, once, so nothing above it retries again.

``Backoff`` is the state of a loop that reconnects (following a job,
waiting for one, a port forward, ``sync --watch``, waiting for an instance
to come up): the next delay, doubling to a cap; a reset after progress; and
how long it has been failing, so a loop can give up after a window.

Why not tenacity: its decorator model fits "call this until it works", not
loops that resume a stream at a byte offset and reset their delay whenever
bytes arrive, and a Retry-After floor plus a look-up between attempts would
need custom hooks for each; what is here is shorter than that wiring, and
costs no import on the start-up path.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, TypeVar

from .errors import TransientError

T = TypeVar("T")


class Policy(NamedTuple):
    """How hard to retry a cloud call: at most ``attempts`` tries within ``budget`` seconds."""

    attempts: int = 6
    budget: float = 60.0
    base: float = 0.5
    cap: float = 8.0

    def delays(self):
        """Full-jitter backoff (AWS architecture blog): sleep U(0, min(cap, base*2^n)) before try n+2."""
        import random

        for n in range(self.attempts - 1):
            yield random.uniform(0, min(self.cap, self.base * (2**n)))


DEFAULT = Policy()


def call(fn: Callable[[], T], policy: Policy = DEFAULT,
         before_retry: Callable[[TransientError], T | None] | None = None,
         sleep: Callable[[float], None] | None = None) -> T:
    """Run ``fn``; on TransientError back off and try again, within the policy's attempts and budget.

    The server's Retry-After is a floor on the wait, and a wait that would
    cross the budget ends the retrying at once (the last error is raised).
    ``before_retry`` may return a value to stop retrying with: the registry
    uses it to find an instance whose create response was lost.
    """
    deadline = time.monotonic() + policy.budget
    schedule = policy.delays()
    while True:
        try:
            return fn()
        except TransientError as exc:
            wait = next(schedule, None)
            if wait is None:
                raise
            wait = max(wait, exc.retry_after or 0.0)
            if time.monotonic() + wait > deadline:
                raise
            (sleep or time.sleep)(wait)
            if before_retry is not None:
                try:
                    found = before_retry(exc)
                except TransientError:
                    found = None  # the look-up failed too; the next attempt will tell
                if found is not None:
                    return found


class Backoff:
    """Delays for a reconnect loop: ``first`` doubling up to ``cap``; ``window`` seconds of failure is too long.

    Call ``failed()`` after each failure (it returns the delay to wait, and
    starts the failure clock on the first one), ``succeeded()`` after any
    progress, and ``expired`` to ask whether the loop has failed for longer
    than its window.
    """

    def __init__(self, first: float = 0.05, cap: float = 10.0, factor: float = 2.0, window: float | None = None):
        self.first, self.cap, self.factor, self.window = first, cap, factor, window
        self.delay = first
        self.failing_since: float | None = None

    def failed(self) -> float:
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since, self.delay = now, self.first
        delay = self.delay
        self.delay = min(self.delay * self.factor, self.cap)
        return delay

    def succeeded(self) -> None:
        self.failing_since, self.delay = None, self.first

    @property
    def failing_for(self) -> float:
        return 0.0 if self.failing_since is None else time.monotonic() - self.failing_since

    @property
    def expired(self) -> bool:
        return self.window is not None and self.failing_for > self.window

    def sleep(self) -> float:
        """``failed()`` and wait that long; returns the delay waited."""
        delay = self.failed()
        time.sleep(delay)
        return delay


def poll(ready: Callable[[], T | None], timeout: float, first: float = 0.02, cap: float = 1.0,
         factor: float = 2.0, on_wait: Callable[[float], None] | None = None) -> T | None:
    """Ask ``ready()`` until it returns something other than None, backing off; None after ``timeout``.

    ``on_wait(elapsed)`` is called before each wait (a live status line, a cancel check that raises).
    """
    started = time.monotonic()
    backoff = Backoff(first=first, cap=cap, factor=factor)
    while True:
        value = ready()
        if value is not None:
            return value
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            return None
        if on_wait is not None:
            on_wait(elapsed)
        time.sleep(min(backoff.failed(), max(0.0, timeout - elapsed) + 0.001))

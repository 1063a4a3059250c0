"""Retrying cloud API calls: exponential backoff with full jitter, bounded in count and time.

Only failures a provider classified as transient (429, 5xx, timeouts,
dropped connections) are retried; any other 4xx fails at once with the
provider's own message. A create is never retried blindly here: lifecycle
looks the instance up by name between attempts, because a lost response
may mean the instance exists.
"""

from __future__ import annotations

import random
import time
from typing import Callable, TypeVar

from .errors import TransientError

T = TypeVar("T")

ATTEMPTS = 6
BUDGET_SECONDS = 60.0
BASE_DELAY = 0.5
MAX_DELAY = 8.0


def delays(attempts: int = ATTEMPTS, base: float = BASE_DELAY, cap: float = MAX_DELAY):
    """Full-jitter backoff (AWS architecture blog): sleep U(0, min(cap, base*2^n))."""
    for n in range(attempts - 1):
        yield random.uniform(0, min(cap, base * (2**n)))


def call(
    fn: Callable[[], T],
    attempts: int = ATTEMPTS,
    budget: float = BUDGET_SECONDS,
    before_retry: Callable[[TransientError], T | None] | None = None,
) -> T:
    """Run ``fn``; on TransientError back off and try again, up to ``attempts`` or ``budget`` seconds.

    ``before_retry`` may return a value to stop retrying with (lifecycle uses
    it to find an instance whose create response was lost).
    """
    deadline = time.monotonic() + budget
    schedule = delays(attempts)
    while True:
        try:
            return fn()
        except TransientError as exc:
            wait = next(schedule, None)
            if wait is None:
                raise
            wait = max(wait, exc.retry_after or 0)  # the server's Retry-After is a floor
            if time.monotonic() + wait > deadline:
                raise
            time.sleep(wait)
            if before_retry is not None:
                try:
                    found = before_retry(exc)
                except TransientError:
                    found = None  # the lookup failed too; the next attempt will tell
                if found is not None:
                    return found

"""ferry's names for Thunder Compute's instances, kept in ``~/.ferry/thunder/names.json``.

Thunder has no instance names, labels or tags (it calls instances ``tnr-<n>``).
The book maps instance id (checked against the instance's uuid, so a reused
id is never mistaken for ours) -> ferry name and labels, written *before*
``create`` returns. So that a create whose answer was lost (a 5xx after the
fact, a dropped connection) is still found by name, ``create`` first writes a
*pending claim* (name, labels, GPU, count, start time, ferry's public key);
``reconcile`` then gives each pending claim the newest instance nobody has
claimed that matches it: same GPU type and count, ferry's key among its
``sshPublicKeys`` (when the API lists keys), created inside the create
window. Limitation: the book lives on the machine that launched; another
machine sees the instance under Thunder's own name without ferry's labels.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ...records import Status
from ...store import JsonStore

log = logging.getLogger(__name__)

PENDING_TTL = 30 * 60  # a pending claim older than this is dropped (its create is long over)
CREATE_SKEW = 120  # seconds of clock difference tolerated between this machine and Thunder's createdAt
FORGET_AFTER = 120  # a mapped id missing from the list this long after it was recorded is forgotten


def _empty() -> dict[str, Any]:
    return {"instances": {}, "pending": {}}


def _shape(data: Any) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("instances", {}), dict) \
            or not isinstance(data.get("pending", {}), dict):
        return "expected {\"instances\": {...}, \"pending\": {...}}"
    return None


def epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def as_int(value: Any, default: int = 0) -> int:
    """Thunder sends numGpus, cpuCores and memory as strings."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


class NameBook:
    """``{"instances": {id: {name, uuid, labels, recorded_at}}, "pending": {name: {...}}}``, on a JsonStore."""

    def __init__(self, path: Path, status_of: Callable[[dict[str, Any]], Status]):
        self.store = JsonStore(path, default=_empty, mode=0o600, check=_shape,
                               hint=f"fix or remove {path} (ferry then shows Thunder's own instance names)")
        self.status_of = status_of

    def read(self) -> dict[str, Any]:
        data = self.store.read()
        data.setdefault("instances", {})
        data.setdefault("pending", {})
        return data

    def _edit(self):
        return self.store.edit()

    # -- a create's claim -------------------------------------------------------------------
    def note_pending(self, name: str, labels: Mapping[str, str], gpu_type: str, num_gpus: int, key: str) -> None:
        now = time.time()
        with self._edit() as book:
            pending = book.setdefault("pending", {})
            claim = pending.get(name) or {"started_at": now}
            claim.update({"labels": dict(labels), "gpu_type": gpu_type, "num_gpus": num_gpus, "key": key,
                          "last_attempt_at": now})
            pending[name] = claim

    def drop_pending(self, name: str) -> None:
        with self._edit() as book:
            book.setdefault("pending", {}).pop(name, None)

    def record(self, iid: str, uuid: str | None, name: str, labels: Mapping[str, str]) -> None:
        with self._edit() as book:
            instances, pending = book.setdefault("instances", {}), book.setdefault("pending", {})
            pending.pop(name, None)
            for other, entry in list(instances.items()):
                if other != iid and entry.get("name") == name and entry.get("claim"):
                    del instances[other]  # reconcile guessed another instance for this name: release it
            prior = instances.get(iid)
            if prior and prior.get("name") != name and prior.get("claim"):
                # reconcile gave this instance to another pending create; the create's own answer wins,
                # and that other create goes back to waiting for its instance.
                pending[prior["name"]] = prior["claim"]
            instances[iid] = {"name": name, "uuid": uuid, "labels": dict(labels), "recorded_at": time.time()}

    def forget(self, iid: str) -> None:
        with self._edit() as book:
            book.setdefault("instances", {}).pop(str(iid), None)

    # -- the list, reconciled -------------------------------------------------------------------
    def reconcile(self, listed: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The book after claiming lost creates and forgetting instances that are gone."""
        book = self.read()
        now = time.time()
        stale = [i for i, e in book["instances"].items() if not owns(e, listed.get(i), now)]
        if not (book["pending"] or stale):
            return book
        with self._edit() as book:
            instances, pending = book.setdefault("instances", {}), book.setdefault("pending", {})
            expired = [n for n, c in pending.items() if now - c.get("started_at", 0) > PENDING_TTL]
            for iid in [i for i, e in instances.items() if not owns(e, listed.get(i), now)]:
                del instances[iid]
            for name in expired:
                pending.pop(name, None)
            for name, claim in sorted(pending.items(), key=lambda kv: kv[1].get("started_at", 0)):
                taken = set(instances)
                found = self._match(claim, {i: v for i, v in listed.items() if i not in taken})
                if found is not None:
                    instances[found] = {"name": name, "uuid": listed[found].get("uuid"),
                                        "labels": claim.get("labels") or {}, "recorded_at": now, "claim": claim}
                    del pending[name]
                    log.debug("thunder: instance %s is %s, whose create answer was lost", found, name)
            return book

    def _match(self, claim: dict[str, Any], unclaimed: dict[str, dict[str, Any]]) -> str | None:
        """The newest unclaimed instance that this pending create could have made, or None."""
        earliest = claim.get("started_at", 0) - CREATE_SKEW
        latest = claim.get("last_attempt_at", claim.get("started_at", 0)) + CREATE_SKEW
        best, best_at = None, (-1.0, -1)
        for iid, inst in unclaimed.items():
            if self.status_of(inst) == Status.TERMINATED:
                continue
            if str(inst.get("gpuType") or "").lower() != str(claim.get("gpu_type") or "").lower():
                continue
            if as_int(inst.get("numGpus"), -1) != claim.get("num_gpus"):
                continue
            keys = inst.get("sshPublicKeys")
            if keys and claim.get("key") and not any(claim["key"] in str(k) for k in keys):
                continue
            created = epoch(inst.get("createdAt"))
            if created is not None and not earliest <= created <= latest:
                continue
            order = (created if created is not None else 0.0, as_int(iid, 0))  # ids break ties within a second
            if order > best_at:
                best, best_at = iid, order
        return best


def owns(entry: dict[str, Any], inst: dict[str, Any] | None, now: float) -> bool:
    """Does this book entry still describe a live instance (same id *and* same uuid)?"""
    if inst is None:
        return now - entry.get("recorded_at", now) < FORGET_AFTER  # just created: the list may lag
    return not entry.get("uuid") or not inst.get("uuid") or entry["uuid"] == inst["uuid"]

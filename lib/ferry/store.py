"""Every local record ferry keeps is one JSON document, changed under a lock and written atomically.

The project's state (``.ferry/state.json``), Thunder's name book, the sync
records, the local provider's metadata: each is a :class:`JsonStore`. A
change happens under an exclusive ``flock`` on a sibling ``.lock`` file (so
two terminals, or the threads of ``launch --count``, never lose each other's
writes) and lands by rename of a fsynced temporary file (so a crash never
leaves half a document). Reading needs no lock: a rename is atomic.

A record that is missing reads as its default. One that is unreadable or of
the wrong shape is, for a *cache* (``cache=True``: sync records), discarded
with a note; for a *record of truth* (project state), an error naming the
file and the fix, never a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .errors import FerryError

if TYPE_CHECKING:
    from .records import Instance

log = logging.getLogger(__name__)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a sibling temp file, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock between ferry processes and threads (each open() is its own lock)."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


class JsonStore:
    """One JSON document on disk: ``read()``, ``write(doc)``, and ``edit()`` (read-modify-write under the lock).

    ``default`` makes the document a missing file stands for. ``check``
    returns a reason when a parsed document has the wrong shape (None when
    it is fine). ``hint`` is the fix an error about this file suggests.
    """

    def __init__(self, path: Path, default: Callable[[], Any] = dict, *, mode: int = 0o644,
                 check: Callable[[Any], str | None] | None = None, cache: bool = False, hint: str | None = None):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.default = default
        self.mode = mode
        self.check = check
        self.cache = cache
        self.hint = hint or f"fix or remove {self.path}"

    def read(self) -> Any:
        try:
            data = json.loads(self.path.read_bytes().decode("utf-8", "surrogateescape"))
        except FileNotFoundError:
            return self.default()
        except (OSError, ValueError) as exc:
            return self._bad(f"cannot read {self.path}: {exc}")
        reason = self.check(data) if self.check is not None else None
        if reason:
            return self._bad(f"{self.path} is not what ferry wrote: {reason}")
        return data

    def _bad(self, message: str) -> Any:
        if self.cache:
            log.info("note: %s; ferry discards it and starts afresh", message)
            return self.default()
        raise FerryError(message, hint=self.hint)

    def write(self, data: Any) -> None:
        text = json.dumps(data, indent=None if self.cache else 2, sort_keys=True, separators=None if not self.cache
                          else (",", ":"))
        write_atomic(self.path, (text + "\n").encode("utf-8", "surrogateescape"), mode=self.mode)

    @contextlib.contextmanager
    def edit(self) -> Iterator[Any]:
        """Yield the document; it is written back (only if it changed) when the block ends cleanly."""
        with locked(self.lock_path):
            data = self.read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before or not self.path.exists():
                self.write(data)

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


# -- the project's record: which instances it made and which is current -------------------------
def _state_shape(data: Any) -> str | None:
    if not isinstance(data, dict):
        return f"expected an object, found {type(data).__name__}"
    if data.get("current") is not None and not isinstance(data.get("current"), str):
        return "'current' is not an instance name"
    instances = data.get("instances", {})
    if not isinstance(instances, dict):
        return "'instances' is not an object of name -> instance"
    for name, record in instances.items():
        if not isinstance(record, dict):
            return f"instance {name!r} is not an object"
        for field in ("id", "name", "provider"):
            if not isinstance(record.get(field), str) or not record.get(field):
                return f"instance {name!r} has no {field}"
    return None


def keep_out_of_git(project: Path) -> None:
    """``.ferry/`` is this machine's record, never the project's content: list it in ``.git/info/exclude``.

    That file is the repository's own, per clone and never committed, so
    nothing the user shares changes. Done once, when ``.ferry/`` is first made.
    """
    exclude = project / ".git" / "info" / "exclude"
    if not (project / ".git").is_dir():
        return
    try:
        text = exclude.read_text() if exclude.exists() else ""
        if not any(line.strip() in ("/.ferry/", ".ferry/", "/.ferry", ".ferry") for line in text.splitlines()):
            exclude.parent.mkdir(parents=True, exist_ok=True)
            with open(exclude, "a") as fh:
                fh.write(("" if not text or text.endswith("\n") else "\n") + "/.ferry/\n")
    except OSError:
        log.debug("could not add .ferry/ to %s", exclude)


class ProjectState:
    """``.ferry/state.json``: instances this project launched, keyed by name, plus the name of the current one.

    Chained tasks share one process, but a later ``ferry run`` is a new one:
    this file is how it finds the instance.
    """

    def __init__(self, project_dir: Path):
        self.dir = Path(project_dir) / ".ferry"
        self.path = self.dir / "state.json"
        self.store = JsonStore(self.path, default=lambda: {"current": None, "instances": {}}, check=_state_shape,
                               hint=f"fix or remove {self.path}; ferry rebuilds it on the next launch "
                                    "(instances it forgets stay on their cloud: see `ferry ls --all`)")

    def read(self) -> dict[str, Any]:
        data = self.store.read()
        data.setdefault("current", None)
        data.setdefault("instances", {})
        return data

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        if not self.dir.exists():
            keep_out_of_git(self.dir.parent)
        with self.store.edit() as data:
            data.setdefault("current", None)
            data.setdefault("instances", {})
            yield data

    def get(self, name: str) -> "Instance | None":
        from .records import Instance

        record = self.read()["instances"].get(name)
        return Instance.from_dict(record) if record else None

    def current_name(self) -> str | None:
        return self.read()["current"]

    def instances(self) -> "list[Instance]":
        from .records import Instance

        return [Instance.from_dict(r) for r in self.read()["instances"].values()]

    def record(self, instance: "Instance", make_current: bool = True) -> bool:
        """Record ``instance``; returns True when it became the current one (it was not before)."""
        with self.edit() as data:
            data["instances"][instance.name] = instance.to_dict()
            changed = make_current and data["current"] != instance.name
            if make_current:
                data["current"] = instance.name
        return changed

    def forget(self, name: str) -> None:
        with self.edit() as data:
            data["instances"].pop(name, None)
            if data["current"] == name:
                data["current"] = next(iter(data["instances"]), None)

"""The project's local record, ``.ferry/state.json``: which instances it made and which is current.

Chained tasks share one Invoke config, but a later ``inv run`` is a new
process: this file is how it finds the instance. Every change happens under
an exclusive lock and lands by atomic rename, so two terminals never
interleave writes and a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import FerryError
from .instance import Instance


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write to a sibling temp file, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
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


class ProjectState:
    """Instances this project launched, keyed by name, plus the name of the current one."""

    def __init__(self, project_dir: Path):
        self.dir = Path(project_dir) / ".ferry"
        self.path = self.dir / "state.json"
        self.lock_path = self.dir / "state.lock"

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"current": None, "instances": {}}
        except (OSError, ValueError) as exc:
            raise FerryError(
                f"cannot read {self.path}: {exc}",
                hint=f"fix or remove {self.path}; ferry rebuilds it on the next launch",
            ) from exc
        data.setdefault("current", None)
        data.setdefault("instances", {})
        return data

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        """Yield the state for changes; they are written atomically when the block ends cleanly."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            yield data
            write_atomic(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def get(self, name: str) -> Instance | None:
        record = self.read()["instances"].get(name)
        return Instance.from_dict(record) if record else None

    def current_name(self) -> str | None:
        return self.read()["current"]

    def instances(self) -> list[Instance]:
        return [Instance.from_dict(r) for r in self.read()["instances"].values()]

    def record(self, instance: Instance, make_current: bool = True) -> None:
        with self.edit() as data:
            data["instances"][instance.name] = instance.to_dict()
            if make_current:
                data["current"] = instance.name

    def forget(self, name: str) -> None:
        with self.edit() as data:
            data["instances"].pop(name, None)
            if data["current"] == name:
                data["current"] = next(iter(data["instances"]), None)

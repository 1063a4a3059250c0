"""What a map keeps at home, in ``.ferry/maps/<id>/``, and where its items come from.

* ``map.json``      the map: command, items, fleet, slots, retries
* ``inflight.tsv``  one line per attempt, written *before* its job starts
                    (seq, attempt, member, job id, start)
* ``joblog.tsv``    one line per finished attempt, GNU parallel's joblog:
                    seq, item, member, start, runtime, exit value, attempt, job id
* ``logs/<seq>.<attempt>.log``

Every record is appended with one ``write`` per line to an ``O_APPEND``
file, so whatever kills ``ferry map`` leaves whole lines: ``--resume``
rebuilds the queue from them (workqueue.py).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError, cmd

JOBLOG_HEADER = "Seq\tItem\tMember\tStart\tRuntime\tExitval\tAttempt\tJobId\n"
INFLIGHT_HEADER = "Seq\tAttempt\tMember\tJobId\tStart\n"


# -- items ------------------------------------------------------------------------------------------
def read_items(source: str | os.PathLike | None, stdin=None) -> list[str]:
    """One item per line from a file (``-`` = stdin); blank lines skipped, trailing ``\\r`` dropped."""
    if source is None:
        return []
    if str(source) == "-":
        text = (stdin or sys.stdin).read()
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UsageError(f"no items file {source}", hint="give a file with one item per line: --items shards.txt")
        text = path.read_text()
    return [line.rstrip("\r") for line in text.splitlines() if line.strip()]


def script_items(project: Path, directory: str) -> list[str]:
    """``--scripts DIR``: every executable file under DIR (inside the project), as ``DIR/sub/file``, sorted."""
    root = (project / directory).resolve()
    if not root.is_dir():
        raise UsageError(f"no directory {directory} in the project", hint="give a directory of executable scripts: --scripts jobs/")
    try:
        root.relative_to(project.resolve())
    except ValueError:
        raise UsageError(f"--scripts {directory} is outside the project", hint="scripts are sent with the project: keep them in it") from None
    found = sorted(str(p.relative_to(project.resolve())) for p in root.rglob("*")
                   if p.is_file() and os.access(p, os.X_OK))
    if not found:
        raise UsageError(f"no executable files under {directory}", hint=f"make them executable: chmod +x {shlex.quote(directory)}/*")
    return found


def command_for(template: str | None, item: str) -> str:
    """``{}`` becomes the shell-quoted item (the job also has it as $FERRY_ITEM); no template: run the script."""
    if template is None:
        return shlex.quote("./" + item)
    return template.replace("{}", shlex.quote(item))


def tsv(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


# -- what is kept at home -----------------------------------------------------------------------------
class MapDir:
    """``.ferry/maps/<id>/``: the map's definition, its append-only records and one log per attempt."""

    def __init__(self, path: Path):
        self.path = path
        self.logs = path / "logs"
        self._lock = threading.Lock()

    @classmethod
    def root(cls, project: Path) -> Path:
        return project / ".ferry" / "maps"

    @classmethod
    def create(cls, project: Path, definition: dict) -> "MapDir":
        from .store import keep_out_of_git

        root = cls.root(project)
        if not root.exists():
            keep_out_of_git(project)
        root.mkdir(parents=True, exist_ok=True)
        base = time.strftime("%Y%m%d-%H%M%S")
        n = 0
        while True:
            map_id = base if n == 0 else f"{base}-{n}"
            try:
                (root / map_id).mkdir()
                break
            except FileExistsError:
                n += 1
        made = cls(root / map_id)
        made.logs.mkdir()
        definition = {**definition, "id": map_id}
        tmp = made.path / "map.json.tmp"
        tmp.write_text(json.dumps(definition, indent=1) + "\n")
        tmp.replace(made.path / "map.json")
        (made.path / "joblog.tsv").write_text(JOBLOG_HEADER)
        (made.path / "inflight.tsv").write_text(INFLIGHT_HEADER)
        (root / "last").write_text(map_id + "\n")
        return made

    @classmethod
    def find(cls, project: Path, map_id: str | None) -> "MapDir":
        root = cls.root(project)
        if map_id is None:
            last = root / "last"
            map_id = last.read_text().strip() if last.is_file() else None
            if not map_id:
                raise UsageError("this project has no map to resume", hint=f"start one: {cmd('map CMD --items FILE')}")
        if "/" in map_id or map_id.startswith(".") or not (root / map_id / "map.json").is_file():
            known = sorted(p.name for p in root.iterdir() if (p / "map.json").is_file()) if root.is_dir() else []
            raise UsageError(f"no map {map_id} in this project", hint=f"known: {', '.join(known[-5:]) or 'none'}")
        return cls(root / map_id)

    @property
    def id(self) -> str:
        return self.path.name

    def definition(self) -> dict:
        return json.loads((self.path / "map.json").read_text())

    def log_path(self, seq: int, attempt: int) -> Path:
        return self.logs / f"{seq}.{attempt}.log"

    def _append(self, name: str, line: str) -> None:
        """One write per line to an O_APPEND file: whole lines, whatever kills us."""
        with self._lock:
            fd = os.open(self.path / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def started(self, seq: int, attempt: int, member: str, job_id: str, start: float) -> None:
        self._append("inflight.tsv", f"{seq}\t{attempt}\t{member}\t{job_id}\t{start:.3f}\n")

    def finished(self, seq: int, item: str, member: str, start: float, runtime: float, exitval: str,
                 attempt: int, job_id: str) -> None:
        self._append("joblog.tsv", f"{seq}\t{tsv(item)}\t{member}\t{start:.3f}\t{runtime:.3f}\t{exitval}\t{attempt}\t{job_id}\n")

    def _rows(self, name: str) -> list[list[str]]:
        path = self.path / name
        if not path.is_file():
            return []
        lines = path.read_text().splitlines()[1:]
        return [line.split("\t") for line in lines if line.count("\t") >= 4]

    def joblog(self) -> list[dict]:
        keys = ("seq", "item", "member", "start", "runtime", "exitval", "attempt", "job_id")
        return [dict(zip(keys, row)) for row in self._rows("joblog.tsv") if len(row) == 8]

    def inflight(self) -> list[dict]:
        keys = ("seq", "attempt", "member", "job_id", "start")
        return [dict(zip(keys, row)) for row in self._rows("inflight.tsv") if len(row) == 5]


def succeeded_before(mapdir: MapDir) -> set[int]:
    """The seqs of items that succeeded in earlier runs of this map."""
    return {int(row["seq"]) for row in mapdir.joblog() if row["exitval"] == "0"}


def running(mapdir: MapDir) -> list[dict]:
    """Attempts started and never finished (by the joblog): what may still run on the members."""
    finished = {row["job_id"] for row in mapdir.joblog()}
    return [row for row in mapdir.inflight() if row["job_id"] not in finished]


@dataclass
class MapResult:
    """How a map ended: ``ok`` when every item succeeded."""

    id: str
    dir: Path
    total: int
    succeeded: list[str]
    failed: list[str]
    unrun: list[str]
    seconds: float
    members: dict[str, dict[str, int]]
    stopped: bool = False  # Ctrl-C: items may still be running on the members

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unrun and not self.stopped and len(self.succeeded) == self.total

    @property
    def joblog(self) -> Path:
        return self.dir / "joblog.tsv"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "dir": str(self.dir), "total": self.total, "succeeded": len(self.succeeded),
                "failed": self.failed, "unrun": self.unrun, "seconds": round(self.seconds, 3),
                "members": self.members, "joblog": str(self.joblog), "ok": self.ok}

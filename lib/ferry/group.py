"""``Fleet`` (``ferry.fleet()``): many instances as one, the way Fabric's ``Group`` is many ``Connection``s.

A fleet is either the instances one ``launch --count N --name NAME`` made
(``NAME-0`` .. ``NAME-{N-1}``; rank = index) or a list of hosts in config
(``ferry.fleets: {lab: [box1, box2]}``, hosts of ``ferry.hosts``). Every verb
acts on all members at once (bounded), and one member's failure never stops
the others: each returns a :class:`GroupResult` mapping every member to its
result or its exception::

    fleet = ferry.fleet(name="lab")
    fleet.sync()
    result = fleet.run("torchrun --nnodes $FERRY_NUM_NODES --node_rank $FERRY_NODE_RANK "
                       "--master_addr $FERRY_HEAD_IP train.py")     # raises ferry.FleetFailed on any failure
    fleet.download()                                                # into <member>/... each
    fleet.map("python shard.py {}", items=open("shards.txt"))      # one dynamic queue over every member
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Mapping, Sequence

from .config import Settings
from .errors import FerryError, NoInstanceError, UsageError, cmd
from .handle import Box
from .records import check_name
from .store import ProjectState

if TYPE_CHECKING:
    from invoke import Context

    from .follow import Cancel, JobResult

log = logging.getLogger(__name__)

MAX_PARALLEL = 16  # members acted on at once (each holds an ssh exec or a cloud call)
GROUP_LABEL = "ferry-group"  # the label launch --count gives every member: the fleet's name


class GroupResult(dict):
    """Member (a Box) -> its result, or the exception it raised; ``succeeded`` and ``failed`` split it."""

    @staticmethod
    def _ok(value: Any) -> bool:
        return not isinstance(value, BaseException) and getattr(value, "ok", True)

    @property
    def succeeded(self) -> "GroupResult":
        return GroupResult({box: value for box, value in self.items() if self._ok(value)})

    @property
    def failed(self) -> "GroupResult":
        return GroupResult({box: value for box, value in self.items() if not self._ok(value)})

    def by_name(self) -> dict[str, Any]:
        return {box.name: value for box, value in self.items()}


class FleetFailed(FerryError):
    """A fleet verb failed on some members; ``result`` is the whole :class:`GroupResult` (others' results too)."""

    def __init__(self, what: str, result: GroupResult, exit_code: int = 1, hint: str | None = None):
        failed = result.failed
        names = ", ".join(f"{box.name} ({describe(value)})" for box, value in failed.items())
        super().__init__(f"{what} failed on {len(failed)} of {len(result)} members: {names}", hint=hint,
                         exit_code=exit_code)
        self.result = result


def describe(value: Any) -> str:
    if isinstance(value, FerryError):
        return value.message
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    if hasattr(value, "describe"):
        return value.describe()
    return str(value)


def rank_of(name: str, base: str) -> int:
    """``base-3`` -> 3; anything else sorts last."""
    match = re.fullmatch(re.escape(base) + r"-(\d+)", name)
    return int(match.group(1)) if match else 1 << 30


# -- which fleet ---------------------------------------------------------------------------------
def members_of(settings: Settings, name: str | None = None) -> tuple[str, list[Box]]:
    """The fleet's name and its members in rank order (no API call; config fleets may launch ssh hosts)."""
    state = ProjectState(settings.project_dir)
    data = state.read()
    name = name or settings.data.get("fleet") or data.get("fleet") or None
    if name:
        check_name(name)
        configured = (settings.data.get("fleets") or {}).get(name)
        if configured is not None:
            return name, _configured(settings, name, configured)
        grouped = [r for r in state.instances() if r.labels.get(GROUP_LABEL) == name]
        if grouped:
            grouped.sort(key=lambda r: (rank_of(r.name, name), r.name))
            return name, [Box(settings, r) for r in grouped]
        single = state.get(name)
        if single is not None:
            return name, [Box(settings, single)]
        raise NoInstanceError(f"this project has no fleet or instance named {name}",
                              hint=f"launch one: {cmd(f'launch --count 2 --name {name}')}   (list: {cmd('fleet.ls')})")
    current = data.get("current")
    record = state.get(current) if current else None
    if record is None:
        raise NoInstanceError("this project has no fleet yet", hint=f"launch one: {cmd('launch --count 2 --name NAME')}")
    group = record.labels.get(GROUP_LABEL)
    if group:
        return members_of(settings, group)
    return record.name, [Box(settings, record)]


def _configured(settings: Settings, name: str, hosts: Any) -> list[Box]:
    """``ferry.fleets.NAME: [host, ...]``: hosts of ``ferry.hosts``, each adopted (bootstrapped) on first use."""
    from . import lifecycle

    if not isinstance(hosts, (list, tuple)) or not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise UsageError(f"ferry.fleets.{name} must be a list of host names from ferry.hosts",
                         hint="e.g. in invoke.yaml: ferry: {hosts: {box1: 'me@10.0.0.5'}, fleets: {lab: [box1]}}")
    known = settings.data.get("hosts") or {}
    missing = [h for h in hosts if h not in known]
    if missing:
        raise UsageError(f"ferry.fleets.{name} names hosts that are not in ferry.hosts: {', '.join(missing)}",
                         hint=f"add them: ferry: {{hosts: {{{missing[0]}: 'user@host:port'}}}}")
    state = ProjectState(settings.project_dir)
    boxes = []
    for host in hosts:
        record = state.get(host)
        if record is not None and record.provider == "ssh":
            boxes.append(Box(settings, record))
        else:
            boxes.append(lifecycle.launch(settings, name=host, provider="ssh", make_current=False))
    return boxes


def get(c: "Context | Settings | None" = None, name: str | None = None) -> "Fleet":
    """The fleet named (a ``launch --count`` group, a config fleet, or one instance), else the project's current one."""
    settings = Settings.of(c)
    fleet_name, boxes = members_of(settings, name)
    return Fleet(fleet_name, boxes)


def remember(settings: Settings, name: str) -> None:
    """Make ``name`` the project's current fleet (launch --count does)."""
    with ProjectState(settings.project_dir).edit() as data:
        data["fleet"] = name


# -- doing something everywhere -------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a fleet verb: ``result`` holds what each member had when it stopped (jobs keep running)."""

    def __init__(self, result: GroupResult):
        super().__init__("interrupted")
        self.result = result


def each(boxes: Sequence[Box], action: Callable[[Box], Any], limit: int = MAX_PARALLEL,
         cancel: "Cancel | None" = None) -> GroupResult:
    """``action(box)`` on every member at once (at most ``limit``); exceptions are results, never raised.

    Ctrl-C trips ``cancel`` (followers return at once, their jobs keep
    running), waits for every member, and raises :class:`Interrupted`.
    """
    from concurrent.futures import wait

    result = GroupResult()
    if not boxes:
        return result

    def one(box: Box) -> Any:
        try:
            return action(box)
        except Exception as exc:  # noqa: BLE001 - one member's failure is its result
            return exc

    pool = ThreadPoolExecutor(max_workers=min(limit, len(boxes)))
    futures = [pool.submit(one, box) for box in boxes]
    interrupted = False
    try:
        wait(futures)
    except KeyboardInterrupt:
        interrupted = True
        if cancel is not None:
            cancel.trip()
        wait(futures)
    finally:
        pool.shutdown(wait=True)
    for box, future in zip(boxes, futures):
        result[box] = future.result()
    if interrupted:
        raise Interrupted(result)
    return result


class Prefixer:
    """A binary stream for one member: whole lines go to ``out`` as ``NAME | line``, under one shared lock."""

    def __init__(self, out: BinaryIO, label: str, lock: threading.Lock, width: int = 0):
        self.out, self.lock = out, lock
        self.prefix = f"{label:<{width}} | ".encode()
        self.partial = b""

    def write(self, data: bytes) -> int:
        *lines, self.partial = (self.partial + data).split(b"\n")
        if lines:
            text = b"".join(self.prefix + line + b"\n" for line in lines)
            with self.lock:
                self.out.write(text)
                self.out.flush()
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self.partial:
            self.write(b"\n")


def node_env(boxes: Sequence[Box]) -> list[dict[str, str]]:
    """The multi-node variables each member's jobs see (torchrun's needs), rank 0 first."""
    ips = [node_ip(box) for box in boxes]
    gpus = str(max((box.instance.gpu_count for box in boxes), default=0))
    return [{"FERRY_NODE_RANK": str(rank), "FERRY_NUM_NODES": str(len(boxes)), "FERRY_NODE_IPS": "\n".join(ips),
             "FERRY_HEAD_IP": ips[0], "FERRY_NUM_GPUS_PER_NODE": gpus} for rank in range(len(boxes))]


def node_ip(box: Box) -> str:
    """The address other members reach this one on: the cloud's private address where it has one."""
    raw = box.instance.raw or {}
    private = raw.get("PrivateIpAddress") or raw.get("private_ip") or raw.get("privateIp")
    if private:
        return str(private)
    return box.instance.ssh.host if box.instance.ssh else ""


class Fleet:
    """Members (Boxes, rank order) and the verbs that act on all of them at once."""

    def __init__(self, name: str, boxes: Sequence[Box]):
        self.name = name
        self.boxes = list(boxes)

    def __repr__(self) -> str:
        return f"<Fleet {self.name}: {', '.join(b.name for b in self.boxes)}>"

    def __iter__(self):
        return iter(self.boxes)

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def settings(self) -> Settings:
        return self.boxes[0].settings

    def _checked(self, what: str, result: GroupResult, warn: bool) -> GroupResult:
        if result.failed and not warn:
            raise FleetFailed(what, result)
        return result

    # -- files ---------------------------------------------------------------------------------
    def sync(self, *, warn: bool = False, **options: Any) -> GroupResult:
        """Send the project to every member (``Box.sync`` options); FleetFailed unless ``warn``."""
        from . import sync

        return self._checked("sync", each(self.boxes, lambda b: sync.upload(b, progress=False, **options)), warn)

    def sync_if_changed(self, warn: bool = False) -> GroupResult:
        """What ``run`` does first: send what changed since each member's last sync (nothing costs no network)."""
        from . import sync

        return self._checked("sync", each(self.boxes, lambda b: sync.upload(b, progress=False, announce=False)), warn)

    def build(self, *, force: bool = False, warn: bool = False) -> GroupResult:
        """Each member's environment (``Box.build``), at once; skipped where its inputs are unchanged."""
        import io

        return self._checked("build", each(self.boxes, lambda b: b.build(force=force, out=io.BytesIO())), warn)

    def download(self, *paths: str, dest: str | Path | None = None, warn: bool = False, **options: Any) -> GroupResult:
        """Each member's results under ``<dest>/<member>/`` (default: the project), with download's rules."""
        from . import download

        root = Path(dest) if dest else self.settings.project_dir
        if not root.is_absolute():
            root = self.settings.project_dir / root

        def one(box: Box):
            return download.download(box, paths, dest=root / box.name, progress=False, **options)

        return self._checked("download", each(self.boxes, one), warn)

    # -- jobs ----------------------------------------------------------------------------------
    def run(self, command: str, *, warn: bool = False, env: Mapping[str, str] | None = None, cwd: str | None = None,
            timeout: float | None = None, label: str | None = None, out: BinaryIO | None = None,
            prefix: bool = True, log_dir: str | Path | None = None, cancel: "Cancel | None" = None,
            sync: bool = False) -> GroupResult:
        """``command`` as a ferry job on every member at once, output streamed with a ``NAME | `` prefix.

        Each job sees FERRY_NODE_RANK, FERRY_NUM_NODES, FERRY_NODE_IPS,
        FERRY_HEAD_IP and FERRY_NUM_GPUS_PER_NODE (``env`` wins over them).
        ``prefix=False`` writes each member's output to ``log_dir/<member>.log``
        instead. ``sync``: first send what changed to each member (a member
        whose sync fails has that as its result; the others run). Returns a GroupResult of JobResults; raises FleetFailed
        (carrying it) when any member's job failed, unless ``warn``.
        """
        import sys

        from . import jobs
        from .follow import Cancel, follow

        out = out or sys.stdout.buffer
        cancel = cancel or Cancel()
        lock = threading.Lock()
        width = max(len(b.name) for b in self.boxes)
        variables = node_env(self.boxes)
        if not prefix:
            log_dir = Path(log_dir or self.settings.project_dir / ".ferry" / "fleet-logs" / self.name)
            log_dir.mkdir(parents=True, exist_ok=True)

        def one(box: Box) -> "JobResult":
            if sync:
                from .sync import upload

                upload(box, progress=False, announce=False)
            rank = self.boxes.index(box)
            spec = jobs.job_spec(box, command, env={**variables[rank], **(env or {})}, cwd=cwd, timeout=timeout,
                                 label=label)
            job_id = jobs.new_job_id()
            started = time.monotonic()
            if prefix:
                sink = Prefixer(out, box.name, lock, width)
                try:
                    end = follow(box, job_id, out=sink, start_spec=spec, cancel=cancel)
                finally:
                    sink.close()
            else:
                with open(Path(log_dir) / f"{box.name}.log", "wb") as sink:
                    end = follow(box, job_id, out=sink, start_spec=spec, cancel=cancel)
            return replace(end, seconds=time.monotonic() - started)

        return self._checked("run", each(self.boxes, one, cancel=cancel), warn)

    def map(self, command: str | None = None, items: Iterable[str] | None = None, **options: Any):
        """One dynamic queue of ``items`` over every member: see :func:`ferry.workqueue.run_map`."""
        from . import workqueue

        return workqueue.run_map(self, command, items, **options)

    # -- power ---------------------------------------------------------------------------------
    def refresh(self, warn: bool = True) -> GroupResult:
        return self._checked("refresh", each(self.boxes, lambda b: b.refresh()), warn)

    def stop(self, warn: bool = False) -> GroupResult:
        return self._checked("stop", each(self.boxes, lambda b: b.stop()), warn)

    def start(self, warn: bool = False) -> GroupResult:
        return self._checked("start", each(self.boxes, lambda b: b.start()), warn)

    def terminate(self, warn: bool = False) -> GroupResult:
        return self._checked("terminate", each(self.boxes, lambda b: b.terminate()), warn)

"""``map``: one dynamic queue of items over a fleet's members, kept at home so it survives the laptop.

Each member has ``slots`` workers; a free slot takes the next item, so a slow
member simply takes fewer. Every item runs as a ferry job (tmux on the
member): one ssh exec starts it and streams its log home to
``.ferry/maps/<id>/logs/<seq>.<attempt>.log`` (``follow`` with a start spec),
so an item costs one round trip and no Python start-up.

What happened is kept in ``.ferry/maps/<id>/`` as it happens, append-only
(mapdir.py): each attempt is recorded before its job starts, and each end as
a joblog line. So a ``map`` killed any way at all loses nothing: ``--resume`` follows every
attempt in ``inflight.tsv`` that has no joblog line by its job id (it ran on,
or finished, without us), re-queues one that never started, skips every item
that succeeded, and goes on. A failed item is retried (``retries``) on a
member where it has not failed yet when there is one. A member whose ssh stays
gone for ``host_timeout`` is dropped and its in-flight items go to the others.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

from .errors import FerryError, JobError, SSHError, UsageError, cmd
from .mapdir import MapDir, MapResult, command_for, running as still_running, script_items, succeeded_before

if TYPE_CHECKING:
    from .group import Fleet
    from .slots import JobPipe
    from .follow import Cancel, JobResult
    from .handle import Box

log = logging.getLogger(__name__)

HOST_TIMEOUT = 120.0


# -- the queue ---------------------------------------------------------------------------------------------
@dataclass
class Item:
    seq: int  # 1-based, as in the joblog
    text: str
    starts: int = 0  # attempts so far (the joblog's Attempt column)
    failures: int = 0  # attempts that ran and failed (retries count these; a lost member's do not)
    failed_on: set[str] = field(default_factory=set)
    resume: dict | None = None  # an attempt still running somewhere: follow it instead of starting one


@dataclass
class Member:
    box: "Box"
    slots: int
    alive: bool = True
    last_ok: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0


class Queue:
    """The pending items and who may take which; every change wakes the waiting slots."""

    def __init__(self, items: Sequence[Item], members: dict[str, Member], retries: int):
        self.pending = list(items)
        self.members = members
        self.retries = retries
        self.running = 0
        self.succeeded: list[Item] = []
        self.failed: list[Item] = []
        self.stopping = False
        self.cond = threading.Condition()

    def _takeable(self, item: Item, member: str) -> bool:
        if item.resume is not None:
            return item.resume["member"] == member
        if member not in item.failed_on:
            return True
        others = [m for m, state in self.members.items() if state.alive and m not in item.failed_on]
        return not others  # it has failed everywhere that is left: any member may retry it

    def take(self, member: str, idle=None) -> Item | None:
        """The next item for ``member``, waiting while others run (one may come back); None once all are done.
        ``idle()`` is called once (outside the lock) if it has to wait."""
        while True:
            with self.cond:
                if self.stopping or not self.members[member].alive:
                    return None
                ordered = sorted(self.pending, key=lambda i: i.resume is None)  # re-attachments first
                for item in ordered:
                    if self._takeable(item, member):
                        self.pending.remove(item)
                        self.running += 1
                        return item
                if not self.pending and not self.running:
                    return None  # all done: nothing left, and nothing running that could come back
                if idle is None:
                    self.cond.wait(0.5)
                    continue
            idle()
            idle = None

    def done(self, item: Item, member: str, ok: bool, counted: bool = True) -> None:
        with self.cond:
            self.running -= 1
            state = self.members[member]
            if ok:
                self.succeeded.append(item)
                state.done += 1
            elif not counted:  # never ran, or its member was lost: run it again elsewhere, no retry used
                item.resume = None
                self.pending.append(item)
            else:
                item.failures += 1
                item.failed_on.add(member)
                state.failed += 1
                if item.failures <= self.retries:
                    self.pending.append(item)
                else:
                    self.failed.append(item)
            self.cond.notify_all()

    def lose(self, member: str) -> None:
        with self.cond:
            if self.members[member].alive:
                self.members[member].alive = False
                log.warning("%s is unreachable: its items go to the other members", member)
            for item in self.pending:
                if item.resume is not None and item.resume["member"] == member:
                    item.resume = None
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()



# -- running --------------------------------------------------------------------------------------------------
def slots_of(box: "Box", slots: int | str) -> int:
    if slots == "gpu":
        if box.instance.gpu_count < 1:
            raise UsageError(f"--slots gpu: {box.name} has no GPUs", hint="give a number instead: --slots 2")
        return box.instance.gpu_count
    return int(slots)


def check_slots(slots: int | str) -> int | str:
    if slots == "gpu":
        return slots
    try:
        value = int(slots)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise UsageError(f"bad --slots {slots!r}", hint="a number of items at once per member (2), or gpu: one per GPU")
    return value


def run_map(fleet: "Fleet", command: str | None = None, items: Iterable[str] | None = None, *,
            scripts: str | None = None, slots: int | str = 1, retries: int | None = None, host_timeout: float = HOST_TIMEOUT,
            resume: bool = False, resume_failed: bool = False, map_id: str | None = None,
            sync: bool = True, progress: bool | None = None, cancel: "Cancel | None" = None,
            env: dict[str, str] | None = None, on_interrupt=None) -> MapResult:
    """Push ``items`` through ``command`` (``{}`` = the quoted item) on every member; see the module docstring.

    ``resume``/``resume_failed`` continue map ``map_id`` (default: the
    project's last). ``cancel`` (a follow.Cancel) stops handing out items and
    leaves running ones going. ``on_interrupt(running)`` is asked on Ctrl-C
    whether to kill the running items (True) or leave them (False).
    """
    from .follow import Cancel

    project = fleet.settings.project_dir
    cancel = cancel or Cancel()
    if resume or resume_failed:
        if command is not None or items is not None or scripts is not None:
            raise UsageError("--resume continues a map as it was started: give no command, --items or --scripts",
                             hint=f"e.g. {cmd('map --resume')}")
        mapdir = MapDir.find(project, map_id)
        definition = mapdir.definition()
        retries = definition.get("retries", 0) if retries is None else retries
        queue_items = _resumed(mapdir, definition, resume_failed, retries)
        command, slots = definition.get("command"), definition.get("slots", 1)
        env = {**definition.get("env", {}), **(env or {})}
        all_items = definition["items"]
    else:
        slots = check_slots(slots)
        if scripts is not None:
            if command is not None or items is not None:
                raise UsageError("--scripts runs each script as it is: give no command or --items with it",
                                 hint=f"e.g. {cmd('map --scripts jobs/')}")
            all_items = script_items(project, scripts)
        else:
            if not command or not command.strip():
                raise UsageError("map needs a command", hint="e.g. " + cmd('map "python shard.py {}" --items shards.txt'))
            all_items = list(items or [])
            if not all_items:
                raise UsageError("no items to map", hint="give --items FILE (one item a line; - for stdin) or --scripts DIR")
        retries = retries or 0
        if retries < 0:
            raise UsageError(f"bad --retries {retries}", hint="0 or more")
        for box in fleet.boxes:
            slots_of(box, slots)  # --slots gpu on a member without GPUs: refused before anything is written
        mapdir = MapDir.create(project, {"command": command if scripts is None else None, "items": all_items,
                                         "scripts": scripts, "fleet": fleet.name, "slots": slots, "retries": retries,
                                         "host_timeout": host_timeout, "env": dict(env or {}),
                                         "members": [b.name for b in fleet.boxes], "created": time.time()})
        queue_items = [Item(seq=i + 1, text=text) for i, text in enumerate(all_items)]
    template = command
    members = {box.name: Member(box, slots_of(box, slots)) for box in fleet.boxes}
    # An attempt in flight on a member that is no longer in the fleet can only run again elsewhere.
    for item in queue_items:
        if item.resume is not None and item.resume["member"] not in members:
            item.resume = None
    queue = Queue(queue_items, members, retries)
    if sync:
        from .group import describe

        for box, value in fleet.sync_if_changed(warn=True).failed.items():
            log.warning("%s takes no items: sending the project failed (%s)", box.name, describe(value))
            members[box.name].alive = False
        if not any(m.alive for m in members.values()):
            raise FerryError("no member of the fleet could take items (sending the project failed on each)",
                             hint=f"see each: {cmd(f'fleet.ls --name {fleet.name}')}")
    started = time.monotonic()
    total = len(all_items)
    done_before = succeeded_before(mapdir) if (resume or resume_failed) else set()

    def slot_worker(member: Member, slot: int) -> None:
        from .slots import JobPipe

        pipe = JobPipe(member.box, cancel)
        try:
            while True:
                item = queue.take(member.box.name, idle=pipe.close)  # waiting at the end: its ssh goes meanwhile
                if item is None:
                    return
                ok, counted = _run_item(mapdir, queue, member, slot, item, template, env or {}, slots == "gpu",
                                        host_timeout, cancel, pipe)
                if cancel.tripped and not counted:
                    with queue.cond:
                        queue.running -= 1
                        queue.cond.notify_all()
                    return
                queue.done(item, member.box.name, ok, counted)
        finally:
            pipe.close()

    threads = [threading.Thread(target=slot_worker, args=(m, s), daemon=True, name=f"map-{name}-{s}")
               for name, m in members.items() for s in range(m.slots)]
    display = _Progress(queue, total, len(done_before), started, progress)
    stopped = False
    for thread in threads:
        thread.start()
    try:
        with display:
            while any(t.is_alive() for t in threads):
                for thread in threads:
                    thread.join(0.2)
                    display.update()
    except KeyboardInterrupt:
        stopped = True
        queue.stop()
        cancel.trip()
        for thread in threads:
            thread.join(5)
        running = still_running(mapdir)
        if running and on_interrupt is not None and on_interrupt(len(running)):
            _kill(fleet, running)
    succeeded = done_before | {i.seq for i in queue.succeeded}
    failed = {i.seq for i in queue.failed}
    result = MapResult(
        id=mapdir.id, dir=mapdir.path, total=total,
        succeeded=[all_items[s - 1] for s in sorted(succeeded)],
        failed=[all_items[s - 1] for s in sorted(failed)],
        unrun=[all_items[s - 1] for s in range(1, total + 1) if s not in succeeded and s not in failed],
        seconds=time.monotonic() - started,
        members={name: {"done": m.done, "failed": m.failed, "slots": m.slots, "lost": int(not m.alive)}
                 for name, m in members.items()},
        stopped=stopped or cancel.tripped,
    )
    return result


def _run_item(mapdir: MapDir, queue: Queue, member: Member, slot: int, item: Item, template: str | None,
              env: dict[str, str], gpu_slots: bool, host_timeout: float, cancel: "Cancel",
              pipe: "JobPipe | None" = None) -> tuple[bool, bool]:
    """One attempt of ``item`` on ``member``: (succeeded, counts as an attempt).

    A new attempt goes down the slot's ``pipe`` (one exec for many items);
    if that connection fails, or the attempt is one to resume, the job is
    followed by id (``follow``), with reconnects up to ``host_timeout``.
    """
    from . import jobs
    from .backoff import Backoff
    from .follow import follow

    box = member.box
    name = box.name
    if item.resume is not None:
        attempt, job_id, start = int(item.resume["attempt"]), item.resume["job_id"], float(item.resume["start"])
        spec = None
    else:
        item.starts += 1
        attempt, job_id, start = item.starts, jobs.new_job_id(), time.time()
        variables = {"FERRY_ITEM": item.text, "FERRY_ITEM_INDEX": str(item.seq - 1), "FERRY_SLOT": str(slot),
                     "FERRY_MAP_ID": mapdir.id, "FERRY_ATTEMPT": str(attempt)}
        if gpu_slots:
            variables["CUDA_VISIBLE_DEVICES"] = str(slot)
        spec = jobs.job_spec(box, command_for(template, item.text), env={**variables, **env},
                             label=f"map-{mapdir.id}-{item.seq}", pane=False)
        mapdir.started(item.seq, attempt, name, job_id, start)  # before the start: a kill -9 now loses nothing
    log_path = mapdir.log_path(item.seq, attempt)
    retry = Backoff(first=0.2, cap=5.0, window=host_timeout)
    end: "JobResult | None" = None
    with open(log_path, "ab") as sink:
        if spec is not None and pipe is not None:
            end = pipe.run(job_id, spec, sink)
            if end is not None:
                member.last_ok = time.monotonic()
            elif cancel.tripped:
                return False, False
        while end is None:
            try:
                end = follow(box, job_id, offset=sink.tell(), out=sink, start_spec=spec, window=host_timeout,
                             cancel=cancel)
                member.last_ok = time.monotonic()
            except JobError as exc:
                item.resume = None
                if spec is not None:  # the wrapper refused to start it (a full disk, say): a failed attempt
                    sink.write(f"ferry: {exc.message}\n".encode())
                    mapdir.finished(item.seq, item.text, name, start, time.time() - start, "error", attempt, job_id)
                    return False, True
                return False, False  # a resumed attempt the member never heard of: it never started
            except SSHError as exc:
                if cancel.tripped:
                    return False, False
                if time.monotonic() - member.last_ok >= host_timeout or not queue.members[name].alive:
                    queue.lose(name)
                    log.info("item %d (%s) will run elsewhere: %s", item.seq, item.text, exc.message)
                    item.resume = None
                    return False, False
                time.sleep(min(retry.failed(), max(0.1, host_timeout - (time.monotonic() - member.last_ok))))
    item.resume = None
    if end.state == "running":  # cancelled: it runs on; --resume follows it
        return False, False
    if end.state == "lost":  # its member stopped under it: not the item's fault
        mapdir.finished(item.seq, item.text, name, start, time.time() - start, "lost", attempt, job_id)
        return False, False
    mapdir.finished(item.seq, item.text, name, start, time.time() - start,
                    str(end.exit_code if end.exit_code is not None else end.state), attempt, job_id)
    return end.ok, True


def _resumed(mapdir: MapDir, definition: dict, resume_failed: bool, retries: int) -> list[Item]:
    """The items still to do, rebuilt from the records: follow the ones in flight, skip the ones that succeeded."""
    texts = definition["items"]
    items = {seq: Item(seq=seq, text=text) for seq, text in enumerate(texts, 1)}
    finished_jobs = set()
    for row in mapdir.joblog():
        seq = int(row["seq"])
        item = items.get(seq)
        if item is None:
            continue
        finished_jobs.add(row["job_id"])
        item.starts = max(item.starts, int(row["attempt"]))
        if row["exitval"] == "0":
            items.pop(seq)
        elif row["exitval"] != "lost":
            item.failures += 1
            item.failed_on.add(row["member"])
    for row in mapdir.inflight():
        seq = int(row["seq"])
        item = items.get(seq)
        if item is None:
            continue
        item.starts = max(item.starts, int(row["attempt"]))
        if row["job_id"] not in finished_jobs:
            item.resume = row  # still running (or finished unseen) on its member: follow it, never start it again
    left = []
    for item in items.values():
        if item.resume is None and item.failures > retries:
            if not resume_failed:
                continue  # it failed for good; --resume-failed runs it again
            item.failures, item.failed_on = 0, set()
        left.append(item)
    return left


def _kill(fleet: "Fleet", running: list[dict]) -> None:
    from .jobs import Job

    boxes = {box.name: box for box in fleet.boxes}
    for row in running:
        box = boxes.get(row["member"])
        if box is None:
            continue
        try:
            Job(box, row["job_id"]).kill()
        except FerryError as exc:
            log.warning("could not kill item %s on %s: %s", row["seq"], box.name, exc.message)


class _Progress:
    """One live line on a terminal: done / running / failed / ETA (nothing when stderr is not a terminal)."""

    def __init__(self, queue: Queue, total: int, done_before: int, started: float, wanted: bool | None):
        from . import output

        self.queue, self.total, self.before, self.started = queue, total, done_before, started
        self.live = None
        if wanted if wanted is not None else output.terminal():
            from rich.live import Live

            self.live = Live(self.render(), console=output.console(sys.stderr), transient=True,
                             refresh_per_second=4)

    def render(self):
        from rich.text import Text

        q = self.queue
        done = self.before + len(q.succeeded) + len(q.failed)
        elapsed = time.monotonic() - self.started
        new = len(q.succeeded) + len(q.failed)
        eta = ""
        if new and done < self.total:
            from .flags import human

            eta = f"  ETA {human(elapsed / new * (self.total - done))}"
        alive = sum(1 for m in q.members.values() if m.alive)
        return Text(f"map: {done}/{self.total} done, {q.running} running, {len(q.failed)} failed, "
                    f"{alive} member{'s' if alive != 1 else ''}{eta}")

    def update(self) -> None:
        if self.live is not None:
            self.live.update(self.render())

    def __enter__(self):
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
        return False

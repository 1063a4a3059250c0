"""Tasks for fleets: ``fleet.ls``, ``fleet.sync``, ``fleet.run``, ``fleet.download``, ``fleet.stop``,
``fleet.start``, ``fleet.terminate`` (the collection ``ns``, added as ``fleet``), and ``map``.

A fleet is what ``launch --count N --name NAME`` made, or ``ferry.fleets.NAME``
in config; ``--name`` picks it, else the project's current fleet. Every task
acts on all members at once, and one member's failure never stops the others.
"""

from __future__ import annotations

from invoke import Collection

from ._common import ferry_task

FLEET_HELP = "the fleet (launch --count N --name NAME, or ferry.fleets.NAME; default: the project's current one)"


def _fleet(c, name):
    from ..group import get

    return get(c, name)


def _report(what: str, result) -> None:
    """One line per member that failed, then FleetFailed (exit 1) when any did."""
    from .. import output
    from ..group import FleetFailed, describe

    for box, value in result.items():
        if not result._ok(value):
            output.note(f"{box.name}: {what} failed: {describe(value)}")
    if result.failed:
        raise FleetFailed(what, result, hint="the other members are done; fix the ones named and run it again")


@ferry_task(help={"name": FLEET_HELP, "json": "print one JSON document"})
def ls(c, name=None, json=False):
    """List the fleet's members: rank, provider, live status, address, GPU, $/h."""
    from .. import output

    fleet = _fleet(c, name)
    fleet.refresh(warn=True)
    rows = []
    for rank, box in enumerate(fleet.boxes):
        i = box.instance
        ssh = f"{i.ssh.host}:{i.ssh.port}" if i.ssh else "-"
        rows.append([box.name, str(rank), i.provider, i.status.value.lower(), ssh,
                     f"{i.gpu_count}x {i.gpu}" if i.gpu and i.gpu_count > 1 else (i.gpu or "-"),
                     f"${i.cost_per_hour:.2f}" if i.cost_per_hour else "-"])
    if json:
        output.emit_json({"fleet": fleet.name, "members": [
            {**box.instance.to_dict(), "rank": rank} for rank, box in enumerate(fleet.boxes)]})
        return
    output.table(["MEMBER", "RANK", "PROVIDER", "STATUS", "SSH", "GPU", "$/H"], rows, right=["RANK", "$/H"])


@ferry_task(help={"name": FLEET_HELP, "full": "check every file, not only what changed since the last sync"})
def sync(c, name=None, full=False):
    """Send the project to every member at once (each as `sync` would)."""
    from .. import output

    fleet = _fleet(c, name)
    result = fleet.sync(warn=True, full=full)
    for box, value in result.succeeded.items():
        output.note(f"{box.name}: {value.files} file{'s' if value.files != 1 else ''} sent ({value.how})")
    _report("sync", result)


@ferry_task(iterable=["env"], help={
    "command": "the shell command to run in the workdir of every member",
    "name": FLEET_HELP,
    "env": "KEY=VALUE exported to every member's job (repeatable; wins over the FERRY_* node variables)",
    "cwd": "directory to run in, relative to the workdir",
    "timeout": "kill each member's job after this long (90s, 10m, 2h)",
    "label": "a label for the jobs",
    "no-prefix": "write each member's output to .ferry/fleet-logs/<fleet>/<member>.log instead of the terminal",
    "no-sync": "run without first sending what changed in the project",
    "json": "print the summary as one JSON document",
})
def run(c, command, name=None, env=None, cwd=None, timeout=None, label=None, no_prefix=False, no_sync=False,
        json=False):
    """Run COMMAND on every member as a ferry job; prefixed output, a summary, the worst exit code."""
    from invoke.exceptions import Exit

    from .. import flags, output
    from ..errors import cmd
    from ..group import Interrupted

    fleet = _fleet(c, name)
    try:
        result = fleet.run(command, warn=True, env=flags.env_pairs(env), cwd=cwd, label=label,
                           timeout=flags.duration(timeout, "--timeout"), prefix=not no_prefix,
                           sync=not no_sync and (fleet.settings.data.get("run") or {}).get("sync", True))
    except Interrupted as stopped:
        refs = ", ".join(f"{box.name} job {getattr(end, 'ref', '?')}" for box, end in stopped.result.items()
                         if not isinstance(end, BaseException))
        output.note(f"\ndetached; the jobs keep running ({refs}). Follow one: {cmd('logs -f -j JOB --name MEMBER')}")
        raise Exit(code=130) from None
    rows, worst, document = [], 0, []
    for box, end in result.items():
        if isinstance(end, BaseException):
            from ..group import describe

            code, shown, state = 1, "-", describe(end)
        else:
            code = end.exit_code if end.exit_code is not None else 1
            shown, state = str(end.exit_code) if end.exit_code is not None else "-", end.state
        worst = max(worst, code)
        seconds = getattr(end, "seconds", None)
        rows.append([box.name, state, shown, flags.human(seconds) if seconds else "-"])
        document.append({"member": box.name, "state": state, "exit_code": None if shown == "-" else int(shown),
                         "seconds": round(seconds, 3) if seconds else None,
                         "job": getattr(end, "job_id", None), "number": getattr(end, "number", None)})
    if json:
        output.emit_json({"fleet": fleet.name, "members": document, "exit_code": worst})
    else:
        if no_prefix:
            output.note(f"logs: .ferry/fleet-logs/{fleet.name}/<member>.log")
        output.table(["MEMBER", "STATE", "EXIT", "TIME"], rows, right=["EXIT", "TIME"])
    if worst:
        raise Exit(code=min(worst, 255))


@ferry_task(iterable=["path"], help={
    "name": FLEET_HELP,
    "path": "a path in the workdir to bring home (repeatable; default: what the run produced)",
    "dest": "where each member's files go, as DEST/<member>/... (default: the project)",
    "all": "the whole workdir, less .git",
    "force": "replace local files even when they are newer (the old ones are backed up)",
    "dry-run": "say what would come home; change nothing",
})
def download(c, name=None, path=None, dest=None, all=False, force=False, dry_run=False):
    """Bring every member's results home, each under <dest>/<member>/, with download's rules."""
    from .. import output
    from ..download import check_relative

    paths = [check_relative(p) for p in path or []]
    fleet = _fleet(c, name)
    result = fleet.download(*paths, dest=dest, warn=True, everything=all, force=force, dry_run=dry_run)
    for box, value in result.succeeded.items():
        extra = f", {len(value.backed_up)} replaced (backups in {value.backup_dir})" if value.backed_up else ""
        kept = f", {len(value.skipped)} newer here kept" if value.skipped else ""
        output.note(f"{box.name}: {'would fetch' if dry_run else 'downloaded'} {len(value.received)} "
                    f"file{'s' if len(value.received) != 1 else ''}{extra}{kept}")
    _report("download", result)


def _power(c, name, verb: str, done: str) -> None:
    """stop/start/terminate on every member; one line per member it worked on, then the failures."""
    from .. import output

    fleet = _fleet(c, name)
    result = getattr(fleet, verb)(warn=True)
    for box in result.succeeded:
        output.note(f"{box.name} {done}")
    _report(verb, result)


@ferry_task(help={"name": FLEET_HELP})
def stop(c, name=None):
    """Stop every member (disks kept)."""
    _power(c, name, "stop", "stopped")


@ferry_task(help={"name": FLEET_HELP})
def start(c, name=None):
    """Start every stopped member and wait until each answers ssh."""
    _power(c, name, "start", "is ready")


@ferry_task(help={"name": FLEET_HELP, "yes": "do not ask"})
def terminate(c, name=None, yes=False):
    """Delete every member and its disk."""
    from .. import output
    from ..errors import UsageError, cmd

    fleet = _fleet(c, name)
    names = ", ".join(b.name for b in fleet.boxes)
    if not yes and not output.confirm(f"terminate {names} and their disks?"):
        raise UsageError("not confirmed", hint=f"to terminate without asking: {cmd(f'fleet.terminate --name {fleet.name} --yes')}")
    _power(c, fleet.name, "terminate", "terminated")


ns = Collection("fleet", ls, sync, run, download, stop, start, terminate)


@ferry_task(name="map", optional=("command",), positional=["command"], iterable=["env"], help={
    "command": "the command per item; {} is the shell-quoted item (also in $FERRY_ITEM)",
    "items": "a file with one item per line (- for stdin)",
    "scripts": "a directory in the project: each executable file in it is an item, run as ./DIR/file",
    "name": FLEET_HELP,
    "slots": "items at once per member (default 1); gpu: one per GPU, with CUDA_VISIBLE_DEVICES set",
    "retries": "re-run a failed item up to this many times, on a member where it has not failed when there is one",
    "host-timeout": "a member unreachable this long is dropped and its items go to the others (default 2m)",
    "resume": "continue the last map (or --map ID): follow running items, skip succeeded ones",
    "resume-failed": "like --resume, and run the failed items again",
    "map": "which map --resume continues (an id from .ferry/maps/)",
    "env": "KEY=VALUE exported to every item's job (repeatable)",
    "no-sync": "run without first sending what changed in the project",
    "json": "print the summary as one JSON document",
})
def map_(c, command=None, items=None, scripts=None, name=None, slots="1", retries=None, host_timeout=None,
         resume=False, resume_failed=False, map=None, env=None, no_sync=False, json=False):
    """Push many items through COMMAND over a fleet: one dynamic queue, retries, a joblog; survives the laptop."""
    import sys

    from invoke.exceptions import Exit

    from .. import flags, mapdir, output, workqueue
    from ..errors import FerryError, UsageError, cmd

    if map is not None and not (resume or resume_failed):
        raise UsageError("--map picks the map to resume", hint=f"e.g. {cmd(f'map --resume --map {map}')}")
    fleet = _fleet(c, name)
    item_list = mapdir.read_items(items, sys.stdin) if items is not None else None
    if item_list is not None and not item_list:
        raise UsageError(f"no items in {items}", hint="one item per line")
    retries_n = None if retries is None else flags.count(retries, "--retries", minimum=0)
    timeout = flags.duration(host_timeout, "--host-timeout") if host_timeout else workqueue.HOST_TIMEOUT

    def ask(running: int) -> bool:
        if not output.terminal():
            return False
        try:
            answer = input(f"\n{running} item{'s' if running != 1 else ''} still running on the members: "
                           "leave them going (L) or kill them (k)? [L/k] ")
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip().lower().startswith("k")

    result = workqueue.run_map(fleet, command or None, item_list, scripts=scripts, slots=slots, retries=retries_n,
                               host_timeout=timeout, resume=resume, resume_failed=resume_failed, map_id=map,
                               sync=not no_sync and (fleet.settings.data.get("run") or {}).get("sync", True),
                               env=flags.env_pairs(env), on_interrupt=ask)
    if json:
        output.emit_json(result.to_dict())
    else:
        rows = [[member, str(v["slots"]), str(v["done"]), str(v["failed"]), "lost" if v["lost"] else "ok"]
                for member, v in result.members.items()]
        output.table(["MEMBER", "SLOTS", "DONE", "FAILED", "STATE"], rows, right=["SLOTS", "DONE", "FAILED"])
        output.note(f"map {result.id}: {len(result.succeeded)}/{result.total} succeeded, {len(result.failed)} failed"
                    f"{f', {len(result.unrun)} not run' if result.unrun else ''} in {flags.human(result.seconds)}; "
                    f"joblog {result.joblog.relative_to(fleet.settings.project_dir)}")
    if result.stopped:
        output.note(f"stopped; items still running keep going. Continue: {cmd(f'map --resume --map {result.id}')}")
        raise Exit(code=130)
    if not result.ok:
        again = "--resume-failed" if result.failed else "--resume"
        raise FerryError(f"{len(result.failed) + len(result.unrun)} of {result.total} items did not succeed"
                         + (f" (failed: {', '.join(result.failed[:3])}{', ...' if len(result.failed) > 3 else ''})"
                            if result.failed else ""),
                         hint=f"logs in {result.dir.relative_to(fleet.settings.project_dir)}/logs/; run them again: "
                              + cmd(f"map {again} --map {result.id}"))

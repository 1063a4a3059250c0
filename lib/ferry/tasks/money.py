"""Tasks that keep bills in check: autostop, cost, gc, top."""

from __future__ import annotations

from ._common import NAME_HELP, ferry_task


@ferry_task(help={
    "name": NAME_HELP,
    "idle": "stop it after this long idle (10m, 2h); off: never",
    "action": "stop (keeps the disk) or terminate",
    "max-cost": "stop it once it has cost this many dollars; off: no limit",
    "off": "turn autostop off (idle and cost limit)",
    "json": "print one JSON document",
})
def autostop(c, name=None, idle=None, action=None, max_cost=None, off=False, json=False):
    """Show or change when the instance stops itself (its agent decides, on the instance)."""
    from .. import autostop as autostops
    from .. import output
    from ..errors import UsageError, cmd
    from ..handle import get as get_box
    from ..registry import Registry

    box = get_box(c, name)
    cloud = box.cloud()
    if autostops.self_stop_of(cloud) is None:
        raise UsageError(f"ferry does not own {box.name} ({cloud.name}), so it has no autostop",
                         hint="stop it the way you normally do")
    if box.instance.ssh is None:
        raise UsageError(f"{box.name} is not running ({box.instance.status.value.lower()})",
                         hint=f"start it first: {cmd(f'start --name {box.name}')}")
    registry = Registry(box.settings.home)
    entry = registry.get(box.provider, box.instance.id) or {}
    current = autostops.Policy.from_dict(entry["autostop"]) if entry.get("autostop") else None
    if off and (idle is not None or max_cost is not None):
        raise UsageError("--off turns autostop off; it does not go with --idle or --max-cost",
                         hint=f"e.g. {cmd('autostop --idle 1h')}")
    if off or idle is not None or action is not None or max_cost is not None:
        chosen = autostops.policy(box.settings, cloud, idle="off" if off else idle, action=action,
                                  max_cost="off" if off else max_cost,
                                  base=current or autostops.policy(box.settings, cloud))
        if action is not None:
            cloud.set_self_stop_action(box.instance.id, chosen.action)
        autostops.configure(box, cloud, chosen)
        registry.add(box.instance, box.settings.project_dir, autostop=chosen.to_dict())
        output.note(f"autostop for {box.name}: {chosen.describe()}")
    state = autostops.read(box)
    if json:
        output.emit_json({"name": box.name, "policy": (registry.get(box.provider, box.instance.id) or {}).get("autostop"),
                          "state": state.to_dict()})
        return
    print(f"{box.name}: {state.column()}")


@ferry_task(help={"json": "print one JSON document"})
def cost(c, json=False):
    """What every instance on every configured cloud costs: $/h, uptime, so far, autostop; totals."""
    from .. import costs, output
    from ..config import Settings
    from ..flags import human

    skipped: dict[str, str] = {}
    lines = costs.report(Settings.of(c), skipped=skipped)
    sums = costs.totals(lines)
    if json:
        output.emit_json({"instances": [one.to_dict() for one in lines], "totals": sums, "skipped": skipped})
        return
    if lines:
        rows = [[one.instance.name, one.instance.provider, one.instance.status.value, f"{one.per_hour:.2f}",
                 human(one.uptime) if one.uptime else "-", f"{one.cost_so_far:.2f}", one.autostop]
                for one in sorted(lines, key=lambda x: (x.instance.provider, x.instance.name))]
        rows += [[f"total {name}", "", f"{int(s['instances'])} instances", f"{s['per_hour']:.2f}", "",
                  f"{s['cost_so_far']:.2f}", ""] for name, s in sorted(sums.items()) if name != "all"]
        rows.append(["TOTAL", "", f"{int(sums['all']['instances'])} instances", f"{sums['all']['per_hour']:.2f}", "",
                     f"{sums['all']['cost_so_far']:.2f}", ""])
        output.table(["NAME", "PROVIDER", "STATUS", "$/H", "UPTIME", "COST", "AUTOSTOP"], rows, right=("$/H", "COST"))
    else:
        output.note("nothing is running or stopped on any configured cloud")
    for name, reason in skipped.items():
        output.note(f"skipped {name}: {reason}")


@ferry_task(help={"terminate": "terminate the orphans (with --yes)", "yes": "really terminate them",
                  "json": "print one JSON document"})
def gc(c, terminate=False, yes=False, json=False):
    """Find instances ferry made that no project here knows (orphans); exit 1 while any remain."""
    from invoke.exceptions import Exit

    from .. import orphans, output
    from ..config import Settings
    from ..errors import UsageError, cmd

    if terminate and not yes:
        raise UsageError("gc --terminate deletes instances and their disks", hint=f"see them: {cmd('gc')}; "
                         f"then {cmd('gc --terminate --yes')}")
    settings = Settings.of(c)
    found = orphans.find(settings)
    results = orphans.terminate(settings, found.orphans) if terminate else {}
    left = [o for o in found.orphans if results.get(f"{o.instance.provider}/{o.instance.id}", "") is not None]
    if json:
        output.emit_json({"orphans": [o.to_dict() for o in found.orphans], "terminated": sorted(k for k, v in
                          results.items() if v is None), "failed": {k: v for k, v in results.items() if v},
                          "elsewhere": [i.to_dict() for i in found.elsewhere],
                          "cleaned": [f"{e['provider']}/{e['id']}" for e in found.stale], "skipped": found.skipped})
    else:
        if found.orphans:
            output.table(["NAME", "PROVIDER", "ID", "STATUS", "$/H", "COST", "PROJECT"],
                         [[o.instance.name, o.instance.provider, o.instance.id, o.instance.status.value,
                           f"{o.per_hour:.2f}", f"{o.cost_so_far:.2f}", o.instance.labels.get("ferry-project", "-")]
                          for o in found.orphans], right=("$/H", "COST"))
        for key, error in results.items():
            output.note(f"terminated {key}" if error is None else f"could not terminate {key}: {error}")
        if found.orphans and not terminate:
            output.note(f"{len(found.orphans)} orphan{'s' if len(found.orphans) != 1 else ''}: "
                        f"terminate with {cmd('gc --terminate --yes')}, or adopt one by relaunching its name in its project")
        elif not found.orphans:
            output.note("no orphans")
        for instance in found.elsewhere:
            output.note(f"left alone: {instance.name} ({instance.provider} {instance.id}) was launched from another machine")
        for entry in found.stale:
            output.note(f"forgot {entry.get('name')} ({entry['provider']} {entry['id']}): it no longer exists")
        for name, reason in found.skipped.items():
            output.note(f"skipped {name}: {reason}")
    if left:
        raise Exit(code=1)


@ferry_task(help={"once": "print one screen and exit", "json": "with --once: print one JSON document",
                  "interval": "seconds between refreshes (default 2)"})
def top(c, once=False, json=False, interval=None):
    """A live view of every instance: status, GPU use, jobs, autostop countdown, $/h, cost; totals."""
    from .. import flags, output
    from .. import top as view
    from ..config import Settings
    from ..errors import UsageError

    if json and not once:
        raise UsageError("--json needs --once", hint="ferry top --once --json")
    settings = Settings.of(c)
    every = flags.duration(interval, "--interval") or 2.0
    if once or not output.terminal():
        screen = view.Top(settings)
        screen.refresh()
        if json:
            output.emit_json(screen.document())
        else:
            output.table(screen.HEADERS, screen.rows(), right=screen.RIGHT)
            print(screen.caption())
        return
    view.live(settings, every)

"""``ferry top``: one live screen of every instance, what it is doing and what it costs.

Cheap by construction: the clouds are listed at start and every
``CLOUD_EVERY`` seconds (their APIs rate-limit), while each running instance
launched from this machine is asked once per refresh, in parallel, with one
ssh exec over its ControlMaster: the agent's state, how many jobs run, and
``nvidia-smi`` where there is one.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import autostop, costs
from .errors import FerryError
from .records import Status
from .registry import Registry, key_of

if TYPE_CHECKING:
    from .config import Settings
    from .handle import Box

CLOUD_EVERY = 30.0
PROBE = (f'{{ {autostop.STATUS_COMMAND}; echo "jobs=$(bash "$HOME/.ferry/bin/ferry-job" busy 2>/dev/null || echo 0)"; '
         "command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total "
         "--format=csv,noheader,nounits | sed 's/ //g; s/^/gpu=/'; } 2>/dev/null")


def probe(box: "Box") -> dict[str, Any]:
    """One exec: agent state, running jobs, GPUs (util %, memory used/total MiB each)."""
    try:
        text = box.remote.run(PROBE, check=False, timeout=15).stdout.decode(errors="replace")
    except FerryError as exc:
        return {"reachable": False, "error": exc.message}
    gpus, jobs = [], None
    for line in text.splitlines():
        if line.startswith("gpu="):
            try:
                util, used, total = (float(x) for x in line[4:].split(","))
                gpus.append({"util": util, "memory_used_mib": used, "memory_total_mib": total})
            except ValueError:
                continue
        elif line.startswith("jobs=") and line[5:].strip().isdigit():
            jobs = int(line[5:].strip())
    return {"reachable": True, "agent": autostop.parse_status(text), "jobs": jobs, "gpus": gpus}


class Top:
    """The state behind the screen: cloud lines refreshed now and then, probes every time."""

    def __init__(self, settings: "Settings"):
        self.settings = settings
        self.lines: list[costs.Line] = []
        self.skipped: dict[str, str] = {}
        self.listed_at = 0.0
        self.probes: dict[str, dict[str, Any]] = {}

    def refresh(self) -> None:
        if time.monotonic() - self.listed_at >= CLOUD_EVERY or not self.listed_at:
            self.skipped = {}
            self.lines = costs.report(self.settings, skipped=self.skipped)
            self.listed_at = time.monotonic()
        self.probes = self._probe_all()

    def _probe_all(self) -> dict[str, dict[str, Any]]:
        from .handle import Box

        entries = Registry(self.settings.home).entries()
        boxes = [Box(self.settings, line.instance) for line in self.lines
                 if line.instance.status == Status.RUNNING and line.instance.ssh is not None
                 and key_of(line.instance.provider, line.instance.id) in entries]
        if not boxes:
            return {}
        with ThreadPoolExecutor(max_workers=min(len(boxes), 16)) as pool:
            found = pool.map(probe, boxes)
        return {key_of(b.provider, b.instance.id): p for b, p in zip(boxes, found)}

    def document(self) -> dict[str, Any]:
        """What ``top --once --json`` prints."""
        rows = []
        for line in self.lines:
            row = line.to_dict()
            seen = self.probes.get(key_of(line.instance.provider, line.instance.id))
            if seen:
                agent = seen.get("agent")
                row.update(reachable=seen["reachable"], jobs=seen.get("jobs"), gpus=seen.get("gpus", []),
                           agent=agent.to_dict() if agent else None)
            rows.append(row)
        return {"instances": rows, "totals": costs.totals(self.lines), "skipped": self.skipped}

    HEADERS = ("NAME", "CLOUD", "STATUS", "GPU", "GPU%", "MEM", "JOBS", "AUTOSTOP", "$/H", "COST")
    RIGHT = ("GPU%", "MEM", "JOBS", "$/H", "COST")

    def rows(self) -> list[list[str]]:
        rows = []
        for line in self.lines:
            i = line.instance
            seen = self.probes.get(key_of(i.provider, i.id)) or {}
            gpus = seen.get("gpus") or []
            util = f"{sum(g['util'] for g in gpus) / len(gpus):.0f}" if gpus else "-"
            memory = (f"{sum(g['memory_used_mib'] for g in gpus) / 1024:.1f}/"
                      f"{sum(g['memory_total_mib'] for g in gpus) / 1024:.0f}G") if gpus else "-"
            agent = seen.get("agent")
            stop = agent.column() if agent is not None else line.autostop
            gpu = f"{i.gpu_count}x {i.gpu}" if i.gpu and i.gpu_count > 1 else (i.gpu or "-")
            rows.append([i.name, i.provider, i.status.value, gpu, util, memory,
                         "-" if seen.get("jobs") is None else str(seen["jobs"]), stop,
                         f"{line.per_hour:.2f}", f"{line.cost_so_far:.2f}"])
        return rows

    def caption(self) -> str:
        total = costs.totals(self.lines)["all"]
        return (f"{int(total['instances'])} instances  ${total['per_hour']:.2f}/h  ${total['cost_so_far']:.2f} so far")

    def table(self):
        """The screen, as a rich Table (the live view)."""
        from rich.table import Table

        table = Table(box=None, header_style="bold", pad_edge=False, caption=self.caption(), caption_justify="left")
        for header in self.HEADERS:
            table.add_column(header, justify="right" if header in self.RIGHT else "left", no_wrap=True)
        for row in self.rows():
            table.add_row(*row)
        return table


def live(settings: "Settings", interval: float = 2.0) -> None:
    """Redraw every ``interval`` seconds until Ctrl-C."""
    from rich.live import Live

    from .output import console

    view = Top(settings)
    view.refresh()
    with Live(view.table(), console=console(), auto_refresh=False, transient=False) as screen:
        try:
            while True:
                time.sleep(interval)
                view.refresh()
                screen.update(view.table(), refresh=True)
        except KeyboardInterrupt:
            return

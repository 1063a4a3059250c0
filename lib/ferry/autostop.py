"""Autostop: the policy ferry hands an instance's agent, and the agent's state read back.

The deciding and the acting happen on the instance (``remote_scripts/ferry-agent``),
so they go on when the laptop is closed: ferry only writes the agent's config
(``~/.ferry/autostop/config``, one exec that also starts the agent) and reads
its state for ``ls``, ``status``, ``cost`` and ``top``.

How an instance stops itself depends on its cloud: each provider module
declares ``SELF_STOP`` (a :class:`ferry.providers.base.SelfStop`, or None where
ferry does not own the machine). Only Thunder needs a credential copied to the
instance, and only when the user says so (``launch --autostop-key``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

from . import flags
from .errors import FerryError, UsageError, cmd
from .providers.base import OWNED, SSH, STOP

if TYPE_CHECKING:
    from .config import Settings
    from .handle import Box
    from .providers import Cloud
    from .providers.base import SelfStop

log = logging.getLogger(__name__)

ACTIONS = ("stop", "terminate")
CONFIG = "$HOME/.ferry/autostop"
AGENT = "$HOME/.ferry/bin/ferry-agent"


class Policy(NamedTuple):
    """What the agent enforces: idle seconds before the action (None: never), the action, a cost limit."""

    idle: float | None
    action: str
    max_cost: float | None = None
    check: float = 60.0
    key: bool = False  # the account's API key is on the instance (the user opted in)

    def to_dict(self) -> dict:
        return self._asdict()

    @classmethod
    def from_dict(cls, data: dict) -> "Policy":
        return cls(**{k: data[k] for k in cls._fields if k in data})

    def describe(self) -> str:
        """``stop after 30m idle``, ``terminate after 1h idle or at $20 spent``, ``off``."""
        parts = [f"after {flags.brief(self.idle)} idle"] if self.idle else []
        if self.max_cost is not None:
            parts.append(f"at ${self.max_cost:g} spent")
        return f"{self.action} {' or '.join(parts)}" if parts else "off"


def self_stop_of(cloud: "Cloud") -> "SelfStop | None":
    """How instances of this cloud stop themselves (None: ferry does not own them, or they cannot)."""
    if SSH not in cloud.capabilities or OWNED not in cloud.capabilities or cloud.module is None:
        return None
    return getattr(cloud.module, "SELF_STOP", None)


def default_action(cloud: "Cloud") -> str:
    """Stop where the cloud can stop (the disk stays); terminate where it cannot (Thunder)."""
    return "stop" if STOP in cloud.capabilities else "terminate"


def policy(settings: "Settings", cloud: "Cloud", *, idle: str | None = None, action: str | None = None,
           max_cost: str | float | None = None, key: bool = False, base: Policy | None = None) -> Policy:
    """The policy from flags, falling back to ``base`` (an instance's current one) or to the settings.

    ``idle``: a duration or ``off``; default ``ferry.autostop`` (30m). ``action``:
    default stop where the cloud can stop, else terminate. ``max_cost``:
    dollars, default ``ferry.budget.max_cost_per_instance``.
    """
    if idle is not None:
        seconds = None if str(idle).lower() in ("off", "never", "0", "none") else flags.duration(idle, "--autostop")
    elif base is not None:
        seconds = base.idle
    else:
        configured = settings.data.get("autostop", "30m")
        seconds = None if configured in (None, False) or str(configured).lower() in ("off", "never", "0", "none") \
            else flags.duration(str(configured), "ferry.autostop")
    chosen = action or (base.action if base else None) or default_action(cloud)
    flags.choice(chosen, "--autostop-action", ACTIONS)
    if chosen == "stop" and STOP not in cloud.capabilities:
        raise UsageError(f"{cloud.name} instances cannot be stopped, only terminated",
                         hint="use --autostop-action terminate (the disk goes with it)")
    if max_cost is not None:
        limit: float | None = None if str(max_cost).lower() in ("off", "none") else flags.number(max_cost, "--max-cost")
    elif base is not None:
        limit = base.max_cost
    else:
        budget = settings.data.get("budget") or {}
        configured_limit = budget.get("max_cost_per_instance")
        limit = flags.number(configured_limit, "ferry.budget.max_cost_per_instance") if configured_limit else None
    check = flags.duration(str(settings.data.get("autostop_check") or "60s"), "ferry.autostop_check")
    keep_key = key or bool(base and base.key)
    return Policy(seconds, chosen, limit, max(check, 0.2), keep_key)


# -- the agent's config, written in one exec ------------------------------------------------------
def config_text(box: "Box", cloud: "Cloud", chosen: Policy) -> str:
    """The agent's KEY=VALUE config (no secrets: the key, when opted in, is a file of its own)."""
    path = self_stop_of(cloud)
    values = {
        "IDLE": str(int(chosen.idle)) if chosen.idle else "off",
        "ACTION": chosen.action,
        "CHECK": f"{chosen.check:g}",
        "MAX_COST": f"{chosen.max_cost:g}" if chosen.max_cost is not None else "",
        "PRICE": f"{price_of(box):g}",
        "SELF_STOP": path.path if path and (not path.needs_key or chosen.key) else "none",
        "API_URL": str(box.settings.for_provider(cloud.name).get("api_url") or ""),
        "INSTANCE_ID": str(box.instance.id),
        "LOCAL_DIR": str(box.instance.raw.get("dir") or "") if cloud.name == "local" else "",
    }
    for key, value in values.items():
        if "\n" in value or "=" in key:
            raise FerryError(f"autostop setting {key} holds a line break", hint="fix the provider's api_url setting")
    return "".join(f"{k}={v}\n" for k, v in values.items())


def price_of(box: "Box") -> float:
    """$/h the agent counts: the cloud's figure; the local provider's ``price`` setting (tests, demos)."""
    if box.instance.cost_per_hour:
        return float(box.instance.cost_per_hour)
    if box.provider == "local":
        return float(box.settings.for_provider("local").get("price") or 0.0)
    return 0.0


def configure(box: "Box", cloud: "Cloud", chosen: Policy | None, *, keep_existing: bool = False) -> None:
    """Write the agent's config and start it, in one exec. ``chosen=None`` turns autostop off.

    ``keep_existing``: an instance that already has a config keeps it (a
    reused or restarted instance keeps what ``ferry autostop`` set); the agent
    is (re)started either way. The account key travels on stdin, lands with
    mode 600, and is removed again when the policy no longer holds it.
    """
    if self_stop_of(cloud) is None:
        return
    import io
    import tarfile

    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w") as tar:
        files = {"config": config_text(box, cloud, chosen).encode()} if chosen else {"config": b"IDLE=off\nMAX_COST=\n"}
        if chosen and chosen.key:
            from . import apikeys

            secret = apikeys.key(box.settings, cloud.name)
            if not secret:
                raise FerryError(f"--autostop-key: no {cloud.name} API key on this machine",
                                 hint=f"see where ferry looks: {cmd('doctor')}")
            files["key"] = secret.encode()
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    write = f'umask 077 && mkdir -p "{CONFIG}" && tar -xf - -C "{CONFIG}"'
    if not (chosen and chosen.key):
        write += f' && rm -f "{CONFIG}/key"'
    if keep_existing:
        write = f'if [ ! -s "{CONFIG}/config" ]; then {write}; else cat >/dev/null; fi'
    box.remote.run(f'{write} && bash "{AGENT}" start', input=bundle.getvalue(), timeout=60)


# -- the agent's state, read back --------------------------------------------------------------------
class State(NamedTuple):
    """What ``ferry-agent status`` says (fields are None where the agent has not said yet)."""

    agent: str  # running | started | none | unknown
    idle_for: float | None = None
    fires_in: float | None = None
    idle: str | None = None
    action: str | None = None
    busy: str | None = None
    cost: float | None = None
    max_cost: float | None = None
    acting: str | None = None

    def column(self) -> str:
        """The AUTOSTOP column: off, busy, or idle-for / fires-in."""
        if self.agent in ("none", "unknown") or self.idle is None:
            return "-" if self.agent == "unknown" else "off"
        if self.acting:
            return {"stop": "stopping", "terminate": "terminating"}.get(self.acting, self.acting)
        if self.idle == "off":
            return f"off (cost ${self.cost:.2f}/{self.max_cost:g})" if self.max_cost is not None and self.cost is not None \
                else "off"
        if self.busy and self.busy != "no":
            return f"busy ({self.busy.split(' ', 1)[0]} {_short_busy(self.busy)})"
        if self.fires_in is not None:
            return f"idle {flags.brief(self.idle_for or 0)}, {self.action} in {flags.brief(max(self.fires_in, 0))}"
        return f"{self.action} after {flags.brief(float(self.idle))}"

    def to_dict(self) -> dict:
        return self._asdict()


def _short_busy(why: str) -> str:
    return "jobs" if "job" in why else "ssh" if "ssh" in why else "gpu" if "GPU" in why else why


STATUS_COMMAND = f'bash "{AGENT}" status 2>/dev/null || echo agent=unknown'


def parse_status(text: str) -> State:
    """``ferry-agent status`` output (``key=value`` words) -> State."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        for word in line.split():
            key, sep, value = word.partition("=")
            if sep:
                found.setdefault(key, value)
    if "agent" not in found:
        return State("unknown")

    def number(key: str) -> float | None:
        try:
            return float(found[key]) if found.get(key) not in (None, "") else None
        except ValueError:
            return None

    # The agent wrote its state at its last check; count the time since (by the instance's own clock).
    since = max(0.0, (number("now") or 0.0) - (number("checked") or number("now") or 0.0))
    idle_for, fires_in = number("idle_for"), number("fires_in")
    if _busy_words(text) in (None, "no"):
        idle_for = idle_for + since if idle_for is not None else None
        fires_in = fires_in - since if fires_in is not None else None
    return State(
        agent=found["agent"], idle_for=idle_for, fires_in=fires_in, idle=found.get("idle"),
        action=found.get("action"), busy=_busy_words(text), cost=number("cost"), max_cost=number("max_cost"),
        acting=found.get("acting"),
    )


def _busy_words(text: str) -> str | None:
    """``busy=`` runs to the next ``key=`` (its value has spaces)."""
    import re

    match = re.search(r"\bbusy=(.*?)(?= \w+=|$)", text, re.M)
    return match.group(1) if match else None


def read(box: "Box") -> State:
    """The agent's state on a running instance; ``unknown`` when it cannot be asked."""
    if box.instance.ssh is None:
        return State("unknown")
    try:
        proc = box.remote.run(STATUS_COMMAND, check=False, timeout=20)
    except FerryError:
        return State("unknown")
    return parse_status(proc.stdout.decode(errors="replace"))


def read_many(boxes: "list[Box]") -> "dict[str, State]":
    """Each running instance's agent state, asked in parallel (one exec each over its ControlMaster)."""
    from concurrent.futures import ThreadPoolExecutor

    live = [b for b in boxes if b.instance.ssh is not None]
    if not live:
        return {}
    with ThreadPoolExecutor(max_workers=min(len(live), 16)) as pool:
        return dict(zip([b.instance.id for b in live], pool.map(read, live)))


def announce(box: "Box", cloud: "Cloud", chosen: Policy | None) -> None:
    """One line at launch: what will stop this instance, and how (and the key, when it went there)."""
    path = self_stop_of(cloud)
    if path is None:
        return
    if chosen is not None and chosen.key:
        log.warning("autostop: your %s API key is on %s (~/.ferry/autostop/key, mode 600) because of --autostop-key",
                    cloud.name, box.name)
    if chosen is None or (chosen.idle is None and chosen.max_cost is None):
        log.info("autostop: off for %s (turn on: %s)", box.name, cmd(f"autostop --name {box.name} --idle 30m"))
        return
    if path.needs_key and not chosen.key:
        log.warning("autostop: %s cannot stop itself: %s; it runs until you stop it (or relaunch with --autostop-key)",
                    box.name, path.how)
        return
    log.info("autostop: %s %ss itself %s (%s)", box.name, chosen.action, chosen.describe().split(" ", 1)[1],
             path.summary)

"""What `config` and `doctor` report: resolved settings with secrets masked, and health checks with fixes."""

from __future__ import annotations

import json

from . import apikeys, providers
from .config import Settings
from .errors import FerryError, cmd
from .tools import DEBIAN_PACKAGES, which

SECRET_WORDS = ("key", "token", "secret", "password")


def _mask_tree(value, key: str = ""):
    if isinstance(value, dict):
        return {k: _mask_tree(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_tree(v, key) for v in value]
    if isinstance(value, str) and any(w in key.lower() for w in SECRET_WORDS) and key != "ssh_key":
        return apikeys.mask(value)
    return value


def resolved_config(settings: Settings) -> dict:
    """Settings as ferry sees them after every config layer, plus where each key was found (masked)."""
    keys = {}
    for name in apikeys.sources():
        found = apikeys.lookup(settings, name)
        keys[name] = {"set": bool(found), "source": found[1] if found else None,
                      "value": apikeys.mask(found[0]) if found else None}
    from . import providers

    everything = {**settings.data, "providers": {name: settings.for_provider(name) for name in providers.names()}}
    from .hub import tokens

    return {
        "settings": _mask_tree(everything),
        "project_dir": str(settings.project_dir),
        "project": settings.project,
        "api_keys": keys,
        "hub_tokens": tokens.report(settings),
    }


def config_lines(report: dict) -> list[str]:
    lines = [f"project: {report['project']} ({report['project_dir']})", "settings:"]
    lines += ["  " + l for l in json.dumps(report["settings"], indent=2, sort_keys=True, default=str).splitlines()]
    lines.append("api keys:")
    for name, info in report["api_keys"].items():
        lines.append(f"  {name}: {info['value']} from {info['source']}" if info["set"] else f"  {name}: not set")
    lines.append("hub tokens:")
    for name, info in report.get("hub_tokens", {}).items():
        lines.append(f"  {name}: {info['value']} from {info['source']}" if info["set"] else f"  {name}: not set")
    return lines


def _check(what: str, ok: bool, detail: str, fix: str = "", required: bool = True) -> dict:
    return {"what": what, "ok": ok, "detail": detail, "fix": fix, "required": required}


def run_checks(settings: Settings) -> list[dict]:
    checks = []
    for tool in ("ssh", "ssh-keygen", "rsync", "git", "tmux", "sshd"):
        path = which(tool)
        needed_for = {"sshd": "the local provider", "tmux": "the local provider", "git": "git projects"}.get(tool)
        checks.append(_check(
            f"local tool {tool}", path is not None, path or "missing",
            f"sudo apt-get install -y {DEBIAN_PACKAGES.get(tool, tool)}", required=needed_for is None,
        ))
    try:
        from .sshkey import private_key_path

        key = private_key_path(settings.ssh_key, settings.home)
        checks.append(_check("ssh key", True, str(key)))
    except FerryError as exc:
        checks.append(_check("ssh key", False, exc.message, exc.hint or ""))
    for name, source in apikeys.sources().items():
        found = apikeys.lookup(settings, name)
        variable = source.variable
        checks.append(_check(f"{name} API key", bool(found), f"from {found[1]}" if found else "not set",
                             f"export {variable}=... (or put it in .env)", required=False))
    from .hub import tokens

    for service, info in tokens.report(settings).items():
        checks.append(_check(f"{service} token ({info['variable']})", info["set"],
                             f"from {info['source']}" if info["set"] else "not set",
                             f"export {info['variable']}=... (or put it in .env)", required=False))
    checks.append(_check("ec2 credentials", _aws_credentials(), "boto3 credential chain",
                         "aws configure (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)", required=False))
    checks.extend(_self_stop_paths())
    checks.append(_journal_check(settings))
    checks.extend(_instance_checks(settings))
    return checks


def _journal_check(settings: Settings) -> dict:
    """The project's change-journal daemon (journal.py): whether one runs, and why not."""
    from . import journal

    project, least = settings.project_dir, settings.sync_journal_min_files
    pid = journal.daemon_pid(project)
    if pid is not None:
        return _check("sync change journal", True, f"daemon pid {pid} watches {project} (leaves after "
                      f"{journal.IDLE // 60} min without a sync; kill {pid} stops it)", required=False)
    failed = project / journal.JOURNAL_DIR / journal.FAILED
    if failed.exists():
        return _check("sync change journal", False, "its daemon stopped: " + failed.read_text(errors="replace").strip(),
                      "syncs scan every file meanwhile; it is tried again an hour later", required=False)
    how = "off (sync.journal_min_files: 0)" if not least else \
        f"no daemon (a sync of {least} files or more starts one)" if journal.supported(project) else \
        "not here (it needs Linux, and the project at its git repository's top)"
    return _check("sync change journal", True, how, required=False)


def _self_stop_paths() -> list[dict]:
    """How an idle instance of each cloud stops itself (autostop, run --then): said, not checked."""
    found = []
    for name in ("local", *providers.CLOUDS):
        path = getattr(providers.module(name), "SELF_STOP", None)
        if path is not None:
            found.append(_check(f"autostop on {name}", True, path.how, required=False))
    return found


def _aws_credentials() -> bool:
    try:
        boto3 = providers.sdk("boto3", "ec2")
        import botocore.exceptions
    except (FerryError, ImportError):
        return False
    try:
        return boto3.Session().get_credentials() is not None
    except botocore.exceptions.BotoCoreError:  # a missing profile, an expired SSO token
        return False


def _instance_checks(settings: Settings) -> list[dict]:
    """rsync, tmux and setsid on the current instance, if the project has one that runs."""
    from .handle import get as get_box

    try:
        box = get_box(settings)
        instance = box.instance
    except FerryError:
        return [_check("current instance", True, f"none yet ({cmd('launch')} makes one)", required=False)]
    try:
        proc = box.remote.run(
            "for t in rsync tmux setsid; do command -v $t >/dev/null 2>&1 && echo ok:$t || echo missing:$t; done",
            timeout=20,
        )
    except FerryError as exc:  # unreachable, or no answer in time (Remote.run's SSHError)
        return [_check(f"instance {instance.name}", False, str(exc), cmd(f"status --name {instance.name}"), required=False)]
    results = []
    for line in proc.stdout.decode().split():
        state, tool = line.split(":", 1)
        package = "util-linux" if tool == "setsid" else tool
        results.append(_check(f"{instance.name}: {tool}", state == "ok", state, f"on the instance: apt-get install -y {package}"))
    return results

"""``ferry build``: make the project's environment on the instance, and skip it when nothing it depends on changed.

What runs, first match wins (:func:`plan`):

1. ``ferry.build.command`` from config, its inputs the files matching ``ferry.build.inputs``;
2. ``uv.lock`` -> ``uv sync --locked`` (the lock is the truth; a stale one fails with uv's own advice),
   ``pyproject.toml`` alone -> ``uv sync`` (a venv and ``pip install -e .`` where uv is missing);
3. ``requirements*.txt`` -> a venv ``.venv`` in the workdir and ``uv pip install -r`` each (pip without uv);
4. ``environment.yml`` -> its conda environment, through ``miniforge.sh`` (Miniforge when missing).

Skipping: one ssh exec hashes, on the instance, the inputs as the instance
has them, the build command and the instance's ``python3 -V``, and compares
with the digest the last successful build left in
``~/.ferry/build/<workdir, / as %>/hash``. Equal (and the environment still
there): one line, nothing runs. Otherwise the build runs as an ordinary
job (label ``build``: streamed, log kept, exit code), which drops the old
digest first and writes the new one, plus the environment's path in
``.../env``, only when it succeeds. ``ferry-job`` reads that ``env`` file
for every job in the workdir: its ``bin/`` goes first on ``PATH`` and
``VIRTUAL_ENV`` or ``CONDA_PREFIX`` is set, so jobs find the environment
without being told.
"""

from __future__ import annotations

import logging
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from .errors import ConfigError, FerryError, cmd

if TYPE_CHECKING:
    from .config import Settings
    from .follow import JobResult
    from .handle import Box

log = logging.getLogger(__name__)

LABEL = "build"
NO_UV = ("echo 'ferry build: uv.lock needs uv, and uv is not on this instance'\"'\"'s PATH "
         "(~/.local/bin is on it); install it: curl -LsSf https://astral.sh/uv/install.sh | sh' >&2; exit 127")


@dataclass
class Plan:
    """One build: what it runs (shell, in the workdir), the files that decide, the environment it makes."""

    how: str  # for one line: "uv sync --locked (uv.lock, pyproject.toml)"
    command: str
    inputs: list[str]  # paths relative to the project (and the workdir)
    env: str | None = None  # the environment it makes: relative to the workdir, or absolute; None: none known
    env_kind: str = "venv"  # "venv" (VIRTUAL_ENV) or "conda" (CONDA_PREFIX)
    scripts: bool = False  # it runs one of ferry's remote scripts (sent first)


@dataclass
class BuildResult:
    ran: bool  # False: nothing to build, or unchanged since the last build
    plan: Plan | None
    digest: str | None = None
    job: "JobResult | None" = None

    @property
    def ok(self) -> bool:
        return self.job is None or self.job.ok


def _venv_pip(requirements: list[str]) -> str:
    args = " ".join(f"-r {shlex.quote(r)}" for r in requirements)
    return "\n".join([
        "if command -v uv >/dev/null 2>&1; then",
        "  [ -x .venv/bin/python ] || uv venv .venv",
        f"  uv pip install --python .venv/bin/python {args}",
        "else",
        "  echo 'ferry build: uv is not on the instance; using python3 -m venv and pip'",
        "  [ -x .venv/bin/python ] || python3 -m venv .venv",
        f"  .venv/bin/python -m pip install --disable-pip-version-check {args}",
        "fi",
    ])


def plan(settings: "Settings") -> Plan | None:
    """What ``build`` would run for this project (None: nothing to build). Reads local files only."""
    root = settings.project_dir
    cfg = settings.data.get("build") or {}
    if cfg.get("command"):
        patterns = cfg.get("inputs") or []
        if isinstance(patterns, str):
            patterns = [patterns]
        inputs = sorted({p.relative_to(root).as_posix() for pattern in patterns for p in root.glob(pattern) if p.is_file()})
        command = str(cfg["command"])
        return Plan(f"{command} (ferry.build.command{', ' + ', '.join(inputs) if inputs else ''})", command, inputs,
                    env=cfg.get("env") or None)
    if (root / "uv.lock").is_file():
        inputs = [n for n in ("uv.lock", "pyproject.toml", ".python-version") if (root / n).is_file()]
        command = "\n".join(["command -v uv >/dev/null 2>&1 || { " + NO_UV + "; }", "uv sync --locked"])
        return Plan(f"uv sync --locked ({', '.join(inputs)})", command, inputs, env=".venv")
    if (root / "pyproject.toml").is_file():
        inputs = [n for n in ("pyproject.toml", ".python-version") if (root / n).is_file()]
        command = "\n".join([
            "if command -v uv >/dev/null 2>&1; then uv sync; else",
            "  echo 'ferry build: uv is not on the instance; using python3 -m venv and pip install -e .'",
            "  [ -x .venv/bin/python ] || python3 -m venv .venv",
            "  .venv/bin/python -m pip install --disable-pip-version-check -e .",
            "fi",
        ])
        return Plan(f"uv sync ({', '.join(inputs)})", command, inputs, env=".venv")
    requirements = sorted(p.name for p in root.glob("requirements*.txt") if p.is_file())
    if requirements:
        return Plan(f"a venv in .venv + pip install -r {' -r '.join(requirements)}", _venv_pip(requirements),
                    requirements, env=".venv")
    for name in ("environment.yml", "environment.yaml"):
        if (root / name).is_file():
            env_name = conda_env_name((root / name).read_text(errors="replace")) or settings.project
            return Plan(f"conda env {env_name} from {name} (Miniforge)", "", [name], env=f"miniforge3/envs/{env_name}",
                        env_kind="conda", scripts=True)
    return None


def conda_env_name(text: str) -> str | None:
    """The ``name:`` of an environment.yml (None without one)."""
    found = re.search(r"^name:\s*[\"']?([A-Za-z0-9_.+-]+)", text, re.MULTILINE)
    return found.group(1) if found else None


# -- on the instance -----------------------------------------------------------------------------------
def state_dir(box: "Box") -> str:
    """Where the last successful build of this workdir left its digest and environment (ferry-job reads env)."""
    return f"{box.instance.remote_home or '~'}/.ferry/build/{box.workdir.replace('/', '%')}"


def _env_path(box: "Box", built: Plan) -> str | None:
    if not built.env:
        return None
    if built.env.startswith("/"):
        return built.env
    base = box.instance.remote_home if built.env_kind == "conda" else box.workdir
    return f"{base}/{built.env}"


def _command(box: "Box", built: Plan) -> str:
    """The build as the job runs it: the command itself, then its digest and environment recorded on success."""
    if built.scripts:
        from . import scripts

        name = built.env.rsplit("/", 1)[-1] if built.env else box.settings.project
        command = scripts.command(box, "miniforge.sh", [built.inputs[0], name])
    else:
        command = built.command
    state = shlex.quote(state_dir(box))
    env = _env_path(box, built)
    if env:
        record_env = (f"if [ -d {shlex.quote(env)} ]; then printf '%s %s\\n' {built.env_kind} {shlex.quote(env)} "
                      f"> {state}/env; else rm -f {state}/env; fi")
    else:  # a command of one's own that named no environment: a .venv it made counts
        record_env = (f'if [ -d .venv/bin ]; then printf \'venv %s\\n\' "$PWD/.venv" > {state}/env; '
                      f"else rm -f {state}/env; fi")
    return "\n".join([
        f"# ferry build: {built.how}",
        f"mkdir -p {state} && rm -f {state}/hash",  # a build that fails leaves nothing that says it is done
        "( set -e",
        command,
        ") || exit $?",
        f"{record_env} && printf '%s\\n' \"$FERRY_BUILD_HASH\" > {state}/hash",
    ])


@dataclass
class Remote:
    digest: str
    recorded: str
    env_ok: bool
    missing: list[str]


def check(box: "Box", built: Plan) -> Remote:
    """One exec: the digest of what the build depends on, as the instance has it, and what the last build recorded."""
    state = shlex.quote(state_dir(box))
    files = " ".join(shlex.quote(f) for f in built.inputs)
    what = shlex.quote(built.how + "\n" + built.command)
    script = f"""cd {shlex.quote(box.workdir)} 2>/dev/null || cd /
for f in {files}; do [ -f "$f" ] || echo "missing=$f"; done
echo "digest=$({{ printf '%s\\n' {what}; python3 -V 2>&1 || echo no-python3
  for f in {files}; do printf '%s\\n' "$f"; if [ -f "$f" ]; then sha256sum < "$f"; fi; done; }} | sha256sum | cut -d' ' -f1)"
echo "recorded=$(cat {state}/hash 2>/dev/null)"
env_ok=1
if [ -f {state}/env ]; then read -r _ path < {state}/env; [ -d "$path" ] || env_ok=0; fi
echo "env_ok=$env_ok"
"""
    proc = box.remote.run(script, timeout=60)
    facts: dict[str, list[str]] = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        facts.setdefault(key, []).append(value)
    return Remote(digest=(facts.get("digest") or [""])[0], recorded=(facts.get("recorded") or [""])[0],
                  env_ok=(facts.get("env_ok") or ["1"])[0] == "1", missing=facts.get("missing", []))


def build(box: "Box", *, force: bool = False, warn: bool = False, out: BinaryIO | None = None) -> BuildResult:
    """Build the project's environment on the instance unless it is current (``force``: anyway).

    Raises JobFailed when the build fails, unless ``warn``.
    """
    built = plan(box.settings)
    if built is None:
        log.info("build: nothing to build (no ferry.build.command, uv.lock, pyproject.toml, requirements*.txt "
                 "or environment.yml)")
        return BuildResult(False, None)
    if built.scripts:
        from . import scripts

        scripts.send(box)
    found = check(box, built)
    if found.missing:
        raise FerryError(f"{', '.join(found.missing)} {'is' if len(found.missing) == 1 else 'are'} not on {box.name} yet",
                         hint=f"send the project first: {cmd('sync')}")
    if not found.digest:
        raise ConfigError(f"could not hash the build's inputs on {box.name}", hint="is sha256sum there? (coreutils)")
    if not force and found.digest == found.recorded and found.env_ok:
        log.info("build: unchanged since the last build (%s); skipped (--force rebuilds)", built.how)
        return BuildResult(False, built, found.digest)
    log.info("build: %s", built.how)
    result = box.run(_command(box, built), env={"FERRY_BUILD_HASH": found.digest}, label=LABEL, warn=warn, out=out)
    return BuildResult(True, built, found.digest, result)  # type: ignore[arg-type]

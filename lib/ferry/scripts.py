"""Remote scripts: ferry's shipped ones and the project's own ``remote_scripts/``, run on the instance as jobs.

``ferry script NAME`` sends both sets in one exec (a tar on stdin) to
``~/.ferry/scripts/<project>/`` on the instance, the project's file winning
when both have a name, and runs ``NAME`` there as an ordinary ferry job in
the workdir: streamed, with its exit code, its log kept. The shipped ones
(``miniforge.sh``, ``cloudflared.sh``, ``raid0.sh``, ``comfyui.sh``) live in
``lib/ferry/remote_scripts/`` beside the job wrapper; each says in its
header what it needs (root, network) and does nothing, saying so, when run
a second time. Names resolve before any network: a typo lists what exists.
"""

from __future__ import annotations

import io
import shlex
import tarfile
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Mapping, Sequence

from .errors import UsageError, cmd

if TYPE_CHECKING:
    from .handle import Box
    from .jobs import Job, JobResult

SHIPPED = ("miniforge.sh", "cloudflared.sh", "raid0.sh", "comfyui.sh")
PROJECT_DIR = "remote_scripts"
SUFFIXES = ("", ".sh", ".py")  # `ferry script raid0` finds raid0.sh


def shipped_dir() -> Path:
    return Path(str(resources.files("ferry").joinpath("remote_scripts")))


def available(project_dir: Path) -> dict[str, bytes]:
    """Every script the instance will get, by name relative to the scripts directory: shipped, then the project's."""
    found = {name: (shipped_dir() / name).read_bytes() for name in SHIPPED}
    own = project_dir / PROJECT_DIR
    if own.is_dir():
        for path in sorted(own.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                found[path.relative_to(own).as_posix()] = path.read_bytes()  # the project's win
    return found


def resolve(name: str, names: Sequence[str]) -> str:
    """``name`` as one of ``names`` (``raid0`` finds ``raid0.sh``); a usage error listing them otherwise."""
    clean = name.strip().lstrip("./")
    if not clean or ".." in Path(clean).parts:
        raise UsageError(f"bad script name {name!r}", hint=f"name one in remote_scripts/, e.g. {cmd('script raid0.sh')}")
    for suffix in SUFFIXES:
        if clean + suffix in names:
            return clean + suffix
    listed = ", ".join(sorted(n for n in names if "/" not in n))
    raise UsageError(f"no remote script named {name!r} (there are: {listed})",
                     hint=f"add it to the project's {PROJECT_DIR}/, or run one of those: {cmd('script NAME')}")


def remote_dir(box: "Box") -> str:
    """Where the scripts live on the instance (per project, so two projects on one box never mix theirs)."""
    home = box.instance.remote_home or box.workdir  # (box.workdir says "never bootstrapped" when neither is known)
    return f"{home.rstrip('/')}/.ferry/scripts/{box.settings.project}"


def send(box: "Box") -> str:
    """Replace the instance's copy of the scripts with the current set, in one exec; its directory."""
    bundle = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=bundle, mode="w") as tar:
        for name, data in available(box.project_dir).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o755, now
            tar.addfile(info, io.BytesIO(data))
    target = remote_dir(box)
    quoted, fresh = shlex.quote(target), shlex.quote(target + ".new")
    # Unpacked beside it, then swapped in: a script removed from the project is gone, a half copy never runs.
    box.remote.run(f"rm -rf {fresh} && mkdir -p {fresh} && tar -xf - -C {fresh} && rm -rf {quoted} && mv {fresh} {quoted}",
                   input=bundle.getvalue(), timeout=120)
    return target


def command(box: "Box", name: str, args: Sequence[str] = ()) -> str:
    """The job's command: the script by its path on the instance, its arguments quoted (its shebang picks the shell)."""
    return " ".join(shlex.quote(part) for part in (f"{remote_dir(box)}/{name}", *args))


def run(box: "Box", name: str, args: Sequence[str] = (), *, detach: bool = False, warn: bool = False,
        env: Mapping[str, str] | None = None, out: BinaryIO | None = None) -> "JobResult | Job":
    """Send the scripts, then run ``name`` with ``args`` as a job in the workdir (see Box.run for the outcome)."""
    chosen = resolve(name, list(available(box.project_dir)))
    send(box)
    return box.run(command(box, chosen, args), detach=detach, warn=warn, env=env, out=out, label=chosen)

"""``ferry tunnel PORT``: a cloudflared quick tunnel to ``localhost:PORT`` on the instance, its public URL.

cloudflared runs as an ordinary ferry job labelled ``tunnel-PORT`` (so
``jobs``, ``logs`` and ``kill`` see it, and autostop counts it as work).
The URL is taken from cloudflared's own output, the box it draws around
``https://<words>.trycloudflare.com``, through the job's ``wait_for``
machinery: ferry returns the moment that line arrives, or the moment
cloudflared says ``failed to request quick Tunnel`` or ends, or when the
wait runs out; each failure names the tail of its log. A tunnel already
running for the port is reused, not doubled. ``cloudflared`` comes from
the instance's ``PATH`` (``~/.local/bin`` is on every job's);
``install=True`` runs ``cloudflared.sh`` first.
"""

from __future__ import annotations

import io
import logging
import re
import shlex
import sys
from typing import TYPE_CHECKING

from .errors import FerryError, JobError, UsageError, cmd
from .flags import brief

if TYPE_CHECKING:
    from .handle import Box
    from .jobs import Job

log = logging.getLogger(__name__)

URL = re.compile(r"https://(?!api\.)[a-z0-9][a-z0-9-]*\.trycloudflare\.com")
FAILED = "failed to request quick Tunnel"
TAIL = 12  # log lines shown with a failure


def label(port: int) -> str:
    return f"tunnel-{port}"


def _port(port) -> int:
    try:
        value = int(port)
    except (TypeError, ValueError):
        value = 0
    if not 0 < value < 65536:
        raise UsageError(f"bad port {port!r}", hint=f"a number from 1 to 65535, e.g. {cmd('tunnel 8188')}")
    return value


def command(port: int) -> str:
    """The job: cloudflared on the instance's PATH, or a clear message (exit 127) without it."""
    return (f"command -v cloudflared >/dev/null 2>&1 || {{ echo 'ferry tunnel: cloudflared is not on the "
            f"instance'\"'\"'s PATH; install it with: ferry tunnel --install {port}' >&2; exit 127; }}\n"
            f"exec cloudflared tunnel --no-autoupdate --url {shlex.quote(f'http://localhost:{port}')}")


def _log_text(job: "Job") -> str:
    buffer = io.BytesIO()
    job.logs(out=buffer)
    return buffer.getvalue().decode(errors="replace")


def _tail(text: str) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-TAIL:])


def _running(box: "Box", port: int) -> list[str]:
    """Ids of the running tunnel jobs for ``port``."""
    return [j.id for j in box.jobs() if j.label == label(port) and j.state == "running"]


def _fail(message: str, log_text: str, job_ref: str) -> FerryError:
    tail = _tail(log_text)
    if tail:  # what cloudflared said, above the one error line
        print("\n".join(f"  | {line}" for line in tail.splitlines()), file=sys.stderr)
    return FerryError(message, hint=f"its whole log: {cmd(f'logs -j {job_ref}')}")


def start(box: "Box", port, *, wait: float = 60.0, install: bool = False) -> str:
    """Start (or find) the tunnel to ``port``; its https URL. FerryError on a failure or no URL within ``wait``."""
    from .jobs import Job

    port = _port(port)
    if install:
        box.script("cloudflared.sh")
    for job_id in _running(box, port):
        found = URL.search(_log_text(Job(box, job_id)))
        if found:
            log.info("tunnel to port %s already runs (job %s)", port, job_id)
            return found.group(0)
    try:
        job = box.run(command(port), label=label(port), wait_for=f"{URL.pattern}|{re.escape(FAILED)}",
                      wait_timeout=wait, out=io.BytesIO())
    except JobError:
        # It ended (no cloudflared, or it gave up) or printed nothing useful in time: its log says which.
        newest = Job(box, label(port))  # the wrapper resolves a label to the newest job that has it
        text = _log_text(newest)
        still = _running(box, port)
        for job_id in still:
            Job(box, job_id).kill()
        what = (f"cloudflared gave no tunnel URL within {brief(wait)}" if still else
                f"cloudflared failed: {_reason(text)}")
        raise _fail(f"tunnel to port {port}: {what}", text, label(port)) from None
    text = _log_text(job)
    found = URL.search(text)
    if not found:  # it said it failed; it may still be on its way out
        for job_id in _running(box, port):
            Job(box, job_id).kill()
        raise _fail(f"tunnel to port {port}: cloudflared failed: {_reason(text)}", text, job.ref)
    return found.group(0)


def _reason(text: str) -> str:
    """The line that says why, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if FAILED in line or "ferry tunnel:" in line:
            return line[line.find(FAILED):] if FAILED in line else line.replace("ferry tunnel: ", "")
    return lines[-1] if lines else "it printed nothing"


def stop(box: "Box", port) -> None:
    """End the tunnel to ``port`` (every running one); a note when there was none."""
    from .jobs import Job

    port = _port(port)
    running = _running(box, port)
    for job_id in running:
        Job(box, job_id).kill()
    log.info("tunnel to port %s %s", port, "stopped" if running else "was not running")

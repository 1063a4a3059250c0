"""Expected failures, each carrying the one line a user needs and a hint.

Tasks turn a FerryError into ``error: <message>`` plus ``hint: <hint>`` on
stderr and exit status ``exit_code``; nothing above the library prints a
traceback for them unless ``--debug`` is on.
"""

from __future__ import annotations


class FerryError(Exception):
    """Base for every failure ferry expects and can explain."""

    exit_code = 1
    fallback_hint = "run it again with --debug for the details"

    def __init__(self, message: str, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(FerryError):
    """The command line itself is wrong (exit status 2, like argparse)."""

    exit_code = 2
    fallback_hint = "see the task's flags: ferry --help TASK"


class ConfigError(FerryError):
    """A setting is missing or malformed."""


class MissingToolError(FerryError):
    """A program ferry shells out to is not installed."""


class NoInstanceError(FerryError):
    """No instance matches the name, or the project has no current one."""


class ProviderError(FerryError):
    """A cloud API refused or failed a request."""

    fallback_hint = "the cloud's own console says more; ferry doctor checks keys and settings"


class TransientError(ProviderError):
    """A failure worth retrying: 429, 5xx, a timeout or a dropped connection."""

    def __init__(self, message: str, hint: str | None = None, retry_after: float | None = None):
        super().__init__(message, hint)
        self.retry_after = retry_after


class SSHError(FerryError):
    """The instance could not be reached or refused us."""

    fallback_hint = "check that it runs: ferry status"


class HostKeyError(SSHError):
    """The host key changed since ferry pinned it: possibly an attack, possibly a rebuilt instance."""


class RemoteCommandError(FerryError):
    """A remote step ferry depends on (bootstrap, rsync, job wrapper) failed."""


class JobError(FerryError):
    """A job is unknown, or did not reach the state asked for."""

    fallback_hint = "list the jobs: ferry jobs"


class JobFailed(FerryError):
    """``Box.run`` saw its job end other than successfully (raised unless ``warn=True``, as Invoke's run does).

    ``result`` is the whole :class:`ferry.JobResult`; the exit status of an
    uncaught one is the job's own exit code (1 when it has none).
    """

    def __init__(self, result, hint: str | None = None):
        code = result.exit_code if isinstance(result.exit_code, int) and 0 < result.exit_code < 256 else 1
        super().__init__(f"job {getattr(result, 'ref', result.job_id)} {result.describe()}", hint=hint, exit_code=code)
        self.result = result


def program() -> str:
    """The program the user typed: ``inv`` under Invoke's own script, else ``ferry`` (which always works)."""
    import os
    import sys

    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "inv" if name in ("inv", "invoke") else "ferry"


def cmd(args: str) -> str:
    """A command line for a hint, in the program the user typed: ``cmd("logs -f -j 3")`` -> ``ferry logs -f -j 3``."""
    return f"{program()} {args}"

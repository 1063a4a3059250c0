"""What every task shares: one presenter for expected failures, library logging shown, closed pipes quiet."""

from __future__ import annotations

import functools
import os
import sys
import traceback

from invoke import Task
from invoke import task as invoke_task
from invoke.exceptions import Exit

NAME_HELP = "instance name (default: the project's current instance)"

# One meaning per letter, in every task: only these flags have a short form.
SHORT_FLAGS = {"job": "j", "name": "n", "follow": "f", "env": "e", "yes": "y", "verbose": "v", "provider": "p",
               "gpu": "g", "tail": "t", "input": "i"}
# What each value flag takes, for --help (Invoke would say STRING or INT).
METAVARS = {"name": "NAME", "job": "JOB", "provider": "PROVIDER", "gpu": "GPU", "gpus": "N", "count": "N",
            "image": "IMAGE", "disk": "GB", "volume": "GB", "ports": "PORTS", "max-price": "DOLLARS", "region": "REGION",
            "launch-timeout": "DURATION", "timeout": "DURATION", "wait-timeout": "DURATION", "wait-for": "REGEX",
            "env": "KEY=VALUE", "cwd": "DIR", "label": "LABEL", "then": "stop|terminate", "path": "PATH",
            "backup-dir": "DIR", "include": "PATTERN", "exclude": "PATTERN", "delete": "sent|never",
            "credentials": "DIR", "signal": "SIGNAL", "tail": "N", "port": "PORT[:LOCAL]", "cpu": "N", "to": "NAME",
            "id": "ID", "command": "COMMAND", "autostop": "DURATION|off", "autostop-action": "stop|terminate",
            "max-cost": "DOLLARS", "idle": "DURATION|off", "action": "stop|terminate",
            "interval": "DURATION", "items": "FILE", "scripts": "DIR", "slots": "K|gpu", "retries": "N",
            "host-timeout": "DURATION", "map": "ID", "dest": "DIR", "arg": "ARG", "wait": "DURATION",
            "source-dir": "DIR", "repo": "NAME", "user": "USER", "trigger": "WORD",
            "base-model": "REPO_ID", "weights": "FILE", "python": "PYTHON", "limit": "N", "input": "KEY=VALUE",
            "output-dir": "DIR", "model": "OWNER/MODEL[:VERSION]"}


class FerryTask(Task):
    """Invoke's Task, with ferry's short flags (SHORT_FLAGS only) instead of first-free-letter ones.

    ``optional``: positionals the task may go without (``map``'s COMMAND is
    not given with ``--scripts`` or ``--resume``); see :func:`_optional_positionals`.
    """

    optional: tuple[str, ...] = ()

    def get_arguments(self, ignore_unknown_help=None):
        arguments = super().get_arguments(ignore_unknown_help)
        for argument in arguments:
            if argument.positional and argument.name in self.optional:
                argument.ferry_optional = True
        return arguments

    def arg_opts(self, name, default, taken_names):
        auto, self.auto_shortflags = self.auto_shortflags, False
        try:
            opts = super().arg_opts(name, default, taken_names)
        finally:
            self.auto_shortflags = auto
        short = SHORT_FLAGS.get(name)
        if short and short not in taken_names:
            opts["names"].append(short)
        return opts

JOB_HELP = "the job: its number, its label, or the start of its id (default: the latest job)"


def _optional_positionals() -> None:
    """Let a positional be left out: Invoke (2.x) requires every positional it parses.

    A positional Argument marked ``ferry_optional`` that is still unset when
    its task's arguments end gets the value "" (the task reads that as "not
    given"), so ``ferry map --resume`` parses as ``inv`` would parse it were
    the positional optional. Everything else about parsing is Invoke's own.
    """
    from invoke.parser.parser import ParseMachine

    original = ParseMachine.complete_context
    if getattr(original, "ferry_optional", False):
        return

    def complete_context(self) -> None:
        if self.context:
            for argument in self.context.positional_args:
                if getattr(argument, "ferry_optional", False) and argument.value is None:
                    argument.set_value("", cast=False)
        original(self)

    complete_context.ferry_optional = True  # type: ignore[attr-defined]
    ParseMachine.complete_context = complete_context  # type: ignore[method-assign]


def ferry_task(*args, optional: tuple[str, ...] = (), **kwargs):
    """``@task`` whose expected failures print ``error: ...`` / ``hint: ...`` and exit 1 (2 for usage).

    It also shows the library's progress lines (logging) on stderr, and ends
    quietly with status 141 when whoever reads stdout goes away (``| head``).
    """

    def decorate(func):
        @functools.wraps(func)
        def wrapper(c, *a, **kw):
            if any(value in ("--help", "-h") for value in [*a, *kw.values()] if isinstance(value, str)):
                show_help(made.name)  # a positional took the flag: `ferry run --help` is a question, not a command
            from .. import output
            from ..config import Settings
            from ..errors import FerryError, program

            debug = Settings.of(c).debug
            output.install_logging(debug)
            try:
                done = func(c, *a, **kw)
                sys.stdout.flush()  # a pipe closed early fails here, not in the interpreter's exit
                return done
            except FerryError as exc:
                if debug:
                    traceback.print_exc()
                output.error(exc.message, exc.hint or exc.fallback_hint.replace("ferry ", f"{program()} ", 1))
                raise Exit(code=exc.exit_code) from None
            except BrokenPipeError:
                stdout_gone()
            except KeyboardInterrupt:
                # Invoke would turn this into a silent exit 1; an interrupted command exits 130.
                raise Exit(code=130) from None

        made = invoke_task(*args, klass=FerryTask, **kwargs)(wrapper)
        if optional:
            made.optional = tuple(optional)
            _optional_positionals()
        return made

    if len(args) == 1 and callable(args[0]) and not kwargs:
        func, args = args[0], ()
        return decorate(func)
    return decorate


def show_help(task_name: str) -> None:
    """Print the task's own help, exactly as ``PROGRAM [core flags] --help TASK`` prints it, and stop."""
    argv = sys.argv
    start = len(sys.orig_argv) - len(argv) + 1  # where the program's own arguments begin
    names = (task_name, task_name.replace("-", "_"))
    # As typed: a task of a sub-collection (`replicate.run`) is named by its last part only.
    at = next((i for i, arg in enumerate(argv) if i and arg.rsplit(".", 1)[-1] in names), len(argv))
    typed = argv[at] if at < len(argv) else task_name
    core = [arg for arg in argv[1:at] if arg not in ("--help", "-h")]
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:start], *core, "--help", typed])


def stdout_gone() -> None:
    """The reader of our stdout went away (``| head``): stop quietly with 141, as a shell pipeline would."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    raise Exit(code=141)

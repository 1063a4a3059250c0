"""The ``ferry`` console script: ferry's tasks without a tasks.py, configured exactly as ``inv`` would be.

It reads the project's ``invoke.yaml`` from the project root (the nearest
ancestor holding ``.ferry/``, ``tasks.py`` or ``.git``), as ``inv`` reads the
one beside ``tasks.py``, with ferry's defaults among Invoke's global ones
(``FerryConfig``). It differs from ``inv`` in one way: a command line Invoke
cannot parse is a usage error, so it gets ferry's one-line ``error:``/``hint:``
and exit status 2 (``inv`` itself exits 1 there).
"""

from __future__ import annotations

import inspect
import sys

from invoke import Program
from invoke.exceptions import Exit, ParseError

from . import __version__
from .config import FerryConfig, project_root
from .tasks import ns


def _interruptible(step):
    """Invoke turns a Ctrl-C into a silent exit 1; an interrupted command exits 130, whatever step it was in."""

    def run_step(self, *args, **kwargs):
        try:
            return step(self, *args, **kwargs)
        except KeyboardInterrupt:
            raise Exit(code=130) from None

    run_step.__name__ = step.__name__
    return run_step


# Invoke's core flags that mean something to a ferry user; the rest (--echo, --pty, --hide, ...) steer
# Invoke's own shell runner, which ferry's tasks never use, and stay out of `ferry --help`.
SHOWN_CORE_FLAGS = ("--complete", "--debug", "--help", "--list", "--print-completion-script", "--version", "--config")
# The task list, by what each task is about (the module that holds it).
GROUPS = (("instances", "Instances"), ("files", "Files"), ("jobs", "Jobs"), ("fleet", "Fleets (fleet.* and map)"),
          ("build", "Environment, remote scripts, tunnels"), ("clouds", "Clouds"),
          ("money", "Costs (autostop, budget, orphans)"), ("reshape", "Reshaping (where the cloud can)"),
          ("hf", "Hugging Face"), ("replicate", "Replicate"))


def _every_task(collection, prefix: str = ""):
    """(dotted name, task) for a collection and its sub-collections (``fleet.run``)."""
    for name, task in collection.tasks.items():
        yield prefix + name, task
    for name, sub in collection.collections.items():
        yield from _every_task(sub, f"{prefix}{name}.")


class FerryProgram(Program):
    def print_help(self) -> None:
        print(f"Usage: {self.binary} [--core-opts] <task> [--task-opts] ...  (tasks chain: ferry launch sync run CMD)")
        print("")
        print("Core options:")
        print("")
        self.print_columns([t for t in self.initial_context.help_tuples() if t[0].split(",")[-1].split("=")[0]
                            .strip().split("[")[0] in SHOWN_CORE_FLAGS])
        self.list_tasks()

    def list_flat(self) -> None:
        """The task list in groups (instances, files, jobs, clouds), each task with its first docstring line."""
        by_group: dict[str, list] = {}
        for name, task in sorted(_every_task(self.scoped_collection)):
            module = getattr(task.body, "__module__", "").rsplit(".", 1)[-1]
            doc = (inspect.getdoc(task.body) or "").strip()  # (task.help is Invoke's per-flag help, not a summary)
            by_group.setdefault(module if module in dict(GROUPS) else "", []).append(
                (name, doc.splitlines()[0] if doc else ""))
        print("Tasks:\n")
        for key, title in (*GROUPS, ("", "Yours")):
            if by_group.get(key):
                print(f"  {title}:")
                self.print_columns([(f"  {name}", text) for name, text in by_group[key]])

    def print_columns(self, tuples) -> None:
        """Flags with what they take (``--timeout=DURATION``), not Invoke's ``STRING``/``INT``."""
        from .tasks._common import METAVARS

        shown = []
        for spec, text in tuples:
            if spec.lstrip().startswith("-") and ("STRING" in spec or "INT" in spec):
                long = next((part.strip() for part in spec.split(",") if part.strip().startswith("--")), "")
                flag = long.lstrip("-").split("=")[0].split("[")[0]
                spec = spec.replace("STRING", METAVARS.get(flag, "VALUE")).replace("INT", METAVARS.get(flag, "N"))
            shown.append((spec, text))
        super().print_columns(shown)

    def create_config(self) -> None:
        self.config = self.config_class(project_location=str(project_root()))
        self.config.load_project()

    def parse_cleanup(self) -> None:
        if self.args.complete.value:
            complete_values(self.core.remainder)  # raises Exit when the word being completed is a flag's value
        super().parse_cleanup()

    def _usage_error(self, exc: ParseError) -> None:
        from .output import error

        error(str(exc), hint="see ferry --list, or ferry --help TASK")
        sys.exit(2)

    def parse_core(self, argv):
        try:
            super().parse_core(argv)
        except ParseError as exc:
            self._usage_error(exc)

    def _make_parser(self):
        """A parser of the tasks the command line names, not of all ~100: Invoke deep-copies every context it
        is handed (~8 ms a command), and a task no word names can never be chosen. Help and completion look
        tasks up by what they were told elsewhere, so they get them all."""
        if self.args.help.value or self.args.complete.value:
            return super()._make_parser()
        from invoke.parser import Parser, ParserContext

        words = set(self.core.unparsed)
        ignore = self.config.tasks.ignore_unknown_help
        contexts = [ParserContext(name=primary, aliases=aliases,
                                  args=self.collection[primary].get_arguments(ignore_unknown_help=ignore))
                    for primary, aliases in self.collection.task_names.items()
                    if primary in words or not words.isdisjoint(aliases)]
        return Parser(initial=self.initial_context, contexts=contexts)

    def parse_tasks(self):
        try:
            super().parse_tasks()
        except ParseError as exc:
            self._usage_error(exc)
        except ValueError as exc:  # Invoke casts flags with numeric defaults itself
            self._usage_error(ParseError(f"bad value: {exc}"))


VALUE_FLAGS = ("--name", "-n", "--provider", "-p", "--gpu", "-g", "--job", "-j")


def complete_values(remainder: str) -> None:
    """Shell completion of flag values (Invoke completes task and flag names): instances, jobs, GPUs, providers."""
    import shlex

    try:
        tokens = shlex.split(remainder)
    except ValueError:
        return
    if not tokens or tokens[-1] not in VALUE_FLAGS:
        return
    flag = tokens[-1]
    values: list[str] = []
    try:
        if flag in ("--provider", "-p"):
            from . import providers

            values = [*providers.names(), "auto"]
        elif flag in ("--gpu", "-g"):
            from . import gpus

            values = gpus.known_aliases()
        elif flag in ("--name", "-n"):
            from .store import ProjectState

            values = sorted(ProjectState(project_root()).read()["instances"])
        else:
            from .handle import get

            name = tokens[tokens.index("--name") + 1] if "--name" in tokens[:-1] else None
            values = [v for job in get(None, name).jobs() for v in (job.id, job.label) if v]
    except Exception:  # noqa: BLE001 - completion must never print an error into the user's command line
        values = []
    for value in values:
        print(value)
    raise Exit


for _step in ("create_config", "parse_core", "parse_collection", "parse_tasks", "parse_cleanup", "update_config",
              "execute"):
    setattr(FerryProgram, _step, _interruptible(getattr(FerryProgram, _step)))

program = FerryProgram(namespace=ns, name="ferry", binary="ferry", version=__version__, config_class=FerryConfig)


def main() -> None:
    """The console script (see ferry.console, which wraps this with the Ctrl-C rule)."""
    program.run()

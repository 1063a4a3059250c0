"""This repository's own Invoke tasks: all of ferry's (try `inv --list`), plus test, lint and bench.

    inv test                 # the whole suite (real sshd, rsync, tmux on 127.0.0.1)
    inv test -k contract     # some of it
    inv lint                 # pyflakes, and the shape checks (layers, module size, public API)
    inv bench                # ferry beside its floors (bench/README.md)
"""

import sys

from invoke import task

from ferry.tasks import ns

PYTHON = sys.executable


@task(help={"k": "only tests matching this expression (pytest -k)", "x": "stop at the first failure",
            "jobs": "tests at once (pytest-xdist workers; 0 = one by one)"})
def test(c, k=None, x=False, jobs=3):
    """Run the test suite."""
    c.run(f"{PYTHON} -m pytest -n {int(jobs)}" + (f" -k {k!r}" if k else "") + (" -x" if x else ""),
          pty=sys.stdout.isatty())


@task
def lint(c):
    """pyflakes over the code, then the shape checks (providers never call up, modules stay small)."""
    c.run(f"{PYTHON} -m pyflakes lib/ferry bench local_scripts tasks.py")
    c.run(f"{PYTHON} -m pytest -q tests/test_shape.py")


@task(help={"which": "loop, jobs, sync or map (default: all, with one table at the end)",
            "repeat": "measured runs per row", "quick": "a quick look at every row (under a minute)"})
def bench(c, which=None, repeat=None, quick=False):
    """ferry's hot paths beside their floors, measured in the same run, each row with its goal."""
    script = f"bench/bench_{which}.py" if which else "bench/all.py"
    flags = (f" --repeat {int(repeat)}" if repeat else "") + (" --quick" if quick else "")
    c.run(f"{PYTHON} {script}{flags}", pty=sys.stdout.isatty())


for extra in (test, lint, bench):
    ns.add_task(extra)

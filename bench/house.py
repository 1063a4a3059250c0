"""The house helpers every bench script shares: timing, rows with goals, the table, JSON, cleanup.

A bench script builds ``Row``s (ferry's samples beside its floor's, taken
alternately in the same run by ``side_by_side``), prints them with
``print_table`` and, with ``--json FILE``, writes them for ``bench/all.py``.
A row may carry a goal from the issues: a ratio (``goal=2.5``: ferry / floor
<= 2.5) or an absolute figure (``goal=Goal(90, "ms")``: ferry's median <= 90
ms; ``Goal(100, "MiB")`` for a memory row, whose unit is MiB).

``add_options`` gives every script ``--repeat``, ``--quick``, ``--json`` and
``--samples``; ``configure`` applies them. ``--quick``: 1 warm-up, then up to
3 measured pairs (``--repeat`` sets another number), but a row whose pairs
are slow stops once it has run 1.0 s, after at least one measured pair
(print_table lists such rows); each script also shrinks its slow sizes and
says the size used in the row's label.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WARMUPS = 2  # set by configure(): 1 with --quick. Read it as house.WARMUPS (it changes after import).
QUICK_REPEAT = 3
QUICK_ROW_SECONDS = 1.0  # --quick: a row takes no more measured pairs once it has run this long (at least one)
ROW_SECONDS: float | None = None  # set by configure()


# -- running things --------------------------------------------------------------------------------
class BenchError(RuntimeError):
    pass


def run(argv, *, cwd=None, env=None, check=True, stdin=subprocess.DEVNULL, timeout=120):
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=stdin, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise BenchError(
            f"{shlex.join(map(str, argv))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')[-2000:]}\n"
            f"stderr: {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return proc


def timed(argv, **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time in ms of one subprocess.run (output captured, stdin /dev/null)."""
    start = time.perf_counter()
    proc = run(argv, **kwargs)
    return (time.perf_counter() - start) * 1000.0, proc


TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None  # GNU time: -f %M -o FILE


def timed_rss(argv, *, cwd=None, env=None, stdout=subprocess.DEVNULL, timeout: float = 300) -> tuple[float, float, int, str]:
    """(wall ms, peak RSS MiB, exit status, stderr) of one command, its stdout to ``stdout`` (default /dev/null).

    The peak is GNU time's %M: the largest resident set of the command or of any
    process it waited for. The command is started by /usr/bin/time, a small
    process, because a child forked from this (large) Python process starts its
    high-water mark at this process's size; without /usr/bin/time it is os.wait4's
    ru_maxrss of the direct child, which has exactly that flaw (then at least this
    process's RSS).
    """
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        out = os.path.join(tmp, "rss")
        full = [TIME, "-f", "%M", "-o", out, *argv] if TIME else list(argv)
        with open(os.path.join(tmp, "err"), "w+b") as errfile:  # a file, not a pipe: nobody reads while wait4 blocks
            start = time.perf_counter()
            proc = subprocess.Popen(full, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=errfile)
            killer = threading.Timer(timeout, proc.kill)
            killer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            finally:
                killer.cancel()
            ms = (time.perf_counter() - start) * 1000.0
            proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
            errfile.seek(0)
            err = errfile.read().decode(errors="replace")
        kib = float(usage.ru_maxrss)
        if TIME:
            text = Path(out).read_text().split() if os.path.exists(out) else []
            kib = float(text[-1]) if text and text[-1].isdigit() else float("nan")
    return ms, kib / 1024.0, proc.returncode, err


def first_line(argv) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError as exc:
        return f"unavailable ({exc})"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "?"


def tool_dir() -> Path:
    """The bin/ holding ferry and inv: next to this interpreter (a venv), else from PATH."""
    here = Path(sys.executable).parent
    if (here / "ferry").exists() and (here / "inv").exists():
        return here
    found = shutil.which("ferry")
    if not found:
        raise BenchError("ferry is not installed for this interpreter; run with the venv's python")
    return Path(found).parent


def interpreter_of(script: Path) -> str:
    """The python a console script runs under (its shebang), so floors use the same interpreter."""
    line = script.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    if line.startswith("#!"):
        cmd = shlex.split(line[2:].strip())
        if cmd and "python" in Path(cmd[-1]).name:
            return cmd[-1]
        if cmd and Path(cmd[0]).name == "env" and len(cmd) > 1:
            return shutil.which(cmd[1]) or sys.executable
    return sys.executable


# -- options -----------------------------------------------------------------------------------------
def add_options(parser, repeat: int, what: str = "measured runs per row") -> None:
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"{what} after 2 warm-ups (default {repeat}; {QUICK_REPEAT} after 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="a quick look: fewer runs, smaller sizes where a row is slow (the labels say which)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE (bench/all.py reads it)")
    parser.add_argument("--samples", action="store_true", help="also print every sample")
    parser.set_defaults(_full_repeat=repeat)


def configure(parser, args) -> None:
    """Apply --quick and --repeat: the warm-up count every side_by_side uses, and args.repeat."""
    global WARMUPS, ROW_SECONDS
    WARMUPS = 1 if args.quick else 2
    ROW_SECONDS = QUICK_ROW_SECONDS if args.quick else None
    if args.repeat is None:
        args.repeat = QUICK_REPEAT if args.quick else args._full_repeat
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")


def fresh_env(home: Path) -> dict:
    """The children's environment (HOME set, INVOKE_* and FERRY_* dropped); this process gets the same HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FERRY_"))}
    env["HOME"] = str(home)
    os.environ["HOME"] = str(home)  # the in-process library calls (Path.home()) must see the same HOME
    for k in [k for k in os.environ if k.startswith(("INVOKE_", "FERRY_"))]:
        del os.environ[k]

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)  # through the finally: instances terminated, HOME removed
    return env


def human_count(n: int) -> str:
    """5000 -> '5k', 20000 -> '20k', 100000 -> '100k', 1500 -> '1500'."""
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


# -- rows and goals -------------------------------------------------------------------------------------
class Goal:
    """What the issue asks of a row: ``unit`` "x" is a ratio ferry / floor, else an absolute figure."""

    def __init__(self, limit: float, unit: str = "x"):
        self.limit, self.unit = float(limit), unit

    def __str__(self) -> str:
        limit = f"{self.limit:g}"
        return f"<={limit}x" if self.unit == "x" else f"<={limit} {self.unit}"

    def to_dict(self) -> dict:
        return {"limit": self.limit, "unit": self.unit}


class Row:
    def __init__(self, what: str, floor_what: str, ferry: list[float], floor: list[float], note: str = "",
                 failures: list[str] | None = None, goal: "float | Goal | None" = None, unit: str = "ms"):
        self.what, self.floor_what, self.ferry, self.floor, self.note = what, floor_what, ferry, floor, note
        self.failures = failures or []
        self.goal = goal if isinstance(goal, Goal) or goal is None else Goal(goal)
        self.unit = unit  # of the samples: "ms", or "MiB" for a memory row
        self.capped = bool(getattr(ferry, "capped", False))  # --quick stopped it before --repeat pairs

    @property
    def ferry_ms(self) -> float:
        return statistics.median(self.ferry) if self.ferry else float("nan")

    @property
    def floor_ms(self) -> float:
        return statistics.median(self.floor) if self.floor else float("nan")

    @property
    def ratio(self) -> float:
        return self.ferry_ms / self.floor_ms if self.floor_ms > 0 else float("inf")

    @property
    def met(self) -> bool | None:
        """None without a goal; a ratio goal compares the ratio, an absolute one ferry's median."""
        if self.goal is None:
            return None
        value = self.ratio if self.goal.unit == "x" else self.ferry_ms
        return value == value and value <= self.goal.limit  # nan (no samples) is never met

    def to_dict(self) -> dict:
        return {"what": self.what, "floor_what": self.floor_what, "unit": self.unit, "ferry": self.ferry_ms,
                "floor": self.floor_ms, "ratio": self.ratio, "goal": self.goal.to_dict() if self.goal else None,
                "met": self.met, "note": self.note, "failures": self.failures, "capped": self.capped,
                "ferry_samples": self.ferry, "floor_samples": self.floor}

    @classmethod
    def from_dict(cls, d: dict) -> "Row":
        goal = Goal(d["goal"]["limit"], d["goal"]["unit"]) if d.get("goal") else None
        row = cls(d["what"], d["floor_what"], d["ferry_samples"], d["floor_samples"], d.get("note", ""),
                  d.get("failures"), goal, d.get("unit", "ms"))
        row.capped = bool(d.get("capped"))
        return row


class Samples(list):
    """Measured samples; ``capped`` when --quick's time limit stopped the row before --repeat pairs."""
    capped = False


class Failed(Exception):
    """A ferry command failed: counted in the row's fails column and left out of its median."""


def ferry_cmd(argv, **kwargs) -> float:
    ms, proc = timed(argv, check=False, **kwargs)
    if proc.returncode != 0:
        err = [l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip()]
        raise Failed(f"{shlex.join(argv[1:])} exited {proc.returncode}: {' | '.join(err[-2:]) or 'no stderr'}")
    return ms


def side_by_side(repeat: int, ferry_fn, floor_fn, failures: list[str] | None = None) -> tuple[list[float], list[float]]:
    """Alternate ferry and floor so drift (load, caches) hits both alike; drop WARMUPS of each.

    A ferry run that fails (Failed) is recorded in ``failures`` and retried as an extra
    iteration, at most ``repeat`` extra times, so the row still gets its samples.
    With --quick (ROW_SECONDS set) a row stops early once it has run that long and
    has one measured pair.
    """
    a, b = Samples(), Samples()
    i = extra = 0
    start = time.perf_counter()
    while i < WARMUPS + repeat:
        if a and ROW_SECONDS is not None and time.perf_counter() - start >= ROW_SECONDS:
            a.capped = b.capped = True
            break
        try:
            x = ferry_fn()
        except Failed as exc:
            if failures is None or extra >= repeat:
                raise BenchError(str(exc)) from None
            failures.append(str(exc))
            extra += 1
            floor_fn()  # keep the alternating rhythm
            continue
        y = floor_fn()
        if i >= WARMUPS:
            a.append(x)
            b.append(y)
        i += 1
    return a, b


def _cell(value: float, unit: str) -> str:
    if value != value:
        return "-"
    return f"{value:.1f}" + ("" if unit == "ms" else f" {unit}")


def print_table(rows: list[Row], bench: list[str] | None = None) -> None:
    """The table: medians (ms unless the cell names its unit), ratio, fails, goal and whether it is met.

    ``bench`` (one name per row) adds a column saying which script measured the row (bench/all.py).
    """
    head = ["#", "what", "ferry ms", "floor ms", "ratio", "fails", "goal", "met", "floor"]
    cells = []
    for i, r in enumerate(rows, 1):
        ratio = r.ratio
        met = "-" if r.met is None else ("yes" if r.met else "no")
        cells.append([str(i), r.what, _cell(r.ferry_ms, r.unit), _cell(r.floor_ms, r.unit),
                      "-" if ratio != ratio else f"{ratio:.1f}x", str(len(r.failures)),
                      str(r.goal) if r.goal else "-", met, r.floor_what])
    right = {2, 3, 4, 5}
    if bench is not None:
        head.insert(1, "bench")
        for c, name in zip(cells, bench):
            c.insert(1, name)
        right = {i + 1 for i in right}
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    line = lambda c: "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths))).rstrip()  # noqa: E731
    print(line(head))
    print(line(["-" * w for w in widths]))
    for c in cells:
        print(line(c))
    for i, r in enumerate(rows, 1):
        if r.note:
            print(f"   row {i}: {r.note}")
    short = [(i, len(r.ferry)) for i, r in enumerate(rows, 1) if r.capped]
    if short:
        print(f"   fewer measured runs (--quick stops a slow row after {QUICK_ROW_SECONDS:g} s): "
              + ", ".join(f"row {i}: {n}" for i, n in short))
    with_goal = [r for r in rows if r.goal is not None]
    if with_goal:
        print(f"   goals met: {sum(1 for r in with_goal if r.met)} of {len(with_goal)}")


def print_samples(rows: list[Row]) -> None:
    print("\nsamples:")
    for i, r in enumerate(rows, 1):
        fmt = lambda xs: " ".join(f"{x:.1f}" for x in xs)  # noqa: E731
        print(f"  {i}. ferry: {fmt(r.ferry)}\n     floor: {fmt(r.floor)}  ({r.unit})")


def print_failures(rows: list) -> None:
    """ferry runs that failed: left out of the medians (and retried), but never hidden."""
    failed = [(i, f) for i, r in enumerate(rows, 1) for f in r.failures]
    if failed:
        print("\nferry failures (left out of the medians, retried as extra runs):")
        for i, f in failed:
            print(f"  row {i}: {f}")


def write_json(path: str | None, script: str, args, rows: list[Row], t0: float, error: str | None = None) -> None:
    """The rows (with every sample) for bench/all.py; written even when the bench stopped early."""
    if not path:
        return
    data = {"script": script, "quick": bool(args.quick), "repeat": args.repeat, "warmups": WARMUPS,
            "seconds": round(time.perf_counter() - t0, 1), "error": error, "rows": [r.to_dict() for r in rows]}
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1, allow_nan=True)
    os.replace(tmp, path)


def machine_facts(python: str) -> list[str]:
    versions = run(
        [python, "-c", "import importlib.metadata as m;"
         "print(' / '.join(f'{p} {m.version(p)}' for p in ('ferry','invoke','fabric','paramiko')))"],
        check=False,
    ).stdout.decode().strip()
    return [
        f"nproc: {first_line(['nproc'])} (os.cpu_count {os.cpu_count()}), load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"kernel: {platform.system()} {platform.release()} {platform.machine()}",
        f"ssh: {first_line(['ssh', '-V'])}",
        f"rsync: {first_line(['rsync', '--version'])}",
        f"tmux: {first_line(['tmux', '-V'])}    git: {first_line(['git', '--version'])}",
        f"python: {first_line([python, '-VV'])}",
        f"packages: {versions}",
    ]


# -- leftovers -------------------------------------------------------------------------------------------
def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose command line or environment mentions ``text``."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                environ = b""
        except (OSError, IndexError):
            continue
        if needle in cmdline or needle in environ:
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace").strip()))
    return found


def terminate(project: Path, env: dict, ferry: str, name: str, remote=None) -> list[str]:
    """``ferry terminate --yes`` in ``project``; if that fails, LocalProvider.terminate(name) (by pid). Notes."""
    notes = []
    try:
        proc = subprocess.run([ferry, "terminate", "--yes"], cwd=project, env=env,
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            notes.append(f"ferry terminate in {project.name} exited {proc.returncode}: "
                         f"{proc.stderr.decode(errors='replace').strip()}")
    except (OSError, subprocess.SubprocessError) as exc:
        notes.append(f"ferry terminate in {project.name} failed: {exc}")
    if notes:  # fall back to the library's own terminate (kills by pid from the sshd pid file / marker)
        try:
            from ferry.providers.local import LocalProvider

            if remote is not None:
                remote.close()
            LocalProvider(root=Path(env["HOME"]) / ".ferry" / "local").terminate(name)
            notes.append(f"fell back to LocalProvider.terminate({name!r})")
        except Exception as exc:  # noqa: BLE001
            notes.append(f"fallback terminate of {name!r} failed: {exc}")
    return notes


def cleanup(home: Path, project: Path, env: dict, ferry: str, launched: bool, remote) -> list[str]:
    """Terminate the instance through ferry, close leftovers by pid, remove HOME. Returns notes."""
    notes = terminate(project, env, ferry, "p", remote) if launched else []
    return notes + sweep(home)


def sweep(home: Path) -> list[str]:
    """After terminating: SIGTERM (by pid) whatever still mentions ``home``, then remove it. Returns notes."""
    notes = []
    time.sleep(0.1)
    left = processes_mentioning(str(home))
    for pid, cmd in left:
        notes.append(f"left running after terminate, killing pid {pid}: {cmd[:120]}")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    shutil.rmtree(home, ignore_errors=True)
    if home.exists():
        notes.append(f"could not remove {home}")
    return notes


def finish(t0: float, home, project, env, ferry, launched, remote) -> None:
    """Every bench's ``finally``: terminate the instance, remove the HOME, say how long it all took."""
    notes = cleanup(home, project, env, ferry, launched, remote)
    for note in notes:
        print(f"cleanup: {note}", file=sys.stderr)
    print(f"\ntotal bench time {time.perf_counter() - t0:.1f} s; instance terminated, {home} removed"
          + ("" if not notes else " (see cleanup notes)"))


def run_main(main) -> None:
    """The ``__main__`` of every bench: a BenchError is one line and exit 1, Ctrl-C exits 130."""
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

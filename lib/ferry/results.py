"""What a run produced: the files on the instance that ferry did not send, or that changed since it did.

A plain ``download`` brings exactly these home. One exec reads the
instance's record of what ferry sent (manifest.py) and lists the workdir
(GNU find: path, size, mtime to the nanosecond); a file is *produced* when
the record does not have it or has it with another size or mtime. Then:

- environments and caches (``.venv/``, ``__pycache__/``, ``.cache/`` ...)
  are left where they are, each named with its file count and size;
- ``ferry.download.exclude`` / ``include`` (gitignore syntax) shape the
  choice (an include also brings files ferry sent and nobody changed);
- above the size guard (``ferry.download.max_size``, default 2 GiB) the
  largest files are held back, each listed with its size and the command
  that fetches it, and the rest still comes.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from .manifest import decode

if TYPE_CHECKING:
    from .handle import Box

# Left on the instance unless asked for by name: environments, caches, tooling state.
LEFT_BEHIND = (".venv/", "venv/", "env/", ".env/", "__pycache__/", "*.pyc", ".cache/", "node_modules/", ".mypy_cache/",
               ".pytest_cache/", ".ruff_cache/", ".ipynb_checkpoints/", ".tox/", ".nox/", "*.egg-info/", ".git/",
               ".ferry/", "wandb/cache/")
DEFAULT_MAX_SIZE = 2 * 1024**3
SEPARATOR = b"\0ferry-listing\0"
SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3,
              "t": 1024**4, "tb": 1024**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


@dataclass
class Produced:
    """The plan for a default download."""

    fetch: list[str] = field(default_factory=list)
    fetch_bytes: int = 0
    too_big: list[tuple[str, int]] = field(default_factory=list)  # (path, size), largest first
    left: dict[str, tuple[int, int]] = field(default_factory=dict)  # group -> (files, bytes)
    excluded: tuple[int, int] = (0, 0)  # by ferry.download.exclude / --exclude: (files, bytes)


def parse_size(value, what: str = "ferry.download.max_size") -> int:
    """``2G``, ``500MB``, ``1.5GiB`` or a number of bytes."""
    from .errors import ConfigError

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value or ""))
    if not match or match.group(2).lower() not in SIZE_UNITS:
        raise ConfigError(f"{what} must be a size such as 2G or 500MB, not {value!r}", hint=f"set {what}: 2G")
    return int(float(match.group(1)) * SIZE_UNITS[match.group(2).lower()])


def listing(box: "Box", manifest_rel: str) -> tuple[dict[str, tuple[int, int, int]], dict[str, tuple[int, int]]]:
    """(what ferry sent: path -> stat, every file now in the workdir: path -> (size, mtime ns)). One exec."""
    wd = shlex.quote(box.workdir)
    command = (f'cat "$HOME"/{shlex.quote(manifest_rel)} 2>/dev/null; printf \'\\0ferry-listing\\0\'; '
               f"cd {wd} 2>/dev/null && find . -path ./.ferry -prune -o -path ./.git -prune -o "
               "\\( -type f -o -type l \\) -printf '%P\\0%s\\0%T@\\0'; exit 0")
    proc = box.remote.run(command)
    sent_part, _, found_part = proc.stdout.partition(SEPARATOR)
    _, sent = decode(sent_part)
    fields = found_part.split(b"\0")
    found: dict[str, tuple[int, int]] = {}
    for i in range(0, len(fields) - 2, 3):
        try:
            whole, _, frac = fields[i + 2].partition(b".")
            mtime_ns = int(whole) * 10**9 + int((frac + b"000000000")[:9])
            found[fields[i].decode("utf-8", "surrogateescape")] = (int(fields[i + 1]), mtime_ns)
        except ValueError:
            continue
    return sent, found


def plan(sent: dict[str, tuple[int, int, int]], found: dict[str, tuple[int, int]], max_size: int,
         include: Sequence[str] = (), exclude: Sequence[str] = ()) -> Produced:
    """Which files a default download brings, and what it leaves, grouped and sized."""
    import pathspec

    left_spec = pathspec.GitIgnoreSpec.from_lines(LEFT_BEHIND)
    include_spec = pathspec.GitIgnoreSpec.from_lines(include) if include else None
    exclude_spec = pathspec.GitIgnoreSpec.from_lines(exclude) if exclude else None
    result = Produced()
    chosen: list[tuple[str, int]] = []
    excluded_files = excluded_bytes = 0
    for path, (size, mtime_ns) in found.items():
        wanted = include_spec is not None and include_spec.match_file(path)
        was = sent.get(path)
        new = was is None or was[0] != size or abs(was[1] - mtime_ns) >= 1000
        if not (new or wanted):
            continue
        if not wanted and left_spec.match_file(path):
            group = _group(path, left_spec)
            files, total = result.left.get(group, (0, 0))
            result.left[group] = (files + 1, total + size)
            continue
        if not wanted and exclude_spec is not None and exclude_spec.match_file(path):
            excluded_files, excluded_bytes = excluded_files + 1, excluded_bytes + size
            continue
        chosen.append((path, size))
    result.excluded = (excluded_files, excluded_bytes)
    chosen.sort(key=lambda item: -item[1])
    total = sum(size for _, size in chosen)
    while chosen and total > max_size:  # hold back the largest until the rest fits
        path, size = chosen.pop(0)
        result.too_big.append((path, size))
        total -= size
    result.fetch = sorted(path for path, _ in chosen)
    result.fetch_bytes = total
    return result


def _group(path: str, spec) -> str:
    """The directory (or pattern) that put ``path`` among the things left behind, e.g. ``.venv/``."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i]) + "/"
        if spec.match_file(prefix):
            return prefix
    return "*." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else path

"""What the file set leaves out, and how to say so: secrets by name and by content, default groups, specials.

Matching: gitignore rules through ``pathspec``, behind one combined regex of
every positive pattern. Most paths match nothing, and one regex search per
path costs a third of asking each pattern in turn (PERFORMANCE.md: 370 ms
against ~110 ms per 100k paths); only a path the combined regex hits is
asked of the full rule list, where order and ``!negation`` decide.

Secrets by content: a file whose name says nothing (``deploy_key``, a
service-account key under Google's default name ``my-proj-3f2a1b9c8d7e.json``)
is recognised by its first few KB: a PEM/OpenSSH private key block, or a
Google service-account key. Only files new or changed since the last sync
are read, and only small ones whose name could hold a key (keys and
service-account files are a few KB; source files are not read). ``!pattern``
in ``.ferryignore`` sends such a file on purpose.
"""

from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

from .digest import sha1

SNIFF_MAX = 64 * 1024  # bytes: a key or service-account file is far smaller
SNIFF_READ = 4096
# Extensions a key could hide behind; a name with no extension is always read. Source code is not.
SNIFF_EXTENSIONS = {"json", "key", "pem", "txt", "asc", "cfg", "conf", "ini", "yml", "yaml", "env", "secret",
                    "private", "priv", "id", "cert", "crt", "p8", "token", "credentials"}
PRIVATE_KEY = re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
SERVICE_ACCOUNT = re.compile(rb'"type"\s*:\s*"service_account"')

# Default exclusions that are never worth a word (environments, caches, tooling state) ...
SILENT = {".git/", ".ferry/", ".venv/", "venv/", "__pycache__/", "*.pyc", "*.pyo", ".mypy_cache/", ".pytest_cache/",
          ".ruff_cache/", ".ipynb_checkpoints/", ".tox/", ".nox/", ".cache/", "node_modules/", "*.egg-info/",
          ".DS_Store"}
# ... and the rest (data, weights, build output, run output) are said, with the way to send them.


class Matcher:
    """gitignore ``lines`` with a combined-regex prefilter; ``user_from`` is where the user's own lines start.

    The prefilter is built from the regexes pathspec makes of the lines, kept on disk (``translations``) so
    that a scan whose paths match none of them never imports pathspec (~10 ms) nor parses the rules: the
    full rule list (``spec``), where order and ``!negation`` decide, is built on the first path the
    prefilter lets through, and for the questions only it can answer (which rule, sent on purpose).
    """

    def __init__(self, lines: list[str], user_from: int):
        self.lines = lines
        self.user_from = user_from
        positives = [source for source, include in translations(lines) if include and source is not None]
        self.any = re.compile(combined(positives)) if positives else None
        self._spec = None

    @property
    def spec(self):
        if self._spec is None:
            import pathspec

            self._spec = pathspec.GitIgnoreSpec.from_lines(self.lines)
        return self._spec

    def excluded(self, path: str) -> bool:
        if self.any is None or self.any.search(path) is None:
            return False
        return self.spec.match_file(path)

    def rule_for(self, path: str) -> str | None:
        """The line that decides ``path`` (None when no line matches it)."""
        result = self.spec.check_file(path)
        return self.lines[result.index] if result.index is not None else None

    def sent_on_purpose(self, path: str) -> bool:
        """A ``!pattern`` line of the user's own ``.ferryignore`` is what decides this path."""
        result = self.spec.check_file(path)
        return result.index is not None and result.index >= self.user_from and not result.include


ANY_DIR = "^(?:.+/)?"  # how pathspec begins the regex of a pattern with no slash: "in any directory"


def combined(sources: list[str]) -> str:
    """One regex matching what any of ``sources`` matches. Those of the common shape ``^(?:.+/)?X<end>`` share
    one ``(?:.+/)?``, so a path is walked once per slash for all of them, not once per pattern: half the
    cost of a scan's every path (~70 ms at 100k files)."""
    grouped: dict[str, list[str]] = {}
    alone = []
    for source in sources:
        end = next((e for e in ("(?:(?:/)|$)", "(?:/)") if source.startswith(ANY_DIR) and source.endswith(e)), None)
        if end is None:
            alone.append(source)
        else:
            grouped.setdefault(end, []).append(source[len(ANY_DIR):-len(end)])
    parts = [ANY_DIR + "(?:" + "|".join(f"(?:{m})" for m in middles) + ")" + end for end, middles in grouped.items()]
    return "|".join(f"(?:{p})" for p in [*parts, *alone])


def translations(lines: list[str]) -> list[tuple[str | None, bool]]:
    """(regex source or None, include) per pattern pathspec makes of ``lines``, group names made anonymous.

    Cached in ~/.ferry/cache/ignore under a hash of the lines and of the installed pathspec (its path and
    mtime: an upgrade translates again). A cache that cannot be read or written only costs the import.
    """
    import importlib.util
    import marshal

    located = importlib.util.find_spec("pathspec")
    origin = (located.origin or "") if located else ""
    try:
        stamp = f"{origin}:{os.stat(origin).st_mtime_ns}" if origin else ""
    except OSError:
        stamp = origin
    key = sha1("\0".join([stamp, *lines]).encode("utf-8", "surrogateescape")).hexdigest()
    cache = os.path.join(os.path.expanduser("~"), ".ferry", "cache", "ignore", key)
    try:
        with open(cache, "rb") as fh:
            cached = marshal.load(fh)
        if isinstance(cached, list):
            return [tuple(item) for item in cached]
    except (OSError, EOFError, ValueError, TypeError):
        pass
    import pathspec

    # pathspec names a group in every pattern; in one alternation those names would clash
    made = [(re.sub(r"\(\?P<[^>]+>", "(?:", p.regex.pattern) if p.regex is not None else None, bool(p.include))
            for p in pathspec.GitIgnoreSpec.from_lines(lines).patterns]
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        partial = f"{cache}.{os.getpid()}.tmp"
        with open(partial, "wb") as fh:
            marshal.dump(made, fh)
        os.replace(partial, cache)
    except OSError:
        pass
    return made


def worth_sniffing(path: str, size: int) -> bool:
    """Small, and named as a key could be: no extension, a dotfile (``.env``), or an extension keys use."""
    if size > SNIFF_MAX:
        return False
    dot = path.rfind(".")
    slash = path.rfind("/")
    return dot <= slash + 1 or path[dot + 1:].lower() in SNIFF_EXTENSIONS


def looks_secret(full_path: str) -> bool:
    """A private key or a service-account key in the first few KB.

    Called for every new file a key could hide in (100k of them on a first sync of a data-heavy repo): one
    unbuffered read, and the regular expressions only for the rare head that holds the words they need.
    """
    try:
        fd = os.open(full_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        head = os.read(fd, SNIFF_READ)
    except OSError:
        return False
    finally:
        os.close(fd)
    if b"-----BEGIN" not in head and b"service_account" not in head:
        return False
    return PRIVATE_KEY.search(head) is not None or (SERVICE_ACCOUNT.search(head) is not None and b"private_key" in head)


def sniff(root: str, files: Mapping[str, tuple[int, int, int]], previous: Mapping[str, tuple[int, int, int]],
          matcher: Matcher | None) -> list[str]:
    """Files (new or changed since ``previous``) whose content is a secret, unless sent on purpose."""
    return [path for path, st in files.items() if held_for_content(root, path, st, previous, matcher)]


def held_for_content(root: str, path: str, st: tuple[int, int, int], previous: Mapping[str, tuple[int, int, int]],
                     matcher: Matcher | None) -> bool:
    """One file of :func:`sniff`: new or changed, a secret by its content, and not sent on purpose."""
    if previous.get(path) == st or not worth_sniffing(path, st[0]):
        return False
    return looks_secret(root + "/" + path) and not (matcher is not None and matcher.sent_on_purpose(path))


def groups(matcher: Matcher | None, files: Iterable[str], dirs: Iterable[str]) -> dict[str, list[str]]:
    """Dropped paths by the default rule that dropped them (silent rules and the user's own lines left out)."""
    if matcher is None:
        return {}
    by_rule: dict[str, list[str]] = {}
    for path, probe in [*((f, f) for f in files), *((d + "/", d + "/") for d in dirs)]:
        result = matcher.spec.check_file(probe)
        if result.index is None or not result.include or result.index >= matcher.user_from:
            continue
        rule = matcher.lines[result.index]
        if rule in SILENT:
            continue
        by_rule.setdefault(rule, []).append(path)
    return by_rule

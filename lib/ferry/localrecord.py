"""The project's copy of what it last sent to one instance+workdir: ``.ferry/sync/<key>.rec``.

At 100k files the record is what a no-op sync spends most of its time on,
so it is kept in a form that is cheap to read and is never rewritten whole
for a small change:

* frames of ``marshal`` data (C speed both ways; the JSON it replaces took
  ~0.4 s to parse at 100k files and as long to write), each behind its
  length and a CRC-32 of its bytes, so a damaged or torn frame is caught
  before it is decoded;
* the first frame holds the whole record; each later one is a *delta*
  (files added or changed, files gone, the new token) appended by one
  ``write`` with ``O_APPEND``. A delta names the token it applies to: one
  appended after someone else rewrote the file does not fit and ends the
  reading, and a record whose token does not match the instance's only
  ever costs a full compare, never a wrong answer;
* past ``COMPACT_AFTER`` deltas, or when the file changed under us since
  it was read, the next save writes the whole record again (atomically).

A record that cannot be read (not ferry's, damaged in its first frame) is
discarded with one note, and the sync compares everything. A JSON record
left by an older ferry (``<key>.json``) is read once and replaced.
"""

from __future__ import annotations

import logging
import marshal
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet

from .digest import sha1
from .fileset import Stat
from .store import JsonStore, write_atomic

log = logging.getLogger(__name__)

MAGIC = b"ferry-record 3\n"  # frames checked by CRC-32 (zlib): ~1 ms for a 100k-file record, where SHA-1 took ~20
MAGIC_SHA1 = b"ferry-record 2\n"  # an older ferry's, checked by SHA-1: read, appended to in kind, rewritten as 3
FRAME = struct.Struct(">cI8s")  # kind (F full, D delta), payload length, its CRC-32 (or SHA-1's first 8 bytes)
CRC = struct.Struct(">Q")
COMPACT_AFTER = 64
MARSHAL_VERSION = 4


class _Unreadable(Exception):
    pass


def _digest(payload: bytes, crc: bool = True) -> bytes:
    return CRC.pack(zlib.crc32(payload)) if crc else sha1(payload).digest()[:8]


def _frame(kind: bytes, body: tuple, crc: bool = True) -> bytes:
    payload = marshal.dumps(body, MARSHAL_VERSION)
    return FRAME.pack(kind, len(payload), _digest(payload, crc)) + payload


def _tables(*tables) -> bool:
    """A cheap shape check (the checksum already vouches for the bytes): dicts of str -> (int, int, int)."""
    for table in tables:
        if not isinstance(table, dict):
            return False
        for key, value in table.items():
            if not (isinstance(key, str) and type(value) is tuple and len(value) == 3):
                return False
            break  # one entry: marshal keeps types, and only ferry's own bytes pass the checksum
    return True


def _legacy_shape(data) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        return "no token"
    for name in ("files", "extra", "kept"):
        table = data.get(name, {})
        if not isinstance(table, dict):
            return f"{name!r} is not an object"
        for value in table.values():
            if not (isinstance(value, list) and len(value) == 3 and all(type(v) is int for v in value)):
                return f"a {name!r} entry is not [size, mtime_ns, mode]"
    return None


@dataclass
class LocalRecord:
    """What was sent (``files``), kept listed though gone locally (``extra``), and the instance's own copies
    (``kept``, with the local stat then), as of ``token``: the token ferry last wrote on the instance."""

    path: Path
    token: str = ""
    spec_hash: str = ""
    files: dict[str, Stat] = field(default_factory=dict)
    extra: dict[str, Stat] = field(default_factory=dict)  # sent, gone locally, kept remotely (--delete=never)
    kept: dict[str, Stat] = field(default_factory=dict)  # never sent: the instance had its own copy (local stat then)
    # What the file held when read (a delta is computed against it), its identity then, and its delta count.
    _read_files: dict[str, Stat] | None = None
    _read_token: str = ""
    _read_as: tuple[int, int] | None = None
    _deltas: int = 0
    _end: int = 0
    _crc: bool = True  # the file's frames are checked by CRC-32 (False: SHA-1, as an older ferry wrote them)

    @classmethod
    def load(cls, path: Path) -> "LocalRecord":
        """The record at ``path``; an empty one (the sync compares everything) when missing or unreadable."""
        path = Path(path)
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                data = fh.read()
        except FileNotFoundError:
            return cls._legacy(path)
        except OSError as exc:
            log.info("note: cannot read %s: %s; ferry discards it and starts afresh", path, exc)
            return cls(path)
        try:
            rec = cls._decode(path, data)
        except _Unreadable as exc:
            log.info("note: %s is not what ferry wrote: %s; ferry discards it and starts afresh", path, exc)
            return cls(path)
        # Appended to only while every byte of it was read as a frame: never after a torn or foreign tail.
        rec._read_as = (st.st_ino, len(data)) if rec._end == len(data) else None
        return rec

    @classmethod
    def _decode(cls, path: Path, data: bytes) -> "LocalRecord":
        crc = data.startswith(MAGIC)
        if not crc and not data.startswith(MAGIC_SHA1):
            raise _Unreadable("not a ferry sync record")
        rec, pos, first = cls(path), len(MAGIC), True
        rec._crc = crc
        while pos < len(data):
            if len(data) - pos < FRAME.size:
                break  # a torn append: the record as of the frame before it
            kind, size, digest = FRAME.unpack_from(data, pos)
            payload = data[pos + FRAME.size:pos + FRAME.size + size]
            if len(payload) < size or _digest(payload, crc) != digest:
                if first:
                    raise _Unreadable("its first frame is damaged")
                break
            try:
                body = marshal.loads(payload)
            except (ValueError, EOFError, TypeError) as exc:
                raise _Unreadable(f"a frame does not decode ({exc})") from None
            if not rec._apply(kind, body, first):
                if first:
                    raise _Unreadable("its first frame is not a whole record")
                break  # a delta appended to another version of the file: stop before it
            pos += FRAME.size + size
            first = False
        rec._read_files, rec._read_token, rec._end = rec.files, rec.token, pos
        return rec

    def _apply(self, kind: bytes, body, first: bool) -> bool:
        if not (isinstance(body, tuple) and len(body) == 7 and all(isinstance(v, str) for v in body[:3])):
            return False
        token, base, spec, files, gone, extra, kept = body
        if not (_tables(files, extra, kept) and isinstance(gone, list)):
            return False
        if kind == b"F" and first:
            self.files = files
        elif kind == b"D" and not first and base == self.token:
            self.files.update(files)  # the first frame's dict, fresh from marshal: ours to change
            for path in gone:
                self.files.pop(path, None)
            self._deltas += 1
        else:
            return False
        self.token, self.spec_hash, self.extra, self.kept = token, spec, extra, kept
        return True

    @classmethod
    def _legacy(cls, path: Path) -> "LocalRecord":
        """The JSON record an older ferry wrote beside it, if any (replaced at the next save)."""
        old = path.with_suffix(".json")
        if not old.exists():
            return cls(path)
        data = JsonStore(old, default=dict, check=_legacy_shape, cache=True).read()
        if not data:
            return cls(path)
        table = lambda name: {k: tuple(v) for k, v in (data.get(name) or {}).items()}  # noqa: E731
        return cls(path, data["token"], str(data.get("spec") or ""), table("files"), table("extra"), table("kept"))

    @property
    def deltas(self) -> int:
        """Deltas appended since the record was last written whole."""
        return self._deltas

    @property
    def valid(self) -> bool:
        return bool(self.token)

    def save(self, maybe: AbstractSet[str] | None = None) -> None:
        """Append what changed since the record was read, or write it whole (first time, many deltas, or the
        file changed under us since it was read). ``maybe``: the only paths that can have changed (the change
        journal's), so a 100k-file record is not compared whole for one file."""
        if not self._append(maybe):
            write_atomic(self.path, MAGIC + _frame(b"F", (self.token, "", self.spec_hash, self.files, [],
                                                           self.extra, self.kept)))
            self.path.with_suffix(".json").unlink(missing_ok=True)
            self._deltas, self._crc = 0, True
        self._read_files, self._read_token = self.files, self.token
        try:
            self._read_as = (os.stat(self.path).st_ino, os.stat(self.path).st_size)
        except OSError:
            self._read_as = None

    def _append(self, maybe: AbstractSet[str] | None) -> bool:
        before = self._read_files
        if before is None or not self._read_token or self._read_as is None or self._deltas >= COMPACT_AFTER:
            return False
        if maybe is None:
            changed = {p: s for p, s in self.files.items() if before.get(p) != s}
            gone = [p for p in before if p not in self.files]
        else:
            changed = {p: self.files[p] for p in maybe if p in self.files and before.get(p) != self.files[p]}
            gone = [p for p in maybe if p in before and p not in self.files]
        if len(changed) + len(gone) > len(self.files) // 4 + 16:
            return False  # a branch switch: the whole record is about as short as the delta
        frame = _frame(b"D", (self.token, self._read_token, self.spec_hash, changed, gone, self.extra, self.kept),
                       self._crc)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if (st.st_ino, st.st_size) != self._read_as:
                return False  # another ferry wrote it since we read it: write the whole record instead
            os.write(fd, frame)
        finally:
            os.close(fd)
        self._deltas += 1
        return True

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".json").unlink(missing_ok=True)

"""The records of what was sent, kept cheap at any size: a small change appends to them (locally and on the
instance) instead of rewriting them whole, and what is appended still decides what may be deleted."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ferry import localrecord
from ferry.localrecord import LocalRecord
from ferry.manifest import decode

from .test_sync import workdir_of


def local_record(project: Path) -> Path:
    (found,) = (project / ".ferry" / "sync").glob("*.rec")
    return found


def remote_record(home: Path) -> Path:
    (found,) = (home / ".ferry" / "local" / "proj" / "home" / ".ferry" / "manifests").iterdir()
    return found


def identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_size


def test_a_small_change_is_appended_to_both_records_which_still_decide_deletion(launched, project, home):
    launched.ok("sync")
    (project / "extra.py").write_text("EXTRA = 1\n")
    launched.ok("sync")
    for step in ("change one, delete one", "delete another"):
        before_local, before_remote = identity(local_record(project)), identity(remote_record(home))
        if step == "change one, delete one":
            (project / "train.py").write_text("print('training, v2')\n")
            (project / "extra.py").unlink()
        else:
            (workdir_of(home) / "extra.py").write_text("made on the instance by hand\n")
            (project / "notes.md").unlink()
        assert "synced" in launched.ok("sync").stderr
        for before, after in ((before_local, identity(local_record(project))),
                              (before_remote, identity(remote_record(home)))):
            assert after[0] == before[0], f"{step}: the record was replaced, not appended to"
            assert 0 < after[1] - before[1] < 1000, f"{step}: grew by {after[1] - before[1]} bytes"
    token, files = decode(remote_record(home).read_bytes())
    assert token and "extra.py" not in files and "notes.md" not in files and "train.py" in files
    assert files["train.py"][0] == len("print('training, v2')\n")
    assert (workdir_of(home) / "extra.py").read_text() == "made on the instance by hand\n", \
        "a path taken out of the record is never deleted as ferry's"
    assert not (workdir_of(home) / "notes.md").exists()
    assert LocalRecord.load(local_record(project)).token == token

    shutil.rmtree(project / ".ferry" / "sync")  # a fresh clone: only the instance's appended record to go by
    (project / "src" / "model.py").unlink()
    launched.ok("sync")
    assert not (workdir_of(home) / "src" / "model.py").exists()
    assert (workdir_of(home) / "extra.py").exists() and (workdir_of(home) / "train.py").exists()


def saved(path: Path, token: str, files: dict) -> LocalRecord:
    rec = LocalRecord.load(path)
    rec.token, rec.spec_hash, rec.files = token, "spec", files
    rec.save()
    return rec


def test_the_local_record_appends_deltas_reads_them_back_and_compacts(tmp_path):
    path = tmp_path / "r.rec"
    files = {f"f{i}.py": (i, 10**18 + i, 0o100644) for i in range(400)}
    saved(path, "t0", dict(files))
    whole = path.stat().st_size
    files["f1.py"] = (99, 5, 0o100755)
    del files["f2.py"]
    files["new\nname"] = (1, 2, 0o120777)
    saved(path, "t1", dict(files))
    assert path.stat().st_size - whole < 300, "one delta, not the whole record again"
    back = LocalRecord.load(path)
    assert (back.token, back.spec_hash, back.files) == ("t1", "spec", files)

    with open(path, "ab") as fh:  # a torn append: the record as of the frame before it
        fh.write(localrecord._frame(b"D", ("t9", "t1", "spec", {}, [], {}, {}))[:-3])
    assert LocalRecord.load(path).token == "t1"
    saved(path, "t2", dict(files))  # the file is not what was read: written whole again
    assert abs(path.stat().st_size - whole) < 100 and LocalRecord.load(path).token == "t2"

    with open(path, "ab") as fh:  # a delta made against another version of the record is not applied
        fh.write(localrecord._frame(b"D", ("t9", "other", "spec", {"f3.py": (0, 0, 0)}, [], {}, {})))
    assert LocalRecord.load(path).files == files

    saved(path, "t3", dict(files))
    for i in range(localrecord.COMPACT_AFTER + 1):
        files[f"f{i}.py"] = (i, i, 0o100644)
        saved(path, f"u{i}", dict(files))
    assert path.stat().st_size < whole + 10 * 300, "past COMPACT_AFTER deltas the record is rewritten whole"
    assert LocalRecord.load(path).files == files


def test_a_record_an_older_ferry_checked_by_sha1_is_read_appended_to_in_kind_and_rewritten_when_compacted(tmp_path):
    path = tmp_path / "r.rec"
    files = {f"f{i}.py": (i, 10**18 + i, 0o100644) for i in range(40)}
    path.write_bytes(localrecord.MAGIC_SHA1 + localrecord._frame(b"F", ("t0", "", "spec", files, [], {}, {}), crc=False))
    rec = LocalRecord.load(path)
    assert (rec.token, rec.files) == ("t0", files)
    files["f1.py"] = (99, 5, 0o100755)
    saved(path, "t1", dict(files))
    assert path.read_bytes().startswith(localrecord.MAGIC_SHA1), "a delta is appended, in the file's own kind"
    assert LocalRecord.load(path).files == files
    damaged = bytearray(path.read_bytes())
    damaged[-2] ^= 0xFF  # the delta's checksum no longer matches: the record as of the frame before it
    path.write_bytes(bytes(damaged))
    assert LocalRecord.load(path).token == "t0"
    for i in range(localrecord.COMPACT_AFTER + 1):
        saved(path, f"u{i}", dict(files))
    assert path.read_bytes().startswith(localrecord.MAGIC) and LocalRecord.load(path).files == files


def test_a_damaged_first_frame_discards_the_record(tmp_path, caplog):
    path = tmp_path / "r.rec"
    saved(path, "t0", {"a.py": (1, 2, 0o100644)})
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with caplog.at_level("INFO"):
        assert not LocalRecord.load(path).valid
    assert "discards it and starts afresh" in caplog.text
    os.truncate(path, len(localrecord.MAGIC) + 5)
    assert not LocalRecord.load(path).valid


def test_a_json_record_left_by_an_older_ferry_is_read_once_and_replaced(tmp_path):
    path = tmp_path / "r.rec"
    path.with_suffix(".json").write_text('{"token": "old", "spec": "s", "files": {"a.py": [1, 2, 33188]}, '
                                         '"extra": {}, "kept": {}}')
    rec = LocalRecord.load(path)
    assert (rec.token, rec.files) == ("old", {"a.py": (1, 2, 33188)})
    rec.token = "new"
    rec.save()
    assert not path.with_suffix(".json").exists() and LocalRecord.load(path).token == "new"


def sessions(home: Path) -> int:
    """Sessions the instance's sshd has opened so far (it logs each at LogLevel VERBOSE)."""
    return (home / ".ferry" / "local" / "proj" / "sshd" / "sshd.log").read_text().count("Starting session:")


def test_the_first_copy_writes_the_instance_record_once_and_seals_it_in_the_tar_exec(launched, project, home):
    """The record (every file, under an intent token) goes before the tar; once tar succeeded, the same exec
    gives it its final token in place instead of a third exec sending it all again. Someone else's token
    there by then is never overwritten."""
    before = sessions(home)
    launched.ok("sync")
    assert sessions(home) - before == 3, "read the record, write it with the intent token, the tar"
    token, files = decode(remote_record(home).read_bytes())
    assert LocalRecord.load(local_record(project)).token == token and "train.py" in files

    import ferry
    from ferry.manifest import STALE, RemoteManifest

    box = ferry.box()
    manifest = RemoteManifest(box.remote, box.workdir, remote_record(home).name)
    written = remote_record(home).read_bytes()
    guarded = box.remote.run(manifest.retoken("0" * len(token), "1" * len(token)), check=False)
    assert guarded.returncode == STALE and remote_record(home).read_bytes() == written, "not its token: untouched"
    box.remote.run(manifest.retoken(token, "2" * len(token)))
    assert remote_record(home).read_bytes() == written.replace(token.encode(), b"2" * len(token), 1)

"""The library API recipes use: Fabric connections, the state file, the spec quoting."""

from __future__ import annotations

import json
import multiprocessing
import subprocess

import ferry
from ferry.records import Instance, SSHEndpoint, Status
from ferry.store import ProjectState


def test_fabric_connection_runs_commands_with_the_pinned_key(launched):
    box = ferry.box()
    conn = box.connection()
    try:
        result = conn.run("echo $HOME", hide=True, in_stream=False)
        assert result.stdout.strip() == box.instance.remote_home
        assert conn.transport.sock.getsockopt(6, 1) == 1  # TCP_NODELAY on the paramiko socket
    finally:
        conn.close()


def _record_many(args):
    project, worker = args
    state = ProjectState(project)
    for i in range(25):
        name = f"w{worker}-{i}"
        state.record(Instance(id=name, name=name, provider="local", status=Status.RUNNING,
                              ssh=SSHEndpoint("127.0.0.1", 22, "u")))


def test_state_file_survives_concurrent_writers(tmp_path):
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_record_many, [(tmp_path, w) for w in range(4)])
    data = json.loads((tmp_path / ".ferry" / "state.json").read_text())
    assert len(data["instances"]) == 100  # no lost update, no torn file


def test_job_spec_quotes_every_value(launched):
    from ferry import jobs

    nasty = "'; touch /tmp/pwned-ferry; echo '"
    spec = jobs.job_spec(ferry.box(), nasty, env={"X": nasty}, label=nasty).decode()
    proc = subprocess.run(["bash", "-c", spec + '\nprintf "%s\\n%s\\n%s" "$FERRY_COMMAND" "$X" "$FERRY_LABEL"'],
                          capture_output=True, text=True)
    assert proc.stdout == "\n".join([nasty] * 3)

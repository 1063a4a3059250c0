"""A probe, not a feature: what would a chg-style command server save on ferry's hot commands?

Mercurial's chg keeps one hg process loaded and hands it each command line;
the issue asks whether the same for ferry (skipping Python's and Invoke's
start-up on ``ferry run``) would reach 3 times the ssh floor. This file is the
smallest honest version of that design, for ``bench_loop.py`` to time:

    python command_server_probe.py serve SOCKET            # imports ferry's program once, then one fork per command
    python -S command_server_probe.py client SOCKET ARGS  # hands argv, cwd, env and fds 0-2 over; exits with its code

The child runs the very ``FerryProgram`` the console script runs (one parser,
one behaviour). What a real one would still need, and this one lacks: Ctrl-C
and window-size forwarding to the child, a terminal of its own for ``attach``,
restarting when ferry, Invoke or a config file changes, one server per user
with a private socket, and a fallback when the server is not there.
"""

from __future__ import annotations

import marshal
import os
import socket
import struct
import sys


def serve(path: str) -> None:
    import importlib
    import signal

    from ferry.program import program

    for name in ("ferry.follow", "ferry.handle", "ferry.jobs", "ferry.sync"):  # what `run` imports after parsing
        importlib.import_module(name)

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o600)
    server.listen(16)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        head, fds, _, _ = socket.recv_fds(conn, 4, 3)
        size = struct.unpack("!I", head)[0]
        body = b""
        while len(body) < size:
            body += conn.recv(size - len(body))
        if os.fork() == 0:
            server.close()
            argv, cwd, env = marshal.loads(body)
            for number, fd in enumerate(fds):
                os.dup2(fd, number)
                os.close(fd)
            os.chdir(cwd)
            os.environ.clear()
            os.environ.update(env)
            sys.argv = argv
            code = 0
            try:
                program.run()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            sys.stdout.flush()
            sys.stderr.flush()
            conn.sendall(struct.pack("!i", code))
            os._exit(code)
        conn.close()
        for fd in fds:
            os.close(fd)


def client(path: str, argv: list[str]) -> None:
    body = marshal.dumps((["ferry", *argv], os.getcwd(), dict(os.environ)))
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(path)
    socket.send_fds(conn, [struct.pack("!I", len(body))], [0, 1, 2])
    conn.sendall(body)
    answer = conn.recv(4)
    sys.exit(struct.unpack("!i", answer)[0] if len(answer) == 4 else 255)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2])
    else:
        client(sys.argv[2], sys.argv[3:])

"""Local port forwarding to an instance (a notebook, TensorBoard, ComfyUI) until Ctrl-C.

The forward gets its own ssh connection, not the shared ControlMaster: a
forward requested through a master belongs to the master and outlives the
ssh that asked for it, so Ctrl-C would leave the port taken for up to
ControlPersist. The dedicated connection owns the listening socket; when it
ends, the port is free. It listens on 127.0.0.1 only, never on the LAN.

ssh announces readiness through ``LocalCommand``, which OpenSSH runs after
it has set up the forwards, so "forwarding" is printed when the port
really accepts connections. If the connection drops later, it is
re-established with backoff, as following a job is.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from typing import Callable

from invoke import Context

from .durations import human
from .errors import FerryError, SSHError, UsageError
from .instance import Instance
from .remote import Remote

READY = "ferry-forward-ready"
RECONNECT_WINDOW = 600.0
Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def parse_spec(spec: str | int) -> tuple[int, int]:
    """``PORT`` or ``PORT:LOCALPORT`` -> (remote port, local port)."""
    text = str(spec).strip()
    remote, sep, local = text.partition(":")
    for part in (remote, local) if sep else (remote,):
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise UsageError(f"bad port {text!r}", hint="use PORT or PORT:LOCALPORT, e.g. inv forward 8888 or inv forward 8188:9000")
    return int(remote), int(local or remote)


def _check_free(local_port: int, remote_port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ssh binds so too: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", local_port))
        except OSError:
            raise FerryError(
                f"local port {local_port} is already in use",
                hint=f"pick another local port: inv forward {remote_port}:{_free_port()}",
            ) from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def forward_argv(ctx: Context | None, instance: Instance, remote_port: int, local_port: int) -> list[str]:
    """ssh -N -L 127.0.0.1:LOCAL:localhost:PORT on a connection of its own (OpenSSH keeps the first -o it sees)."""
    base = Remote(ctx, instance).ssh_argv()
    return [
        base[0], "-N", "-o", "LogLevel=INFO",  # INFO: ssh then says when nothing answers on the port
        "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "ExitOnForwardFailure=yes",
        "-o", "PermitLocalCommand=yes", "-o", f"LocalCommand=echo {READY}",
        "-L", f"127.0.0.1:{local_port}:localhost:{remote_port}",
        *base[1:],
    ]


class _Tunnel:
    def __init__(self, argv: list[str], on_refused: Callable[[str], None] = _quiet):
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            process_group=0,  # Ctrl-C is ours to handle: we stop ssh and report
        )
        self.stderr = b""
        self.on_refused = on_refused
        self._thread = threading.Thread(target=self._read_err, daemon=True)
        self._thread.start()

    def _read_err(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self.stderr += line
            text = line.decode(errors="replace").strip()
            if "open failed" in text:  # "channel 2: open failed: connect failed: Connection refused"
                self.on_refused(text.split("open failed:", 1)[1].strip())

    def ready(self) -> bool:
        """Block until ssh says the forward listens (True) or exits first (False)."""
        for line in self.proc.stdout:  # type: ignore[union-attr]
            if line.strip() == READY.encode():
                return True
        return False

    def wait(self) -> str:
        self.proc.wait()
        self._thread.join(timeout=5)
        return self.stderr.decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def forward(
    ctx: Context | None,
    instance: Instance,
    remote_port: int,
    local_port: int | None = None,
    log: Log = _quiet,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Forward 127.0.0.1:``local_port`` to ``remote_port`` on the instance until Ctrl-C, then return.

    A failure before the forward first works (port taken, unreachable) is an
    error; a drop afterwards reconnects with backoff.
    """
    local_port = local_port or remote_port
    _check_free(local_port, remote_port)
    with _interrupt_on(signal.SIGTERM, signal.SIGHUP):
        _forward(ctx, instance, remote_port, local_port, log, on_ready)


@contextlib.contextmanager
def _interrupt_on(*signals):
    """Treat SIGTERM/SIGHUP (a closed terminal) like Ctrl-C, so ssh is stopped and the port freed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _forward(ctx, instance: Instance, remote_port: int, local_port: int, log: Log,
             on_ready: Callable[[int], None] | None) -> None:
    argv = forward_argv(ctx, instance, remote_port, local_port)
    remote = Remote(ctx, instance)
    ever_ready = False
    failures_since = None
    delay = 0.5
    tunnel = None
    said_at = [0.0]

    def refused(reason: str) -> None:  # at most one note every 10 s, however many connections fail
        if time.monotonic() - said_at[0] > 10:
            said_at[0] = time.monotonic()
            log(f"{instance.name}:{remote_port} did not take a connection ({reason}); is the server listening there?")

    try:
        while True:
            tunnel = _Tunnel(argv, refused)
            if tunnel.ready():
                if not ever_ready:
                    log(f"forwarding 127.0.0.1:{local_port} -> {instance.name}:{remote_port} "
                        f"(http://127.0.0.1:{local_port}/); Ctrl-C to stop")
                    if on_ready:
                        on_ready(local_port)
                else:
                    log(f"forward to {instance.name}:{remote_port} restored")
                ever_ready, failures_since, delay = True, None, 0.5
            stderr_text = tunnel.wait()
            if not ever_ready:
                if "cannot listen" in stderr_text or "Address already in use" in stderr_text:
                    raise FerryError(f"local port {local_port} is already in use",
                                     hint=f"pick another local port: inv forward {remote_port}:{_free_port()}")
                raise remote.classify_failure(stderr_text)
            now = time.monotonic()
            failures_since = failures_since or now
            if now - failures_since > RECONNECT_WINDOW:
                raise SSHError(f"lost the connection to {instance.name} for {human(now - failures_since)}; forward stopped",
                               hint=f"start it again when the instance is reachable: inv forward {remote_port}:{local_port}")
            log(f"forward to {instance.name} lost; reconnecting in {delay:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    except KeyboardInterrupt:
        pass
    finally:
        if tunnel is not None:
            with contextlib.suppress(Exception):
                tunnel.stop()

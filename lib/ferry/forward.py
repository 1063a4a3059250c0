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
import logging
import signal
import socket
import subprocess
import threading
import time
from typing import Callable

from typing import TYPE_CHECKING

from .backoff import Backoff
from .errors import FerryError, SSHError, cmd
from .flags import human

if TYPE_CHECKING:
    from .handle import Box

log = logging.getLogger(__name__)

READY = "ferry-forward-ready"
RECONNECT_WINDOW = 600.0


def _quiet(_: str) -> None:
    pass


def _check_free(local_port: int, remote_port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ssh binds so too: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", local_port))
        except OSError:
            raise FerryError(
                f"local port {local_port} is already in use",
                hint=f"pick another local port: {cmd(f'forward {remote_port}:{_free_port()}')}",
            ) from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def forward_argv(box: "Box", remote_port: int, local_port: int) -> list[str]:
    """ssh -N -L 127.0.0.1:LOCAL:localhost:PORT on a connection of its own (OpenSSH keeps the first -o it sees)."""
    base = box.remote.ssh_argv()
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


def forward(box: "Box", remote_port: int, local_port: int | None = None,
            on_ready: Callable[[int], None] | None = None) -> None:
    """Forward 127.0.0.1:``local_port`` to ``remote_port`` on the instance until Ctrl-C, then return.

    A failure before the forward first works (port taken, unreachable) is an
    error; a drop afterwards reconnects with backoff.
    """
    local_port = local_port or remote_port
    _check_free(local_port, remote_port)
    with _interrupt_on(signal.SIGTERM, signal.SIGHUP):
        _forward(box, remote_port, local_port, on_ready)


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


def _forward(box: "Box", remote_port: int, local_port: int, on_ready: Callable[[int], None] | None) -> None:
    argv = forward_argv(box, remote_port, local_port)
    remote = box.remote
    instance = box.instance
    ever_ready = False
    retry = Backoff(first=0.5, cap=10.0, window=RECONNECT_WINDOW)
    tunnel = None
    said_at = [0.0]

    def refused(reason: str) -> None:  # at most one note every 10 s, however many connections fail
        if time.monotonic() - said_at[0] > 10:
            said_at[0] = time.monotonic()
            log.info("%s:%s did not take a connection (%s); is the server listening there?", instance.name, remote_port, reason)

    try:
        while True:
            tunnel = _Tunnel(argv, refused)
            if tunnel.ready():
                if not ever_ready:
                    log.info("forwarding 127.0.0.1:%s -> %s:%s (http://127.0.0.1:%s/); Ctrl-C to stop",
                             local_port, instance.name, remote_port, local_port)
                    if on_ready:
                        on_ready(local_port)
                else:
                    log.info("forward to %s:%s restored", instance.name, remote_port)
                ever_ready = True
                retry.succeeded()
            stderr_text = tunnel.wait()
            if not ever_ready:
                if "cannot listen" in stderr_text or "Address already in use" in stderr_text:
                    raise FerryError(f"local port {local_port} is already in use",
                                     hint=f"pick another local port: {cmd(f'forward {remote_port}:{_free_port()}')}")
                raise remote.classify_failure(stderr_text)
            delay = retry.failed()
            if retry.expired:
                raise SSHError(f"lost the connection to {instance.name} for {human(retry.failing_for)}; forward stopped",
                               hint=f"start it again when the instance is reachable: {cmd(f'forward {remote_port}:{local_port}')}")
            log.info("forward to %s lost; reconnecting in %gs", instance.name, delay)
            time.sleep(delay)
    except KeyboardInterrupt:
        pass
    finally:
        if tunnel is not None:
            with contextlib.suppress(Exception):
                tunnel.stop()

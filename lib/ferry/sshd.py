"""A private OpenSSH server on 127.0.0.1, kept in one directory.

The local provider makes each instance one of these, and the tests back each
fake cloud instance with one, so every ssh, rsync and tmux path in ferry
runs against a real sshd. It runs as the current user (sshd can only log in
the user it runs as), daemonises itself so it outlives the process that
started it, and is stopped by the pid in its own pid file, never by name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Callable

from . import backoff
from .errors import FerryError
from .tools import require

SSHD_CONFIG = """\
Port {port}
ListenAddress {listen}
HostKey {dir}/host_ed25519
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
AllowTcpForwarding yes
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_banner(host: str, port: int, timeout: float, on_wait: Callable[[float], None] | None = None) -> None:
    """Block until something on host:port speaks SSH (the cheapest sign sshd is really up)."""

    def speaks_ssh() -> bool | None:
        try:
            with socket.create_connection((host, port), timeout=2) as sock:
                return True if sock.recv(4).startswith(b"SSH-") else None
        except OSError:
            return None

    if backoff.poll(speaks_ssh, timeout, first=0.02, cap=1.0, on_wait=on_wait) is None:
        raise FerryError(f"no ssh server answered on {host}:{port} within {timeout:.0f}s",
                         hint="raise --launch-timeout (ferry.launch_timeout), or check the instance's console")


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def wait_gone(pids: list[int], timeout: float) -> bool:
    """Until none of ``pids`` is alive (True), or ``timeout`` seconds pass (False)."""
    return backoff.poll(lambda: True if not any(pid_alive(p) for p in pids) else None, timeout,
                        first=0.005, cap=0.05) is not None


def descendants_of(pid: int) -> list[int]:
    """Every process below ``pid`` by /proc scan: per-connection sshds, their privsep children, sessions."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parent_of[int(entry.name)] = int(fields[1])
    found, frontier = [], {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier and child not in found}
        found.extend(sorted(frontier))
    return found


class LoopbackSshd:
    """One sshd, its host key, authorized_keys, config, pid file and log, all in ``directory``."""

    def __init__(self, directory: Path, listen: str = "127.0.0.1"):
        self.dir = Path(directory).resolve()
        self.listen = listen

    # -- files ---------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def host_key_path(self) -> Path:
        return self.dir / "host_ed25519"

    def prepare(self, authorized_keys: list[str], env: dict[str, str] | None = None) -> str:
        """Create the host key (once) and authorized_keys; return the host public key line."""
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        if not self.host_key_path.exists():
            subprocess.run(
                [require("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "ferry-host",
                 "-f", str(self.host_key_path)],
                check=True, stdin=subprocess.DEVNULL,
            )
        self.set_authorized_keys(authorized_keys)
        self._env = env or {}
        return self.host_public_key()

    def set_authorized_keys(self, keys: list[str]) -> None:
        path = self.dir / "authorized_keys"
        path.write_text("".join(k.strip() + "\n" for k in keys))
        os.chmod(path, 0o600)

    def host_public_key(self) -> str:
        return Path(f"{self.host_key_path}.pub").read_text().strip()

    def pid(self) -> int | None:
        try:
            return int((self.dir / "sshd.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def port(self) -> int | None:
        try:
            return int((self.dir / "port").read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        pid = self.pid()
        if not pid_alive(pid):
            return False
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            return str(self.config_path).encode() in cmdline
        return True

    # -- process -------------------------------------------------------------
    def start(self, port: int | None = None, env: dict[str, str] | None = None, timeout: float = 10) -> int:
        """Start the daemon (a no-op when it already runs); return its port.

        ``env`` becomes sshd ``SetEnv`` lines, which override the login
        environment: the local provider uses it to give each instance its
        own HOME.
        """
        if self.running() and self.port():
            return self.port()  # type: ignore[return-value]
        sshd = require("sshd", "the local provider runs one sshd per instance")
        if os.geteuid() == 0:
            # sshd insists on its privilege-separation directory when run as root.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        env = env if env is not None else getattr(self, "_env", {})
        attempts = 1 if port else 5
        last_error = ""
        for _ in range(attempts):
            chosen = port or free_port(self.listen)
            config = SSHD_CONFIG.format(port=chosen, listen=self.listen, dir=self.dir)
            if env:  # sshd honours only the first SetEnv line, so all variables go on one
                config += "SetEnv " + " ".join(f'{k}="{v}"' for k, v in env.items()) + "\n"
            self.config_path.write_text(config)
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "sshd.pid").unlink()
            log = self.dir / "sshd.log"
            proc = subprocess.run(
                [sshd, "-f", str(self.config_path), "-E", str(log)],
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            )
            if proc.returncode == 0:
                (self.dir / "port").write_text(f"{chosen}\n")
                wait_for_banner(self.listen, chosen, timeout)
                self._wait_for_pidfile(timeout)
                return chosen
            last_error = (proc.stderr.strip() or _tail(log)).splitlines()[-1:] or ["unknown error"]
            last_error = last_error[0]
            if "in use" not in last_error and "Cannot bind" not in last_error:
                break
        raise FerryError(f"sshd would not start: {last_error}", hint=f"see {self.dir / 'sshd.log'}")

    def _wait_for_pidfile(self, timeout: float) -> None:
        backoff.poll(self.pid, timeout, first=0.005, cap=0.05)

    def stop(self, timeout: float = 5) -> None:
        """Stop the daemon and the per-connection processes it forked, like a machine powering off."""
        pid = self.pid()
        if not self.running() or pid is None:
            return
        victims = [pid, *descendants_of(pid)]
        for victim in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGTERM)
        wait_gone(victims, timeout)
        for victim in victims:
            if pid_alive(victim):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "sshd.pid").unlink()


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return ""

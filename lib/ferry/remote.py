"""Reaching an instance: OpenSSH argv for the CLI paths, a Fabric Connection for library code.

Both use the same key, the same known_hosts (``~/.ferry/known_hosts``,
pinned at first contact and enforced ever after) and honour the user's
ssh_config (ProxyJump, aliases). OpenSSH processes share one ControlMaster
connection per instance, so a repeated ``inv run`` or ``inv sync`` pays no
handshake (7 ms instead of 200 ms, PERFORMANCE.md). The Fabric connection
gets a TCP_NODELAY socket and a short runner poll, which is what takes a
Fabric round trip from 44 ms to about 4 ms.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from pathlib import Path
from typing import IO, Sequence

from . import known_hosts
from .digest import sha1
from .errors import HostKeyError, RemoteCommandError, SSHError, cmd
from .records import Instance, SSHEndpoint
from .tools import require

SSH_UNREACHABLE_MARKERS = (
    "Connection refused",
    "Connection timed out",
    "No route to host",
    "Connection reset",
    "Connection closed",
    "Could not resolve hostname",
    "Permission denied",
    "kex_exchange_identification",
    "Broken pipe",
)


def control_dir(home: Path) -> Path:
    """Where ControlMaster sockets live; unix sockets cap paths near 104 bytes, so fall back to /tmp."""
    preferred = home / "cm"
    if len(str(preferred)) > 60:
        import tempfile  # only here: its import costs every command ~4 ms

        preferred = Path(tempfile.gettempdir()) / f"ferry-cm-{os.getuid()}"
    preferred.mkdir(parents=True, exist_ok=True)
    os.chmod(preferred, 0o700)
    return preferred


# -- the remote ----------------------------------------------------------------
class Remote:
    """One instance as ssh sees it. Cheap to build; connections are made lazily and reused."""

    def __init__(self, instance: Instance, key: Path, home: Path, ssh_config: str | None = None,
                 first_contact: bool = False):
        if instance.ssh is None:
            raise SSHError(
                f"instance {instance.name} has no ssh endpoint (status {instance.status.value})",
                hint=f"start it: {cmd(f'start --name {instance.name}')}",
            )
        self.instance = instance
        self.endpoint = instance.ssh
        self.key = key
        self.home = home
        self.ssh_config = ssh_config
        self.first_contact = first_contact

    @property
    def known_hosts(self) -> Path:
        return known_hosts.path(self.home)

    # OpenSSH ------------------------------------------------------------------
    def control_path(self) -> Path:
        """The ControlMaster socket every ssh to this endpoint shares (it exists while a master lives)."""
        return control_dir(self.home) / sha1(f"{self.endpoint.user}@{self.endpoint.host}:{self.endpoint.port}".encode()
                                             ).hexdigest()[:16]

    def ssh_options(self) -> list[str]:
        control = self.control_path()
        strict = "accept-new" if self.first_contact else "yes"
        opts = {
            "IdentityFile": str(self.key),
            "IdentitiesOnly": "yes",
            "UserKnownHostsFile": str(self.known_hosts),
            "GlobalKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": strict,
            "HashKnownHosts": "no",
            "UpdateHostKeys": "no",
            "BatchMode": "yes",
            "ControlMaster": "auto",
            "ControlPath": str(control),
            "ControlPersist": "600",
            "ServerAliveInterval": "5",
            "ServerAliveCountMax": "3",
            "ConnectTimeout": "15",
            "LogLevel": "ERROR",
        }
        opts["HostKeyAlias"] = self.endpoint.known_hosts_name  # pins stay filed under the provider's address
        argv = [*ssh_config_args(self.ssh_config), *port_args(self.endpoint), "-l", self.endpoint.user]
        for key, value in opts.items():
            argv += ["-o", f"{key}={value}"]
        return argv

    def ssh_argv(self, tty: bool = False, extra: Sequence[str] = ()) -> list[str]:
        """``ssh <options> host`` — append a remote command string (already shell-quoted) to use it."""
        argv = [require("ssh", "ferry reaches instances over ssh"), *self.ssh_options()]
        argv += ["-tt"] if tty else ["-T"]
        return [*argv, *extra, self.endpoint.host]

    def rsync_rsh(self) -> str:
        """The ``rsync -e`` value: the same ssh, options quoted so rsync splits them back exactly."""
        ssh = require("ssh")
        return shlex.join([ssh, *self.ssh_options(), "-T"])

    @property
    def rsync_target(self) -> str:
        """``host:`` for rsync (user and port travel in -e)."""
        host = self.endpoint.host
        return f"[{host}]:" if ":" in host else f"{host}:"

    def run(
        self,
        command: str,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
        stdout: int | IO | None = subprocess.PIPE,
    ) -> subprocess.CompletedProcess:
        """Run a shell command string (callers quote every value with shlex.quote)."""
        try:
            proc = subprocess.run(
                self.ssh_argv() + [command],
                input=input if input is not None else b"",
                stdout=stdout,
                stderr=subprocess.PIPE,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise SSHError(
                f"{self.instance.name} did not answer within {timeout:.0f}s",
                hint=f"check it is running: {cmd(f'status --name {self.instance.name}')}",
            ) from None
        if proc.returncode == 255:
            raise self.classify_failure(proc.stderr.decode(errors="replace"))
        if check and proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RemoteCommandError(
                f"remote command failed with exit status {proc.returncode} on {self.instance.name}"
                + (f": {detail[-1]}" if detail else ""),
                hint=f"look on the instance: {cmd(f'ssh --name {self.instance.name}')}",
            )
        return proc

    def classify_failure(self, stderr: str) -> SSHError:
        """Turn OpenSSH's exit 255 chatter into one line and the fix."""
        name = self.endpoint.known_hosts_name
        if "Host key verification failed" in stderr and "REMOTE HOST IDENTIFICATION HAS CHANGED" not in stderr \
                and not known_hosts.pinned(self.endpoint, self.home):
            return HostKeyError(
                f"no pinned host key for {self.instance.name} ({name})",
                hint=f"see its key and pin it: {cmd(f'pin-host-key --name {self.instance.name}')}",
            )
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "Host key verification failed" in stderr:
            return HostKeyError(
                f"the host key of {self.instance.name} ({name}) does not match the one ferry pinned",
                hint=(
                    f"if {self.instance.name} was rebuilt, see its new key and pin it: "
                    f"{cmd(f'pin-host-key --name {self.instance.name}')}; otherwise someone may be intercepting "
                    "the connection"
                ),
            )
        lines = [l for l in stderr.strip().splitlines() if l.strip()]
        reason = lines[-1] if lines else "ssh exited with status 255"
        return SSHError(
            f"cannot reach {self.instance.name} at {self.endpoint.user}@{self.endpoint.host}:{self.endpoint.port}: {reason}",
            hint=f"check it is running: {cmd(f'status --name {self.instance.name}')}",
        )

    def presented_host_key(self, timeout: float = 30) -> str:
        """The key the instance presents now, as ``type base64``: learned by one authenticated ``true`` against
        an empty, throw-away known_hosts (so through the user's ProxyJump/ssh_config too), never pinned here."""
        import tempfile

        with tempfile.TemporaryDirectory(prefix="ferry-hk-") as scratch:
            scratch_file = Path(scratch) / "known_hosts"
            argv = [arg if not arg.startswith(("UserKnownHostsFile=", "StrictHostKeyChecking=", "ControlPath="))
                    else {"U": f"UserKnownHostsFile={scratch_file}", "S": "StrictHostKeyChecking=accept-new",
                          "C": "ControlPath=none"}[arg[0]] for arg in self.ssh_argv()]
            try:
                proc = subprocess.run(argv + ["true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise SSHError(f"{self.instance.name} did not answer within {timeout:.0f}s",
                               hint=f"check it is running: {cmd(f'status --name {self.instance.name}')}") from None
            if proc.returncode == 255 or not scratch_file.exists():
                raise self.classify_failure(proc.stderr.decode(errors="replace"))
            for line in scratch_file.read_text().splitlines():
                fields = line.split()
                if len(fields) >= 3:
                    return f"{fields[1]} {fields[2]}"
        raise SSHError(f"{self.instance.name} presented no host key", hint=f"look at it: {cmd('doctor')}")

    def check(self, timeout: float = 20) -> None:
        """One authenticated ``true``: proves key, host key and shell all work (and pins on first contact)."""
        self.run("true", timeout=timeout)

    def close(self) -> None:
        """Close the shared ControlMaster connection (before a stop, or when the endpoint moved)."""
        with contextlib.suppress(OSError, subprocess.SubprocessError, Exception):
            subprocess.run(
                self.ssh_argv(extra=["-O", "exit"]),
                stdin=subprocess.DEVNULL, capture_output=True, timeout=5,
            )

    # Fabric -------------------------------------------------------------------
    def connection(self):
        """A Fabric Connection for library and recipe code; host keys enforced, never auto-added."""
        import fabric
        import paramiko
        from fabric.runners import Remote as FabricRemote

        class PromptRemote(FabricRemote):
            input_sleep = 0.001  # invoke polls every 10 ms by default; that alone costs ~10 ms a command

        user_ssh_config = ssh_config_args(self.ssh_config)  # the same ssh_config OpenSSH gets with -F
        fab_config = fabric.Config(
            overrides={"runners": {"remote": PromptRemote}},
            runtime_ssh_path=user_ssh_config[1] if user_ssh_config else None,
        )
        conn = fabric.Connection(
            self.endpoint.host,
            user=self.endpoint.user,
            port=self.endpoint.port,
            config=fab_config,
            connect_kwargs={"key_filename": str(self.key), "look_for_keys": False, "allow_agent": False},
        )
        conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        conn.client.load_host_keys(str(self.known_hosts))
        # The pin is filed under the provider's address (HostKeyAlias for OpenSSH); when ssh_config
        # renames the host, paramiko looks under the new name, so file the same key there too.
        host_keys = conn.client.get_host_keys()
        pinned = host_keys.lookup(self.endpoint.known_hosts_name)
        actual = conn.host if conn.port == 22 else f"[{conn.host}]:{conn.port}"
        if pinned and actual != self.endpoint.known_hosts_name:
            for key_type, key in pinned.items():
                host_keys.add(actual, key_type, key)
        ssh_conf = conn.ssh_config or {}
        if not (ssh_conf.get("proxyjump") or ssh_conf.get("proxycommand")):
            import socket  # here: its import costs every command ~2 ms, and only this path needs it

            sock = socket.create_connection((conn.host, conn.port), timeout=15)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.connect_kwargs["sock"] = sock
        return conn


def ssh_config_args(ssh_config: str | None) -> list[str]:
    """``-F <ferry.ssh_config>`` when set: OpenSSH reads ~/.ssh/config of the passwd home, never $HOME."""
    return ["-F", str(Path(ssh_config).expanduser())] if ssh_config else []


def port_args(endpoint: SSHEndpoint) -> list[str]:
    """Port 22 is left to OpenSSH, so the user's ssh_config may say otherwise for that host (as plain ssh does)."""
    return [] if endpoint.port == 22 else ["-p", str(endpoint.port)]


def socket_target(endpoint: SSHEndpoint, ssh_config: str | None = None) -> tuple[str, int] | None:
    """Where a raw TCP probe should go once the user's ssh_config has had its say.

    ``ssh -G`` prints the configuration OpenSSH would use (HostName, Port,
    proxies) without connecting. With a ProxyJump/ProxyCommand there is no
    direct socket to probe: None.
    """
    proc = subprocess.run(
        [require("ssh"), "-G", *ssh_config_args(ssh_config), *port_args(endpoint), "-l", endpoint.user, endpoint.host],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        return endpoint.host, endpoint.port
    resolved = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    if resolved.get("proxyjump", "none") != "none" or resolved.get("proxycommand", "none") != "none":
        return None
    return resolved.get("hostname", endpoint.host), int(resolved.get("port", endpoint.port))


def remote_path(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts if p)

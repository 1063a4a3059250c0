"""EC2 for tests: moto's server on 127.0.0.1, a fault-injecting proxy in front, and real sshds.

``FakeEC2(pool).start()`` runs moto's ``ThreadedMotoServer`` on 127.0.0.1 (a free
port, quiet) and returns the URL of a small proxy in front of it; point boto3 at
that URL (``boto3.client("ec2", endpoint_url=url, region_name=..., aws_access_key_id=...,
aws_secret_access_key=...)``, or env ``AWS_ENDPOINT_URL_EC2``). The proxy gives EC2 the
same knobs as the other fakes (``fail_next``, ``lose_next_create_response`` on
``RunInstances``, ``requests``) and, like real EC2, makes ``RunInstances`` idempotent on
``ClientToken`` (botocore sends one automatically and reuses it when it retries), which
moto alone does not.

:meth:`FakeEC2.sync` reconciles moto's in-process state with sshds (the proxy also calls it
around every request, except right after ``RunInstances``, so a fresh instance is "pending"
until the client's next call):

- a running instance gets a loopback sshd trusting the public key of the key pair it was
  launched with (read from moto's backend: ``KeyPair.material_public``), any key registered
  with :meth:`register_key` / :meth:`register_instance_key`, and any ``ssh-...`` line in its
  user data;
- a stopped instance's sshd is stopped (started again, on the same port if free, when the
  instance runs again; moto gives it a new public IP, and the mapping follows);
- a terminated instance's sshd is removed.

Nothing runs in the background unless the test asks for it with :meth:`start_auto_sync`.

moto cannot hand out 127.0.0.1 as a public IP, so sync writes :attr:`ssh_config_path`, an
OpenSSH config mapping each running instance's ``PublicIpAddress`` and ``PublicDnsName`` to
``HostName 127.0.0.1``, its sshd ``Port``, and ``User`` (``getpass.getuser()``): use
``ssh -F <that file> <public ip>``. :meth:`endpoint` gives the same as an
:class:`Endpoint`. moto keeps its state in process-global backends, so run one FakeEC2 at a
time (start and stop reset moto).
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from . import FakeAPIServer, Machine, RecordedRequest, Response
from .sshd_pool import Endpoint, SshdPool

_KEY_LINE = re.compile(r"((?:ssh-(?:ed25519|rsa)|ecdsa-sha2-nistp\d+|sk-\S+)\s+[A-Za-z0-9+/=]+(?:[ \t]+[^\s'\"]+)?)")
_SKIP_HEADERS = {"content-length", "content-type", "transfer-encoding", "connection", "server", "date",
                 "keep-alive"}


def _quiet_moto_server(host: str):
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class QuietHandler(MotoRequestHandler):
        def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002
            pass

        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    class QuietMotoServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=QuietHandler)
            self._server_ready_event.set()
            self._server.serve_forever(poll_interval=0.05)

    return QuietMotoServer(ip_address=host, port=0, verbose=False)


class FakeEC2(FakeAPIServer):
    """``FakeEC2(pool, region="us-east-1", ssh_config_path=None, sync_on_request=True)``."""

    name = "ec2"

    def __init__(self, pool: SshdPool, *, region: str = "us-east-1", ssh_config_path: str | Path | None = None,
                 sync_on_request: bool = True):
        super().__init__(pool, api_key="")
        self.region = region
        self.sync_on_request = sync_on_request
        self.ssh_config_path = Path(ssh_config_path) if ssh_config_path else pool.base_dir / "ec2_ssh_config"
        self.keys_by_name: dict[str, str] = {}
        self.keys_by_instance: dict[str, str] = {}
        self.moto_url = ""
        self._moto = None
        self._moto_addr: tuple[str, int] = ("127.0.0.1", 0)
        self._client_tokens: dict[str, Response] = {}
        self._addresses: dict[str, list[str]] = {}
        self._auto_stop: threading.Event | None = None
        self._auto_thread: threading.Thread | None = None
        self.access_key_id = "testing"
        self.secret_access_key = "testing"

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> str:
        if self._moto is None:
            self._moto = _quiet_moto_server(self.host)
            self._moto.start()
            self._moto_addr = self._moto.get_host_and_port()
            self.moto_url = f"http://{self._moto_addr[0]}:{self._moto_addr[1]}"
            self._reset_moto()
        self.ssh_config_path.parent.mkdir(parents=True, exist_ok=True)
        self._write_ssh_config()
        return super().start()

    def stop(self) -> None:
        self.stop_auto_sync()
        super().stop()
        if self._moto is not None:
            try:
                self._reset_moto()
            finally:
                self._moto.stop()
                self._moto = None
        with self._lock:
            for machine in list(self.machines.values()):
                self._destroy(machine)
            self._addresses.clear()
            self._client_tokens.clear()

    def _reset_moto(self) -> None:
        conn = http.client.HTTPConnection(*self._moto_addr, timeout=30)
        try:
            conn.request("POST", "/moto-api/reset", body=b"")
            conn.getresponse().read()
        finally:
            conn.close()

    def client(self, **kwargs: Any):
        """A boto3 EC2 client on the proxy (``kwargs`` override, e.g. ``config=``)."""
        import boto3

        options = {"endpoint_url": self.base_url, "region_name": self.region,
                   "aws_access_key_id": self.access_key_id, "aws_secret_access_key": self.secret_access_key}
        options.update(kwargs)
        return boto3.client("ec2", **options)

    # -- keys ------------------------------------------------------------------
    def register_key(self, key_name: str, public_key: str) -> None:
        """Trust ``public_key`` on instances launched with key pair ``key_name`` (in addition to moto's)."""
        with self._lock:
            self.keys_by_name[key_name] = public_key.strip()

    def register_instance_key(self, instance_id: str, public_key: str) -> None:
        with self._lock:
            self.keys_by_instance[instance_id] = public_key.strip()
            machine = self.machines.get(instance_id)
            if machine is not None:
                self._add_key(machine, public_key)

    # -- proxy hooks -----------------------------------------------------------
    @staticmethod
    def _params(req: RecordedRequest) -> dict[str, list[str]]:
        params = dict(req.query)
        if req.raw and "json" not in (req.header("Content-Type") or ""):
            for key, values in parse_qs(req.raw.decode("utf-8", "replace"), keep_blank_values=True).items():
                params.setdefault(key, values)
        return params

    def route_key(self, req: RecordedRequest) -> str:
        action = (self._params(req).get("Action") or ["-"])[0]
        return f"{req.method} {req.path} {action}"

    def is_create(self, req: RecordedRequest) -> bool:
        return req.route.endswith(" RunInstances")

    def authorized(self, req: RecordedRequest) -> bool:
        return True  # moto accepts any credentials; tests read req.authorization

    def fault_body(self, status: int, req: RecordedRequest) -> Any:
        code = "RequestLimitExceeded" if status in (429, 503) else "InternalError"
        message = "Request limit exceeded." if code == "RequestLimitExceeded" else "An internal error has occurred"
        return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
                f"<Message>{message}</Message></Error></Errors><RequestID>fake-{status}</RequestID>"
                "</Response>").encode()

    def _dispatch(self, req: RecordedRequest) -> Response:
        response = super()._dispatch(req)
        if isinstance(response.body, bytes) and response.body.lstrip().startswith(b"<?xml"):
            response.content_type = "text/xml;charset=UTF-8"
        return response

    def handle(self, req: RecordedRequest) -> Response:
        params = self._params(req)
        action = (params.get("Action") or [""])[0]
        token = (params.get("ClientToken") or [""])[0]
        if self.sync_on_request:
            self.sync()
        if action == "RunInstances" and token and token in self._client_tokens:
            return self._client_tokens[token]  # EC2 idempotency: the same reservation again
        response = self._forward(req)
        if action == "RunInstances":
            if token and response.status == 200:
                self._client_tokens[token] = response
            if self.sync_on_request:
                self.sync(boot=False)  # note the new instances (and the knobs now set), start nothing yet
        elif self.sync_on_request:
            self.sync()
        return response

    def _forward(self, req: RecordedRequest) -> Response:
        conn = http.client.HTTPConnection(*self._moto_addr, timeout=60)
        try:
            headers = {k: v for k, v in req.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(req.method, req.target or req.path, body=req.raw or None, headers=headers)
            reply = conn.getresponse()
            payload = reply.read()
            extra = {k: v for k, v in reply.getheaders() if k.lower() not in _SKIP_HEADERS}
            return Response(reply.status, payload, headers=extra,
                            content_type=reply.getheader("Content-Type") or "text/xml")
        finally:
            conn.close()

    # -- reconciling moto with sshds ---------------------------------------------
    def _backends(self):
        from moto.ec2.models import ec2_backends

        for account in list(dict.values(ec2_backends)):
            for backend in list(dict.values(account)):
                yield backend

    def _public_keys(self, backend: Any, instance: Any) -> list[str]:
        keys: list[str] = []
        name = getattr(instance, "key_name", None)
        if name:
            pair = backend.key_pairs.get(name)
            material = getattr(pair, "material_public", None) if pair is not None else None
            if isinstance(material, bytes):
                material = material.decode("utf-8", "replace")
            if material:
                keys.append(material.strip())
            if name in self.keys_by_name:
                keys.append(self.keys_by_name[name])
        if instance.id in self.keys_by_instance:
            keys.append(self.keys_by_instance[instance.id])
        user_data = getattr(instance, "user_data", None)
        if user_data:
            blob = user_data[0] if isinstance(user_data, (list, tuple)) else user_data
            if isinstance(blob, bytes):
                blob = blob.decode("utf-8", "replace")
            try:
                text = base64.b64decode(blob, validate=True).decode("utf-8", "replace")
            except (ValueError, TypeError):
                text = str(blob)
            keys.extend(m.group(1).strip() for m in _KEY_LINE.finditer(text))
        unique: list[str] = []
        for key in keys:
            if key and key not in unique:
                unique.append(key)
        return unique

    def sync(self, boot: bool = True) -> dict[str, Endpoint]:
        """Bring sshds and the ssh_config in line with moto; return the up instances' endpoints.

        With ``boot=False`` new running instances are only recorded (their ``never_ready`` and
        ready time fixed now); no sshd is started.
        """
        with self._lock:
            seen: set[str] = set()
            up: dict[str, Endpoint] = {}
            addresses: dict[str, list[str]] = {}
            for backend in self._backends():
                for instance in backend.all_instances():
                    iid = instance.id
                    state = instance.state
                    machine = self.machines.get(iid)
                    if state in ("terminated", "shutting-down"):
                        if machine is not None:
                            self._destroy(machine)
                        continue
                    seen.add(iid)
                    if state in ("pending", "running"):
                        if machine is None:
                            machine = self._new_machine(iid, self._public_keys(backend, instance))
                        elif not machine.powered:
                            self._power_on(machine)
                        if boot and self._is_up(machine):
                            up[iid] = machine.endpoint  # type: ignore[assignment]
                            names = [n for n in (instance.public_ip, instance.public_dns_name) if n]
                            if names:
                                addresses[iid] = names
                        elif not boot and iid in self._addresses:
                            addresses[iid] = self._addresses[iid]
                    elif machine is not None and machine.powered:
                        self._power_off(machine)
            for iid, machine in list(self.machines.items()):
                if iid not in seen:
                    self._destroy(machine)
            self._addresses = addresses
            self._write_ssh_config()
            return up

    def start_auto_sync(self, interval: float = 0.2) -> None:
        """Also call :meth:`sync` every ``interval`` seconds from a daemon thread (until stop)."""
        if self._auto_thread is not None:
            return
        stop_event = threading.Event()

        def loop() -> None:
            while not stop_event.wait(interval):
                try:
                    self.sync()
                except Exception:  # moto reset under us, or stopping: try again next tick
                    pass

        self._auto_stop = stop_event
        self._auto_thread = threading.Thread(target=loop, name="ec2-auto-sync", daemon=True)
        self._auto_thread.start()

    def stop_auto_sync(self) -> None:
        if self._auto_stop is not None:
            self._auto_stop.set()
        if self._auto_thread is not None:
            self._auto_thread.join(timeout=10)
        self._auto_stop = self._auto_thread = None

    def _write_ssh_config(self) -> None:
        lines = ["# written by tests.fakes.ec2.FakeEC2.sync(): moto public addresses -> loopback sshds", ""]
        for iid, names in sorted(self._addresses.items()):
            machine = self.machines.get(iid)
            if machine is None or machine.endpoint is None:
                continue
            lines += [f"# {iid}", f"Host {' '.join(names)}", "    HostName 127.0.0.1",
                      f"    Port {machine.endpoint.port}", f"    User {self.pool.user}", ""]
        text = "\n".join(lines)
        try:
            if self.ssh_config_path.read_text() == text:
                return
        except OSError:
            pass
        tmp = self.ssh_config_path.with_name(self.ssh_config_path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.ssh_config_path)

    def endpoint(self, instance_id: Any) -> Endpoint | None:
        self.sync()
        return super().endpoint(instance_id)

    def public_names(self, instance_id: str) -> list[str]:
        """The public IP and DNS name the ssh_config maps for ``instance_id`` (empty when not up)."""
        with self._lock:
            return list(self._addresses.get(instance_id, []))

    def machine(self, instance_id: str) -> Machine | None:
        return self.machines.get(instance_id)

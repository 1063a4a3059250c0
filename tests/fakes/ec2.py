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

Instance-initiated shutdown (an instance stopping itself, no credentials on the box). On EC2
``shutdown -h now`` in the instance makes EC2 apply the instance's
``InstanceInitiatedShutdownBehavior`` (set by RunInstances, ``stop`` by default; moto
records it and ``describe_instance_attribute`` reports it). Here:

- ``POST /__fake__/shutdown/<instance id>`` on the fake's own server (test machinery, not an
  AWS API; recorded in ``requests``, no auth, no fault knobs) answers 202
  ``{"instanceId", "behavior", "delay"}`` and ``delay`` seconds later (body ``{"delay": s}``,
  default ``self_stop_delay``) applies the behavior in moto, as EC2 would: ``stop`` ->
  ``stopped`` (sshd powered off, as after StopInstances), ``terminate`` -> ``terminated``
  (sshd removed); ``StateReason`` ``Client.InstanceInitiatedShutdown``; DisableApiStop and
  DisableApiTermination do not apply (they guard the API only). Body ``{"cancel": true}``
  cancels a pending one. 404 for an unknown instance, 409 if it is not running.
  :meth:`FakeEC2.instance_shutdown` does the same from Python.
- Every instance's home has ``~/.local/bin/shutdown`` (and ``poweroff``, ``halt``), a
  ``python3`` script that POSTs that route to 127.0.0.1 for its own instance id (both are
  written into it) and exits 0 when accepted: ``shutdown [-h|-P|-H] [now|+0]`` shuts down
  now, ``+N`` in N minutes (no time: ``+1``, as systemd), ``-c`` cancels, ``-k`` does
  nothing, ``--help`` prints usage; ``-r`` (reboot), clock times and unknown options are
  refused (exit 1). It never runs the host's shutdown.
- Its sessions get ``PATH=<home>/.local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin``
  (so ``shutdown`` is the fake one, also for jobs started from a session) and
  ``FERRY_FAKE_INSTANCE_ID=<instance id>``; ``~/.profile`` puts ``~/.local/bin`` first again
  for login shells (which /etc/profile gives a fresh PATH), as Ubuntu's default one does.
- ``ModifyInstanceAttribute`` with ``InstanceInitiatedShutdownBehavior={"Value": ...}`` (boto3's
  form) is passed to moto in the ``Attribute``/``Value`` form it implements.

``req.credential`` is ``"account"`` when the SigV4 access key is the fake's
``access_key_id``, else None (moto accepts any; the control route has None).
"""

from __future__ import annotations

import base64
import http.client
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlencode

from . import FakeAPIServer, Machine, RecordedRequest, Response
from .sshd_pool import Endpoint, SshdPool

_KEY_LINE = re.compile(r"((?:ssh-(?:ed25519|rsa)|ecdsa-sha2-nistp\d+|sk-\S+)\s+[A-Za-z0-9+/=]+(?:[ \t]+[^\s'\"]+)?)")
_SKIP_HEADERS = {"content-length", "content-type", "transfer-encoding", "connection", "server", "date",
                 "keep-alive"}
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_SHUTDOWN_ROUTE = re.compile(r"/__fake__/shutdown/(i-[0-9a-f]+)/?")

# The instance's shutdown(8) (and poweroff, halt): asks the fake to apply its shutdown behavior.
# @PYTHON@, @URL@ and @INSTANCE_ID@ are filled in per instance.
SHUTDOWN_SCRIPT = r"""#!@PYTHON@ -I
# shutdown(8) on a FakeEC2 instance (tests/fakes/ec2.py), not the host's: the instance shuts
# itself down, and the fake applies its InstanceInitiatedShutdownBehavior (stop or terminate)
# through moto, as EC2 does when an instance's OS halts. Talks only to 127.0.0.1.
import json
import os
import sys
import urllib.error
import urllib.request

URL = "@URL@"
INSTANCE_ID = "@INSTANCE_ID@"
KNOWN_OPTIONS = {"-h", "-H", "-P", "--halt", "--poweroff", "-p", "-f", "--force", "-n", "--no-wall", "-w",
                 "-c", "-k", "-r", "--reboot"}


def main(prog, args):
    options = [a for a in args if a.startswith("-")]
    times = [a for a in args if not a.startswith("-")]  # [TIME [WALL...]] for shutdown
    if "--help" in options:
        print("usage: " + prog + " [-h|-H|-P|-c|-k] [now|+MINUTES] [WALL...]  (FakeEC2 instance)")
        return 0
    unknown = [o for o in options if o not in KNOWN_OPTIONS]
    if unknown:
        print(prog + ": unrecognized option " + repr(unknown[0]), file=sys.stderr)
        return 1
    if "-r" in options or "--reboot" in options:
        print(prog + ": reboot is not modelled by the fake", file=sys.stderr)
        return 1
    if "-k" in options:
        return 0  # a wall message only
    body = {}
    if "-c" in options:
        body = {"cancel": True}
    elif prog == "shutdown":
        when = times[0] if times else "+1"  # systemd's default
        if when != "now" and not (when.startswith("+") and when[1:].isdigit()):
            print(prog + ": the fake models 'now' and '+MINUTES' only, not " + repr(when), file=sys.stderr)
            return 1
        if when != "now" and int(when[1:]) > 0:
            body = {"delay": 60.0 * int(when[1:])}
    request = urllib.request.Request(URL + "/__fake__/shutdown/" + INSTANCE_ID, method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        print(prog + ": " + str(exc.code) + " " + exc.read().decode(errors="replace"), file=sys.stderr)
        return 1
    except OSError as exc:
        print(prog + ": " + str(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(os.path.basename(sys.argv[0]), sys.argv[1:]))
"""

PROFILE = """\
# ~/.profile of a FakeEC2 instance (as Ubuntu's default): login shells keep ~/.local/bin first,
# so shutdown/poweroff/halt stay the fake's after /etc/profile resets PATH.
if [ -d "$HOME/.local/bin" ] ; then
    PATH="$HOME/.local/bin:$PATH"
fi
"""


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

    def credential(self, req: RecordedRequest) -> str | None:
        match = re.search(r"Credential=([^/,\s]+)/", req.authorization or "")
        return "account" if match and match.group(1) == self.access_key_id else None

    def authorized(self, req: RecordedRequest) -> bool:
        return True  # moto accepts any credentials; tests read req.authorization / req.credential

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
        if action == "ModifyInstanceAttribute" and "InstanceInitiatedShutdownBehavior.Value" in params:
            rewritten = self._shutdown_behavior_form(req)
            if isinstance(rewritten, Response):
                return rewritten
            req = rewritten
        response = self._forward(req)
        if action == "RunInstances":
            if token and response.status == 200:
                self._client_tokens[token] = response
            if self.sync_on_request:
                self.sync(boot=False)  # note the new instances (and the knobs now set), start nothing yet
        elif self.sync_on_request:
            self.sync()
        return response

    def _shutdown_behavior_form(self, req: RecordedRequest) -> RecordedRequest | Response:
        """ModifyInstanceAttribute ``InstanceInitiatedShutdownBehavior={"Value": ...}`` (what boto3 sends)
        in the ``Attribute=...&Value=...`` form moto implements (it has no handler for the first)."""
        form = parse_qs(req.raw.decode("utf-8", "replace"), keep_blank_values=True)
        value = form.pop("InstanceInitiatedShutdownBehavior.Value", [""])[0]
        if value not in ("stop", "terminate"):
            return Response(400, (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
                                  f"<Code>InvalidParameterValue</Code><Message>Value ({value}) for parameter "
                                  "instanceInitiatedShutdownBehavior is invalid.</Message></Error></Errors>"
                                  "<RequestID>fake-400</RequestID></Response>").encode())
        form["Attribute"] = ["instanceInitiatedShutdownBehavior"]
        form["Value"] = [value]
        return replace(req, raw=urlencode(form, doseq=True).encode())

    def _forward(self, req: RecordedRequest) -> Response:
        conn = http.client.HTTPConnection(*self._moto_addr, timeout=60)
        try:
            headers = {k: v for k, v in req.headers.items()
                       if k.lower() not in ("connection", "keep-alive", "content-length")}  # set from the body
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

    # -- instance-initiated shutdown -------------------------------------------------
    def _provision(self, machine: Machine) -> None:
        """The instance's own shutdown/poweroff/halt, ~/.profile, PATH and FERRY_FAKE_INSTANCE_ID."""
        endpoint = machine.endpoint
        assert endpoint is not None
        bin_dir = endpoint.home / ".local" / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        python = shutil.which("python3", path=_SYSTEM_PATH) or sys.executable
        script = (SHUTDOWN_SCRIPT.replace("@PYTHON@", python).replace("@URL@", self.base_url)
                  .replace("@INSTANCE_ID@", machine.id))
        for name in ("shutdown", "poweroff", "halt"):
            path = bin_dir / name
            path.write_text(script)
            path.chmod(0o755)
        (endpoint.home / ".profile").write_text(PROFILE)
        self.pool.set_env(endpoint, {**endpoint.env, "PATH": f"{bin_dir}:{_SYSTEM_PATH}",
                                     "FERRY_FAKE_INSTANCE_ID": machine.id})

    def _moto_instance(self, instance_id: str) -> Any:
        for backend in self._backends():
            for instance in backend.all_instances():
                if instance.id == instance_id:
                    return instance
        return None

    def instance_shutdown(self, instance_id: str, delay: float | None = None) -> str:
        """The instance halts its OS: ``delay`` seconds from now (``self_stop_delay`` by default) its
        InstanceInitiatedShutdownBehavior is applied. Returns that behavior (``"stop"``/``"terminate"``);
        KeyError for an unknown instance, ValueError when it is not running."""
        with self._lock:
            instance = self._moto_instance(instance_id)
            if instance is None:
                raise KeyError(instance_id)
            if instance.state != "running":
                raise ValueError(f"instance {instance_id} is {instance.state}, not running")
            self._later(("shutdown", instance_id), lambda: self._apply_shutdown(instance_id), delay)
            return instance.instance_initiated_shutdown_behavior or "stop"

    def _apply_shutdown(self, instance_id: str) -> None:
        from moto.ec2.models.instances import StateReason

        instance = self._moto_instance(instance_id)
        if instance is None or instance.state != "running":
            return  # stopped or terminated through the API meanwhile
        if (instance.instance_initiated_shutdown_behavior or "stop") == "terminate":
            instance.terminate()
        else:
            instance.stop()
        instance.state_reason = StateReason("Client.InstanceInitiatedShutdown: Instance initiated shutdown",
                                            "Client.InstanceInitiatedShutdown")
        self.sync()

    def control(self, req: RecordedRequest) -> Response:
        match = _SHUTDOWN_ROUTE.fullmatch(req.path)
        if match is None or req.method != "POST":
            return super().control(req)
        instance_id = match.group(1)
        body = req.body if isinstance(req.body, dict) else {}
        if body.get("cancel"):
            return Response(200, {"instanceId": instance_id,
                                  "cancelled": self.cancel_pending(("shutdown", instance_id))})
        delay = body.get("delay")
        try:
            delay = None if delay is None else float(delay)
            behavior = self.instance_shutdown(instance_id, delay)
        except KeyError:
            return Response(404, {"error": "InvalidInstanceID.NotFound",
                                  "message": f"The instance ID '{instance_id}' does not exist"})
        except ValueError as exc:
            return Response(409, {"error": "IncorrectInstanceState", "message": str(exc)})
        return Response(202, {"instanceId": instance_id, "behavior": behavior,
                              "delay": self.self_stop_delay if delay is None else delay})

"""Local fakes of the GPU clouds ferry rents from, for integration tests.

Each fake is an HTTP server on 127.0.0.1 that speaks its provider's wire
format closely enough for the provider's real SDK (see
``/work/shared/PROVIDERS.md``), and backs every instance it "creates" with a
real OpenSSH sshd from :class:`SshdPool`, so ssh, rsync and tmux run for real.

This module holds what the fakes share: :class:`FakeAPIServer` (a quiet
``ThreadingHTTPServer`` in a daemon thread, the request log, and the fault
knobs) and :class:`Machine` (one fake instance's power and readiness).

Fault knobs, on every fake (``FakeEC2`` too, through its proxy in front of moto):

- ``fail_next(status, times=1, match=None, body=None, headers=None)``: the
  next ``times`` matching requests get ``status`` without being performed.
  ``match`` is a substring of the route key (``"POST /instances/create"``,
  ``"POST /graphql podStop"``, ``"POST / RunInstances"``); None matches all.
- ``lose_next_create_response(how="error"|"drop", times=1)``: the next create
  is performed, but the client gets a 500 (``"error"``) or the connection is
  closed with no response at all (``"drop"``).
- ``never_ready = True``: instances created from now on never get an ssh
  endpoint; ``set_never_ready(instance_id, flag)`` for one instance.
- ``set_delay_until_ready(seconds)``: instances created or started from now on
  become ready that many seconds later (0 by default).
- ``requests``: every request received (method, path, query, headers, body), each with
  ``credential`` (whose key it carried, below) and ``status`` (the HTTP status answered;
  None when the connection was dropped).

Credentials. ``req.credential`` names the identity the request's key belongs to:
``"account"`` (the account-wide API key), an instance-scoped key (``"pod:<id>"`` on
RunPod, ``"container:<id>"`` on vast), or None (no key, or a key the fake does not know).
It is recorded even when the request is then refused because the key's scope does not
cover it (401), and on requests a fault knob answered. ``presented_key(req)`` is where
a fake looks for the key (``Authorization: Bearer`` everywhere; RunPod and vast also take
``?api_key=``), ``credential(req)`` maps it, ``authorized(req)`` decides.

Self-stop. A machine stopping itself is answered first and goes down
``self_stop_delay`` seconds later (0.5 by default; 0 = at once, before the answer), as
a real instance keeps running for a moment after asking: so a caller inside the
instance gets its answer. This applies to stop/terminate requests made with an
instance-scoped key and to EC2's instance-initiated shutdown; the account key still
stops at once. ``settle()`` carries out every pending one now (``stop()`` does too).

Control routes. ``/__fake__/...`` on a fake's own server is test machinery, not a cloud
API: it is recorded (credential None) but bypasses auth and the fault knobs.
``FakeEC2`` has ``POST /__fake__/shutdown/<instance id>``; elsewhere such paths are 404.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .sshd_pool import Endpoint, SshdPool

__all__ = [
    "Endpoint",
    "FakeAPIServer",
    "Machine",
    "RecordedRequest",
    "Response",
    "SshdPool",
]


@dataclass
class RecordedRequest:
    """One request a fake received, as the client sent it."""

    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any  # parsed JSON when the body is JSON, else text (or None when empty)
    raw: bytes = b""
    route: str = ""  # the route key fault knobs match against
    time: float = 0.0
    target: str = ""  # the request target as sent: path plus query string
    credential: str | None = None  # "account", "pod:<id>", "container:<id>", or None (no/unknown key)
    status: int | None = None  # the status answered (None: connection dropped, or not answered yet)

    def header(self, name: str, default: str | None = None) -> str | None:
        lowered = name.lower()
        for key, value in self.headers.items():
            if key.lower() == lowered:
                return value
        return default

    @property
    def authorization(self) -> str | None:
        return self.header("Authorization")


@dataclass
class Response:
    status: int = 200
    body: Any = None  # JSON-encoded unless it is bytes
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # close the connection without answering
    content_type: str = "application/json"


@dataclass
class _Fault:
    status: int
    remaining: int
    match: str | None
    body: Any
    headers: dict[str, str]


@dataclass
class Machine:
    """The power state and ssh of one fake instance.

    ``ready_at`` is a ``time.monotonic()`` deadline; the sshd is started lazily
    the first time the instance is looked at after it (so a never-ready
    instance never costs a process).
    """

    id: str
    keys: list[str]
    ready_at: float
    never_ready: bool = False
    powered: bool = True
    endpoint: Endpoint | None = None
    booted_at: float = 0.0
    env: dict[str, str] = field(default_factory=dict)  # extra session env for its sshd (SshdPool.create)


class FakeAPIServer:
    """Base of every fake: HTTP plumbing, request log, auth, fault knobs, machines."""

    name = "fake"
    CONTROL_PREFIX = "/__fake__/"

    def __init__(self, pool: SshdPool, *, api_key: str = "test-key", host: str = "127.0.0.1"):
        self.pool = pool
        self.api_key = api_key
        self.host = host
        self.requests: list[RecordedRequest] = []
        self.machines: dict[str, Machine] = {}
        self.never_ready = False
        self.delay_until_ready = 0.0
        self.self_stop_delay = 0.5
        self._pending: dict[Any, tuple[threading.Timer | None, Any]] = {}
        self._never_ready_ids: dict[str, bool] = {}
        self._faults: list[_Fault] = []
        self._lost_creates: list[str] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- server --------------------------------------------------------------
    def start(self) -> str:
        if self._server is not None:
            return self.base_url
        handler = _make_handler(self)
        server = ThreadingHTTPServer((self.host, 0), handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{self.name}-http", daemon=True)
        self._thread.start()
        self.base_url = f"http://{self.host}:{server.server_address[1]}"
        return self.base_url

    def stop(self) -> None:
        """Stop serving and stop every instance's sshd (the pool's stop_all is the backstop)."""
        self.settle()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            for machine in self.machines.values():
                if machine.endpoint is not None:
                    self.pool.stop(machine.endpoint)

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- knobs ---------------------------------------------------------------
    def fail_next(self, status_code: int, times: int = 1, *, match: str | None = None,
                  body: Any = None, headers: dict[str, str] | None = None) -> None:
        """The next ``times`` requests whose route key contains ``match`` fail with ``status_code``."""
        with self._lock:
            self._faults.append(_Fault(status_code, times, match, body, dict(headers or {})))

    def lose_next_create_response(self, how: str = "error", times: int = 1) -> None:
        """Perform the next create(s) but answer 500 (``how="error"``) or drop the connection (``"drop"``)."""
        if how not in ("error", "drop"):
            raise ValueError("how must be 'error' or 'drop'")
        with self._lock:
            self._lost_creates.extend([how] * times)

    def set_delay_until_ready(self, seconds: float) -> None:
        self.delay_until_ready = float(seconds)

    def set_never_ready(self, instance_id: Any, flag: bool = True) -> None:
        """Hold one instance back (its sshd is stopped if it already ran), or release it."""
        with self._lock:
            self._never_ready_ids[str(instance_id)] = flag
            machine = self.machines.get(str(instance_id))
            if machine is not None:
                machine.never_ready = flag
                if flag and machine.endpoint is not None:
                    self.pool.stop(machine.endpoint)

    def clear_faults(self) -> None:
        """Forget pending ``fail_next`` and ``lose_next_create_response`` knobs."""
        with self._lock:
            self._faults.clear()
            self._lost_creates.clear()

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def requests_to(self, match: str) -> list[RecordedRequest]:
        """The recorded requests whose route key contains ``match``."""
        with self._lock:
            return [r for r in self.requests if match in r.route]

    # -- deferred power-offs (self-stop) -----------------------------------------
    def _later(self, key: Any, action, delay: float | None = None) -> None:
        """Run ``action()`` (under the fake's lock) ``delay`` seconds from now (``self_stop_delay``
        by default); at once when that is 0. A new action for the same ``key`` replaces the old."""
        delay = self.self_stop_delay if delay is None else float(delay)
        with self._lock:
            self.cancel_pending(key)
            if delay <= 0:
                action()
                return
            timer = threading.Timer(delay, self._fire, args=(key,))
            timer.daemon = True
            self._pending[key] = (timer, action)
            timer.start()

    def _fire(self, key: Any) -> None:
        with self._lock:
            entry = self._pending.pop(key, None)
            if entry is not None:
                entry[1]()

    def cancel_pending(self, key: Any) -> bool:
        """Forget a pending deferred action; True if there was one."""
        with self._lock:
            entry = self._pending.pop(key, None)
            if entry is not None and entry[0] is not None:
                entry[0].cancel()
            return entry is not None

    def pending(self) -> list[Any]:
        """Keys of the deferred actions not carried out yet (e.g. ``("stop", "<id>")``)."""
        with self._lock:
            return list(self._pending)

    def settle(self) -> None:
        """Carry out every pending deferred action now (a self-stop in flight completes)."""
        with self._lock:
            while self._pending:
                key = next(iter(self._pending))
                timer, action = self._pending.pop(key)
                if timer is not None:
                    timer.cancel()
                action()

    # -- machines ------------------------------------------------------------
    def _new_machine(self, instance_id: Any, keys: list[str]) -> Machine:
        now = time.monotonic()
        never_ready = self._never_ready_ids.get(str(instance_id), self.never_ready)
        machine = Machine(id=str(instance_id), keys=[k for k in keys if k], ready_at=now + self.delay_until_ready,
                          never_ready=never_ready, booted_at=now)
        self.machines[machine.id] = machine
        return machine

    def _is_up(self, machine: Machine) -> bool:
        """Powered, past its ready time, not held back: make sure its sshd runs and say so."""
        if not machine.powered or machine.never_ready or time.monotonic() < machine.ready_at:
            return False
        if machine.endpoint is None:
            machine.endpoint = self.pool.create(machine.keys, name=f"{self.name}-{machine.id}", env=machine.env,
                                                start=False)
            self._provision(machine)
        self.pool.start(machine.endpoint)
        return True

    def _provision(self, machine: Machine) -> None:
        """Hook: the machine's files and session env are prepared, its sshd not started yet."""

    def _phase(self, machine: Machine) -> str:
        """``"off"``, ``"early"`` / ``"late"`` (first / second half of the boot delay), or ``"up"``."""
        if not machine.powered:
            return "off"
        if self._is_up(machine):
            return "up"
        if machine.never_ready:
            return "late"
        total = machine.ready_at - machine.booted_at
        return "early" if time.monotonic() < machine.booted_at + total / 2 else "late"

    def _power_on(self, machine: Machine) -> None:
        now = time.monotonic()
        machine.powered = True
        machine.booted_at = now
        machine.ready_at = now + self.delay_until_ready

    def _power_off(self, machine: Machine) -> None:
        machine.powered = False
        if machine.endpoint is not None:
            self.pool.stop(machine.endpoint)

    def _destroy(self, machine: Machine) -> None:
        machine.powered = False
        self.machines.pop(machine.id, None)
        if machine.endpoint is not None:
            self.pool.remove(machine.endpoint)
            machine.endpoint = None

    def _add_key(self, machine: Machine, key: str) -> None:
        for line in key.splitlines():
            line = line.strip()
            if line and line not in machine.keys:
                machine.keys.append(line)
        if machine.endpoint is not None:
            self.pool.set_keys(machine.endpoint, machine.keys)

    def endpoint(self, instance_id: Any) -> Endpoint | None:
        """The instance's sshd endpoint if it is up now (starting the sshd if it just became ready)."""
        with self._lock:
            machine = self.machines.get(str(instance_id))
            if machine is None or not self._is_up(machine):
                return None
            return machine.endpoint

    # -- hooks for subclasses ------------------------------------------------
    def route_key(self, req: RecordedRequest) -> str:
        return f"{req.method} {req.path}"

    def is_create(self, req: RecordedRequest) -> bool:
        return False

    def presented_key(self, req: RecordedRequest) -> str | None:
        """The API key the request carries: ``Authorization: Bearer <key>``."""
        auth = req.authorization
        if auth and auth.startswith("Bearer "):
            return auth[len("Bearer "):]
        return None

    def credential(self, req: RecordedRequest) -> str | None:
        """Whose key the request carries: ``"account"`` or None (subclasses add instance-scoped keys)."""
        key = self.presented_key(req)
        return "account" if key is not None and key == self.api_key else None

    def authorized(self, req: RecordedRequest) -> bool:
        """May ``req`` be performed? (``req.credential`` is set.) The account key may do everything."""
        return req.credential == "account"

    def unauthorized(self, req: RecordedRequest) -> Response:
        return Response(401, {"error": "unauthorized", "message": "invalid or missing API key"})

    def fault_body(self, status: int, req: RecordedRequest) -> Any:
        return {"error": f"injected fault {status}", "message": f"injected fault {status}"}

    def handle(self, req: RecordedRequest) -> Response:  # pragma: no cover - subclasses
        return Response(404, {"error": "not found"})

    def control(self, req: RecordedRequest) -> Response:
        """A ``/__fake__/...`` test-machinery request (no auth, no faults); none by default."""
        return Response(404, {"error": "not_found", "message": f"no control route {req.method} {req.path}"})

    # -- dispatch ------------------------------------------------------------
    def _dispatch(self, req: RecordedRequest) -> Response:
        response = self._answer(req)
        req.status = None if response.drop else response.status
        return response

    def _answer(self, req: RecordedRequest) -> Response:
        with self._lock:
            if req.path.startswith(self.CONTROL_PREFIX):
                req.route = f"{req.method} {req.path}"
                self.requests.append(req)
                try:
                    return self.control(req)
                except Exception as exc:  # a bug in the fake: say so instead of hanging the client
                    return Response(500, {"error": "fake_server_error", "message": f"{type(exc).__name__}: {exc}"})
            req.route = self.route_key(req)
            req.credential = self.credential(req)
            self.requests.append(req)
            for fault in self._faults:
                if fault.remaining > 0 and (fault.match is None or fault.match in req.route):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    body = fault.body if fault.body is not None else self.fault_body(fault.status, req)
                    return Response(fault.status, body, headers=dict(fault.headers))
            if not self.authorized(req):
                return self.unauthorized(req)
            try:
                response = self.handle(req)
            except Exception as exc:  # a bug in the fake: say so instead of hanging the client
                return Response(500, {"error": "fake_server_error", "message": f"{type(exc).__name__}: {exc}"})
            if self.is_create(req) and response.status < 300 and self._lost_creates:
                how = self._lost_creates.pop(0)
                if how == "drop":
                    return Response(drop=True)
                return Response(500, self.fault_body(500, req))
            return response


def read_chunked(stream) -> bytes:
    """A ``Transfer-Encoding: chunked`` request body, decoded."""
    body = bytearray()
    while True:
        size_line = stream.readline().strip()
        size = int(size_line.split(b";", 1)[0] or b"0", 16)
        if size == 0:
            while stream.readline().strip():  # trailers, then the empty line
                pass
            return bytes(body)
        body += stream.read(size)
        stream.readline()  # the CRLF after each chunk


def _make_handler(fake: FakeAPIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10  # idle keep-alive connections do not pin a thread forever
        server_version = f"{fake.name}/1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raw = read_chunked(self.rfile)  # the hub SDKs stream uploads whose length they cannot tell
            else:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
            req = RecordedRequest(
                method=self.command, path=parts.path, query=parse_qs(parts.query, keep_blank_values=True),
                headers={k: v for k, v in self.headers.items()}, body=body, raw=raw, time=time.time(),
                target=self.path,
            )
            response = fake._dispatch(req)
            if response.drop:
                self.close_connection = True
                return
            if isinstance(response.body, bytes):
                payload = response.body
            else:
                payload = json.dumps(response.body).encode()
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    return Handler

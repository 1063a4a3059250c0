"""A fake RunPod GraphQL API (``POST /graphql``) for the real ``runpod`` SDK.

Point the SDK at it with ``runpod.api_key = fake.api_key`` and env
``RUNPOD_API_BASE_URL=fake.base_url`` (the SDK adds ``/graphql`` and reads the
variable on every call; it never reads ``RUNPOD_API_KEY``).

The SDK inlines every value into the query text, so the fake parses the text:
the operation is the first field after ``query``/``mutation``, and its
``input: {...}`` block is split into fields and the ``env`` list.

Supported: ``gpuTypes`` (with or without ``input: {id}``), ``myself`` (``pods``,
``pubKey``), ``pod(input: {podId})``, ``podFindAndDeployOnDemand``,
``deployCpuPod``, ``podRentInterruptable`` (spot), ``podStop``, ``podResume``,
``podBidResume``, ``podTerminate``, ``updateUserSettings``.

Pods: ``desiredStatus`` ``RUNNING`` from create (``runtime`` is null until the
sshd is up), ``EXITED`` after ``podStop`` or :meth:`preempt`, gone from
``myself.pods`` (and ``pod`` returns null) after ``podTerminate``. The pod's
sshd trusts the ``PUBLIC_KEY`` env entry plus the account key set with
``updateUserSettings``; ``runtime.ports`` has ``{ip: "127.0.0.1",
isIpPublic: true, privatePort: 22, publicPort: <sshd port>, type: "tcp"}``.

Errors follow GraphQL: HTTP 200 with ``{"errors": [{"message": ...}]}`` (the
SDK raises ``runpod.error.QueryError``); a bad or missing key is HTTP 401
(``AuthenticationError``). Injected faults answer with an ``errors`` body too,
so the SDK can parse them.

Pod-scoped keys (the pod's own credential, as RunPod gives every pod): each pod gets
its own key at create (``rpa_pod_<random>``, :meth:`FakeRunPod.pod_key`), and every ssh
session on the pod has ``RUNPOD_POD_ID=<pod id>`` and ``RUNPOD_API_KEY=<that key>`` in
its environment (``runpodctl stop pod $RUNPOD_POD_ID``). That key is accepted only for
``podStop`` and ``podTerminate`` of that pod; anything else with it (listing, another
pod, resume, ...) is 401. It dies with the pod (terminate). The account key works for
everything. A key is read from ``Authorization: Bearer <key>`` (this SDK) or, failing
that, ``?api_key=<key>`` (older SDKs, runpodctl). ``req.credential`` is ``"account"``,
``"pod:<id>"`` or None. A stop/terminate with the pod key is answered first; the pod's
machine goes down ``self_stop_delay`` seconds later (the status changes at once).
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime, timezone
from typing import Any

from . import FakeAPIServer, RecordedRequest, Response

NO_CAPACITY = ("There are no longer any instances available with the requested specifications. "
               "Please refresh and try again.")

DEFAULT_GPU_TYPES: list[dict[str, Any]] = [
    {"id": "NVIDIA GeForce RTX 4090", "displayName": "RTX 4090", "memoryInGb": 24, "manufacturer": "Nvidia",
     "cudaCores": 16384, "maxGpuCount": 8, "securePrice": 0.69, "communityPrice": 0.34,
     "secureSpotPrice": 0.35, "communitySpotPrice": 0.20, "minimumBidPrice": 0.20},
    {"id": "NVIDIA RTX A4000", "displayName": "RTX A4000", "memoryInGb": 16, "manufacturer": "Nvidia",
     "cudaCores": 6144, "maxGpuCount": 8, "securePrice": 0.32, "communityPrice": 0.17,
     "secureSpotPrice": 0.16, "communitySpotPrice": 0.10, "minimumBidPrice": 0.10},
    {"id": "NVIDIA A100 80GB PCIe", "displayName": "A100 PCIe", "memoryInGb": 80, "manufacturer": "Nvidia",
     "cudaCores": 6912, "maxGpuCount": 8, "securePrice": 1.64, "communityPrice": 1.19,
     "secureSpotPrice": 0.82, "communitySpotPrice": 0.60, "minimumBidPrice": 0.60},
    {"id": "NVIDIA H100 80GB HBM3", "displayName": "H100 SXM", "memoryInGb": 80, "manufacturer": "Nvidia",
     "cudaCores": 16896, "maxGpuCount": 8, "securePrice": 2.99, "communityPrice": 2.69,
     "secureSpotPrice": 1.75, "communitySpotPrice": 1.50, "minimumBidPrice": 1.50},
]

CPU_POD_PRICE = 0.06


# -- query text parsing --------------------------------------------------------
def operation(query: str) -> str | None:
    match = re.search(r"(?:mutation|query)\s*\w*\s*\{\s*(\w+)", query)
    return match.group(1) if match else None


def _balanced(text: str, start: int) -> int:
    """Index just past the ``}`` closing the ``{`` at ``start`` (quotes respected)."""
    depth = 0
    in_string = False
    i = start
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced braces in query")


def _scalar(raw: str) -> Any:
    if raw.startswith('"'):
        return raw[1:-1]
    if raw == "true":
        return True
    if raw == "false":
        return False
    if raw == "null":
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw  # an enum such as SECURE


def operation_input(query: str, op: str) -> tuple[dict[str, Any], dict[str, str]]:
    """``(fields, env)`` from the ``input: {...}`` argument of ``op`` (empty when it has none)."""
    head = re.search(r"(?:mutation|query)\s*\w*\s*\{\s*" + re.escape(op) + r"\s*\(\s*input\s*:\s*", query)
    if not head or head.end() >= len(query) or query[head.end()] != "{":
        return {}, {}
    start = head.end()
    body = query[start + 1:_balanced(query, start) - 1]
    env = dict(re.findall(r'\{\s*key:\s*"([^"]*)",\s*value:\s*"([^"]*)"\s*\}', body))
    body = re.sub(r"env:\s*\[.*?\]", "", body, flags=re.S)
    body = re.sub(r"\w+:\s*\[[^\]]*\]", "", body, flags=re.S)  # other lists (allowedCudaVersions)
    fields = {k: _scalar(v) for k, v in re.findall(r'(\w+):\s*("[^"]*"|[\w.\-]+)', body)}
    return fields, env


class FakeRunPod(FakeAPIServer):
    """``FakeRunPod(pool, api_key="rp-test-key", gpu_types=None)``.

    Extra knobs: ``unavailable_gpus`` (a set of gpuTypeIds whose create fails
    with RunPod's no-capacity error), ``preempt(pod_id)`` (a spot pod loses
    its host: EXITED, sshd stopped), ``account_pub_key``.
    """

    name = "runpod"
    CREATE_OPS = ("podFindAndDeployOnDemand", "deployCpuPod", "podRentInterruptable")

    def __init__(self, pool, *, api_key: str = "rp-test-key", gpu_types: list[dict[str, Any]] | None = None):
        super().__init__(pool, api_key=api_key)
        self.gpu_types = [dict(g) for g in (gpu_types or DEFAULT_GPU_TYPES)]
        self.pods: dict[str, dict[str, Any]] = {}
        self.unavailable_gpus: set[str] = set()
        self.account_pub_key = ""
        self.pod_keys: dict[str, str] = {}  # pod id -> its pod-scoped API key (gone once terminated)
        self._next = 0
        self._request: RecordedRequest | None = None  # the request being handled (under the lock)

    def pod_key(self, pod_id: str) -> str | None:
        """The pod-scoped API key of ``pod_id`` (what its sessions see as ``RUNPOD_API_KEY``)."""
        with self._lock:
            return self.pod_keys.get(str(pod_id))

    # -- hooks ---------------------------------------------------------------
    def route_key(self, req: RecordedRequest) -> str:
        op = None
        if isinstance(req.body, dict) and isinstance(req.body.get("query"), str):
            op = operation(req.body["query"])
        return f"{req.method} {req.path} {op or '-'}"

    def is_create(self, req: RecordedRequest) -> bool:
        return req.route.rsplit(" ", 1)[-1] in self.CREATE_OPS

    def unauthorized(self, req: RecordedRequest) -> Response:
        return Response(401, {"errors": [{"message": "Unauthorized"}]})

    SELF_OPS = ("podStop", "podTerminate")  # all a pod-scoped key may do, to its own pod

    def presented_key(self, req: RecordedRequest) -> str | None:
        key = super().presented_key(req)
        if key is None and req.query.get("api_key"):
            key = req.query["api_key"][0]
        return key

    def credential(self, req: RecordedRequest) -> str | None:
        key = self.presented_key(req)
        if key is not None and key == self.api_key:
            return "account"
        for pod_id, pod_key in self.pod_keys.items():
            if key is not None and key == pod_key:
                return f"pod:{pod_id}"
        return None

    def authorized(self, req: RecordedRequest) -> bool:
        if req.credential == "account":
            return True
        if not (req.credential or "").startswith("pod:"):
            return False
        query = req.body.get("query") if isinstance(req.body, dict) else None
        op = operation(query) if isinstance(query, str) else None
        if req.path.rstrip("/") != "/graphql" or req.method != "POST" or op not in self.SELF_OPS:
            return False
        fields, _ = operation_input(query, op)
        return str(fields.get("podId")) == req.credential.split(":", 1)[1]

    def fault_body(self, status: int, req: RecordedRequest) -> Any:
        return {"errors": [{"message": f"injected fault: HTTP {status}"}]}

    # -- dispatch ------------------------------------------------------------
    def handle(self, req: RecordedRequest) -> Response:
        if req.path.rstrip("/") != "/graphql" or req.method != "POST":
            return Response(404, {"errors": [{"message": f"no route {req.method} {req.path}"}]})
        query = req.body.get("query") if isinstance(req.body, dict) else None
        if not isinstance(query, str):
            return _error("Must provide query string.", status=400)
        op = operation(query)
        method = getattr(self, f"_op_{op}", None)
        if method is None:
            return _error(f'Cannot query field "{op}" on type "Query".', status=400)
        fields, env = operation_input(query, op)
        self._request = req
        try:
            return method(fields, env, query)
        finally:
            self._request = None

    def _by_pod_key(self) -> bool:
        """Does the request being handled carry a pod-scoped key (a pod stopping itself)?"""
        return self._request is not None and (self._request.credential or "").startswith("pod:")

    # -- catalogue -----------------------------------------------------------
    def _gpu(self, gpu_id: str) -> dict[str, Any] | None:
        return next((g for g in self.gpu_types if g["id"] == gpu_id), None)

    def _gpu_view(self, gpu: dict[str, Any], count: int) -> dict[str, Any]:
        view = {k: v for k, v in gpu.items() if k != "minimumBidPrice"}
        view.update({"secureCloud": True, "communityCloud": True, "oneWeekPrice": gpu["securePrice"] * 0.95,
                     "oneMonthPrice": gpu["securePrice"] * 0.9, "threeMonthPrice": gpu["securePrice"] * 0.85,
                     "lowestPrice": {"minimumBidPrice": gpu["minimumBidPrice"],
                                     "uninterruptablePrice": gpu["communityPrice"],
                                     "gpuCount": count}})
        return view

    def _op_gpuTypes(self, fields, env, query) -> Response:
        count_match = re.search(r"lowestPrice\s*\(\s*input\s*:\s*\{\s*gpuCount\s*:\s*(\d+)", query)
        count = int(count_match.group(1)) if count_match else 1
        wanted = fields.get("id")
        gpus = [g for g in self.gpu_types if wanted is None or g["id"] == wanted]
        return _data("gpuTypes", [self._gpu_view(g, count) for g in gpus])

    # -- pods: reads ---------------------------------------------------------
    def _view(self, pod: dict[str, Any]) -> dict[str, Any]:
        machine = self.machines.get(pod["id"])
        view = dict(pod)
        view["env"] = [f"{k}={v}" for k, v in pod["env"].items()]
        view["runtime"] = None
        if machine is not None and pod["desiredStatus"] == "RUNNING" and self._is_up(machine):
            port = machine.endpoint.port  # type: ignore[union-attr]
            view["runtime"] = {
                "uptimeInSeconds": int(time.monotonic() - machine.ready_at),
                "ports": [{"ip": "127.0.0.1", "isIpPublic": True, "privatePort": 22,
                           "publicPort": port, "type": "tcp"}],
                "gpus": [{"id": f"GPU-{pod['id']}-{i}", "gpuUtilPercent": 0, "memoryUtilPercent": 0}
                         for i in range(pod["gpuCount"])],
            }
            view["uptimeSeconds"] = view["runtime"]["uptimeInSeconds"]
        return view

    def _op_myself(self, fields, env, query) -> Response:
        return _data("myself", {"id": "fake-user", "pubKey": self.account_pub_key,
                                "pods": [self._view(p) for p in self.pods.values()]})

    def _op_pod(self, fields, env, query) -> Response:
        pod = self.pods.get(str(fields.get("podId")))
        return _data("pod", self._view(pod) if pod else None)

    # -- pods: create --------------------------------------------------------
    def _create(self, fields: dict[str, Any], env: dict[str, str], *, gpu_id: str | None,
                interruptible: bool) -> dict[str, Any] | Response:
        count = int(fields.get("gpuCount") or (1 if gpu_id else 0))
        cloud = str(fields.get("cloudType") or "ALL")
        if gpu_id is not None:
            gpu = self._gpu(gpu_id)
            if gpu is None:
                return _error(f"GPU type {gpu_id!r} not found")
            if gpu_id in self.unavailable_gpus:
                return _error(NO_CAPACITY)
            if interruptible:
                bid = float(fields.get("bidPerGpu") or 0)
                if bid < gpu["minimumBidPrice"]:
                    return _error(f"Your bid price ({bid}) is below the minimum bid price "
                                  f"({gpu['minimumBidPrice']}) for this GPU.")
                cost = round(bid * count, 4)
            else:
                rate = gpu["securePrice"] if cloud == "SECURE" else gpu["communityPrice"]
                cost = round(rate * count, 4)
            display = gpu["displayName"]
        else:
            cost, display = CPU_POD_PRICE, None
        ports = str(fields.get("ports") or "")
        self._next += 1
        pod_id = f"fakepod{self._next:07d}"
        now = datetime.now(timezone.utc)
        pod = {
            "id": pod_id,
            "name": fields.get("name") or pod_id,
            "imageName": fields.get("imageName") or "runpod/base:0.0.0",
            "env": dict(env),
            "machineId": f"m{self._next:05d}",
            "machine": {"podHostId": f"{pod_id}-64410f2b", "gpuDisplayName": display},
            "containerDiskInGb": fields.get("containerDiskInGb", 10),
            "volumeInGb": fields.get("volumeInGb", 0),
            "volumeMountPath": fields.get("volumeMountPath", "/workspace"),
            "costPerHr": cost,
            "desiredStatus": "RUNNING",
            "dockerArgs": fields.get("dockerArgs", ""),
            "dockerId": None,
            "gpuCount": count,
            "vcpuCount": max(int(fields.get("minVcpuCount") or 1), 4 * max(count, 1)),
            "memoryInGb": max(int(fields.get("minMemoryInGb") or 1), 31 * max(count, 1)),
            "lastStatusChange": f"Rented by User: {now.strftime('%a %b %d %Y %H:%M:%S')} GMT+0000",
            "podType": "INTERRUPTABLE" if interruptible else "RESERVED",
            "cloudType": cloud,
            "bidPerGpu": fields.get("bidPerGpu"),
            "port": None,
            "ports": ports,
            "uptimeSeconds": 0,
            "templateId": fields.get("templateId"),
        }
        self.pods[pod_id] = pod
        self.pod_keys[pod_id] = f"rpa_pod_{secrets.token_hex(16).upper()}"
        keys = [env.get("PUBLIC_KEY", "")] + self.account_pub_key.splitlines()
        machine = self._new_machine(pod_id, keys)
        machine.env = {"RUNPOD_POD_ID": pod_id, "RUNPOD_API_KEY": self.pod_keys[pod_id]}
        if "22/tcp" not in ports.split(",") or fields.get("supportPublicIp") is False:
            machine.never_ready = True  # a real pod then has no public ssh port
        return {"id": pod_id, "imageName": pod["imageName"], "env": self._view(pod)["env"],
                "machineId": pod["machineId"], "machine": {"podHostId": pod["machine"]["podHostId"]},
                "desiredStatus": "RUNNING", "costPerHr": cost, "name": pod["name"]}

    def _op_podFindAndDeployOnDemand(self, fields, env, query) -> Response:
        result = self._create(fields, env, gpu_id=str(fields.get("gpuTypeId")), interruptible=False)
        return result if isinstance(result, Response) else _data("podFindAndDeployOnDemand", result)

    def _op_deployCpuPod(self, fields, env, query) -> Response:
        result = self._create(fields, env, gpu_id=None, interruptible=False)
        return result if isinstance(result, Response) else _data("deployCpuPod", result)

    def _op_podRentInterruptable(self, fields, env, query) -> Response:
        result = self._create(fields, env, gpu_id=str(fields.get("gpuTypeId")), interruptible=True)
        return result if isinstance(result, Response) else _data("podRentInterruptable", result)

    # -- pods: power ---------------------------------------------------------
    def _pod_or_error(self, fields) -> tuple[dict[str, Any] | None, Response | None]:
        pod = self.pods.get(str(fields.get("podId")))
        if pod is None:
            return None, _error(f"Pod {fields.get('podId')} not found")
        return pod, None

    def _op_podStop(self, fields, env, query) -> Response:
        pod, error = self._pod_or_error(fields)
        if error:
            return error
        pod["desiredStatus"] = "EXITED"
        machine = self.machines[pod["id"]]
        if self._by_pod_key():
            def power_off() -> None:  # unless it was resumed meanwhile
                if pod["desiredStatus"] == "EXITED" and self.pods.get(pod["id"]) is pod:
                    self._power_off(machine)

            self._later(("stop", pod["id"]), power_off)
        else:
            self.cancel_pending(("stop", pod["id"]))
            self._power_off(machine)
        return _data("podStop", {"id": pod["id"], "desiredStatus": "EXITED"})

    def _resume(self, fields, op: str) -> Response:
        pod, error = self._pod_or_error(fields)
        if error:
            return error
        if op == "podBidResume" and fields.get("bidPerGpu") is not None:
            pod["bidPerGpu"] = fields["bidPerGpu"]
            pod["costPerHr"] = round(float(fields["bidPerGpu"]) * pod["gpuCount"], 4)
        if pod["desiredStatus"] != "RUNNING":
            pod["desiredStatus"] = "RUNNING"
            self.cancel_pending(("stop", pod["id"]))  # a self-stop still in flight is overtaken
            self._power_on(self.machines[pod["id"]])
        view = self._view(pod)
        return _data(op, {k: view[k] for k in ("id", "desiredStatus", "imageName", "env", "machineId",
                                                "machine", "costPerHr")})

    def _op_podResume(self, fields, env, query) -> Response:
        return self._resume(fields, "podResume")

    def _op_podBidResume(self, fields, env, query) -> Response:
        return self._resume(fields, "podBidResume")

    def _op_podTerminate(self, fields, env, query) -> Response:
        pod, error = self._pod_or_error(fields)
        if error:
            return error
        del self.pods[pod["id"]]
        self.pod_keys.pop(pod["id"], None)  # the pod's key dies with it
        self.cancel_pending(("stop", pod["id"]))
        machine = self.machines[pod["id"]]
        if self._by_pod_key():
            self._later(("terminate", pod["id"]), lambda: self._destroy(machine))
        else:
            self._destroy(machine)
        return _data("podTerminate", None)

    def _op_updateUserSettings(self, fields, env, query) -> Response:
        if "pubKey" in fields:
            self.account_pub_key = str(fields["pubKey"]).replace("\\n", "\n").strip()
        return _data("updateUserSettings", {"id": "fake-user", "pubKey": self.account_pub_key})

    # -- test helpers ----------------------------------------------------------
    def preempt(self, pod_id: str) -> None:
        """A spot pod is outbid: it exits (the sshd stops) and stays listed as EXITED."""
        with self._lock:
            pod = self.pods[pod_id]
            pod["desiredStatus"] = "EXITED"
            self._power_off(self.machines[pod_id])


def _data(op: str, value: Any) -> Response:
    return Response(200, {"data": {op: value}})


def _error(message: str, status: int = 200) -> Response:
    return Response(status, {"errors": [{"message": message}], "data": None})

"""A fake Thunder Compute REST API (the ``/v1`` API of the Go CLI, plus tnr's unversioned paths).

Every route is accepted with or without the ``/v1`` prefix (``path.removeprefix("/v1")``),
except the legacy ``/instances/{id}/up`` and ``/down`` of tnr 1.7, which exist only
unversioned (pause/resume is not part of ``/v1``).

- ``POST /instances/create`` ``{"cpu_cores","gpu_type","template","num_gpus","disk_size_gb","mode",
  "public_key"?}`` -> ``{"uuid","key","identifier"}``. With ``public_key`` the sshd trusts it and
  ``key`` is null; without, a new key pair is made and ``key`` is its private key (once).
  Organisation keys (``POST /keys/add``) are trusted too.
- ``GET /instances/list`` -> ``{"<id>": {...}}`` keyed by string id; ``numGpus``, ``cpuCores`` and
  ``memory`` are strings; ``status`` ``PROVISIONING`` -> ``STARTING`` -> ``RUNNING``; ``ip``
  "127.0.0.1" and ``port`` (the sshd) once running, ``ip`` null and ``port`` 0 before.
- ``POST /instances/{id}/delete``, ``/add_key`` (``{"public_key"}``), ``/modify``.
- ``GET /pricing``, ``/thunder-templates``, ``/specs``; ``GET /keys/list``, ``POST /keys/add``.

Errors are ``{"message": ...}`` with a 4xx/5xx status (what the Go CLI reads); a bad or
missing token is 401. The ssh user is the sshd's user (``getpass.getuser()``), not ubuntu.

Thunder gives an instance no credential of its own (its API has no self-stop path beyond
the account token), so ``req.credential`` is only ever ``"account"`` or None.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import FakeAPIServer, RecordedRequest, Response

GPU_RATES = {  # per GPU-hour: (prototyping, production)
    "t4": (0.27, 0.52),
    "a6000": (0.27, 0.57),
    "a100xl": (0.78, 1.79),
    "h100": (1.47, 2.49),
}
ADDITIONAL_VCPU = 0.0015  # per extra vCPU-hour
DISK_GB = 0.00013  # per GB-hour over 100 GB
EPHEMERAL_DISK_GB = 0.00005

DEFAULT_TEMPLATES = {
    "base": {"displayName": "Ubuntu", "automountFolders": [], "cleanupCommands": [], "openPorts": [],
             "startupCommands": [], "default": True},
    "ollama": {"displayName": "Ollama", "automountFolders": [], "cleanupCommands": [], "openPorts": [11434],
               "startupCommands": ["ollama serve"]},
}


def pricing_table() -> dict[str, float]:
    table: dict[str, float] = {}
    for gpu, (proto, prod) in GPU_RATES.items():
        for n in (1, 2, 4, 8):
            table[f"{gpu}_x{n}_prototyping"] = round(proto * n, 4)
            table[f"{gpu}_x{n}_production"] = round(prod * n, 4)
    table.update({"additional_vcpus": ADDITIONAL_VCPU, "disk_gb": DISK_GB, "ephemeral_disk_gb": EPHEMERAL_DISK_GB})
    return table


class FakeThunder(FakeAPIServer):
    """``FakeThunder(pool, api_key="tnr-test-token")``; knobs as in :mod:`tests.fakes`."""

    name = "thunder"

    def __init__(self, pool, *, api_key: str = "tnr-test-token"):
        super().__init__(pool, api_key=api_key)
        self.pricing = pricing_table()
        self.templates = {k: dict(v) for k, v in DEFAULT_TEMPLATES.items()}
        self.instances: dict[str, dict[str, Any]] = {}
        self.org_keys: list[dict[str, Any]] = []
        self._next = 0

    # -- hooks ---------------------------------------------------------------
    def route_key(self, req: RecordedRequest) -> str:
        return f"{req.method} {req.path.removeprefix('/v1')}"

    def is_create(self, req: RecordedRequest) -> bool:
        return req.method == "POST" and req.path.removeprefix("/v1").rstrip("/") == "/instances/create"

    def unauthorized(self, req: RecordedRequest) -> Response:
        return Response(401, {"message": "Unauthorized", "code": "UNAUTHORIZED"})

    def fault_body(self, status: int, req: RecordedRequest) -> Any:
        return {"message": f"injected fault: HTTP {status}"}

    # -- dispatch ------------------------------------------------------------
    def handle(self, req: RecordedRequest) -> Response:
        versioned = req.path.startswith("/v1/")
        path = req.path.removeprefix("/v1").rstrip("/") or "/"
        body = req.body if isinstance(req.body, dict) else {}
        m = req.method
        if m == "POST" and path == "/instances/create":
            return self._create(body)
        if m == "GET" and path == "/instances/list":
            return Response(200, {k: self._view(v) for k, v in self.instances.items()})
        if m == "GET" and path == "/pricing":
            return Response(200, {"pricing": dict(self.pricing)})
        if m == "GET" and path == "/thunder-templates":
            return Response(200, self.templates)
        if m == "GET" and path == "/specs":
            return Response(200, {"specs": self._specs()})
        if m == "GET" and path == "/keys/list":
            return Response(200, self.org_keys)
        if m == "POST" and path == "/keys/add":
            return self._org_key(body)
        if m == "POST" and (g := re.fullmatch(r"/instances/([^/]+)/(delete|add_key|modify|up|down)", path)):
            iid, action = g.groups()
            if action in ("up", "down") and versioned:
                return Response(404, {"message": "Not Found"})
            inst = self.instances.get(iid)
            if inst is None:
                return Response(404, {"message": f"instance {iid} not found"})
            return getattr(self, f"_action_{action}")(inst, body)
        return Response(404, {"message": "Not Found"})

    # -- instances -----------------------------------------------------------
    def _create(self, body: dict[str, Any]) -> Response:
        gpu = str(body.get("gpu_type") or "").lower()
        mode = str(body.get("mode") or "prototyping")
        num = int(body.get("num_gpus") or 1)
        if f"{gpu}_x{num}_{mode}" not in self.pricing:
            return Response(400, {"message": f"invalid configuration: gpu_type={gpu!r} num_gpus={num} mode={mode!r}"})
        template = str(body.get("template") or "base")
        if template not in self.templates:
            return Response(400, {"message": f"unknown template {template!r}"})
        public_key = str(body.get("public_key") or "").strip()
        private_key = None
        if not public_key:
            public_key, private_key = _new_key_pair()
        identifier = self._next
        self._next += 1
        iid = str(identifier)
        cores = int(body.get("cpu_cores") or 4)
        inst = {
            "id": iid, "uuid": str(uuid.uuid4()), "name": f"tnr-{identifier}", "gpuType": gpu,
            "numGpus": str(num), "cpuCores": str(cores), "memory": str(cores * 8),
            "storage": int(body.get("disk_size_gb") or 100), "mode": mode, "template": template,
            "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "httpPorts": [], "sshPublicKeys": [public_key], "k8s": True, "promoted": False,
            "ephemeralDiskGb": int(body.get("ephemeral_disk_gb") or 0),
        }
        self.instances[iid] = inst
        self._new_machine(iid, [public_key] + [k["public_key"] for k in self.org_keys])
        return Response(200, {"uuid": inst["uuid"], "key": private_key, "identifier": identifier})

    def _view(self, inst: dict[str, Any]) -> dict[str, Any]:
        view = dict(inst)
        machine = self.machines[inst["id"]]
        phase = self._phase(machine)
        if inst.get("_modifying_until", 0) > time.monotonic():
            phase = "modifying"
        view.pop("_modifying_until", None)
        view["status"] = {"off": "STOPPED", "early": "PROVISIONING", "late": "STARTING", "up": "RUNNING",
                          "modifying": "MODIFYING"}[phase]
        view["ip"] = None
        view["port"] = 0
        if phase in ("up", "modifying") and machine.endpoint is not None and machine.endpoint.port:
            view["ip"] = "127.0.0.1"
            view["port"] = machine.endpoint.port
        view["sshPublicKeys"] = list(machine.keys)
        return view

    def _action_delete(self, inst: dict[str, Any], body: dict[str, Any]) -> Response:
        del self.instances[inst["id"]]
        self._destroy(self.machines[inst["id"]])
        return Response(200, {"message": "Instance deleted successfully", "success": True})

    def _action_add_key(self, inst: dict[str, Any], body: dict[str, Any]) -> Response:
        public_key = str(body.get("public_key") or "").strip()
        private_key = None
        if not public_key:
            public_key, private_key = _new_key_pair()
        self._add_key(self.machines[inst["id"]], public_key)
        response = {"success": True, "uuid": inst["uuid"], "message": "key added"}
        if private_key is not None:
            response["key"] = private_key
        return Response(200, response)

    def _action_modify(self, inst: dict[str, Any], body: dict[str, Any]) -> Response:
        machine = self.machines[inst["id"]]
        if self._phase(machine) != "up":
            return Response(409, {"message": "instance must be RUNNING to be modified"})
        if body.get("gpu_type") is not None:
            inst["gpuType"] = str(body["gpu_type"]).lower()
        if body.get("num_gpus") is not None:
            inst["numGpus"] = str(int(body["num_gpus"]))
        if body.get("cpu_cores") is not None:
            inst["cpuCores"] = str(int(body["cpu_cores"]))
            inst["memory"] = str(int(body["cpu_cores"]) * 8)
        if body.get("disk_size_gb") is not None:
            inst["storage"] = int(body["disk_size_gb"])
        if body.get("mode") is not None:
            inst["mode"] = str(body["mode"])
        ports = set(inst["httpPorts"])
        ports |= {int(p) for p in body.get("add_ports") or []}
        ports -= {int(p) for p in body.get("remove_ports") or []}
        inst["httpPorts"] = sorted(ports)
        if any(body.get(k) is not None for k in ("gpu_type", "num_gpus", "cpu_cores", "disk_size_gb", "mode")):
            inst["_modifying_until"] = time.monotonic() + self.delay_until_ready
        return Response(200, {"identifier": inst["id"], "instance_name": inst["name"], "mode": inst["mode"],
                              "gpu_type": inst["gpuType"], "num_gpus": int(inst["numGpus"]),
                              "http_ports": inst["httpPorts"]})

    def _action_up(self, inst: dict[str, Any], body: dict[str, Any]) -> Response:
        machine = self.machines[inst["id"]]
        if not machine.powered:
            self._power_on(machine)
        return Response(200, {"success": True})

    def _action_down(self, inst: dict[str, Any], body: dict[str, Any]) -> Response:
        self._power_off(self.machines[inst["id"]])
        return Response(200, {"success": True})

    # -- catalogue and org keys ------------------------------------------------
    def _specs(self) -> dict[str, Any]:
        specs = {}
        for key in self.pricing:
            g = re.fullmatch(r"(\w+?)_x(\d+)_(prototyping|production)", key)
            if g:
                gpu, n, mode = g.group(1), int(g.group(2)), g.group(3)
                specs[key] = {"displayName": gpu.upper(), "vramGB": 80 if gpu in ("a100xl", "h100") else 48,
                              "gpuCount": n, "mode": mode, "vcpuOptions": [4 * n, 8 * n],
                              "ramPerVCPUGiB": 8, "storageGB": {"min": 100, "max": 1000}}
        return specs

    def _org_key(self, body: dict[str, Any]) -> Response:
        public_key = str(body.get("public_key") or "").strip()
        if not public_key.startswith(("ssh-", "ecdsa-")):
            return Response(400, {"message": "invalid public key"})
        entry = {"id": str(uuid.uuid4()), "name": body.get("name") or "key", "public_key": public_key,
                 "fingerprint": "", "key_type": public_key.split()[0], "created_at": int(time.time())}
        self.org_keys.append(entry)
        return Response(200, {"key": entry, "message": "SSH key added"})


def _new_key_pair() -> tuple[str, str]:
    """(public line, private PEM) from ssh-keygen, as Thunder hands out when no key is given."""
    with tempfile.TemporaryDirectory(prefix="fkk", dir="/tmp") as tmp:
        path = Path(tmp) / "k"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "thunder", "-f", str(path)],
                       check=True, stdin=subprocess.DEVNULL)
        return path.with_suffix(".pub").read_text().strip(), path.read_text()

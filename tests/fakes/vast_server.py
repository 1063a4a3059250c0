"""A fake vast.ai REST API for the real ``vastai`` SDK (``from vastai import VastAI``).

Point the SDK at it with ``VastAI(api_key=fake.api_key, server_url=fake.base_url, retry=1)``
(``retry=1``: the default of 3 retries 429/5xx with sleeps).

Routes (``/api/v0`` unless noted; trailing slashes optional):

- ``POST /bundles/``: offer search with the SDK's filter body (``{"field": {"eq"|"neq"|"gt"|"gte"|
  "lt"|"lte"|"in"|"notin": value}}``, numbers may arrive as strings, ``order``, ``type``
  ``"on-demand"``/``"bid"``, ``limit``). Rented offers drop out until the instance is destroyed.
- ``PUT /asks/{offer}/``: create (``label``, ``env``, ``image``, ``disk``, ``onstart``, ``runtype``;
  ``price`` set = interruptible bid) -> ``{"success": true, "new_contract": <id>}``.
- ``GET /api/v1/instances/`` (``select_filters``, ``order_by``, ``limit``, ``after_token`` ->
  ``next_token``), legacy ``GET /instances/``.
- ``GET /instances/{id}/`` -> ``{"instances": {...}}`` or ``{"instances": null}``.
- ``PUT /instances/{id}/`` with ``{"state": "stopped"|"running"}`` or ``{"label": ...}``;
  ``DELETE /instances/{id}/``; ``PUT /instances/bid_price/{id}/``.
- ``POST /instances/{id}/ssh/`` (attach a key to that instance's sshd), ``POST /ssh/`` and
  ``GET /ssh/`` (account keys: put into every instance created afterwards).

Rows carry a numeric ``start_date`` and a list ``extra_env`` (the SDK needs both).
``actual_status``: ``null`` -> ``"loading"`` -> ``"running"`` (first/second half of the ready
delay), ``"stopped"`` after stop. Only when running does a row show its ssh: the direct
``public_ipaddr`` "127.0.0.1" + ``ports["22/tcp"][0]["HostPort"]`` and the "proxy"
``ssh_host``/``ssh_port``, which here are the same sshd. User: the sshd's user
(``getpass.getuser()``), not root.

Container keys (an instance's own credential): each instance gets a key of its own at
create (:meth:`FakeVast.container_key`), and every ssh session on it has
``CONTAINER_ID=<instance id>`` and ``CONTAINER_API_KEY=<that key>`` in its environment.
That key is accepted only for ``PUT /api/v0/instances/<its id>/`` with body exactly
``{"state": "stopped"}`` (stop) and ``DELETE /api/v0/instances/<its id>/`` (destroy);
anything else with it is 401. It dies with the instance. The account key works for
everything. A key is read from ``Authorization: Bearer <key>`` (the SDK) or, failing that,
``?api_key=<key>``. ``req.credential`` is ``"account"``, ``"container:<id>"`` or None. A
stop/destroy with the container key is answered first; the machine goes down
``self_stop_delay`` seconds later (the instance's status changes at once).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from typing import Any

from . import FakeAPIServer, RecordedRequest, Response

_OFFER_DEFAULTS: dict[str, Any] = {
    "verified": True, "rentable": True, "rented": False, "external": False, "hosting_type": 0,
    "cpu_cores": 16, "cpu_cores_effective": 8.0, "cpu_ram": 64000, "disk_space": 500.0,
    "inet_up": 800.0, "inet_down": 900.0, "cuda_max_good": 12.4, "driver_version": "550.54.14",
    "direct_port_count": 20, "static_ip": True, "public_ipaddr": "127.0.0.1", "storage_cost": 0.15,
    "disk_bw": 2000.0, "pcie_bw": 25.0, "compute_cap": 890, "total_flops": 82.0, "dlperf": 60.0,
}

DEFAULT_OFFERS: list[dict[str, Any]] = [
    {"gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.35, "min_bid": 0.18,
     "reliability": 0.995, "geolocation": "Texas, US"},
    {"gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.42, "min_bid": 0.21,
     "reliability": 0.999, "geolocation": "Quebec, CA"},
    {"gpu_name": "RTX 4090", "num_gpus": 1, "gpu_ram": 24564, "dph_total": 0.31, "min_bid": 0.15,
     "reliability": 0.97, "geolocation": "Oregon, US", "verified": False},
    {"gpu_name": "RTX 4090", "num_gpus": 2, "gpu_ram": 24564, "dph_total": 0.70, "min_bid": 0.36,
     "reliability": 0.996, "geolocation": "Texas, US"},
    {"gpu_name": "RTX 3090", "num_gpus": 1, "gpu_ram": 24576, "dph_total": 0.20, "min_bid": 0.09,
     "reliability": 0.992, "geolocation": "Ohio, US"},
    {"gpu_name": "A100 SXM4", "num_gpus": 1, "gpu_ram": 81920, "dph_total": 1.10, "min_bid": 0.62,
     "reliability": 0.998, "geolocation": "Netherlands, NL"},
    {"gpu_name": "H100 SXM", "num_gpus": 1, "gpu_ram": 81559, "dph_total": 2.20, "min_bid": 1.35,
     "reliability": 0.999, "geolocation": "Virginia, US"},
    {"gpu_name": "H100 SXM", "num_gpus": 8, "gpu_ram": 81559, "dph_total": 17.60, "min_bid": 10.8,
     "reliability": 0.999, "geolocation": "Virginia, US"},
]

_META_KEYS = {"order", "type", "limit", "allocated_storage", "disable_bundling", "show_incompatible"}


def _coerce(value: Any, like: Any) -> Any:
    if isinstance(like, bool):
        return value in (True, 1, "true", "True", "1")
    if isinstance(like, (int, float)):
        try:
            return float(value)
        except (TypeError, ValueError):
            return value
    return value if isinstance(value, (list, tuple)) else ("" if value is None else str(value))


def _matches(row: dict[str, Any], query: dict[str, Any]) -> bool:
    """vast's filter semantics, leniently: a filter on a field the row lacks is ignored."""
    for key, cond in query.items():
        if key in _META_KEYS or not isinstance(cond, dict) or key not in row:
            continue
        actual = row[key]
        for op, want in cond.items():
            if op in ("in", "notin"):
                options = want if isinstance(want, (list, tuple)) else [want]
                found = any(_coerce(o, actual) == actual or
                            (isinstance(actual, str) and actual.endswith(", " + str(o))) for o in options)
                if found != (op == "in"):
                    return False
                continue
            if want is None:
                ok = actual is None if op == "eq" else actual is not None
                if not ok:
                    return False
                continue
            if actual is None:
                return False
            want = _coerce(want, actual)
            try:
                ok = {"eq": actual == want, "neq": actual != want, "gt": actual > want, "gte": actual >= want,
                      "lt": actual < want, "lte": actual <= want}[op]
            except (KeyError, TypeError):
                ok = True  # an operator or comparison the fake does not model: do not filter on it
            if not ok:
                return False
    return True


def _sort(rows: list[dict[str, Any]], order: Any) -> list[dict[str, Any]]:
    if not order:
        return rows
    for entry in reversed(order):
        if isinstance(entry, dict):
            col, direction = entry.get("col"), entry.get("dir", "asc")
        else:
            col, direction = entry[0], (entry[1] if len(entry) > 1 else "asc")
        rows = sorted(rows, key=lambda r: (r.get(col) is None, r.get(col) if r.get(col) is not None else 0),
                      reverse=str(direction).lower() == "desc")
    return rows


def _loads(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


class FakeVast(FakeAPIServer):
    """``FakeVast(pool, api_key="vast-test-key", offers=None)``.

    Extra knobs: ``outbid(instance_id)`` (an interruptible instance is stopped by a higher bid),
    ``account_keys`` (list of public keys from ``POST /ssh/``).
    """

    name = "vast"

    def __init__(self, pool, *, api_key: str = "vast-test-key", offers: list[dict[str, Any]] | None = None):
        super().__init__(pool, api_key=api_key)
        self.offers: dict[int, dict[str, Any]] = {}
        for i, spec in enumerate(offers or DEFAULT_OFFERS):
            offer_id = 50001 + i
            offer = {**_OFFER_DEFAULTS, **spec}
            offer.setdefault("id", offer_id)
            offer.setdefault("ask_contract_id", offer["id"])
            offer.setdefault("bundle_id", offer["id"])
            offer.setdefault("machine_id", 9001 + i)
            offer.setdefault("host_id", 7001 + i)
            offer.setdefault("gpu_total_ram", offer["gpu_ram"] * offer["num_gpus"])
            offer.setdefault("reliability2", offer["reliability"])
            offer.setdefault("dph_base", round(offer["dph_total"] * 0.9, 4))
            offer.setdefault("score", round(100 * offer["reliability"] / max(offer["dph_total"], 0.01), 3))
            self.offers[int(offer["id"])] = offer
        self.instances: dict[int, dict[str, Any]] = {}
        self.account_keys: list[dict[str, Any]] = []
        self.container_keys: dict[int, str] = {}  # instance id -> its CONTAINER_API_KEY (gone once destroyed)
        self._request: RecordedRequest | None = None  # the request being handled (under the lock)
        self._next_instance = 3000000
        self._next_key = 100

    # -- hooks ---------------------------------------------------------------
    def route_key(self, req: RecordedRequest) -> str:
        return f"{req.method} {req.path}"

    def is_create(self, req: RecordedRequest) -> bool:
        return req.method == "PUT" and re.fullmatch(r"/api/v0/asks/\d+/?", req.path) is not None

    def unauthorized(self, req: RecordedRequest) -> Response:
        return Response(401, {"success": False, "error": "invalid_user_key", "msg": "Invalid user key"})

    def container_key(self, instance_id: int) -> str | None:
        """The instance's own API key (what its sessions see as ``CONTAINER_API_KEY``)."""
        with self._lock:
            return self.container_keys.get(int(instance_id))

    def presented_key(self, req: RecordedRequest) -> str | None:
        key = super().presented_key(req)
        if key is None and req.query.get("api_key"):
            key = req.query["api_key"][0]
        return key

    def credential(self, req: RecordedRequest) -> str | None:
        key = self.presented_key(req)
        if key is not None and key == self.api_key:
            return "account"
        for iid, container_key in self.container_keys.items():
            if key is not None and key == container_key:
                return f"container:{iid}"
        return None

    def authorized(self, req: RecordedRequest) -> bool:
        if req.credential == "account":
            return True
        if not (req.credential or "").startswith("container:"):
            return False
        own = f"/api/v0/instances/{req.credential.split(':', 1)[1]}/"
        path = req.path if req.path.endswith("/") else req.path + "/"
        if path != own:
            return False
        return req.method == "DELETE" or (req.method == "PUT" and req.body == {"state": "stopped"})

    def _by_container_key(self) -> bool:
        """Does the request being handled carry a container key (an instance stopping itself)?"""
        return self._request is not None and (self._request.credential or "").startswith("container:")

    def fault_body(self, status: int, req: RecordedRequest) -> Any:
        error = "rate_limited" if status == 429 else "server_error"
        return {"success": False, "error": error, "msg": f"injected fault: HTTP {status}"}

    # -- dispatch ------------------------------------------------------------
    def handle(self, req: RecordedRequest) -> Response:
        self._request = req
        try:
            return self._route(req)
        finally:
            self._request = None

    def _route(self, req: RecordedRequest) -> Response:
        path = req.path if req.path.endswith("/") else req.path + "/"
        body = req.body if isinstance(req.body, dict) else {}
        m, p = req.method, path
        if m == "POST" and p == "/api/v0/bundles/":
            return self._search(body)
        if m == "PUT" and (g := re.fullmatch(r"/api/v0/asks/(\d+)/", p)):
            return self._create(int(g.group(1)), body)
        if m == "GET" and p == "/api/v1/instances/":
            return self._list_v1(req)
        if m == "GET" and p == "/api/v0/instances/":
            return Response(200, {"instances": [self._row(i) for i in self.instances.values()]})
        if m == "PUT" and (g := re.fullmatch(r"/api/v0/instances/bid_price/(\d+)/", p)):
            return self._change_bid(int(g.group(1)), body)
        if (g := re.fullmatch(r"/api/v0/instances/(\d+)/", p)):
            iid = int(g.group(1))
            if m == "GET":
                inst = self.instances.get(iid)
                return Response(200, {"instances": self._row(inst) if inst else None})
            if m == "PUT":
                return self._update(iid, body)
            if m == "DELETE":
                return self._destroy_instance(iid)
        if m == "POST" and (g := re.fullmatch(r"/api/v0/instances/(\d+)/ssh/", p)):
            return self._attach(int(g.group(1)), body)
        if p == "/api/v0/ssh/":
            if m == "POST":
                return self._account_key(body)
            if m == "GET":
                return Response(200, self.account_keys)
        return Response(404, {"success": False, "error": "not_found", "msg": f"no route {m} {req.path}"})

    # -- offers --------------------------------------------------------------
    def _search(self, query: dict[str, Any]) -> Response:
        bid = query.get("type") in ("bid", "interruptible")
        rows = []
        for offer in self.offers.values():
            if offer["rented"]:
                continue  # a machine whose GPUs are all rented is not offered
            row = dict(offer)
            if bid:
                row["dph_total"] = row["min_bid"]
            if _matches(row, query):
                rows.append(row)
        rows = _sort(rows, query.get("order") or [["score", "desc"]])
        limit = query.get("limit")
        if limit:
            rows = rows[: int(limit)]
        return Response(200, {"offers": rows})

    # -- instances -----------------------------------------------------------
    def _create(self, offer_id: int, body: dict[str, Any]) -> Response:
        offer = self.offers.get(offer_id)
        if offer is None or offer["rented"]:
            return Response(404, {"success": False, "error": "no_such_ask",
                                  "msg": f"Instance type {offer_id} no longer available."})
        price = body.get("price")
        if price is not None and float(price) < offer["min_bid"]:
            return Response(400, {"success": False, "error": "bid_too_low",
                                  "msg": f"bid {price} is below the minimum {offer['min_bid']}"})
        self._next_instance += 1
        iid = self._next_instance
        env = body.get("env") or {}
        if isinstance(env, str):
            env = {}
        offer["rented"] = True
        inst = {
            "id": iid, "offer_id": offer_id, "machine_id": offer["machine_id"], "host_id": offer["host_id"],
            "label": body.get("label"), "image_uuid": body.get("image"), "image_args": body.get("args") or [],
            "image_runtype": body.get("runtype") or "ssh", "onstart": body.get("onstart"),
            "extra_env": [[k, str(v)] for k, v in env.items()], "disk_space": float(body.get("disk") or 10),
            "template_hash_id": body.get("template_hash_id"),
            "gpu_name": offer["gpu_name"], "num_gpus": offer["num_gpus"], "gpu_ram": offer["gpu_ram"],
            "gpu_totalram": offer["gpu_total_ram"], "cpu_cores": offer["cpu_cores"],
            "cpu_cores_effective": offer["cpu_cores_effective"], "cpu_ram": offer["cpu_ram"],
            "geolocation": offer["geolocation"], "reliability2": offer["reliability2"],
            "cuda_max_good": offer["cuda_max_good"], "driver_version": offer["driver_version"],
            "inet_up": offer["inet_up"], "inet_down": offer["inet_down"],
            "is_bid": price is not None, "min_bid": offer["min_bid"],
            "dph_total": float(price) if price is not None else offer["dph_total"],
            "dph_base": offer["dph_base"], "storage_cost": offer["storage_cost"],
            "start_date": time.time(), "end_date": None, "intended_status": "running",
            "status_msg": "", "jupyter_token": None, "local_ipaddrs": "10.0.0.2 ",
            "direct_port_start": -1, "direct_port_end": -1, "machine_dir_ssh_port": None,
        }
        self.instances[iid] = inst
        self.container_keys[iid] = secrets.token_hex(32)
        keys = [k["public_key"] for k in self.account_keys]
        machine = self._new_machine(iid, keys)
        machine.env = {"CONTAINER_ID": str(iid), "CONTAINER_API_KEY": self.container_keys[iid]}
        return Response(200, {"success": True, "new_contract": iid, "instance_api_key": f"inst-key-{iid}"})

    def _row(self, inst: dict[str, Any]) -> dict[str, Any]:
        row = dict(inst)
        row["extra_env"] = [list(pair) for pair in inst["extra_env"]]
        machine = self.machines[str(inst["id"])]
        phase = self._phase(machine)
        row["actual_status"] = {"off": "stopped", "early": None, "late": "loading", "up": "running"}[phase]
        row["cur_state"] = "stopped" if phase == "off" else "running"
        row["next_state"] = row["cur_state"]
        row["ssh_host"] = row["ssh_port"] = row["public_ipaddr"] = None
        row["ssh_idx"] = None
        row["ports"] = {}
        if phase == "up":
            port = machine.endpoint.port  # type: ignore[union-attr]
            row.update({"ssh_host": "127.0.0.1", "ssh_port": port, "ssh_idx": "1", "public_ipaddr": "127.0.0.1",
                        "ports": {"22/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]},
                        "direct_port_start": port, "direct_port_end": port,
                        "machine_dir_ssh_port": port})
            row["status_msg"] = inst["status_msg"] or "success, running"
        elif phase in ("early", "late"):
            row["status_msg"] = "Pulling image" if phase == "early" else "Loading container"
        row["uptime_mins"] = 0 if phase != "up" else round((time.monotonic() - machine.ready_at) / 60, 2)
        return row

    def _list_v1(self, req: RecordedRequest) -> Response:
        args = {k: _loads(v[0]) for k, v in req.query.items() if v}
        filters = args.get("select_filters") if isinstance(args.get("select_filters"), dict) else {}
        rows = [self._row(i) for i in self.instances.values()]
        rows = [r for r in rows if _matches(r, filters)]
        rows = _sort(rows, args.get("order_by") or [{"col": "id", "dir": "asc"}])
        after = args.get("after_token")
        if after not in (None, ""):
            ids = [r["id"] for r in rows]
            index = ids.index(int(after)) + 1 if int(after) in ids else len(rows)
            rows = rows[index:]
        total = len(rows)
        limit = int(args.get("limit") or 25)
        page = rows[:limit]
        next_token = str(page[-1]["id"]) if total > limit and page else None
        label_counts: dict[str, int] = {}
        for inst in self.instances.values():
            label_counts[inst["label"] or ""] = label_counts.get(inst["label"] or "", 0) + 1
        return Response(200, {"instances": page, "next_token": next_token,
                              "total_instances": len(self.instances), "label_counts": label_counts})

    def _missing(self, iid: int) -> Response:
        return Response(404, {"success": False, "error": "no_such_instance", "msg": f"Instance {iid} not found."})

    def _update(self, iid: int, body: dict[str, Any]) -> Response:
        inst = self.instances.get(iid)
        if inst is None:
            return self._missing(iid)
        machine = self.machines[str(iid)]
        if "label" in body:
            inst["label"] = body["label"]
        state = body.get("state")
        if state == "stopped":
            inst["intended_status"] = "stopped"
            inst["status_msg"] = ""
            if self._by_container_key():
                def power_off() -> None:  # unless it was started again meanwhile
                    if inst["intended_status"] == "stopped" and self.instances.get(iid) is inst:
                        self._power_off(machine)

                self._later(("stop", iid), power_off)
            else:
                self.cancel_pending(("stop", iid))
                self._power_off(machine)
        elif state == "running":
            inst["intended_status"] = "running"
            inst["status_msg"] = ""
            self.cancel_pending(("stop", iid))  # a self-stop still in flight is overtaken
            if not machine.powered:
                self._power_on(machine)
        elif state is not None:
            return Response(400, {"success": False, "error": "invalid_args", "msg": f"bad state {state!r}"})
        return Response(200, {"success": True})

    def _destroy_instance(self, iid: int) -> Response:
        inst = self.instances.pop(iid, None)
        if inst is None:
            return self._missing(iid)
        offer = self.offers.get(inst["offer_id"])
        if offer is not None:
            offer["rented"] = False
        self.container_keys.pop(iid, None)  # the instance's key dies with it
        self.cancel_pending(("stop", iid))
        machine = self.machines[str(iid)]
        if self._by_container_key():
            self._later(("destroy", iid), lambda: self._destroy(machine))
        else:
            self._destroy(machine)
        return Response(200, {"success": True})

    def _change_bid(self, iid: int, body: dict[str, Any]) -> Response:
        inst = self.instances.get(iid)
        if inst is None:
            return self._missing(iid)
        if body.get("price") is not None:
            inst["dph_total"] = float(body["price"])
        return Response(200, {"success": True})

    # -- keys ----------------------------------------------------------------
    def _attach(self, iid: int, body: dict[str, Any]) -> Response:
        inst = self.instances.get(iid)
        if inst is None:
            return self._missing(iid)
        key = str(body.get("ssh_key") or "").strip()
        if not key.startswith(("ssh-", "ecdsa-", "sk-")):
            return Response(400, {"success": False, "error": "invalid_args", "msg": "Invalid SSH key"})
        self._add_key(self.machines[str(iid)], key)
        return Response(200, {"success": True, "msg": "SSH key attached to instance."})

    def _account_key(self, body: dict[str, Any]) -> Response:
        key = str(body.get("ssh_key") or "").strip()
        if not key.startswith(("ssh-", "ecdsa-", "sk-")):
            return Response(400, {"success": False, "error": "invalid_args", "msg": "Invalid SSH key"})
        self._next_key += 1
        entry = {"id": self._next_key, "public_key": key, "created_at": time.time(), "deleted_at": None}
        self.account_keys.append(entry)
        return Response(200, {"success": True, "key": entry, **entry})

    # -- test helpers ----------------------------------------------------------
    def outbid(self, instance_id: int) -> None:
        """An interruptible instance loses to a higher bid: stopped, intended still running."""
        with self._lock:
            inst = self.instances[int(instance_id)]
            inst["status_msg"] = "Instance was outbid."
            self._power_off(self.machines[str(instance_id)])

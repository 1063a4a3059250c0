"""vast.ai through the ``vastai`` SDK: search offers, rent the cheapest, reach it over ssh.

vast is a marketplace: there is no "create a machine of type X", only "rent
offer N". So ``create`` searches (GPU, count, reliability, disk, region;
on-demand, or ``bid`` for ``--spot``), takes the cheapest by ``dph_total`` and
rents it with ``label = <instance name>``, ``ssh=True, direct=True``.

Choices that matter:

- **The key.** ferry's public key is registered as an *account* key (once;
  looked up first). vast copies account keys into every instance it creates,
  so even an instance whose create response was lost trusts ferry. A
  per-instance ``attach_ssh`` after the create would miss exactly that case,
  and could fail after the rent, leaving an instance ferry cannot reach.
  The cost: that public key is trusted on the account's later instances too.
- **Names and labels.** vast has one free-text ``label`` per instance: it holds
  the name, which is what ``find_by_name`` (idempotency) looks for. ferry's
  labels (``ferry-project`` ...) ride in the instance's environment as
  ``FERRY_LABELS`` (JSON), which vast returns in ``extra_env``; instances
  without it were not made by ferry and are never listed, reused or touched.
- **ssh.** The direct port (``public_ipaddr`` + ``ports["22/tcp"]``) when the
  host has one, else vast's proxy (``ssh_host``/``ssh_port``); user root
  unless ``ferry.providers.vast.ssh_user`` says otherwise.
- **Retries** are ferry's (``retry=1`` turns the SDK's own off); every request
  has a timeout; HTTP 429/5xx, timeouts and dropped connections become
  TransientError, other 4xx a ProviderError carrying vast's message.

The SDK is imported inside functions only (``import vastai`` costs ~0.5 s).
Never import ``vastai.cli.*``: its commands module fetches GPU names over the
network at import time.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping, TypeVar

from .. import gpus
from ..errors import ProviderError, TransientError, cmd
from ..records import Instance, InstanceSpec, Offer, SSHEndpoint, Status
from ..sshkey import KeyLine
from . import sdk
from .base import GPU, IMAGE, OFFERS, OWNED, PORTS, REGION, SPOT, SSH, STOP, KeySource, SelfStop, translated

T = TypeVar("T")

DEFAULTS = {"ssh_user": "root", "api_url": None, "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-devel", "disk": 50}
API_KEY = KeySource("VAST_API_KEY", (".config/vastai/vast_api_key", ".vast_api_key"))
SELF_STOP = SelfStop("vast", "vast's API with the instance's own CONTAINER_API_KEY",
                     "vast's API (PUT state=stopped / DELETE) with the instance's own CONTAINER_API_KEY and "
                     "CONTAINER_ID; your account key stays here")
SDK = "vastai"
EXTRA = "vast"
GPUS = {
    "H100": "H100 SXM", "H100-SXM": "H100 SXM", "H100-PCIE": "H100 PCIE", "A100": "A100 PCIE", "A100-SXM": "A100 SXM4",
    "A100-40GB": "A100 PCIE", "A40": "A40", "L40S": "L40S", "L4": "L4", "RTX4090": "RTX 4090", "RTX3090": "RTX 3090",
    "RTX6000": "RTX 6000Ada", "RTXA6000": "RTX A6000", "T4": "Tesla T4", "V100": "Tesla V100",
}

DEFAULT_URL = "https://console.vast.ai"
TIMEOUT = 30.0  # seconds per HTTP request
MIN_RELIABILITY = 0.98
LABELS_ENV = "FERRY_LABELS"

# actual_status -> Status. vast documents: null (provisioning), loading, running,
# stopped, frozen, exited, rebooting, unknown, offline. One adjustment, in
# _status: a machine that is off while vast *intends* it to run (a start
# waiting for the host's GPUs, an outbid spot instance) is PENDING, and one
# being stopped (intended "stopped") is STOPPED already.
STATUS = {
    None: Status.PENDING,
    "created": Status.PENDING,
    "loading": Status.PENDING,
    "scheduling": Status.PENDING,
    "rebooting": Status.PENDING,
    "running": Status.RUNNING,
    "stopped": Status.STOPPED,
    "exited": Status.STOPPED,
    "frozen": Status.STOPPED,
    "offline": Status.ERROR,
    "unknown": Status.ERROR,
}

RAW_FIELDS = ("actual_status", "intended_status", "cur_state", "status_msg", "machine_id", "geolocation",
              "is_bid", "image_uuid", "disk_space", "offer_id")


def _storage(row: Mapping[str, Any]) -> dict[str, float]:
    """What the instance's disk bills per hour (vast bills storage while stopped): $/GB/month x GB / 730 h."""
    try:
        per_hour = float(row["storage_cost"]) * float(row["disk_space"]) / 730.0
    except (KeyError, TypeError, ValueError):
        return {}
    return {"storage_per_hour": round(per_hour, 6)}


def make(cfg) -> "VastProvider":
    return VastProvider(cfg)


class Gone(ProviderError):
    """vast answered 404: the instance (or offer) does not exist (any more)."""


def _translate(exc: Exception, what: str) -> Exception:
    """The one place vast/requests failures become ferry's errors (never echoing the key)."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        response = exc.response
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = ""
        if isinstance(body, dict):
            detail = str(body.get("msg") or body.get("message") or body.get("error") or "")
        detail = detail or response.reason or f"HTTP {status}"
        if status == 429 or status >= 500:
            retry_after = None
            try:
                retry_after = float(response.headers.get("Retry-After", ""))
            except ValueError:
                pass
            return TransientError(f"vast {what} failed (HTTP {status}): {detail}", retry_after=retry_after)
        if status == 404:
            return Gone(f"vast could not {what}: {detail}")
        if status in (401, 403):
            return ProviderError(f"vast refused the API key while trying to {what}: {detail}",
                                 hint=f"check VAST_API_KEY (see: {cmd('config')})")
        return ProviderError(f"vast could not {what}: {detail}")
    if isinstance(exc, (requests.Timeout, requests.ConnectionError)):
        return TransientError(f"vast {what} failed: {type(exc).__name__}")
    if isinstance(exc, requests.exceptions.JSONDecodeError):  # e.g. a proxy's HTML error page
        return TransientError(f"vast {what} returned an unreadable answer")
    return exc


class VastProvider:
    name = "vast"
    capabilities = frozenset({STOP, SPOT, OFFERS, OWNED, SSH, GPU, REGION, IMAGE, PORTS})

    def __init__(self, cfg):
        self.cfg = cfg
        self.settings: dict[str, Any] = dict(cfg.settings or {})
        self._client = None

    # -- plumbing ------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            key = self.cfg.api_key()  # first: without a key, no command pays the SDK's import
            client = sdk(SDK, self.name).VastAI(api_key=key, server_url=self.settings.get("api_url") or DEFAULT_URL,
                            retry=1, quiet=True)
            client.client.timeout = TIMEOUT
            self._client = client
        return self._client

    def _call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        return translated(_translate, what, fn, *args, **kwargs)

    @property
    def ssh_user(self) -> str:
        return self.cfg.ssh_user or "root"

    # -- rows -> Instance ------------------------------------------------------
    @staticmethod
    def _status(row: Mapping[str, Any]) -> Status:
        status = STATUS.get(row.get("actual_status") or None, Status.PENDING)
        intended = row.get("intended_status")
        if intended == "running" and status == Status.STOPPED:
            return Status.PENDING
        if intended == "stopped" and status in (Status.RUNNING, Status.PENDING):
            return Status.STOPPED
        return status

    def _endpoint(self, row: Mapping[str, Any]) -> SSHEndpoint | None:
        """Direct port when the host has one, else vast's ssh proxy."""
        ip = str(row.get("public_ipaddr") or "").strip()
        direct = ((row.get("ports") or {}).get("22/tcp") or [{}])[0].get("HostPort")
        if ip and direct:
            return SSHEndpoint(ip, int(direct), self.ssh_user)
        host, port = str(row.get("ssh_host") or "").strip(), row.get("ssh_port")
        if host and port:
            return SSHEndpoint(host, int(port), self.ssh_user)
        return None

    @staticmethod
    def _labels(row: Mapping[str, Any]) -> dict[str, str] | None:
        """ferry's labels from the instance's environment; None: not a ferry instance."""
        env = row.get("extra_env") or {}
        if isinstance(env, list):  # raw rows carry [[k, v], ...]; the SDK turns them into a dict
            env = {pair[0]: pair[1] for pair in env if isinstance(pair, (list, tuple)) and len(pair) == 2}
        text = env.get(LABELS_ENV) if isinstance(env, dict) else None
        if not text:
            return None
        try:
            labels = json.loads(text)
        except ValueError:
            return None
        return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None

    def _instance(self, row: Mapping[str, Any]) -> Instance:
        status = self._status(row)
        return Instance(
            id=str(row["id"]),
            name=str(row.get("label") or ""),
            provider=self.name,
            status=status,
            gpu=gpus.alias_for(row.get("gpu_name")),
            gpu_count=int(row.get("num_gpus") or 0),
            cost_per_hour=float(row.get("dph_total") or 0.0),
            ssh=self._endpoint(row) if status == Status.RUNNING else None,
            labels=self._labels(row) or {},
            created_at=float(row.get("start_date") or time.time()),
            raw={**{k: row.get(k) for k in RAW_FIELDS if k in row}, **_storage(row)},
        )

    # -- the contract ------------------------------------------------------------
    def list(self, labels: Mapping[str, str | None] | None = None) -> list[Instance]:
        """ferry's vast instances (those carrying FERRY_LABELS), filtered by label; None matches any value."""
        found = []
        for row in self._call("list instances", self.client.show_instances):
            own = self._labels(row)
            if own is None:
                continue
            if all(k in own and (v is None or own[k] == v) for k, v in (labels or {}).items()):
                found.append(self._instance(row))
        return found

    def get(self, instance_id: str) -> Instance | None:
        if not str(instance_id).isdigit():
            return None
        try:
            row = self._call("look up the instance", self.client.show_instance, int(instance_id))
        except Gone:
            return None
        return self._instance(row) if row else None

    def create(self, spec: InstanceSpec) -> Instance:
        """Rent the cheapest matching offer. Not retried here: lifecycle looks the name up between attempts."""
        count = max(spec.gpu_count, 1)
        gpu_name = gpus.resolve(str(spec.gpu), self.name, count)
        disk = float(spec.disk_gb or self.settings.get("disk") or 50)
        offers = self._search(gpu_name, count, spot=spec.spot, disk=disk, region=spec.region, limit=10)
        cap = spec.max_price * count if spec.spot and spec.max_price else None
        if cap is not None:
            offers = [o for o in offers if float(o.get("dph_total") or 0) <= cap]
        if not offers:
            kind = "interruptible" if spec.spot else "on-demand"
            limit = f" at or under ${cap:.2f}/h" if cap is not None else ""
            raise ProviderError(
                f"vast has no {kind} offer for {count}x {gpu_name}{limit} right now",
                hint="see what there is: " + cmd(f"offers --gpu {spec.gpu}" + (" --spot" if spec.spot else "")),
            )
        offer = offers[0]
        self._ensure_account_key(spec.public_key)
        env = {LABELS_ENV: json.dumps(spec.labels, sort_keys=True)}
        for port in spec.ports:
            env[f"-p {int(port)}:{int(port)}"] = "1"
        bid = None
        if spec.spot:
            bid = round(cap if cap is not None else float(offer.get("dph_total") or offer.get("min_bid") or 0), 4)
        answer = self._call(
            "rent the offer", self.client.create_instance,
            id=int(offer["id"]), image=spec.image or self.settings.get("image"), disk=disk, env=env,
            label=spec.name, price=bid, ssh=True, direct=True,
        )
        if not isinstance(answer, dict) or not answer.get("success") or not answer.get("new_contract"):
            detail = answer.get("msg") or answer.get("error") if isinstance(answer, dict) else answer
            raise ProviderError(f"vast did not rent offer {offer['id']}: {detail}")
        return Instance(
            id=str(answer["new_contract"]), name=spec.name, provider=self.name, status=Status.PENDING,
            gpu=gpus.alias_for(offer.get("gpu_name")), gpu_count=int(offer.get("num_gpus") or count),
            cost_per_hour=float(bid if bid is not None else offer.get("dph_total") or 0.0),
            labels=dict(spec.labels), raw={"offer_id": offer["id"], "is_bid": bid is not None},
        )

    def start(self, instance_id: str) -> Instance:
        self._call("start the instance", self.client.start_instance, int(instance_id))
        return self._after(instance_id, Status.PENDING)

    def stop(self, instance_id: str) -> Instance:
        self._call("stop the instance", self.client.stop_instance, int(instance_id))
        return self._after(instance_id, Status.STOPPED)

    def terminate(self, instance_id: str) -> None:
        if not str(instance_id).isdigit():
            return
        try:
            self._call("destroy the instance", self.client.destroy_instance, int(instance_id))
        except Gone:
            pass  # already gone: terminate is idempotent

    def offers(self, gpu: str | None, count: int) -> list[Offer]:
        count = max(count or 1, 1)
        gpu_name = gpus.resolve(gpu, self.name, count) if gpu else None
        found = []
        for spot in (False, True):
            for row in self._search(gpu_name, count, spot=spot, disk=float(self.settings.get("disk") or 50),
                                    region=None, limit=10):
                found.append(Offer(
                    provider=self.name, gpu=gpus.alias_for(row.get("gpu_name")) or "?",
                    gpu_count=int(row.get("num_gpus") or count), cost_per_hour=float(row.get("dph_total") or 0.0),
                    spot=spot, region=row.get("geolocation"), id=str(row.get("id")),
                ))
        return found

    # -- helpers -------------------------------------------------------------------
    def _search(self, gpu_name: str | None, count: int, spot: bool, disk: float, region: str | None,
                limit: int) -> list[dict]:
        query: dict[str, Any] = {
            "num_gpus": {"eq": count},
            "reliability": {"gt": MIN_RELIABILITY},
            "disk_space": {"gte": disk},
            "rentable": {"eq": True},
            "rented": {"eq": False},
            "verified": {"eq": True},
            "external": {"eq": False},
        }
        if gpu_name:
            query["gpu_name"] = {"eq": gpu_name}
        if region:
            query["geolocation"] = {"in": [region.upper()]}
        rows = self._call("search offers", self.client.search_offers, query=query,
                          type="bid" if spot else "on-demand", order="dph_total", limit=limit, storage=disk)
        rows = [r for r in rows or [] if isinstance(r, dict) and r.get("id") is not None]
        return sorted(rows, key=lambda r: float(r.get("dph_total") or 0.0))

    def _ensure_account_key(self, public_key: str) -> None:
        """Register ferry's key on the account once; vast puts account keys into every new instance."""
        listing = self._call("list ssh keys", self.client.show_ssh_keys)
        if isinstance(listing, dict):
            listing = next((v for k, v in listing.items() if k in ("keys", "ssh_keys", "results")
                            and isinstance(v, list)), [])
        wanted = KeyLine.parse(public_key)
        for entry in listing or []:
            text = entry.get("public_key") or entry.get("ssh_key") if isinstance(entry, dict) else entry
            if isinstance(text, str) and wanted.same_key(text):
                return
        self._call("register ferry's ssh key", self.client.create_ssh_key, public_key.strip())

    def _after(self, instance_id: str, assumed: Status) -> Instance:
        """The instance after a power change; if vast has not caught up, what we asked for."""
        instance = self.get(instance_id)
        if instance is None:
            raise ProviderError(f"vast instance {instance_id} no longer exists",
                                hint=f"launch a new one: {cmd('launch')}")
        if assumed == Status.STOPPED and instance.status != Status.STOPPED:
            instance.status, instance.ssh = Status.STOPPED, None
        return instance

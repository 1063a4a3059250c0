"""A small client of Thunder Compute's ``/v1`` REST API, over ``requests``, with a timeout on every call.

Not the ``tnr`` package: that is a CLI which pins old libraries, writes
private keys into ``~/.thunder`` and speaks the legacy unversioned paths
(PROVIDERS.md §3). The calls ferry needs are six plain JSON requests.

All HTTP failures are translated here, in one place, into ferry's errors:
401/403 -> ConfigError (the token is wrong), 429 and 5xx, timeouts and
dropped connections -> TransientError (lifecycle's retry policy decides what
happens next), any other 4xx -> ProviderError carrying Thunder's own message.
The token is read only when the first request is made and goes only into
the Authorization header: never into an error, a log line or a URL.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ...errors import ConfigError, ProviderError, TransientError
from .. import sdk

DEFAULT_BASE = "https://api.thundercompute.com:8443"
TIMEOUT = (10.0, 60.0)  # (connect, read) seconds: a create can take a while to answer

log = logging.getLogger(__name__)


class NotFound(ProviderError):
    """Thunder answered 404 for an instance: it is gone (delete treats that as done)."""


class ThunderAPI:
    """``ThunderAPI(base_url, token)``; ``token`` is a callable so the key is read only on first use."""

    def __init__(self, base_url: str | None, token: Callable[[], str], timeout: tuple[float, float] = TIMEOUT):
        base = (base_url or DEFAULT_BASE).rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self._token = token
        self.timeout = timeout
        self._session = None

    # -- transport -------------------------------------------------------------
    def _http(self):
        if self._session is None:
            token = self._token()  # first: without a token, nothing is imported
            requests = sdk("requests", "thunder")
            session = requests.Session()
            session.headers.update({
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "ferry",
            })
            session.trust_env = True  # honour HTTPS_PROXY like any other client
            self._session = session
        return self._session

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON request; returns the decoded body (None when empty) or raises a ferry error."""
        session = self._http()
        import requests

        url = self.base + path
        log.debug("thunder %s %s", method, path)
        try:
            response = session.request(method, url, json=body, timeout=self.timeout)
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise TransientError(f"Thunder Compute did not answer {method} {path}: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise ProviderError(f"Thunder Compute request {method} {path} failed: {type(exc).__name__}") from None
        return self._decode(method, path, response)

    @staticmethod
    def _decode(method: str, path: str, response) -> Any:
        status = response.status_code
        try:
            data = response.json() if response.content else None
        except ValueError:
            data = None
            if status < 300:
                raise TransientError(f"Thunder Compute sent a non-JSON answer to {method} {path}") from None
        if status < 300:
            return data
        message = _message(data) or response.reason or f"HTTP {status}"
        what = f"Thunder Compute: {message} ({method} {path}, HTTP {status})"
        if status in (401, 403):
            raise ConfigError(
                "Thunder Compute rejected the API token",
                hint="check TNR_API_TOKEN (or ~/.thunder/token); make a token at https://console.thundercompute.com",
            )
        if status == 429 or status >= 500:
            raise TransientError(what, retry_after=_retry_after(response.headers.get("Retry-After")))
        if status == 404:
            raise NotFound(what)
        raise ProviderError(what)

    # -- the API ---------------------------------------------------------------
    def list(self) -> dict[str, dict[str, Any]]:
        """Every instance of the account, keyed by id (Thunder's own shape: numbers arrive as strings)."""
        data = self.request("GET", "/instances/list")
        if not isinstance(data, dict):
            raise TransientError("Thunder Compute sent an unexpected instance list")
        return {str(k): v for k, v in data.items() if isinstance(v, dict)}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"uuid", "identifier"}`` of the new instance.

        Thunder returns a private key when no ``public_key`` was sent; ferry
        always sends one, and drops any ``key`` that comes back anyway, so a
        secret never reaches state, logs or the terminal.
        """
        data = self.request("POST", "/instances/create", body)
        if not isinstance(data, dict) or data.get("identifier") is None:
            raise TransientError("Thunder Compute's create answer had no instance id")
        return {"uuid": data.get("uuid"), "identifier": str(data["identifier"])}

    def delete(self, instance_id: str) -> None:
        self.request("POST", f"/instances/{instance_id}/delete")

    def modify(self, instance_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", f"/instances/{instance_id}/modify", body) or {}

    def pricing(self) -> dict[str, float]:
        data = self.request("GET", "/pricing")
        table = data.get("pricing") if isinstance(data, dict) else None
        if not isinstance(table, dict):
            raise TransientError("Thunder Compute sent an unexpected price list")
        return {k: float(v) for k, v in table.items() if isinstance(v, (int, float))}


def _message(data: Any) -> str | None:
    if isinstance(data, dict):
        for key in ("message", "error", "detail"):
            if isinstance(data.get(key), str) and data[key].strip():
                return data[key].strip()
    return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header, capped so one header cannot stall a launch for an hour."""
    try:
        return min(30.0, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff schedule is good enough

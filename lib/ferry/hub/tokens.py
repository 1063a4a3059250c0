"""Hub tokens: ``HF_TOKEN`` and ``REPLICATE_API_TOKEN``, found and protected like every cloud key.

Order, first found wins (:func:`ferry.apikeys.find`): the environment, the
project's ``.env``, ``~/.config/.env.global``; for Hugging Face then the token
``huggingface_hub`` stored at login (``hf auth login``), read from its file
without importing the SDK. A token is never printed: :func:`ferry.apikeys.mask`
is all ``config`` shows, ``doctor`` says only where it was found.
"""

from __future__ import annotations

from pathlib import Path

from .. import apikeys, config
from ..config import Settings
from ..errors import ConfigError
from ..providers.base import KeySource

SERVICES = {
    "huggingface": KeySource("HF_TOKEN"),
    "replicate": KeySource("REPLICATE_API_TOKEN"),
}
WHERE_TO_GET = {
    "huggingface": "https://huggingface.co/settings/tokens (write access), or `hf auth login`",
    "replicate": "https://replicate.com/account/api-tokens",
}


def hf_stored_token_path() -> Path:
    """Where huggingface_hub keeps the token of ``hf auth login`` (its own rule: HF_TOKEN_PATH, HF_HOME, XDG)."""
    explicit = config.getenv("HF_TOKEN_PATH")
    if explicit:
        return Path(explicit).expanduser()
    hf_home = config.getenv("HF_HOME")
    if hf_home:
        return Path(hf_home).expanduser() / "token"
    cache = config.getenv("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "huggingface" / "token"


def lookup(settings: Settings, service: str) -> tuple[str, str] | None:
    """(token, where it came from) for ``huggingface`` or ``replicate``; None when there is none."""
    found = apikeys.find(settings, SERVICES[service])
    if found:
        return found
    if service == "huggingface":
        path = hf_stored_token_path()
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        if text:
            return text.splitlines()[0].strip(), f"huggingface_hub's stored token ({path})"
    return None


def token(settings: Settings, service: str) -> str:
    """The service's token, or a ConfigError saying where ferry looked (raised before any request is made)."""
    found = lookup(settings, service)
    if found is None:
        declared = SERVICES[service]
        where = apikeys.places(declared)
        if service == "huggingface":
            where += ", huggingface_hub's stored token"
        raise ConfigError(f"no {declared.variable} found for {service}",
                          hint=f"set {declared.variable} (ferry looks in: {where}); get one at {WHERE_TO_GET[service]}")
    return found[0]


def report(settings: Settings) -> dict[str, dict]:
    """For ``config`` and ``doctor``: per service, whether a token is set, where from, and its mask."""
    out = {}
    for service, declared in SERVICES.items():
        found = lookup(settings, service)
        out[service] = {"variable": declared.variable, "set": bool(found), "source": found[1] if found else None,
                        "value": apikeys.mask(found[0]) if found else None}
    return out

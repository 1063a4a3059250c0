"""Replicate without writing a client: typed inputs from the model's own schema, a followed run, saved outputs.

A model version publishes an OpenAPI schema of its inputs (``Input``: type,
default, enum, minimum/maximum, ``format: uri`` for files). Every ``-i
key=value`` is typed and checked against it before anything is created, so a
wrong value is a usage error naming what is allowed and no prediction (and no
upload) is made. A value for a file input that names a local file is
uploaded (``files.create``); a URL stays a URL. The run is followed by
polling (the SDK's ``reload``): new log text is passed on as it arrives, and
the progress bar the model prints becomes a status line. Outputs (a file,
a list of files, text, JSON) are saved byte-exact under a folder and listed;
``data:`` URIs are decoded, ``http(s)`` URLs fetched. The SDK
(``ferry[replicate]``, replicate>=1.0) reads ``REPLICATE_BASE_URL`` itself.
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

from ..config import Settings
from ..errors import FerryError, ProviderError, UsageError, cmd
from . import tokens

log = logging.getLogger(__name__)

DONE = ("succeeded", "failed", "canceled")
MODEL_REF = re.compile(r"^(?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+)(?::(?P<version>[0-9a-f]{8,}))?$")
URL_PREFIXES = ("http://", "https://", "data:")
# Types whose extension the platform's mimetypes table may not know (or guesses oddly).
EXTENSIONS = {"image/jpeg": ".jpg", "image/webp": ".webp", "audio/wav": ".wav", "audio/x-wav": ".wav",
              "audio/mpeg": ".mp3", "video/mp4": ".mp4", "text/plain": ".txt", "application/json": ".json"}


def _sdk():
    try:
        import replicate
    except ImportError:
        raise FerryError("Replicate support is not installed", hint="pip install 'ferry[replicate]'   (replicate>=1.0)") \
            from None
    return replicate


def client(settings: Settings):
    """A Replicate client with the token ferry found (checked before anything else happens)."""
    token = tokens.token(settings, "replicate")
    return _sdk().Client(api_token=token)


def _failure(exc, doing: str) -> FerryError:
    status = getattr(exc, "status", None)
    detail = getattr(exc, "detail", None) or str(exc)
    if status == 401:
        return ProviderError(f"Replicate refused the token while {doing} (HTTP 401)",
                             hint="check REPLICATE_API_TOKEN (https://replicate.com/account/api-tokens)")
    if status == 404:
        return ProviderError(f"Replicate has no such thing while {doing}: {detail}",
                             hint="check the name: OWNER/MODEL[:VERSION] as on replicate.com")
    return ProviderError(f"Replicate failed while {doing}: {detail}", hint="run it again; --debug shows the details")


# -- the model and its inputs ----------------------------------------------------------------------------
@dataclass
class InputSpec:
    """One input of a model version, as its schema declares it."""

    name: str
    type: str  # integer, number, boolean, string, array, object, or file (string with format uri)
    default: Any = None
    enum: list | None = None
    minimum: float | None = None
    maximum: float | None = None
    description: str = ""
    required: bool = False
    order: int = 1000
    items: "InputSpec | None" = None

    def allowed(self) -> str:
        if self.enum:
            return ", ".join(str(v) for v in self.enum)
        if self.minimum is not None or self.maximum is not None:
            lo = "" if self.minimum is None else _num(self.minimum)
            hi = "" if self.maximum is None else _num(self.maximum)
            return f"{lo}..{hi}"
        return ""

    def shown_type(self) -> str:
        return f"array of {self.items.type}" if self.type == "array" and self.items else self.type


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _resolve(schema: dict, root: dict) -> dict:
    """Merge ``$ref`` and single-item ``allOf``/``anyOf`` (how cog writes enums) into one flat schema."""
    merged = {k: v for k, v in schema.items() if k not in ("allOf", "anyOf", "$ref")}
    refs = list(schema.get("allOf") or []) + list(schema.get("anyOf") or [])
    if "$ref" in schema:
        refs.append({"$ref": schema["$ref"]})
    for ref in refs:
        target = ref
        if "$ref" in ref:
            target = root
            for part in ref["$ref"].lstrip("#/").split("/"):
                target = target.get(part, {}) if isinstance(target, dict) else {}
        for key, value in _resolve(target, root).items():
            merged.setdefault(key, value)
    return merged


def _spec(name: str, raw: dict, root: dict, required: bool) -> InputSpec:
    flat = _resolve(raw, root)
    kind = flat.get("type") or ("string" if flat.get("enum") else "object")
    if kind == "string" and flat.get("format") == "uri":
        kind = "file"
    items = _spec(f"{name}[]", flat["items"], root, False) if kind == "array" and isinstance(flat.get("items"), dict) \
        else None
    low = flat.get("minimum", flat.get("exclusiveMinimum"))
    high = flat.get("maximum", flat.get("exclusiveMaximum"))
    return InputSpec(name=name, type=kind, default=flat.get("default"), enum=flat.get("enum"),
                     minimum=low if isinstance(low, (int, float)) else None,
                     maximum=high if isinstance(high, (int, float)) else None,
                     description=" ".join(str(flat.get("description") or "").split()), required=required,
                     order=int(flat.get("x-order", 1000)), items=items)


def input_specs(openapi_schema: dict | None) -> list[InputSpec]:
    """The version's inputs in the model's own order (``x-order``)."""
    root = openapi_schema or {}
    schema = ((root.get("components") or {}).get("schemas") or {}).get("Input") or {}
    required = set(schema.get("required") or [])
    specs = [_spec(name, raw, root, name in required) for name, raw in (schema.get("properties") or {}).items()]
    return sorted(specs, key=lambda s: (s.order, s.name))


@dataclass
class Target:
    """A model version: what a prediction is made from."""

    owner: str
    name: str
    version: str | None
    inputs: list[InputSpec] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}" + (f":{self.version}" if self.version else "")


def parse_ref(text: str) -> tuple[str, str, str | None]:
    match = MODEL_REF.match(text or "")
    if not match:
        raise UsageError(f"bad model {text!r}: use OWNER/MODEL or OWNER/MODEL:VERSION",
                         hint=cmd("replicate.run black-forest-labs/flux-schnell -i prompt='a fox'"))
    return match["owner"], match["name"], match["version"]


def lookup(api, ref: str) -> Target:
    """The model version (the latest, unless the ref names one) and its inputs."""
    from replicate.exceptions import ReplicateError

    owner, name, version = parse_ref(ref)
    try:
        if version:
            found = api.models.get(f"{owner}/{name}").versions.get(version)
        else:
            found = api.models.get(f"{owner}/{name}").latest_version
    except ReplicateError as exc:
        raise _failure(exc, f"looking up {ref}") from None
    if found is None:
        return Target(owner, name, None, [])  # an official model without versions: inputs are not published
    return Target(owner, name, found.id, input_specs(found.openapi_schema))


# -- typing the inputs -----------------------------------------------------------------------------------
def _bad(spec: InputSpec, value: str, why: str, ref: str) -> UsageError:
    allowed = spec.allowed()
    return UsageError(f"bad value {value!r} for input {spec.name} ({spec.shown_type()}): {why}"
                      + (f"; allowed: {allowed}" if allowed else ""),
                      hint=f"see the model's inputs: {cmd(f'replicate.inputs {ref}')}")


def coerce(spec: InputSpec, text: str, ref: str, base: Path) -> Any:
    """One typed value from the command line's text, checked against the schema (no request is made)."""
    kind, value = spec.type, text
    if kind == "boolean":
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise _bad(spec, text, "not a boolean (true or false)", ref)
        value = lowered in ("true", "1", "yes")
    elif kind == "integer":
        try:
            value = int(text.strip())
        except ValueError:
            raise _bad(spec, text, "not a whole number", ref) from None
    elif kind == "number":
        try:
            value = float(text.strip())
        except ValueError:
            raise _bad(spec, text, "not a number", ref) from None
        if value.is_integer() and re.fullmatch(r"\s*-?\d+\s*", text):
            value = int(value)
    elif kind == "file":
        if text.startswith(URL_PREFIXES):
            return text
        path = (base / text).expanduser() if not Path(text).expanduser().is_absolute() else Path(text).expanduser()
        if not path.is_file():
            raise _bad(spec, text, "no such file (give a local file to upload, or a URL)", ref)
        return path
    elif kind in ("object",):
        try:
            value = json.loads(text)
        except ValueError:
            value = text
    if spec.enum is not None and value not in spec.enum:
        raise _bad(spec, text, "not one of the allowed values", ref)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if spec.minimum is not None and value < spec.minimum:
            raise _bad(spec, text, f"below the minimum {_num(spec.minimum)}", ref)
        if spec.maximum is not None and value > spec.maximum:
            raise _bad(spec, text, f"above the maximum {_num(spec.maximum)}", ref)
    return value


def typed_inputs(target: Target, pairs: list[str], base: Path) -> dict[str, Any]:
    """``key=value`` pairs as the model's typed inputs; repeated keys of an array input make a list."""
    specs = {s.name: s for s in target.inputs}
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"bad input {pair!r}", hint="use -i KEY=VALUE, e.g. -i prompt='a red fox' -i steps=20")
        if not specs:  # no published schema: strings stay strings
            values[key] = text
            continue
        spec = specs.get(key)
        if spec is None:
            raise UsageError(f"{target.ref} has no input {key!r}; its inputs: {', '.join(specs)}",
                             hint=f"see them: {cmd(f'replicate.inputs {target.ref}')}")
        if spec.type == "array":
            item = spec.items or InputSpec(name=key, type="string")
            values.setdefault(key, []).append(coerce(item, text, target.ref, base))
        else:
            if key in values:
                raise UsageError(f"input {key} given twice", hint="give each input once (only array inputs repeat)")
            values[key] = coerce(spec, text, target.ref, base)
    missing = [s.name for s in target.inputs if s.required and s.default is None and s.name not in values]
    if missing:
        raise UsageError(f"{target.ref} needs the input{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                         hint=f"give {'them' if len(missing) > 1 else 'it'}: "
                              + " ".join(f"-i {m}=..." for m in missing))
    return values


def upload_files(api, values: dict[str, Any]) -> dict[str, Any]:
    """Local files among the inputs uploaded (``files.create``), each replaced by its URL."""
    from replicate.exceptions import ReplicateError

    def one(value):
        if isinstance(value, Path):
            log.info(f"uploading {value} ({value.stat().st_size} bytes)")
            try:
                return api.files.create(value).urls["get"]
            except ReplicateError as exc:
                raise _failure(exc, f"uploading {value}") from None
        if isinstance(value, list):
            return [one(v) for v in value]
        return value

    return {key: one(value) for key, value in values.items()}


# -- running -------------------------------------------------------------------------------------------
def create(api, target: Target, inputs: dict[str, Any]):
    from replicate.exceptions import ReplicateError

    try:
        if target.version:
            return api.predictions.create(version=target.version, input=inputs)
        return api.predictions.create(model=f"{target.owner}/{target.name}", input=inputs)
    except ReplicateError as exc:
        raise _failure(exc, f"starting {target.ref}") from None


def get(api, prediction_id: str):
    from replicate.exceptions import ReplicateError

    try:
        return api.predictions.get(prediction_id)
    except ReplicateError as exc:
        raise _failure(exc, f"fetching prediction {prediction_id}") from None


def follow(api, prediction, on_logs: Callable[[str], None], interval: float | None = None):
    """Poll until the prediction ends, passing on new log text and a status line; the final prediction.

    A KeyboardInterrupt propagates with the prediction still running (the caller decides: cancel or leave it).
    """
    interval = api.poll_interval if interval is None else interval
    seen = 0
    shown_status = None
    while True:
        logs = prediction.logs or ""
        if len(logs) > seen:
            on_logs(logs[seen:])
            seen = len(logs)
        progress = prediction.progress
        status = f"prediction {prediction.id} {prediction.status}" + (
            f" {progress.percentage:.0%} ({progress.current}/{progress.total})" if progress else "")
        if status != shown_status:
            log.info(status, extra={"status": True})
            shown_status = status
        if prediction.status in DONE:
            return prediction
        time.sleep(interval)
        prediction = get(api, prediction.id)


def cancel(api, prediction_id: str):
    from replicate.exceptions import ReplicateError

    try:
        return api.predictions.cancel(prediction_id)
    except ReplicateError as exc:
        raise _failure(exc, f"canceling prediction {prediction_id}") from None


# -- outputs -------------------------------------------------------------------------------------------
def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(URL_PREFIXES)


def _name_for(url: str, index: int | None) -> str:
    stem = "output" if index is None else f"output-{index}"
    if url.startswith("data:"):
        mime = url[5:].split(";", 1)[0].split(",", 1)[0]
        return stem + (EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin")
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    return name if name and name not in (".", "..") and "/" not in name else stem


def _fetch(url: str) -> bytes:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        return base64.b64decode(data) if header.endswith(";base64") else unquote(data).encode()
    import httpx

    try:
        response = httpx.get(url, follow_redirects=True, timeout=60)  # delivery URLs need no token: none is sent
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ProviderError(f"could not fetch output {url}: {exc}", hint="run it again (the URL may have expired)") \
            from None
    return response.content


def _free(directory: Path, name: str) -> Path:
    """A path in ``directory`` that is not taken (an existing file is never overwritten)."""
    path = directory / name
    stem, suffix, n = path.stem, path.suffix, 1
    while path.exists():
        path = directory / f"{stem}-{n}{suffix}"
        n += 1
    return path


def save_outputs(output: Any, directory: Path) -> list[Path]:
    """The prediction's output under ``directory``: files byte-exact, text as output.txt, the rest as output.json."""
    if output is None:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    saved = []
    items = output if isinstance(output, list) else [output]
    if items and all(_is_url(v) for v in items):
        names: set[str] = set()
        for index, url in enumerate(items):
            name = _name_for(url, index if isinstance(output, list) else None)
            if name in names:
                name = f"{index}-{name}"
            names.add(name)
            path = _free(directory, name)
            path.write_bytes(_fetch(url))
            saved.append(path)
    elif all(isinstance(v, str) for v in items):
        path = _free(directory, "output.txt")
        path.write_text("".join(items))  # a language model streams its text as a list of pieces
        saved.append(path)
    else:
        path = _free(directory, "output.json")
        path.write_text(json.dumps(output, indent=2) + "\n")
        saved.append(path)
    return saved


def summary(prediction, saved: list[Path]) -> dict[str, Any]:
    text = prediction.output if isinstance(prediction.output, (dict, int, float, bool)) or (
        isinstance(prediction.output, str) and not _is_url(prediction.output)) else None
    return {"id": prediction.id, "model": prediction.model, "version": prediction.version,
            "status": prediction.status, "error": prediction.error, "metrics": prediction.metrics,
            "outputs": [str(p) for p in saved], "output": text}

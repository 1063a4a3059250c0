"""A fake Replicate API (``/v1``): models with versions and input schemas, predictions that run, files.

Point the real SDK (replicate>=1.0) at it with ``REPLICATE_BASE_URL=<fake.base_url>``
and ``REPLICATE_POLL_INTERVAL`` small. Routes, as the SDK sends them:

- ``GET /v1/models/{owner}/{name}`` -> the model with ``latest_version`` (id, ``openapi_schema``)
- ``GET /v1/models/{owner}/{name}/versions/{id}``
- ``POST /v1/predictions`` ``{"version", "input"}`` and ``POST /v1/models/{owner}/{name}/predictions`` ``{"input"}``
  -> a prediction ``starting``; each ``GET /v1/predictions/{id}`` moves it along its script:
  ``starting`` -> ``processing`` (a log line and a progress bar per poll, ``steps`` polls) -> the
  model's ``outcome``: ``succeeded`` with its ``output`` (files as ``data:`` URIs), or ``failed``
  with its ``error``. ``hold=True`` on a model keeps its predictions processing until canceled.
- ``POST /v1/predictions/{id}/cancel`` -> ``canceled``
- ``POST /v1/files`` (multipart ``content``) -> ``{"id", "urls": {"get"}}``; the bytes are kept in ``files``

``add_model(owner, name, schema=..., output=..., outcome="succeeded", error=None, steps=2, hold=False)``;
``predictions`` holds every prediction made (with the ``input`` it received).
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from . import RecordedRequest, Response
from .hub_http import HubFake


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def input_schema(properties: dict[str, Any], required: list[str] = (), enums: dict[str, Any] | None = None) -> dict:
    """An OpenAPI document as cog writes it: ``Input`` properties, enums as ``allOf`` ``$ref`` schemas."""
    schemas: dict[str, Any] = {"Input": {"type": "object", "title": "Input", "properties": properties,
                                         "required": list(required)},
                               "Output": {"type": "array", "items": {"type": "string", "format": "uri"}}}
    schemas.update(enums or {})
    return {"openapi": "3.0.2", "info": {"title": "Cog", "version": "0.1.0"}, "paths": {},
            "components": {"schemas": schemas}}


class FakeReplicate(HubFake):
    """``FakeReplicate(token="r8_test_token")``."""

    name = "replicate"

    def __init__(self, *, token: str = "r8_test_token"):
        super().__init__(api_key=token)
        self.models: dict[str, dict[str, Any]] = {}
        self.predictions: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}

    def add_model(self, owner: str, name: str, *, schema: dict, output: Any = None, outcome: str = "succeeded",
                  error: str | None = None, steps: int = 2, hold: bool = False, version: str | None = None) -> str:
        version = version or uuid.uuid4().hex + uuid.uuid4().hex[:32]
        self.models[f"{owner}/{name}"] = {"owner": owner, "name": name, "version": version, "schema": schema,
                                          "output": output, "outcome": outcome, "error": error, "steps": steps,
                                          "hold": hold}
        return version

    def created(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/predictions")]

    # -- views ------------------------------------------------------------------
    def _version(self, model: dict[str, Any]) -> dict[str, Any]:
        return {"id": model["version"], "created_at": "2025-01-01T00:00:00.000Z", "cog_version": "0.9.0",
                "openapi_schema": model["schema"]}

    def _model(self, model: dict[str, Any]) -> dict[str, Any]:
        return {"url": f"https://replicate.com/{model['owner']}/{model['name']}", "owner": model["owner"],
                "name": model["name"], "description": "a fake model", "visibility": "public", "github_url": None,
                "paper_url": None, "license_url": None, "run_count": 1, "cover_image_url": None,
                "default_example": None, "latest_version": self._version(model)}

    def _prediction(self, p: dict[str, Any]) -> dict[str, Any]:
        return {key: p[key] for key in ("id", "model", "version", "status", "input", "output", "logs", "error",
                                        "metrics", "created_at", "started_at", "completed_at")} | {
            "urls": {"get": f"{self.base_url}/v1/predictions/{p['id']}",
                     "cancel": f"{self.base_url}/v1/predictions/{p['id']}/cancel"}}

    # -- dispatch ----------------------------------------------------------------
    def unauthorized(self, req: RecordedRequest) -> Response:
        return Response(401, {"title": "Unauthenticated", "detail": "You did not pass a valid authentication token",
                              "status": 401})

    def _missing(self, what: str) -> Response:
        return Response(404, {"title": "Not found", "detail": f"{what} not found", "status": 404})

    def handle(self, req: RecordedRequest) -> Response:
        path, m = req.path, req.method
        if m == "GET" and (g := re.fullmatch(r"/v1/models/([^/]+/[^/]+)", path)):
            model = self.models.get(g.group(1))
            return Response(200, self._model(model)) if model else self._missing(f"model {g.group(1)}")
        if m == "GET" and (g := re.fullmatch(r"/v1/models/([^/]+/[^/]+)/versions/([^/]+)", path)):
            model = self.models.get(g.group(1))
            if not model or model["version"] != g.group(2):
                return self._missing(f"version {g.group(2)}")
            return Response(200, self._version(model))
        if m == "POST" and path == "/v1/predictions":
            body = req.body or {}
            model = next((x for x in self.models.values() if x["version"] == body.get("version")), None)
            return self._create(model, body) if model else self._missing(f"version {body.get('version')}")
        if m == "POST" and (g := re.fullmatch(r"/v1/models/([^/]+/[^/]+)/predictions", path)):
            model = self.models.get(g.group(1))
            return self._create(model, req.body or {}) if model else self._missing(f"model {g.group(1)}")
        if m == "GET" and (g := re.fullmatch(r"/v1/predictions/([^/]+)", path)):
            p = self.predictions.get(g.group(1))
            if p is None:
                return self._missing(f"prediction {g.group(1)}")
            self._advance(p)
            return Response(200, self._prediction(p))
        if m == "POST" and (g := re.fullmatch(r"/v1/predictions/([^/]+)/cancel", path)):
            p = self.predictions.get(g.group(1))
            if p is None:
                return self._missing(f"prediction {g.group(1)}")
            if p["status"] not in ("succeeded", "failed", "canceled"):
                p["status"], p["completed_at"] = "canceled", _now()
            return Response(200, self._prediction(p))
        if m == "POST" and path == "/v1/files":
            return self._file(req)
        return self._missing(f"route {m} {path}")

    def _create(self, model: dict[str, Any], body: dict[str, Any]) -> Response:
        pid = uuid.uuid4().hex[:26]
        self.predictions[pid] = {"id": pid, "model": f"{model['owner']}/{model['name']}", "version": model["version"],
                                 "status": "starting", "input": body.get("input") or {}, "output": None, "logs": "",
                                 "error": None, "metrics": None, "created_at": _now(), "started_at": None,
                                 "completed_at": None, "_model": model, "_polls": 0}
        return Response(201, self._prediction(self.predictions[pid]))

    def _advance(self, p: dict[str, Any]) -> None:
        if p["status"] in ("succeeded", "failed", "canceled"):
            return
        model = p["_model"]
        p["_polls"] += 1
        if p["status"] == "starting":
            p["status"], p["started_at"] = "processing", _now()
            p["logs"] += "Loading the model\n"
            return
        if model["hold"] or p["_polls"] <= model["steps"] + 1:
            step = min(p["_polls"] - 1, model["steps"])
            p["logs"] += f"{int(100 * step / max(model['steps'], 1))}%|###| {step}/{model['steps']}\n"
            return
        p["completed_at"] = _now()
        if model["outcome"] == "failed":
            p["status"], p["error"] = "failed", model["error"] or "the model failed"
            p["logs"] += "Traceback: it broke\n"
        else:
            p["status"], p["output"] = "succeeded", model["output"]
            p["metrics"] = {"predict_time": 0.1}

    def _file(self, req: RecordedRequest) -> Response:
        header = f"Content-Type: {req.header('Content-Type')}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(header + req.raw)
        for part in message.iter_parts():
            if part.get_param("name", header="content-disposition") == "content":
                data = part.get_payload(decode=True) or b""
                fid = uuid.uuid4().hex[:12]
                self.files[fid] = data
                return Response(201, {"id": fid, "name": part.get_filename(), "content_type": part.get_content_type(),
                                      "size": len(data), "etag": "x", "checksums": {}, "metadata": {},
                                      "created_at": _now(), "expires_at": None,
                                      "urls": {"get": f"{self.base_url}/v1/files/{fid}"}})
        return Response(400, {"title": "Bad request", "detail": "no content part", "status": 400})

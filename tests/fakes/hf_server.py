"""A fake Hugging Face Hub: the routes ``huggingface_hub`` calls to publish a model and list models.

Point the real SDK at it with ``HF_ENDPOINT=<fake.base_url>`` (read by
``huggingface_hub.constants`` at import time, so set it in the CLI's
environment) and ``HF_HUB_DISABLE_XET=1`` (the fake speaks git-LFS's basic
transfer, not Xet). Routes, as the SDK sends them:

- ``GET /api/whoami-v2`` -> ``{"name", "type": "user", "orgs": []}``
- ``GET /api/models/{ns}/{name}[/revision/{rev}]`` -> model info, or 404 with ``X-Error-Code: RepoNotFound``
- ``POST /api/repos/create`` ``{"name", "organization", "visibility"|"private", "type"}`` -> ``{"url"}``; 409 if it exists
- ``POST /api/validate-yaml`` -> ``{"errors": [], "warnings": []}``
- ``POST /api/models/{repo}/preupload/{rev}`` -> ``uploadMode`` per file: ``lfs`` for weights and images
- ``POST /{repo}.git/info/lfs/objects/batch`` -> a basic-transfer upload href per object not stored yet
- ``PUT /lfs-upload/{oid}`` (the "S3" href: no token, like a signed URL) stores the bytes, checking the sha256
- ``POST /api/models/{repo}/commit/{rev}`` (NDJSON: header, file, lfsFile) -> ``{"commitUrl", "commitOid"}``
- ``PUT /api/models/{repo}/settings`` (and ``/api/repos/models/{repo}/settings``) ``{"visibility"|"private"}``
- ``GET /api/models?author=U&limit=N`` -> the author's models (private ones only for their owner's token)

State: ``repos[repo_id]`` = ``{"private", "files": {path: bytes}, "commits": [...], "downloads", "likes"}``;
``commits(repo_id)`` is the list of commits, each ``{"message", "files": {path: bytes}}``. Knobs from
:mod:`tests.fakes` (``fail_next``, ``requests``) work here too.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote

from . import RecordedRequest, Response
from .hub_http import HubFake

LFS_SUFFIXES = (".safetensors", ".bin", ".png", ".jpg", ".jpeg", ".webp", ".pt")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeHF(HubFake):
    """``FakeHF(token="hf_test_token", user="alice")``."""

    name = "hf"

    def __init__(self, *, token: str = "hf_test_token", user: str = "alice"):
        super().__init__(api_key=token)
        self.user = user
        self.repos: dict[str, dict[str, Any]] = {}
        self.lfs: dict[str, bytes] = {}
        self.on_commit = None  # called (no arguments) as a commit arrives, before it is answered

    # -- test helpers ----------------------------------------------------------
    def add_repo(self, repo_id: str, private: bool = True, files: dict[str, bytes] | None = None,
                 downloads: int = 0, likes: int = 0) -> None:
        self.repos[repo_id] = {"private": private, "files": dict(files or {}), "commits": [],
                               "downloads": downloads, "likes": likes, "lastModified": _now(), "sha": "0" * 40}

    def commits(self, repo_id: str) -> list[dict[str, Any]]:
        return self.repos[repo_id]["commits"] if repo_id in self.repos else []

    def api_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if not r.path.startswith(self.CONTROL_PREFIX)]

    # -- auth --------------------------------------------------------------------
    def authorized(self, req: RecordedRequest) -> bool:
        if req.path.startswith("/lfs-upload/"):
            return True  # a signed storage URL: no token travels there
        if req.method == "GET" and (req.path == "/api/models" or req.path.startswith("/api/models/")):
            return req.credential == "account" or self.presented_key(req) is None
        return req.credential == "account"

    def unauthorized(self, req: RecordedRequest) -> Response:
        return Response(401, {"error": "Invalid credentials in Authorization header"})

    def _error(self, status: int, message: str, code: str | None = None) -> Response:
        return Response(status, {"error": message}, headers={"X-Error-Code": code} if code else {})

    # -- dispatch -----------------------------------------------------------------
    def handle(self, req: RecordedRequest) -> Response:
        path, m = req.path, req.method
        owner = req.credential == "account"
        if m == "GET" and path == "/api/whoami-v2":
            return Response(200, {"type": "user", "name": self.user, "fullname": self.user.title(), "orgs": [],
                                  "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if m == "POST" and path == "/api/repos/create":
            return self._create(req.body or {})
        if m == "POST" and path == "/api/validate-yaml":
            return Response(200, {"errors": [], "warnings": []})
        if m == "GET" and path == "/api/models":
            return self._list(req, owner)
        if m == "PUT" and (g := re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", path)):
            if hashlib.sha256(req.raw).hexdigest() != g.group(1):
                return self._error(400, "sha256 mismatch")
            self.lfs[g.group(1)] = req.raw
            return Response(200, b"", content_type="text/plain")
        if m == "POST" and (g := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)):
            return self._batch(g.group(1), req.body or {})
        if g := re.fullmatch(r"/api/(?:repos/)?models/([^/]+/[^/]+)(/.*)?", path):
            repo_id, rest = g.group(1), unquote(g.group(2) or "")
            repo = self.repos.get(repo_id)
            if repo is None or (repo["private"] and not owner):
                return self._error(404, "Repository not found", "RepoNotFound")
            if m == "GET" and (rest == "" or rest.startswith("/revision/")):
                return Response(200, self._info(repo_id, repo))
            if m == "POST" and rest.startswith("/preupload/"):
                return self._preupload(repo, req.body or {})
            if m == "POST" and rest.startswith("/commit/"):
                return self._commit(repo_id, repo, req.raw)
            if m == "PUT" and rest == "/settings":
                return self._settings(repo, req.body or {})
        return self._error(404, f"no route {m} {path}")

    # -- repos ----------------------------------------------------------------------
    def _create(self, body: dict[str, Any]) -> Response:
        name, org = body.get("name"), body.get("organization") or self.user
        if org != self.user:
            return self._error(403, f"You don't have the rights to create a model under the namespace {org!r}")
        repo_id = f"{org}/{name}"
        if repo_id in self.repos:
            return self._error(409, "You already created this model repo", None)
        private = body.get("visibility") == "private" if "visibility" in body else bool(body.get("private"))
        self.add_repo(repo_id, private=private)
        return Response(200, {"url": f"{self.base_url}/{repo_id}", "name": repo_id, "id": repo_id})

    def _info(self, repo_id: str, repo: dict[str, Any]) -> dict[str, Any]:
        return {"id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "private": repo["private"],
                "sha": repo["sha"], "lastModified": repo["lastModified"], "downloads": repo["downloads"],
                "likes": repo["likes"], "tags": [], "siblings": [{"rfilename": p} for p in sorted(repo["files"])]}

    def _list(self, req: RecordedRequest, owner: bool) -> Response:
        author = (req.query.get("author") or [None])[0]
        limit = int((req.query.get("limit") or ["1000"])[0])
        found = [self._info(rid, r) for rid, r in sorted(self.repos.items())
                 if (author is None or rid.split("/")[0] == author) and (owner or not r["private"])]
        return Response(200, found[:limit])

    def _settings(self, repo: dict[str, Any], body: dict[str, Any]) -> Response:
        if "visibility" in body:
            repo["private"] = body["visibility"] == "private"
        elif "private" in body:
            repo["private"] = bool(body["private"])
        return Response(200, {})

    # -- uploads ----------------------------------------------------------------------
    def _preupload(self, repo: dict[str, Any], body: dict[str, Any]) -> Response:
        files = []
        for item in body.get("files") or []:
            path = item["path"]
            lfs = path.lower().endswith(LFS_SUFFIXES) or int(item.get("size") or 0) > 10 * 1024 * 1024
            files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": None})
        return Response(200, {"files": files, "commitOid": repo["sha"]})

    def _batch(self, repo_id: str, body: dict[str, Any]) -> Response:
        if repo_id not in self.repos:
            return self._error(404, "Repository not found", "RepoNotFound")
        objects = []
        for obj in body.get("objects") or []:
            entry = {"oid": obj["oid"], "size": int(obj["size"]), "authenticated": True}
            if obj["oid"] not in self.lfs:
                entry["actions"] = {"upload": {"href": f"{self.base_url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return Response(200, {"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def _commit(self, repo_id: str, repo: dict[str, Any], raw: bytes) -> Response:
        if self.on_commit:
            self.on_commit()  # a test's look at the world while the client waits for this answer
        message, files = "", {}
        for line in raw.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                message = value.get("summary", "")
            elif item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                data = self.lfs.get(value["oid"])
                if data is None or len(data) != int(value["size"]):
                    return self._error(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = data
            else:
                return self._error(400, f"unsupported commit operation {item['key']}")
        oid = hashlib.sha1(f"{repo_id}{time.time()}{len(repo['commits'])}".encode()).hexdigest()
        repo["commits"].append({"message": message, "files": files, "oid": oid})
        repo["files"].update(files)
        repo["sha"], repo["lastModified"] = oid, _now()
        return Response(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.base_url}/{repo_id}/commit/{oid}",
                              "commitMessage": message})

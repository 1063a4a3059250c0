"""Hugging Face, as ferry drives it: publish a LoRA plan (from here or from the instance), list models.

The token is looked up first (:mod:`ferry.hub.tokens`), so a missing token
fails before any request. The SDK (``ferry[hf]``) is imported inside the
calls; it reads ``HF_ENDPOINT`` itself (a private Hub, or the tests' fake).
The commit itself is :mod:`ferry.hub.hf_publish`, the same code that runs on
an instance for ``--from-instance``: the weights go from the instance to the
Hub and never through the laptop, and the token goes there as a file (600,
under ``~/.ferry/credentials/``, over ssh's stdin, deleted as soon as it is
read), never on a command line or in a job's environment.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import config
from ..config import Settings
from ..errors import FerryError, ProviderError, cmd, program
from . import tokens
from .hf_publish import ERROR, RESULT, Refused
from .lora import README, Listing, Plan, model_card

if TYPE_CHECKING:
    from ..handle import Box

log = logging.getLogger(__name__)

# Hub settings (not secrets) a publish on the instance inherits from here.
PASSED_ON = ("HF_ENDPOINT", "HF_HUB_DISABLE_XET", "HF_HUB_ENABLE_HF_TRANSFER", "HF_HUB_ETAG_TIMEOUT")


def _sdk():
    try:
        import huggingface_hub
    except ImportError:
        raise FerryError("Hugging Face support is not installed",
                         hint="pip install 'ferry[hf]'   (huggingface_hub>=0.24)") from None
    return huggingface_hub


def _api(token: str | None):
    return _sdk().HfApi(token=token)


def whoami(token: str) -> str:
    """The user the token belongs to (one request)."""
    from huggingface_hub.utils import HfHubHTTPError

    try:
        return _api(token).whoami()["name"]
    except HfHubHTTPError as exc:
        raise _failure(exc, "asking who the token belongs to") from None


def _failure(exc, doing: str) -> FerryError:
    from .hf_publish import _http_failure

    refused = _http_failure(exc, doing, "")
    return ProviderError(refused.message, hint=refused.hint)


def _resolve_user(settings: Settings, plan: Plan) -> str:
    """The token (before any request), then the namespace: --user, or whoever the token belongs to."""
    token = tokens.token(settings, "huggingface")
    _sdk()
    if plan.user is None:
        plan.user = whoami(token)
        plan.card = model_card(plan)  # the card names the repo
    return token


def _message(plan: Plan) -> str:
    return f"Publish {plan.weights.rel} with {len(plan.samples)} sample{'s' if len(plan.samples) != 1 else ''} (ferry)"


def publish(settings: Settings, plan: Plan) -> dict[str, Any]:
    """Carry out ``plan`` from this machine: one commit with the weights, the kept samples and the card."""
    token = _resolve_user(settings, plan)
    root = Path(plan.source).expanduser()
    files: list[tuple[object, str]] = [(str(root / rel), in_repo) for rel, in_repo, _ in plan.uploads() if rel != README]
    files.append((plan.card.encode(), README))
    try:
        return _sdk_publish(plan, files, token)
    except Refused as exc:
        raise FerryError(exc.message, hint=exc.hint, exit_code=exc.code) from None


def _sdk_publish(plan: Plan, files, token: str) -> dict[str, Any]:
    from .hf_publish import publish as commit

    return commit(plan.repo_id, files, token=token, public=plan.public, exist_ok=plan.exist_ok,
                  message=_message(plan), prog=program(), say=log.info)


# -- from the instance ---------------------------------------------------------------------------------
LIST_SH = """
set -eu
d={dir}
if [ ! -d "$d" ]; then echo "ferry-missing-dir" >&2; exit 3; fi
find "$d" -maxdepth 1 -type f -name '*.safetensors' -printf '%s\\t%P\\n'
if [ -d "$d/samples" ]; then find "$d/samples" -maxdepth 1 -type f -printf '%s\\tsamples/%P\\n'; fi
"""


def remote_dir(box: "Box", directory: str) -> str:
    """The folder on the instance: absolute as given, else under the project's workdir."""
    return directory if directory.startswith("/") else f"{box.workdir}/{directory.rstrip('/')}"


def remote_listing(box: "Box", directory: str) -> Listing:
    """The training folder as it is on the instance (names and sizes only, and config.yaml's text)."""
    path = remote_dir(box, directory)
    proc = box.remote.run(LIST_SH.format(dir=shlex.quote(path)), check=False)
    if proc.returncode == 3:
        raise FerryError(f"{box.name} has no directory {path}",
                         hint=f"look on the instance: {cmd(f'ssh --name {box.name}')}")
    if proc.returncode != 0:
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise FerryError(f"could not list {path} on {box.name}" + (f": {detail[-1]}" if detail else ""),
                         hint=f"look on the instance: {cmd(f'ssh --name {box.name}')}")
    config_proc = box.remote.run(f"cat {shlex.quote(path + '/config.yaml')} 2>/dev/null || true", check=False)
    config_text = config_proc.stdout.decode(errors="replace") or None
    return Listing.parse(path, proc.stdout.decode(errors="replace"), config_text)


class _ResultLines:
    """The job's output, passed on to stderr except the one result line, which is kept."""

    def __init__(self, sink):
        self.sink, self.buffer, self.found = sink, b"", None

    def write(self, data: bytes) -> int:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text.startswith((RESULT, ERROR)):
                self.found = text
            else:
                self.sink.write(text + "\n")
                self.sink.flush()
        return len(data)

    def flush(self) -> None:
        pass


def publish_from_instance(settings: Settings, box: "Box", plan: Plan, python: str = "python3") -> dict[str, Any]:
    """Carry out ``plan`` on the instance, as a ferry job, with the weights where they are."""
    import sys
    from importlib import resources

    token = _resolve_user(settings, plan)
    stamp = os.urandom(6).hex()
    base = "$HOME/.ferry/hub"
    script = f"{base}/hf_publish.py"
    plan_file = f"{base}/plan-{stamp}.json"
    token_file = f"$HOME/.ferry/credentials/hf-token-{stamp}"
    document = {"repo": plan.repo_id, "public": plan.public, "exist_ok": plan.exist_ok, "message": _message(plan),
                "source": plan.source, "prog": program(),
                "files": [{"source": rel, "path": in_repo} for rel, in_repo, _ in plan.uploads() if rel != README]
                + [{"source": None, "content": plan.card, "path": README}]}
    code = resources.files("ferry.hub").joinpath("hf_publish.py").read_bytes()
    # Three files over ssh's stdin (umask 077): the script, the plan, and the token in ~/.ferry/credentials/.
    box.remote.run(f'umask 077; mkdir -p "{base}" "$HOME/.ferry/credentials" && chmod 700 "$HOME/.ferry/credentials"'
                   f' && cat > "{script}"', input=code)
    box.remote.run(f'umask 077; cat > "{plan_file}"', input=json.dumps(document).encode())
    box.remote.run(f'umask 077; cat > "{token_file}"', input=token.encode())
    env = {name: value for name in PASSED_ON if (value := config.getenv(name))}
    env["FERRY_HF_TOKEN_FILE"] = f"~/.ferry/credentials/hf-token-{stamp}"  # a path, not the token
    command = (f'{shlex.quote(python)} "{script}" "{plan_file}"; status=$?; rm -f "{plan_file}" "{token_file}"; '
               f'exit $status')
    log.info(f"publishing from {box.name} (a job there: the weights go straight to the Hub)")
    lines = _ResultLines(sys.stderr)
    try:
        end = box.run(command, warn=True, env=env, label="hf-publish", out=lines)
    finally:
        box.remote.run(f'rm -f "{token_file}" "{plan_file}"', check=False)
    if lines.found and lines.found.startswith(RESULT):
        return json.loads(lines.found[len(RESULT):])
    if lines.found:
        failed = json.loads(lines.found[len(ERROR):])
        hint = failed.get("hint")
        if "not installed" in failed["message"]:
            hint = (f"install it on the instance: {cmd(f'run --name {box.name} ' + shlex.quote(python + ' -m pip install huggingface_hub'))}"
                    f"   (or name a python that has it: --python .venv/bin/python)")
        raise FerryError(failed["message"], hint=hint, exit_code=failed.get("code") or 1)
    if end.exit_code == 127:
        raise FerryError(f"{python} was not found on {box.name}",
                         hint="name the instance's python: --python /usr/bin/python3 (or .venv/bin/python)")
    raise FerryError(f"the publish job on {box.name} {end.describe()}",
                     hint=f"see its log: {cmd(f'logs --name {box.name} -j hf-publish')}")


# -- listing -------------------------------------------------------------------------------------------
def list_models(settings: Settings, user: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The user's models (the token's user by default): name, visibility, downloads, likes, last modified."""
    from huggingface_hub.utils import HfHubHTTPError

    found = tokens.lookup(settings, "huggingface")
    token = found[0] if found else None
    if user is None:
        if token is None:
            tokens.token(settings, "huggingface")  # raises: say where ferry looked
        user = whoami(token)
    _sdk()
    try:
        models = list(_api(token).list_models(author=user, limit=limit, expand=["private", "downloads", "likes",
                                                                                "lastModified"]))
    except HfHubHTTPError as exc:
        raise _failure(exc, f"listing {user}'s models") from None
    return [{"name": m.id, "private": bool(m.private), "downloads": m.downloads or 0, "likes": m.likes or 0,
             "last_modified": m.last_modified.isoformat() if m.last_modified else None} for m in models]

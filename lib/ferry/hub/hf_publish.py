"""Publish files to a Hugging Face model repo in ONE commit, with ferry's visibility rules.

This module imports nothing from ferry (only the standard library and
``huggingface_hub``), because it runs in two places: inside ferry
(:func:`ferry.hub.hf.publish`) and, copied verbatim, as a script on an
instance (``hf.publish-lora --from-instance``), where the weights already are.
As a script it reads a JSON plan on argv[1] and the token from the file
named by ``FERRY_HF_TOKEN_FILE`` (deleting it once read: the token is never
on a command line or in the job's environment), and prints one
``FERRY-HF-RESULT {json}`` or ``FERRY-HF-ERROR {json}`` line.

The rules: a repo is created private unless ``public``; an existing repo is
refused unless ``exist_ok``; a public repo is never published into as if it
were private (refused without ``public``); a private repo becomes public only
with ``public``, after the commit landed, and the result says so. Everything
(weights, samples, the card) goes in one ``create_commit``, so a repo is never
half-published.
"""

from __future__ import annotations

import json
import os
import sys

RESULT = "FERRY-HF-RESULT "
ERROR = "FERRY-HF-ERROR "


class Refused(Exception):
    """An expected failure: a message, a hint, an exit status (1; 2 for usage)."""

    def __init__(self, message: str, hint: str | None = None, code: int = 1):
        super().__init__(message)
        self.message, self.hint, self.code = message, hint, code


def _http_failure(exc, doing: str, repo_id: str) -> Refused:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status == 401:
        return Refused(f"Hugging Face refused the token while {doing} (HTTP 401)",
                       hint="check HF_TOKEN: it may be revoked or mistyped (https://huggingface.co/settings/tokens)")
    if status == 403:
        return Refused(f"the token may not write to {repo_id} (HTTP 403)",
                       hint="use a token with write access to that namespace (https://huggingface.co/settings/tokens)")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return Refused(f"Hugging Face failed while {doing}: {first}", hint="run it again; --debug shows the details")


def publish(repo_id: str, files: list[tuple[object, str]], *, token: str, public: bool, exist_ok: bool,
            message: str, prog: str = "ferry", say=None) -> dict:
    """Create or reuse ``repo_id`` by the rules above and commit ``files`` ((local path or bytes, path in repo)).

    Returns what happened: repo, url, commit id and url, private, created, made_public, files.
    """
    try:
        from huggingface_hub import CommitOperationAdd, HfApi
        from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError
    except ImportError:
        raise Refused(f"huggingface_hub is not installed for {sys.executable}",
                      hint="pip install 'ferry[hf]' (or: pip install 'huggingface_hub>=0.24')") from None

    api = HfApi(token=token)
    try:
        try:
            info = api.repo_info(repo_id, repo_type="model")
        except RepositoryNotFoundError:
            info = None
    except HfHubHTTPError as exc:
        raise _http_failure(exc, f"looking up {repo_id}", repo_id) from None
    created = made_public = False
    if info is not None:
        was = "private" if info.private else "public"
        if not exist_ok:
            raise Refused(f"{repo_id} already exists ({was}); ferry does not add to an existing repo unless told",
                          hint=f"add this as a new commit to it: {prog} hf.publish-lora ... --exist-ok, or choose "
                               "another --repo")
        if not info.private and not public:
            raise Refused(f"{repo_id} is public, and without --public ferry publishes privately",
                          hint="pass --public to publish into it (it stays public), or make it private on the Hub first")
        made_public = bool(info.private and public)
    else:
        try:
            api.create_repo(repo_id, repo_type="model", private=not public, exist_ok=False)
        except HfHubHTTPError as exc:
            if getattr(getattr(exc, "response", None), "status_code", None) == 409:
                raise Refused(f"{repo_id} was created by someone else just now",
                              hint=f"look at it, then publish with --exist-ok: {prog} hf.list-models") from None
            raise _http_failure(exc, f"creating {repo_id}", repo_id) from None
        created = True
    if say is not None:
        say(f"publishing {len(files)} files to {repo_id} ({'public' if public else 'private'}) in one commit")
    operations = [CommitOperationAdd(path_in_repo=in_repo, path_or_fileobj=source) for source, in_repo in files]
    try:
        commit = api.create_commit(repo_id, operations, commit_message=message, repo_type="model")
    except HfHubHTTPError as exc:
        raise _http_failure(exc, f"committing to {repo_id}", repo_id) from None
    if made_public:
        try:
            if hasattr(api, "update_repo_settings"):
                api.update_repo_settings(repo_id, private=False, repo_type="model")
            else:  # huggingface_hub < 0.25
                api.update_repo_visibility(repo_id, private=False, repo_type="model")
        except HfHubHTTPError as exc:
            raise _http_failure(exc, f"making {repo_id} public (the commit landed; the repo stays private)",
                                repo_id) from None
    endpoint = api.endpoint.rstrip("/")
    return {"repo": repo_id, "url": f"{endpoint}/{repo_id}", "commit": getattr(commit, "oid", None),
            "commit_url": getattr(commit, "commit_url", None), "private": not public,  # the rules leave no other case
            "created": created, "made_public": made_public, "files": len(files)}


def main(argv: list[str]) -> int:
    """On an instance: ``python3 hf_publish.py PLAN.json`` with FERRY_HF_TOKEN_FILE in the environment."""
    token_file = os.path.expanduser(os.environ.get("FERRY_HF_TOKEN_FILE", ""))
    token = ""
    try:
        with open(token_file) as fh:
            token = fh.read().strip()
    except OSError:
        pass
    finally:
        if token_file:
            try:
                os.unlink(token_file)
            except OSError:
                pass
    try:
        if not token:
            raise Refused("the Hugging Face token did not reach the instance", hint="run the publish again")
        with open(argv[1]) as fh:
            plan = json.load(fh)
        base = plan["source"]
        files = [(item["source"] if item.get("source") is not None else item["content"].encode(), item["path"])
                 for item in plan["files"]]
        files = [(source if isinstance(source, bytes) else os.path.join(base, source), path) for source, path in files]
        for source, path in files:
            if isinstance(source, str) and not os.path.isfile(source):
                raise Refused(f"{source} is gone from the instance", hint="check the folder and publish again")
        result = publish(plan["repo"], files, token=token, public=plan["public"], exist_ok=plan["exist_ok"],
                         message=plan["message"], prog=plan.get("prog", "ferry"), say=lambda line: print(line, flush=True))
    except Refused as exc:
        print(ERROR + json.dumps({"message": exc.message, "hint": exc.hint, "code": exc.code}), flush=True)
        return exc.code
    print(RESULT + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

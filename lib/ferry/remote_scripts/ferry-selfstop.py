"""ferry-selfstop.py CLOUD ACTION: an instance stops or terminates itself through its cloud's API.

Run by ferry-agent on the instance. It uses only the narrowest credential the
cloud gives an instance about itself, read from the instance's own
environment (or, in a container, from PID 1's), never the account's key:

  runpod   RUNPOD_POD_ID and the Pod-scoped RUNPOD_API_KEY (GraphQL podStop / podTerminate)
  vast     CONTAINER_ID and CONTAINER_API_KEY (PUT state=stopped / DELETE the instance)
  thunder  INSTANCE_ID from the agent's config and the token in ~/.ferry/autostop/key, which
           exists only when the user opted in with `launch --autostop-key` (Thunder has no
           narrower credential)

The key travels in an Authorization header from this process's memory: never
on a command line, never in a log. API_URL in the agent's config points the
call elsewhere (the test suite's fake clouds).
"""

import json
import os
import sys
import urllib.error
import urllib.request

HOME = os.path.expanduser("~")
CONFIG = os.path.join(HOME, ".ferry", "autostop", "config")
DEFAULT_URLS = {"runpod": "https://api.runpod.io", "vast": "https://console.vast.ai",
                "thunder": "https://api.thundercompute.com:8443"}


def config():
    found = {}
    try:
        with open(CONFIG) as fh:
            for line in fh:
                key, _, value = line.rstrip("\n").partition("=")
                found[key] = value
    except OSError:
        pass
    return found


def env(name):
    """The variable from this process, else from the container's PID 1 (where clouds put it)."""
    if os.environ.get(name):
        return os.environ[name]
    try:
        with open("/proc/1/environ", "rb") as fh:
            for item in fh.read().split(b"\0"):
                key, _, value = item.partition(b"=")
                if key.decode(errors="replace") == name:
                    return value.decode(errors="replace")
    except OSError:
        pass
    return ""


def call(method, url, key, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": "Bearer " + key, "Content-Type": "application/json", "User-Agent": "ferry-agent"})
    with urllib.request.urlopen(request, timeout=30) as response:  # an HTTP error status raises
        text = response.read().decode("utf-8", "replace")
    try:
        return json.loads(text) if text.strip() else None
    except ValueError:
        return None


def main(cloud, action):
    settings = config()
    base = (settings.get("API_URL") or DEFAULT_URLS[cloud]).rstrip("/")
    if cloud == "runpod":
        pod, key = env("RUNPOD_POD_ID"), env("RUNPOD_API_KEY")
        if not (pod and key):
            sys.exit("ferry-selfstop: no RUNPOD_POD_ID / Pod-scoped RUNPOD_API_KEY on this pod")
        verb = "podStop" if action == "stop" else "podTerminate"
        base = base[: -len("/graphql")] if base.endswith("/graphql") else base
        answer = call("POST", base + "/graphql", key, {"query": 'mutation { %s(input: {podId: "%s"}) %s }'
                                                       % (verb, pod, "{ id }" if verb == "podStop" else "")})
        if isinstance(answer, dict) and answer.get("errors"):  # GraphQL says no with a 200
            sys.exit("ferry-selfstop: RunPod refused %s: %s" % (verb, answer["errors"][0].get("message")))
    elif cloud == "vast":
        instance, key = env("CONTAINER_ID"), env("CONTAINER_API_KEY")
        if not (instance and key):
            sys.exit("ferry-selfstop: no CONTAINER_ID / CONTAINER_API_KEY on this instance")
        url = "%s/api/v0/instances/%s/" % (base, instance)
        if action == "stop":
            call("PUT", url, key, {"state": "stopped"})
        else:
            call("DELETE", url, key)
    elif cloud == "thunder":
        try:
            with open(os.path.join(HOME, ".ferry", "autostop", "key")) as fh:
                key = fh.read().strip()
        except OSError:
            sys.exit("ferry-selfstop: Thunder needs `launch --autostop-key` (its API has no per-instance credential)")
        base = base if base.endswith("/v1") else base + "/v1"
        call("POST", "%s/instances/%s/delete" % (base, settings.get("INSTANCE_ID", "")), key)
    else:
        sys.exit("ferry-selfstop: no self-stop path for %r" % cloud)


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    except (OSError, urllib.error.URLError) as exc:  # HTTPError too: one line for the agent's log
        sys.exit("ferry-selfstop: %s %s failed: %s" % (sys.argv[1], sys.argv[2], exc))

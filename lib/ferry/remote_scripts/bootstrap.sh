#!/bin/sh
# Runs on the instance at every launch, from ~/.ferry/bin/. Makes sure the
# tools ferry drives are there (rsync for sync, tmux for jobs, uv for Python
# environments) and reports facts as key=value lines for the launcher.
# FERRY_CHECK_ONLY=1 (the local provider: the instance is the user's own
# machine) only reports; it never installs anything.
set -u
check_only="${FERRY_CHECK_ONLY:-0}"

missing() {
    out=""
    for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || out="$out $tool"; done
    echo "$out"
}

need=$(missing rsync tmux setsid)
if [ -n "$need" ] && [ "$check_only" != 1 ]; then
    sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
    packages=$(echo "$need" | sed 's/setsid/util-linux/')
    if command -v apt-get >/dev/null 2>&1; then
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null 2>&1
    elif command -v dnf >/dev/null 2>&1; then
        $sudo dnf install -y -q $packages >/dev/null 2>&1
    elif command -v yum >/dev/null 2>&1; then
        $sudo yum install -y -q $packages >/dev/null 2>&1
    elif command -v apk >/dev/null 2>&1; then
        $sudo apk add -q $packages >/dev/null 2>&1
    fi
    need=$(missing rsync tmux setsid)
fi

if ! command -v uv >/dev/null 2>&1 && [ ! -x "$HOME/.local/bin/uv" ] && [ "$check_only" != 1 ]; then
    if command -v curl >/dev/null 2>&1; then
        curl -LsSf https://astral.sh/uv/install.sh 2>/dev/null | env UV_NO_MODIFY_PATH=1 sh >/dev/null 2>&1
    fi
fi

mkdir -p "$HOME/.ferry/jobs"
echo "home=$HOME"
echo "missing=$(echo $need)"
echo "uv=$(command -v uv 2>/dev/null || { [ -x "$HOME/.local/bin/uv" ] && echo "$HOME/.local/bin/uv"; })"
echo "python=$(command -v python3 2>/dev/null)"
echo "gpus=$(nvidia-smi -L 2>/dev/null | wc -l | tr -d ' ')"
echo "ok=1"

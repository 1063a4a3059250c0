#!/usr/bin/env bash
# cloudflared.sh: install Cloudflare's `cloudflared` into ~/.local/bin when it is missing.
#
# Needs:   network (github.com, for the release binary); curl or wget. No root: it
#          installs for this user only, into ~/.local/bin (on every ferry job's PATH).
# Usage:   cloudflared.sh              (or: ferry script cloudflared.sh; ferry tunnel --install PORT)
# Again:   a second run finds cloudflared on PATH, says so and changes nothing.
# Env:     CLOUDFLARED_VERSION=2024.6.1 pins a release (default: the latest).
set -euo pipefail

die() { echo "cloudflared.sh: $*" >&2; exit 1; }

bin_dir="$HOME/.local/bin"
export PATH="$bin_dir:$PATH"

if found=$(command -v cloudflared 2>/dev/null); then
    echo "cloudflared.sh: cloudflared is already installed at $found ($("$found" --version 2>/dev/null | head -n 1)); nothing to do"
    exit 0
fi

case "$(uname -m)" in
    x86_64|amd64) arch=amd64 ;;
    aarch64|arm64) arch=arm64 ;;
    armv7l|armv6l) arch=arm ;;
    i386|i686) arch=386 ;;
    *) die "no cloudflared release for this machine ($(uname -m)); see https://github.com/cloudflare/cloudflared/releases" ;;
esac
[ "$(uname -s)" = Linux ] || die "this script installs the Linux build; on $(uname -s) install cloudflared by hand"

version=${CLOUDFLARED_VERSION:-}
if [ -n "$version" ]; then
    url="https://github.com/cloudflare/cloudflared/releases/download/$version/cloudflared-linux-$arch"
else
    url="https://github.com/cloudflare/cloudflared/releases/latest/download/cloudflared-linux-$arch"
fi

mkdir -p "$bin_dir"
part="$bin_dir/.cloudflared.part.$$"
trap 'rm -f "$part"' EXIT
echo "cloudflared.sh: downloading $url"
if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 3 -o "$part" "$url" || die "could not download $url (is github.com reachable from here?)"
elif command -v wget >/dev/null 2>&1; then
    wget -q -O "$part" "$url" || die "could not download $url (is github.com reachable from here?)"
else
    die "neither curl nor wget is installed; install one (apt-get install -y curl) and run this again"
fi
chmod 755 "$part"
"$part" --version >/dev/null 2>&1 || die "the downloaded file does not run on this machine; see $url"
mv -f "$part" "$bin_dir/cloudflared"
trap - EXIT
echo "cloudflared.sh: installed $("$bin_dir/cloudflared" --version | head -n 1) at $bin_dir/cloudflared"

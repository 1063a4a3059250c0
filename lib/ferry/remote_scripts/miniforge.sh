#!/usr/bin/env bash
# miniforge.sh: Miniforge (conda + mamba from conda-forge) into ~/miniforge3 when missing, and
# optionally the conda environment an environment.yml describes.
#
# Needs:   network (github.com for the installer, conda-forge for packages); curl or wget.
#          No root: everything goes under ~/miniforge3 (MINIFORGE_HOME to change it).
# Usage:   miniforge.sh                          Miniforge only
#          miniforge.sh environment.yml [NAME]   and the environment (NAME: the file's `name:`)
# Again:   a second run with an unchanged environment.yml says so and does nothing.
#          `ferry build` runs it for a project with an environment.yml, and jobs then find the
#          environment (its bin/ first on PATH, CONDA_PREFIX set).
set -euo pipefail

die() { echo "miniforge.sh: $*" >&2; exit 1; }

prefix=${MINIFORGE_HOME:-$HOME/miniforge3}
yml=${1:-}
name=${2:-}

if [ -x "$prefix/bin/conda" ]; then
    echo "miniforge.sh: Miniforge is already installed at $prefix"
else
    case "$(uname -m)" in
        x86_64|amd64) arch=x86_64 ;;
        aarch64|arm64) arch=aarch64 ;;
        ppc64le) arch=ppc64le ;;
        *) die "no Miniforge installer for this machine ($(uname -m))" ;;
    esac
    url="https://github.com/conda-forge/miniforge/releases/latest/download/Miniforge3-$(uname -s)-$arch.sh"
    installer=$(mktemp "${TMPDIR:-/tmp}/miniforge.XXXXXX.sh")
    trap 'rm -f "$installer"' EXIT
    echo "miniforge.sh: downloading $url"
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL --retry 3 -o "$installer" "$url" || die "could not download $url (is github.com reachable?)"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$installer" "$url" || die "could not download $url (is github.com reachable?)"
    else
        die "neither curl nor wget is installed; install one (apt-get install -y curl) and run this again"
    fi
    [ ! -e "$prefix" ] || die "$prefix exists but holds no conda; move it away and run this again"
    bash "$installer" -b -p "$prefix" >/dev/null || die "the Miniforge installer failed (see above)"
    rm -f "$installer"
    trap - EXIT
    echo "miniforge.sh: installed Miniforge at $prefix"
fi

[ -n "$yml" ] || exit 0
[ -f "$yml" ] || die "no such file: $yml (run it in the directory that holds it; ferry runs it in the workdir)"
if [ -z "$name" ]; then
    name=$(sed -n 's/^name:[[:space:]]*["'\'']\{0,1\}\([A-Za-z0-9_.+-]*\).*/\1/p' "$yml" | head -n 1)
fi
[ -n "$name" ] || die "$yml has no name: line; give the environment's name as the second argument"

env_dir="$prefix/envs/$name"
marker="$env_dir/.ferry-environment.sha256"
want=$(sha256sum < "$yml" | cut -d' ' -f1)
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
    echo "miniforge.sh: environment $name at $env_dir matches $yml; nothing to do"
    exit 0
fi
tool="$prefix/bin/mamba"
[ -x "$tool" ] || tool="$prefix/bin/conda"
if [ -d "$env_dir/conda-meta" ]; then
    echo "miniforge.sh: updating environment $name from $yml"
    "$tool" env update -y -n "$name" -f "$yml" --prune || die "could not update environment $name (see above)"
else
    echo "miniforge.sh: creating environment $name from $yml"
    "$tool" env create -y -n "$name" -f "$yml" || die "could not create environment $name (see above)"
fi
printf '%s\n' "$want" > "$marker"
echo "miniforge.sh: environment $name is ready at $env_dir"

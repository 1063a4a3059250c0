#!/usr/bin/env bash
# comfyui.sh: ComfyUI into its own environment, plus the models a list names.
#
# Needs:   network (github.com for ComfyUI, PyPI for its packages, the models' hosts);
#          git, python3 (3.10+) and curl or wget. No root. A GPU to be useful.
# Usage:   comfyui.sh [--dir DIR] [--models FILE]
#            --dir DIR      where ComfyUI goes (default: ComfyUI, in the current directory,
#                           which is the workdir under `ferry script`)
#            --models FILE  one model a line: SUBDIR URL [FILENAME], e.g.
#                           checkpoints https://huggingface.co/org/repo/resolve/main/m.safetensors
#                           (SUBDIR under DIR/models; FILENAME defaults to the URL's last part;
#                           # starts a comment). HF_TOKEN, when set, is sent to huggingface.co
#                           only, from a mode-600 file, never on a command line.
# Again:   a second run finds ComfyUI, its environment (same requirements.txt) and every
#          model present, says so and does nothing. Start it afterwards with
#          DIR/.venv/bin/python DIR/main.py --listen 127.0.0.1 --port 8188
# Env:     COMFYUI_REF=v0.3.10 checks out that tag or commit (default: the newest master).
set -euo pipefail

die() { echo "comfyui.sh: $*" >&2; exit 1; }

dir=ComfyUI
models=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) [ $# -ge 2 ] || die "--dir needs a directory"; dir=$2; shift 2 ;;
        --dir=*) dir=${1#--dir=}; shift ;;
        --models) [ $# -ge 2 ] || die "--models needs a file"; models=$2; shift 2 ;;
        --models=*) models=${1#--models=}; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (usage: comfyui.sh [--dir DIR] [--models FILE])" ;;
    esac
done
[ -z "$models" ] || [ -f "$models" ] || die "no such models file: $models"
did=0

# -- ComfyUI itself --------------------------------------------------------------------------------
if [ -f "$dir/main.py" ]; then
    echo "comfyui.sh: ComfyUI is already at $dir"
else
    command -v git >/dev/null 2>&1 || die "git is not installed (apt-get install -y git)"
    [ ! -e "$dir" ] || [ -z "$(ls -A "$dir")" ] || die "$dir exists and is not ComfyUI; pick another --dir"
    echo "comfyui.sh: cloning ComfyUI into $dir"
    git clone -q https://github.com/comfyanonymous/ComfyUI "$dir" || die "could not clone ComfyUI (is github.com reachable?)"
    if [ -n "${COMFYUI_REF:-}" ]; then git -C "$dir" checkout -q "$COMFYUI_REF" || die "no ref $COMFYUI_REF in ComfyUI"; fi
    did=1
fi

# -- its environment: DIR/.venv, rebuilt when requirements.txt changes ------------------------------
marker="$dir/.venv/.ferry-requirements.sha256"
want=$(sha256sum < "$dir/requirements.txt" | cut -d' ' -f1)
if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
    echo "comfyui.sh: its environment $dir/.venv is up to date"
else
    echo "comfyui.sh: installing its requirements into $dir/.venv"
    if command -v uv >/dev/null 2>&1; then
        [ -x "$dir/.venv/bin/python" ] || uv venv -q "$dir/.venv"
        uv pip install -q --python "$dir/.venv/bin/python" -r "$dir/requirements.txt" || die "could not install ComfyUI's requirements"
    else
        command -v python3 >/dev/null 2>&1 || die "python3 is not installed"
        [ -x "$dir/.venv/bin/python" ] || python3 -m venv "$dir/.venv" || die "python3 -m venv failed (apt-get install -y python3-venv)"
        "$dir/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$dir/requirements.txt" \
            || die "could not install ComfyUI's requirements"
    fi
    printf '%s\n' "$want" > "$marker"
    did=1
fi

# -- models ---------------------------------------------------------------------------------------
header=""
cleanup() { [ -z "$header" ] || rm -f "$header"; }
trap cleanup EXIT
fetch() {  # fetch URL DEST
    local url=$1 dest=$2 part="$2.part"
    local auth=()
    case "$url" in
        https://huggingface.co/*)
            if [ -n "${HF_TOKEN:-}" ]; then
                if [ -z "$header" ]; then
                    header=$(mktemp) && chmod 600 "$header"
                    printf 'Authorization: Bearer %s\n' "$HF_TOKEN" > "$header"
                fi
                auth=(-H "@$header")
            fi ;;
    esac
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 3 -C - "${auth[@]}" -o "$part" "$url" || return 1
    elif command -v wget >/dev/null 2>&1; then
        [ ${#auth[@]} -eq 0 ] || die "downloading from huggingface.co with HF_TOKEN needs curl"
        wget -q -c -O "$part" "$url" || return 1
    else
        die "neither curl nor wget is installed (apt-get install -y curl)"
    fi
    mv -f "$part" "$dest"
}

if [ -n "$models" ]; then
    have=0
    while read -r sub url file _; do
        case "$sub" in ''|\#*) continue ;; esac
        [ -n "$url" ] || die "$models: '$sub' has no URL (a line is: SUBDIR URL [FILENAME])"
        case "$sub$file" in *..*) die "$models: '$sub/$file' leaves the models directory" ;; esac
        file=${file:-${url##*/}}
        file=${file%%\?*}
        dest="$dir/models/$sub/$file"
        if [ -s "$dest" ]; then have=$((have + 1)); continue; fi
        mkdir -p "$dir/models/$sub"
        echo "comfyui.sh: downloading $sub/$file"
        fetch "$url" "$dest" || die "could not download $url"
        did=1
    done < "$models"
    [ "$have" -eq 0 ] || echo "comfyui.sh: $have model(s) already present"
fi

if [ "$did" = 0 ]; then
    echo "comfyui.sh: nothing to do"
else
    echo "comfyui.sh: ready; start it with $dir/.venv/bin/python $dir/main.py --listen 127.0.0.1 --port 8188"
fi

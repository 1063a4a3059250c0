#!/usr/bin/env bash
# raid0.sh: every spare NVMe disk into one RAID0 array, formatted (ext4) and mounted.
#
# Needs:   root (or passwordless sudo) to make the array, format and mount; mdadm for two
#          or more disks (installed with apt-get/dnf when missing, which needs network).
#          --plan needs neither: it only reads lsblk.
# Usage:   raid0.sh [--mount DIR] [--plan]
#            --mount DIR  where the array goes (default /mnt/raid0)
#            --plan       print the disks it would use, one per line, and change nothing
# Which:   NVMe disks (lsblk TYPE disk, /dev/nvme*) that have no partitions or other
#          children, are not mounted, and do not hold `/` (never the root disk, however
#          deep under it `/` is mounted: partition, LVM, crypt). Two or more: one RAID0
#          (/dev/md/ferry-raid0); one: formatted and mounted directly; none: says so, does nothing.
# Again:   a second run finds DIR mounted, says so and changes nothing; after a reboot
#          it mounts the existing array again.
# WARNING: the chosen disks are formatted: everything on them is lost.
set -euo pipefail

die() { echo "raid0.sh: $*" >&2; exit 1; }

mount_dir=/mnt/raid0
plan_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --mount) [ $# -ge 2 ] || die "--mount needs a directory"; mount_dir=$2; shift 2 ;;
        --mount=*) mount_dir=${1#--mount=}; shift ;;
        --plan) plan_only=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) die "unknown argument '$1' (usage: raid0.sh [--mount DIR] [--plan])" ;;
    esac
done
case "$mount_dir" in /*) ;; *) die "--mount takes an absolute path, not '$mount_dir'" ;; esac
command -v lsblk >/dev/null 2>&1 || die "lsblk is not installed (apt-get install -y util-linux)"

# Every block device, one per line: NAME TYPE MOUNTPOINT PKNAME (pairs format, values quoted by lsblk).
names=() types=() mounts=() parents=()
while IFS= read -r line; do
    [ -n "$line" ] || continue
    NAME="" TYPE="" MOUNTPOINT="" PKNAME=""
    eval "$line"  # lsblk -P quotes and escapes every value: this only assigns the four variables
    names+=("$NAME"); types+=("$TYPE"); mounts+=("$MOUNTPOINT"); parents+=("$PKNAME")
done < <(lsblk -P -p -o NAME,TYPE,MOUNTPOINT,PKNAME) || die "lsblk failed"

index_of() {  # index_of NAME: sets IDX to the row of that device, or -1
    local i
    IDX=-1
    for i in "${!names[@]}"; do [ "${names[i]}" = "$1" ] && { IDX=$i; return 0; }; done
    return 0
}

# The disk under `/`: walk up from whatever is mounted there to a device of TYPE disk.
root_disk=""
for i in "${!names[@]}"; do
    [ "${mounts[i]}" = / ] || continue
    j=$i
    while [ "${types[j]}" != disk ] && [ -n "${parents[j]}" ]; do
        index_of "${parents[j]}"
        [ "$IDX" -ge 0 ] || break
        j=$IDX
    done
    [ "${types[j]}" = disk ] && root_disk=${names[j]}
done

is_parent() { local p; for p in "${parents[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }

disks=()
for i in "${!names[@]}"; do
    [ "${types[i]}" = disk ] || continue
    case "${names[i]}" in /dev/nvme*) ;; *) continue ;; esac
    [ "${names[i]}" != "$root_disk" ] || continue
    [ -z "${mounts[i]}" ] || continue
    is_parent "${names[i]}" && continue  # partitions, an array, LVM on it: in use
    disks+=("${names[i]}")
done

if [ "$plan_only" = 1 ]; then
    [ ${#disks[@]} -eq 0 ] || printf '%s\n' "${disks[@]}"
    exit 0
fi

for i in "${!names[@]}"; do
    if [ "${mounts[i]}" = "$mount_dir" ]; then
        echo "raid0.sh: ${names[i]} is already mounted at $mount_dir; nothing to do"
        exit 0
    fi
done

sudo=""
need_root() {
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"
        else die "this needs root (or passwordless sudo) to $1"; fi
    fi
}

array=/dev/md/ferry-raid0
if [ -e "$array" ]; then  # made by an earlier run (a reboot unmounted it)
    need_root "mount $array"
    $sudo mkdir -p "$mount_dir"
    $sudo mount "$array" "$mount_dir" || die "could not mount $array at $mount_dir"
    echo "raid0.sh: mounted the existing array $array at $mount_dir"
    exit 0
fi

if [ ${#disks[@]} -eq 0 ]; then
    echo "raid0.sh: no spare NVMe disk (root disk: ${root_disk:-not on a block device}); nothing to do"
    exit 0
fi

echo "raid0.sh: using ${disks[*]} (root disk ${root_disk:-none found} left alone)"
if [ ${#disks[@]} -eq 1 ]; then
    need_root "format ${disks[0]}"
    device=${disks[0]}
else
    need_root "make a RAID0 of ${disks[*]}"
    if ! command -v mdadm >/dev/null 2>&1; then
        echo "raid0.sh: installing mdadm"
        if command -v apt-get >/dev/null 2>&1; then
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mdadm >/dev/null \
                || { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mdadm >/dev/null; } \
                || die "could not install mdadm (apt-get install -y mdadm)"
        elif command -v dnf >/dev/null 2>&1; then
            $sudo dnf install -y -q mdadm || die "could not install mdadm (dnf install -y mdadm)"
        else
            die "mdadm is not installed and no apt-get or dnf here to install it"
        fi
    fi
    $sudo mdadm --create "$array" --run --level=0 --raid-devices=${#disks[@]} "${disks[@]}" \
        || die "mdadm could not make the array from ${disks[*]}"
    device=$array
fi
$sudo mkfs.ext4 -q -F -L ferry-scratch "$device" || die "could not format $device"
$sudo mkdir -p "$mount_dir"
$sudo mount -o noatime "$device" "$mount_dir" || die "could not mount $device at $mount_dir"
$sudo chown "$(id -u):$(id -g)" "$mount_dir"
echo "raid0.sh: $device (${#disks[@]} disk(s)) is mounted at $mount_dir: $(df -h --output=size "$mount_dir" | tail -n 1 | tr -d ' ')"

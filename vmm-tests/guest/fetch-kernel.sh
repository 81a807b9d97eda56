#!/usr/bin/env bash
# fetch-kernel.sh: get the guest kernel for vsound's guest tests, without installing it.
#
# Usage:  vmm-tests/guest/fetch-kernel.sh [--refresh]
#
# Downloads (apt-get download, never install) the newest bookworm-backports
# linux-image-6.12.*+deb12-amd64-unsigned package (it has CONFIG_SND_VIRTIO=m; the
# -cloud flavour has no sound at all), unpacks it with dpkg -x and extracts the
# uncompressed vmlinux ELF from the bzImage (it boots through the PVH entry point, about
# 0.6 s faster under TCG than the bzImage). Result, in $VSOUND_GUEST_CACHE (default
# <repo>/target/guest-cache):
#   kernel/vmlinuz   the bzImage            kernel/release  e.g. 6.12.117+deb12-amd64
#   kernel/vmlinux   the ELF, if extracted  kernel/pkg      "<package> <version>"
#   kernel/modules -> root/lib/modules/<release>            kernel/root/  the dpkg -x tree
# Prints the path of the kernel to boot (vmlinux, or vmlinuz when extraction failed) on
# stdout; progress goes to stderr.
#
# Cached: once kernel/ is complete the script returns at once without asking apt.
# --refresh (or VSOUND_KERNEL_REFRESH=1) looks for a newer package and replaces the cache
# if there is one. VSOUND_KERNEL_PKG=<package name> pins the package.
# Needs the bookworm-backports apt source (scripts/install-deps.sh adds it); runs
# `apt-get update` itself (as root) if apt does not know any matching package yet.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VSOUND_GUEST_CACHE:-$REPO/target/guest-cache}
KDIR=$CACHE/kernel
readonly PKG_RE='^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$'

log() { printf 'fetch-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

refresh=${VSOUND_KERNEL_REFRESH:-0}
case "${1:-}" in
    --refresh) refresh=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) die "unknown argument: $1 (try --help)" ;;
esac

boot_image() {
    if [[ -s $KDIR/vmlinux ]]; then echo "$KDIR/vmlinux"; else echo "$KDIR/vmlinuz"; fi
}
complete() {
    [[ -s $KDIR/pkg && -s $KDIR/release && -s $KDIR/vmlinuz && -d $KDIR/modules/kernel ]]
}

# Fast path, without the lock: a complete cache is never modified in place.
if [[ $refresh != 1 ]] && complete; then
    boot_image
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.kernel.lock"
flock 9
if [[ $refresh != 1 ]] && complete; then # another run finished it while we waited
    boot_image
    exit 0
fi

# Newest "<package> <version>" that apt can download, or nothing.
newest_package() {
    local name version
    if [[ -n ${VSOUND_KERNEL_PKG:-} ]]; then
        name=$VSOUND_KERNEL_PKG
    else
        name=$(apt-cache pkgnames linux-image-6.12. 2>/dev/null | grep -E "$PKG_RE" | sort -V | tail -n 1) || true
    fi
    [[ -n $name ]] || return 0
    # the candidate version (what apt-get download fetches)
    version=$(apt-cache policy "$name" 2>/dev/null | awk '/Candidate:/ { print $2 }')
    [[ -n $version && $version != "(none)" ]] && echo "$name $version"
    return 0
}

want=$(newest_package)
if [[ -z $want ]]; then
    if [[ $(id -u) -eq 0 ]]; then
        log "no $PKG_RE known to apt; running apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600 update </dev/null >&2
        want=$(newest_package)
    fi
    [[ -n $want ]] || die "apt knows no package matching $PKG_RE: is bookworm-backports configured? (run scripts/install-deps.sh as root)"
fi

if complete && [[ $(cat "$KDIR/pkg") == "$want" ]]; then
    log "up to date: $want"
    boot_image
    exit 0
fi

name=${want% *}
version=${want#* }
log "fetching $name $version"
work=$(mktemp -d "$CACHE/.kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
apt_opts=(-q)
# as root, apt would drop to user _apt, who cannot write here (and says so)
[[ $(id -u) -ne 0 ]] || apt_opts+=(-o APT::Sandbox::User=root)
(cd "$work" && apt-get "${apt_opts[@]}" download "$name=$version" </dev/null >&2) ||
    die "apt-get download $name=$version failed"
deb=$(ls "$work"/*.deb)
log "unpacking $(basename "$deb") ($(du -h "$deb" | cut -f1))"
mkdir "$work/kernel" "$work/kernel/root"
dpkg -x "$deb" "$work/kernel/root"
rm -f "$deb"

vmlinuz=$(ls "$work"/kernel/root/boot/vmlinuz-*)
release=${vmlinuz##*/vmlinuz-}
[[ -d $work/kernel/root/lib/modules/$release/kernel ]] || die "no modules for $release in $name"
# the package does not ship modules.dep (its postinst runs depmod): make it here
if [[ ! -f $work/kernel/root/lib/modules/$release/modules.dep ]]; then
    command -v depmod >/dev/null 2>&1 || PATH=$PATH:/usr/sbin:/sbin
    depmod -b "$work/kernel/root" "$release" || die "depmod failed for $release"
fi
ln -s "root/boot/vmlinuz-$release" "$work/kernel/vmlinuz"
ln -s "root/lib/modules/$release" "$work/kernel/modules"
echo "$release" >"$work/kernel/release"

# --- vmlinux: decompress the ELF that the bzImage carries --------------------------------
u32() { od -An -tu4 -j "$2" -N 4 "$1" | tr -d ' '; }
u8() { od -An -tu1 -j "$2" -N 1 "$1" | tr -d ' '; }
is_elf() { [[ -s $1 && $(head -c 4 "$1" | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; }

# decompress FILE: by the magic of FILE's first bytes; output on stdout
decompress() {
    case "$(head -c 6 "$1" | od -An -tx1 | tr -d ' ')" in
        28b52ffd*) zstd -qdc "$1" ;;
        1f8b*) gzip -dc "$1" ;;
        fd377a585a00) xz -dc "$1" ;;
        *) return 1 ;;
    esac
}

extract_vmlinux() {
    local img=$1 out=$2 setup_sects pm_start off len pos
    # Linux/x86 boot protocol: setup_sects at 0x1f1, payload_offset/length at 0x248/0x24c
    # (relative to the protected-mode code after the setup sectors). The payload ends with
    # the 4-byte uncompressed size, which is not part of the compressed stream.
    if [[ $(head -c 4 <(tail -c +$((0x202 + 1)) "$img")) == HdrS ]]; then
        setup_sects=$(u8 "$img" $((0x1f1)))
        ((setup_sects == 0)) && setup_sects=4
        pm_start=$(((setup_sects + 1) * 512))
        off=$(u32 "$img" $((0x248)))
        len=$(u32 "$img" $((0x24c)))
        if ((len > 4)); then
            tail -c +$((pm_start + off + 1)) "$img" | head -c $((len - 4)) >"$work/payload"
            if decompress "$work/payload" >"$out" 2>/dev/null && is_elf "$out"; then
                rm -f "$work/payload"
                return 0
            fi
        fi
    fi
    # Fallback (as the kernel's scripts/extract-vmlinux does): try each zstd magic.
    while read -r pos; do
        tail -c +$((pos + 1)) "$img" | zstd -qdc >"$out" 2>/dev/null || true
        is_elf "$out" && return 0
    done < <(LC_ALL=C grep -obUaP '\x28\xb5\x2f\xfd' "$img" | cut -d: -f1)
    rm -f "$out" "$work/payload"
    return 1
}

if extract_vmlinux "$vmlinuz" "$work/kernel/vmlinux"; then
    log "extracted vmlinux ($(du -h "$work/kernel/vmlinux" | cut -f1))"
else
    log "warning: could not extract vmlinux; guests will boot the bzImage"
fi
echo "$want" >"$work/kernel/pkg"

# --- publish -------------------------------------------------------------------------------
if [[ -e $KDIR ]]; then
    mv "$KDIR" "$work/old"
fi
mv "$work/kernel" "$KDIR"
log "kernel $release ready in $KDIR"
boot_image

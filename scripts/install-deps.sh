#!/usr/bin/env bash
# install-deps.sh: install everything vsound needs to build and to boot its test guests
# on a Debian 12 (bookworm) machine.
#
# Usage:  sudo scripts/install-deps.sh [--build-only]   (or as root; no stdin needed)
#         --build-only: only what building vsound needs (gcc, pkg-config,
#         libasound2-dev), not QEMU and the guest tools.
#
# What it does, idempotently:
#   * adds a deb822 source for bookworm-backports (same URIs and keyring as the
#     machine's own debian.sources) unless one is configured already;
#   * installs the build deps (gcc, pkg-config, libasound2-dev), the guest tools
#     (busybox-static, alsa-utils, libasound2, cpio, xz-utils, zstd, sox, socat,
#     python3, kmod for depmod, strace for the packaging test) and qemu-system-x86 >= 10
#     from bookworm-backports (bookworm's own 7.2 has no vhost-user-snd-pci), and PipeWire
#     1.4 (pipewire, pipewire-bin, wireplumber, pipewire-alsa), also from backports;
#   * creates the system user vsound-test (in group audio) the tests run the daemon as.
# When everything is present it only runs dpkg-query and exits within a fraction of a
# second: `apt-get update` runs only when something has to be installed and apt does not
# know it yet. Safe with CI=true and without a terminal (DEBIAN_FRONTEND=noninteractive).
set -euo pipefail

readonly QEMU_PKG=qemu-system-x86
readonly QEMU_MIN_VERSION=1:10.0
# A real clock for the tests: a headless PipeWire 1.4 server, its ALSA PCM
# (`pipewire`, from pipewire-alsa) and pw-record/pw-play (pipewire-bin), from
# bookworm-backports (bookworm's own 0.3.65 lacks the null-sink options used).
readonly PW_PKGS=(pipewire pipewire-bin wireplumber pipewire-alsa)
# pw_min PKG: the oldest version of PKG that will do (wireplumber has its own numbering).
pw_min() { if [[ $1 == wireplumber ]]; then echo 0.5; else echo 1.4; fi; }
readonly BACKPORTS=bookworm-backports
readonly BACKPORTS_FILE=/etc/apt/sources.list.d/bookworm-backports.sources
BUILD_ONLY=0
if [[ ${1:-} == --build-only ]]; then
    BUILD_ONLY=1
elif [[ $# -gt 0 ]]; then
    printf 'usage: %s [--build-only]\n' "$0" >&2
    exit 2
fi
if ((BUILD_ONLY)); then
    readonly PKGS=(gcc pkg-config libasound2-dev)
else
    readonly PKGS=(gcc pkg-config libasound2-dev libasound2 alsa-utils busybox-static
        cpio xz-utils zstd sox socat python3 kmod strace)
fi

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# installed PKG [MIN_VERSION]: true when PKG is installed (and >= MIN_VERSION).
installed() {
    local status version
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) || return 1
    [[ $status == ii* ]] || return 1
    [[ $# -lt 2 ]] && return 0
    version=$(dpkg-query -W -f='${Version}' "$1")
    dpkg --compare-versions "$version" ge "$2"
}

backports_configured() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        # a one-line "deb URI bookworm-backports main" or a deb822 "Suites: ... bookworm-backports"
        if grep -Eq "^[[:space:]]*(deb[[:space:]].*[[:space:]]|Suites:.*[[:space:]])${BACKPORTS}([[:space:]]|$)" "$f"; then
            # a deb822 stanza can be disabled with "Enabled: no"; treat that file as absent
            grep -Eqi '^[[:space:]]*Enabled:[[:space:]]*no' "$f" && continue
            return 0
        fi
    done
    return 1
}

# Print "URIS<TAB>SIGNED_BY" of the stanza of debian.sources that carries plain "bookworm".
main_archive() {
    local f=/etc/apt/sources.list.d/debian.sources
    if [[ -f $f ]]; then
        awk -v OFS='\t' '
            function flush() { if (suites ~ /(^|[ \t])bookworm([ \t]|$)/ && !done) { print uris, signed; done = 1 }
                               uris = ""; suites = ""; signed = "" }
            /^[ \t]*$/        { flush(); next }
            /^URIs:/          { sub(/^URIs:[ \t]*/, ""); uris = $0 }
            /^Suites:/        { sub(/^Suites:[ \t]*/, ""); suites = $0 }
            /^Signed-By:/     { sub(/^Signed-By:[ \t]*/, ""); signed = $0 }
            END               { flush() }' "$f"
    fi
}

add_backports_source() {
    local line uris signed
    line=$(main_archive)
    uris=${line%%$'\t'*}
    signed=${line#*$'\t'}
    [[ -n $line ]] || signed=""
    [[ -n $uris ]] || uris=http://deb.debian.org/debian
    [[ -n $signed ]] || signed=/usr/share/keyrings/debian-archive-keyring.gpg
    log "adding $BACKPORTS_FILE ($uris, $signed)"
    cat >"$BACKPORTS_FILE" <<EOF
# Added by vsound scripts/install-deps.sh: QEMU >= 10 and the 6.12 guest kernel.
Types: deb
URIs: $uris
Suites: $BACKPORTS
Components: main
Signed-By: $signed
EOF
}

# --- quick path: everything present ------------------------------------------------------
missing=()
for p in "${PKGS[@]}"; do
    installed "$p" || missing+=("$p")
done
need_qemu=0
need_pw=0
need_source=0
if ((!BUILD_ONLY)); then
    installed "$QEMU_PKG" "$QEMU_MIN_VERSION" || need_qemu=1
    for p in "${PW_PKGS[@]}"; do
        installed "$p" "$(pw_min "$p")" || need_pw=1
    done
    # the guest kernel is fetched from backports by vmm-tests/guest/fetch-kernel.sh
    backports_configured || need_source=1
fi

if [[ ${#missing[@]} -eq 0 && $need_qemu -eq 0 && $need_pw -eq 0 && $need_source -eq 0 ]]; then
    if ((BUILD_ONLY)); then
        log "build dependencies present"
    else
        log "all dependencies present (qemu $(dpkg-query -W -f='${Version}' "$QEMU_PKG"))"
    fi
    exit 0
fi

# --- slow path ---------------------------------------------------------------------------
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        exec sudo -n -- bash "$0" "$@"
    fi
    die "must run as root to install: ${missing[*]:-} $( ((need_qemu == 0)) || echo "$QEMU_PKG>=10")"
fi

export DEBIAN_FRONTEND=noninteractive
APT=(apt-get -y -q -o DPkg::Lock::Timeout=600
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

updated=0
apt_update() {
    ((updated)) && return 0
    log "apt-get update"
    "${APT[@]}" update </dev/null >&2
    updated=1
}

if ((need_source)); then
    add_backports_source
    apt_update
fi

# apt knows PKG (from SUITE, if given)?
known() {
    if [[ $# -gt 1 ]]; then
        apt-cache madison "$1" 2>/dev/null | grep -q "[[:space:]/]$2[/ ]"
    else
        [[ -n $(apt-cache madison "$1" 2>/dev/null) ]]
    fi
}

for p in "${missing[@]}"; do
    known "$p" || apt_update
done
if ((need_qemu)); then
    known "$QEMU_PKG" "$BACKPORTS" || apt_update
fi
if ((need_pw)); then
    known pipewire "$BACKPORTS" || apt_update
fi

# apt_install ARGS...: install; if that fails on lists that were not refreshed by this run
# (stale lists give 404s), update once and try again
apt_install() {
    "${APT[@]}" install --no-install-recommends "$@" </dev/null >&2 && return 0
    ((updated)) && return 1
    log "install failed; retrying after apt-get update"
    apt_update
    "${APT[@]}" install --no-install-recommends "$@" </dev/null >&2
}

if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
fi
if ((need_qemu)); then
    log "installing $QEMU_PKG from $BACKPORTS"
    apt_install -t "$BACKPORTS" "$QEMU_PKG"
    installed "$QEMU_PKG" "$QEMU_MIN_VERSION" ||
        die "$QEMU_PKG $(dpkg-query -W -f='${Version}' "$QEMU_PKG" 2>/dev/null) is older than $QEMU_MIN_VERSION"
fi
if ((need_pw)); then
    log "installing ${PW_PKGS[*]} from $BACKPORTS"
    apt_install -t "$BACKPORTS" "${PW_PKGS[@]}"
    for p in "${PW_PKGS[@]}"; do
        installed "$p" "$(pw_min "$p")" ||
            die "$p $(dpkg-query -W -f='${Version}' "$p" 2>/dev/null) is older than $(pw_min "$p")"
    done
fi
if ((BUILD_ONLY)); then
    log "done (build dependencies)"
    exit 0
fi
qemu-system-x86_64 -device help 2>/dev/null | grep -q '"vhost-user-snd-pci"' ||
    die "qemu-system-x86_64 has no vhost-user-snd-pci device"
# The tests run every daemon as this unprivileged user (in group audio), as a
# service would (vmm-tests/src/unprivileged.rs, vmm-tests/guest/run-suite.sh).
if ! id -u vsound-test >/dev/null 2>&1; then
    log "creating the system user vsound-test (group audio) for the tests' daemons"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --groups audio vsound-test
fi
log "done (qemu $(dpkg-query -W -f='${Version}' "$QEMU_PKG"))"

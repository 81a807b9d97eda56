#!/usr/bin/env bash
# run-guest.sh: boot the vsound test guest in QEMU against a vhost-user sound daemon (or
# QEMU's own virtio-sound as a reference), run one case script in it, report its result.
#
# Usage:
#   vmm-tests/guest/run-guest.sh --socket SOCK [options]     # vhost-user-snd-pci on SOCK
#   vmm-tests/guest/run-guest.sh --reference   [options]     # QEMU's virtio-sound-pci
# Options:
#   --case FILE         case script run in the guest as /case.sh (see build-initramfs.sh
#                       for the contract); without it the guest only checks that a sound
#                       card appears
#   --data FILE         put FILE into the guest as /data/<basename> (repeatable)
#   --env NAME=VALUE    exported to the case script (repeatable)
#   --timeout SECS      whole run, boot included (default 120); QEMU gets SIGTERM then,
#                       SIGKILL 5 s later; the case alone is limited to SECS-20 in the guest
#   --log FILE          serial console log (default <cache>/logs/<case name>.log)
#   --append ARGS       more kernel command line, e.g. "vsound.msg_timeout_ms=5000
#                       virtio_snd.pcm_buffer_ms=100" (module.param=value reaches insmod)
#   --device-opts OPTS  appended to the -device option, e.g. ",controls=on"
#   --audiodev SPEC     with --reference: the QEMU audiodev (default "none"), e.g.
#                       "wav,path=out.wav,out.frequency=48000,out.channels=2,out.format=s16"
#   --boots N           the guest is to boot N times (default 1): N > 1 drops QEMU's
#                       -no-reboot, so a reset (the guest's `reboot -f`, QMP system_reset)
#                       boots it again; QEMU is stopped as soon as boot N+1 begins, and
#                       the run fails unless the console shows exactly N boots (SeaBIOS
#                       banners) and the last one printed PASS. VSOUND-INFO lines are then
#                       echoed as "[boot K] ..."
#   --verbose           drop "quiet" and copy the console to stderr while it runs
#   -- ARGS...          more QEMU arguments
# Environment: VSOUND_ACCEL=tcg|kvm (default: kvm only when /dev/kvm is usable and the CPU
# flags show vmx or svm; the kvm on many CI machines is a software one without them, on
# which the guest kernel dies), VSOUND_GUEST_CACHE (default <repo>/target/guest-cache),
# VSOUND_QEMU (default qemu-system-x86_64), VSOUND_SOCKET_WAIT (seconds to wait for SOCK
# to appear, default 10).
#
# Exit status: 0 when the guest printed `VSOUND-RESULT: PASS`; 1 on FAIL, timeout or no
# result line (the tail of the log is printed); 2 on bad usage or a missing prerequisite.
#
# How the case gets in: QEMU takes one -initrd, but the kernel unpacks concatenated cpio
# archives. The base image (build-initramfs.sh, built once, cached) is appended to a small
# uncompressed per-run cpio holding /case.sh, /case.env and /data/*: the same layout as
# Debian's early-microcode initrds (uncompressed first, compressed last). Files of the base
# image win over same-named files of the case archive.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VSOUND_GUEST_CACHE:-$REPO/target/guest-cache}
export VSOUND_GUEST_CACHE=$CACHE
QEMU=${VSOUND_QEMU:-qemu-system-x86_64}

log() { printf 'run-guest: %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die2() { log "error: $*"; exit 2; }

socket="" reference=0 case_file="" timeout=120 log_file="" append="" device_opts=""
audiodev=none verbose=0 boots=1
data=() envs=() extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --socket) socket=${2:?--socket needs a path}; shift 2 ;;
        --reference) reference=1; shift ;;
        --case) case_file=${2:?--case needs a file}; shift 2 ;;
        --data) data+=("${2:?--data needs a file}"); shift 2 ;;
        --env) envs+=("${2:?--env needs NAME=VALUE}"); shift 2 ;;
        --timeout) timeout=${2:?--timeout needs seconds}; shift 2 ;;
        --log) log_file=${2:?--log needs a file}; shift 2 ;;
        --append) append="$append ${2:?--append needs arguments}"; shift 2 ;;
        --device-opts) device_opts=${2:?--device-opts needs options}; shift 2 ;;
        --audiodev) audiodev=${2:?--audiodev needs a spec}; shift 2 ;;
        --boots) boots=${2:?--boots needs a number}; shift 2 ;;
        --verbose) verbose=1; shift ;;
        --) shift; extra=("$@"); break ;;
        -h | --help) usage ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
[[ $reference == 1 || -n $socket ]] || { log "need --socket SOCK or --reference"; usage; }
[[ $reference == 1 && -n $socket ]] && die2 "--socket and --reference exclude each other"
[[ $timeout =~ ^[0-9]+$ && $timeout -ge 10 ]] || die2 "--timeout must be a whole number >= 10"
[[ $boots =~ ^[1-9][0-9]*$ ]] || die2 "--boots must be a whole number >= 1"
[[ -z $case_file || -f $case_file ]] || die2 "case script $case_file not found"
for f in "${data[@]}"; do [[ -f $f ]] || die2 "data file $f not found"; done
for e in "${envs[@]}"; do [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die2 "--env $e is not NAME=VALUE"; done
command -v "$QEMU" >/dev/null 2>&1 || die2 "$QEMU not found (run scripts/install-deps.sh)"

# --- guest images ----------------------------------------------------------------------------
kernel=$(bash "$HERE/fetch-kernel.sh") || die2 "fetch-kernel.sh failed"
base=$(bash "$HERE/build-initramfs.sh") || die2 "build-initramfs.sh failed"

case_name=$(basename "${case_file:-card-only}" .sh)
if [[ -z $log_file ]]; then
    mkdir -p "$CACHE/logs"
    log_file=$CACHE/logs/$case_name.log
fi
mkdir -p "$(dirname "$log_file")"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vsound-guest.XXXXXX")
qemu_pid="" tail_pid="" watch_pid=""
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
    # timeout(1) passes SIGTERM on to QEMU and SIGKILLs it after the grace period
    if [[ -n $qemu_pid ]]; then
        kill -TERM "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    local pid
    for pid in "$tail_pid" "$watch_pid"; do
        [[ -n $pid ]] || continue
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# make_initrd OUT BASE [CASE [DATA...]]: OUT = per-run cpio (case, env, data) + BASE
make_initrd() {
    local out=$1 base=$2 case=${3:-} stage=$tmp/case f e
    shift 3 || shift $#
    mkdir -p "$stage/data"
    [[ -n $case ]] && install -m 0755 "$case" "$stage/case.sh"
    for f in "$@"; do install -m 0644 "$f" "$stage/data/$(basename "$f")"; done
    if [[ ${#envs[@]} -gt 0 ]]; then
        for e in "${envs[@]}"; do # NAME='value', quotes escaped for sh
            printf "%s='%s'\n" "${e%%=*}" "$(printf '%s' "${e#*=}" | sed "s/'/'\\\\''/g")"
        done >"$stage/case.env"
    fi
    (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out"
    cat "$base" >>"$out"
}
make_initrd "$tmp/initrd" "$base" "$case_file" "${data[@]}"

# --- accelerator -----------------------------------------------------------------------------
accel=${VSOUND_ACCEL:-}
if [[ -z $accel ]]; then
    accel=tcg
    if [[ -r /dev/kvm && -w /dev/kvm ]] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
        accel=kvm
    fi
fi
case "$accel" in
    tcg) accel_args=(-accel tcg -cpu max) ;;
    kvm) accel_args=(-accel kvm -cpu host) ;;
    *) die2 "VSOUND_ACCEL must be tcg or kvm, not $accel" ;;
esac

# --- sound device ----------------------------------------------------------------------------
if [[ $reference == 1 ]]; then
    ad=$audiodev
    [[ $ad == *id=* ]] || ad="$ad,id=snd0"
    ad_id=${ad#*id=}
    ad_id=${ad_id%%,*}
    snd_args=(-audiodev "$ad" -device "virtio-sound-pci,audiodev=$ad_id$device_opts")
    what="virtio-sound-pci (reference, audiodev $audiodev)"
else
    wait_s=${VSOUND_SOCKET_WAIT:-10}
    for ((i = 0; i < wait_s * 10; i++)); do
        [[ -S $socket ]] && break
        sleep 0.1
    done
    [[ -S $socket ]] || { log "FAIL: no socket at $socket after ${wait_s} s"; exit 1; }
    snd_args=(-chardev "socket,id=vsnd,path=$socket" -device "vhost-user-snd-pci,chardev=vsnd$device_opts")
    what="vhost-user-snd-pci on $socket"
fi

case_timeout=$((timeout - 20 > timeout / 2 ? timeout - 20 : timeout / 2))
cmdline="console=ttyS0 panic=-1 vsound.case_timeout_s=$case_timeout"
[[ $verbose == 1 ]] || cmdline="$cmdline quiet"
cmdline="$cmdline${append}"

# One boot: a guest reset (reboot, triple fault, panic=-1) ends QEMU. More: it reboots.
reboot_args=(-no-reboot)
((boots == 1)) || reboot_args=()
# shellcheck disable=SC2054 # commas inside QEMU option values
qemu_cmd=("$QEMU" "${accel_args[@]}" -smp 1 -m 512M -machine pc
    -nodefaults -no-user-config -nographic -serial stdio "${reboot_args[@]}"
    -object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem
    -kernel "$kernel" -initrd "$tmp/initrd" -append "$cmdline"
    "${snd_args[@]}" "${extra[@]}")

log "booting ($accel, $what, case ${case_file:-none}, timeout ${timeout} s, log $log_file)"
start=$(date +%s%N)
: >"$log_file"
timeout -k 5 "$timeout" "${qemu_cmd[@]}" </dev/null >"$log_file" 2>&1 &
qemu_pid=$!
if [[ $verbose == 1 ]]; then
    tail -n +1 -f --pid="$qemu_pid" "$log_file" >&2 &
    tail_pid=$!
fi
# boots_in FILE: how many times the guest booted, by SeaBIOS's banner (each reset runs it)
boots_in() { grep -a -c 'SeaBIOS (version' "$1" 2>/dev/null || true; }
if ((boots > 1)); then
    # Reboot loop guard: stop QEMU as soon as boot N+1 starts.
    (
        while kill -0 "$qemu_pid" 2>/dev/null; do
            if (($(boots_in "$log_file") > boots)); then
                touch "$tmp/too-many-boots"
                kill -TERM "$qemu_pid" 2>/dev/null
                exit 0
            fi
            sleep 0.2
        done
    ) &
    watch_pid=$!
fi
rc=0
wait "$qemu_pid" || rc=$?
qemu_pid=""
if [[ -n $watch_pid ]]; then
    kill "$watch_pid" 2>/dev/null || true
    wait "$watch_pid" 2>/dev/null || true
    watch_pid=""
fi
if [[ -n $tail_pid ]]; then
    wait "$tail_pid" 2>/dev/null || true
    tail_pid=""
fi
elapsed=$((($(date +%s%N) - start) / 1000000))
secs=$(printf '%d.%03d' $((elapsed / 1000)) $((elapsed % 1000)))

# The log has SeaBIOS escape codes and CRs: clean them before looking for the result.
clean=$tmp/clean.log
sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1b[()][A-Za-z0-9]//g; s/\x1b[cDEHM78=>]//g; s/\r//g' "$log_file" >"$clean"
result=$(grep -a -o 'VSOUND-RESULT: .*' "$clean" | tail -n 1) || true
if ((boots == 1)); then
    grep -a -o 'VSOUND-INFO: .*' "$clean" | sed 's/^VSOUND-INFO: /run-guest:   /' >&2 || true
else
    awk '/SeaBIOS \(version/ { b++ }
        /VSOUND-INFO: / { sub(/.*VSOUND-INFO: /, ""); printf "run-guest:   [boot %d] %s\n", b, $0 }
        /VSOUND-RESULT: / { sub(/.*VSOUND-RESULT: /, ""); printf "run-guest:   [boot %d] result: %s\n", b, $0 }' \
        "$clean" >&2
fi
seen_boots=$(boots_in "$clean")

# On failure: the last lines of the console without the dmesg dump, then the dump's tail.
show_tail() {
    local n=${VSOUND_LOG_TAIL:-40}
    log "console (last $n lines, full log in $log_file):"
    awk '/VSOUND-DMESG-BEGIN/ { skip = 1 } !skip { print } /VSOUND-DMESG-END/ { skip = 0 }' "$clean" |
        tail -n "$n" | sed 's/^/  | /' >&2
    if grep -q VSOUND-DMESG-BEGIN "$clean"; then
        log "guest dmesg (last 25 lines):"
        awk '/VSOUND-DMESG-END/ { p = 0 } p { print } /VSOUND-DMESG-BEGIN/ { p = 1 }' "$clean" |
            tail -n 25 | sed 's/^/  | /' >&2
    fi
}
if [[ -e $tmp/too-many-boots ]]; then
    log "FAIL: the guest began boot $seen_boots, expected $boots boots (QEMU stopped) after $secs s"
elif ((boots > 1 && seen_boots != boots)) && [[ $result == "VSOUND-RESULT: PASS"* ]]; then
    log "FAIL: the guest booted $seen_boots times, expected $boots; its last result: ${result#VSOUND-RESULT: } (after $secs s)"
elif [[ $result == "VSOUND-RESULT: PASS"* ]]; then
    ((boots == 1)) || log "the guest booted $seen_boots times, as expected"
    log "PASS in $secs s"
    exit 0
elif ((boots > 1 && seen_boots != boots)) && [[ -n $result ]]; then
    reason=${result#VSOUND-RESULT: }
    log "FAIL: ${reason#FAIL } (in boot $seen_boots of $boots, after $secs s)"
elif [[ -n $result ]]; then
    reason=${result#VSOUND-RESULT: }
    log "FAIL: ${reason#FAIL } (after $secs s)"
elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
    log "FAIL: timeout: QEMU killed after ${timeout} s without a result"
else
    log "FAIL: QEMU exited with status $rc after $secs s without a result line"
fi
show_tail
exit 1

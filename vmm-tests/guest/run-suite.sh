#!/usr/bin/env bash
# run-suite.sh: the guest test suite. Each case starts its own vsound (the
# workspace's debug build unless VSOUND_BIN is set) with the config the case
# needs, boots a real Linux guest under QEMU against it (run-guest.sh), and
# checks the guest's verdict and that the daemon is still alive afterwards.
#
# Usage: vmm-tests/guest/run-suite.sh [CASE_NAME...]   (default: all cases)
# Prints one line per case and a closing "N passed, N failed" line; exits 1
# if any case failed, after printing the daemon's log of each failed case.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VSOUND_BIN=${VSOUND_BIN:-$REPO/target/debug/vsound}
[[ -x $VSOUND_BIN ]] || { echo "run-suite: no daemon at $VSOUND_BIN (cargo build first)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/vsound-suite.XXXXXX)
DAEMON_PID=
cleanup() {
    [[ -n $DAEMON_PID ]] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

passed=0
failed=0
failed_names=()

# start_daemon CONFIG(or "") LOG: starts vsound on $WORK/vsound.sock
start_daemon() {
    local config=$1 log=$2 sock=$WORK/vsound.sock
    rm -f "$sock"
    local args=(--socket "$sock")
    [[ -n $config ]] && args+=(--config "$config")
    RUST_LOG=${RUST_LOG:-debug} "$VSOUND_BIN" "${args[@]}" >"$log" 2>&1 &
    DAEMON_PID=$!
    for _ in $(seq 100); do
        [[ -S $sock ]] && return 0
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.05
    done
    echo "run-suite: vsound did not start" >&2
    return 1
}

stop_daemon() {
    local alive=0
    if kill -0 "$DAEMON_PID" 2>/dev/null; then alive=1; fi
    kill "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=
    ((alive))
}

# case NAME CONFIG CASE_SCRIPT [run-guest args...]
run_case() {
    local name=$1 config=$2 script=$3
    shift 3
    if [[ ${#SELECTED[@]} -gt 0 && ! " ${SELECTED[*]} " =~ \ $name\  ]]; then
        return 0
    fi
    local dlog=$WORK/$name.daemon.log glog=$WORK/$name.guest.log ok=1
    local t0=$SECONDS
    start_daemon "$config" "$dlog" || ok=0
    if ((ok)); then
        "$HERE/run-guest.sh" --socket "$WORK/vsound.sock" --case "$script" \
            --log "$glog" --timeout 120 "$@" >"$WORK/$name.out" 2>&1 || ok=0
    fi
    if ! stop_daemon; then
        echo "run-suite: $name: vsound died during the case" >>"$WORK/$name.out"
        ok=0
    fi
    if ((ok)); then
        passed=$((passed + 1))
        printf 'guest case %-28s ok (%ss)\n' "$name" $((SECONDS - t0))
        grep -E '^run-guest: +' "$WORK/$name.out" | sed 's/^/    /' || true
    else
        failed=$((failed + 1))
        failed_names+=("$name")
        printf 'guest case %-28s FAILED (%ss)\n' "$name" $((SECONDS - t0))
        sed 's/^/    | /' "$WORK/$name.out"
        echo "    --- vsound log (last 60 lines)"
        tail -n 60 "$dlog" 2>/dev/null | sed 's/^/    | /'
    fi
}

SELECTED=("$@")

# Kernel and initramfs first, so their one-time download is not charged to a case.
"$HERE/fetch-kernel.sh" >/dev/null
"$HERE/build-initramfs.sh" >/dev/null

# 0. The issue-2 acceptance check: default config, 2 s of 48 kHz stereo S16
#    played in 2.0-2.3 s, 2 s of capture that is all silence.
run_case default-play-record "" "$HERE/cases/smoke-playback.sh" \
    --env SMOKE_PLAY_MIN_MS=2000 --env SMOKE_PLAY_MAX_MS=2300

echo
echo "guest suite: $passed passed, $failed failed"
((failed == 0))

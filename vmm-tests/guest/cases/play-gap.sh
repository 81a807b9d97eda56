#!/bin/sh
# play-gap.sh: guest case (busybox sh): play FILE1, sleep, play FILE2 (two separate aplay
# runs on DEV), and measure the pause between the two sounds as the device saw it.
#   1. `aplay -v -D DEV FILE1` in the background; while it runs, the PCM's
#      /proc/asound/cardN/pcmMp/sub0/status is polled (shell builtins only) for its
#      trigger_time in state RUNNING or DRAINING: the kernel's timestamp of the stream's
#      START (the first frame leaves for the device then); aplay must exit 0, in real
#      time from that START on (MS1*0.97 .. MS1*1.1+500 ms, vsound_play's bounds, but
#      without aplay's start-up: 300-800 ms under TCG, seconds on a loaded host, more
#      than the 100 ms file itself);
#   2. `sleep` GAP_SLEEP_MS;
#   3. the same for FILE2;
#   4. prints "VSOUND-INFO: gap-ms G": the time from the end of FILE1's own frames to
#      FILE2's first frame on the device's timeline, G = START2 - START1 - MS1 (both
#      streams play in real time from their START). It is the sleep plus aplay's own
#      time: the rest of FILE1's last period (aplay pads it with silence), its drain and
#      exit, and FILE2's aplay start-up until START. The parts are printed too, from the
#      shell's own times (/proc/uptime, 10 ms steps: CLOCK_BOOTTIME, the kernel's
#      timestamps are CLOCK_MONOTONIC, as alsa-lib asks; the same clock without a
#      suspend, which is checked: each START lies between its aplay's start and exit);
#   no "timeout" / "failed to flush" in dmesg.
# Environment: GAP_PLAY="DEV@FILE1@MS1@FILE2@MS2", GAP_SLEEP_MS (default 1000).
set -u
. /usr/lib/vsound/lib.sh

# shellcheck disable=SC2046 # split DEV@FILE1@... into arguments
set -- $(echo "${GAP_PLAY:?GAP_PLAY=DEV@FILE1@MS1@FILE2@MS2}" | tr @ ' ')
dev=$1 f1=$2 ms1=$3 f2=$4 ms2=$5
pause_ms=${GAP_SLEEP_MS:-1000}

vsound_wait_card 10 || vsound_fail "no sound card"
card=${dev#*:}
card=${card%%,*}
case "$card" in CARD=*) # /proc/asound/NAME -> cardN
    card=$(readlink /proc/asound/"${card#CARD=}")
    card=${card#card} ;;
esac
pcm=${dev##*,}
pcm=${pcm#DEV=}
st=/proc/asound/card${card}/pcm${pcm}p/sub0/status
[ -r "$st" ] || vsound_fail "no $st"

# play_timed FILE MS: aplay FILE on DEV; sets RC, EXEC_MS and EXIT_MS (uptime ms before
# aplay started and after it exited) and START (the stream's trigger_time, seconds as the
# kernel prints it, or empty if the stream was never seen running)
play_timed() {
    local out=/tmp/aplay.$(basename "$1").log pid state trig k v zs el n=0
    EXEC_MS=$(vsound_uptime_ms)
    aplay -v -D "$dev" "$1" >"$out" 2>&1 &
    pid=$!
    START=
    while [ -z "$START" ] && [ "$n" -lt 5000 ]; do
        state='' trig=''
        while read -r k v _; do
            case "$k" in
                state:) state=$v ;;
                trigger_time:) trig=$v ;;
            esac
        done <"$st"
        case "$state" in RUNNING | DRAINING) START=$trig; break ;; esac
        # aplay gone (a zombie until waited for) without the stream seen running
        zs=Z
        read -r _ _ zs _ 2>/dev/null <"/proc/$pid/stat"
        [ "$zs" = Z ] && break
        sleep 0.002
        n=$((n + 1))
    done
    wait "$pid"
    RC=$?
    EXIT_MS=$(vsound_uptime_ms)
    vsound_info "hw-params $dev $1" \
        "period_size=$(sed -n 's/^ *period_size *: *\([0-9]*\).*/\1/p' "$out" | head -n 1)" \
        "buffer_size=$(sed -n 's/^ *buffer_size *: *\([0-9]*\).*/\1/p' "$out" | head -n 1)"
    vsound_info "play $dev $1: exit $RC after $((EXIT_MS - EXEC_MS)) ms (expected $2 ms); exec at $EXEC_MS ms," \
        "START at ${START:-never seen}, exit at $EXIT_MS ms"
    [ "$RC" -eq 0 ] || vsound_fail "aplay -D $dev $1 exited with status $RC: $(grep -v '^Playing' "$out" | head -n 1)"
    [ -n "$START" ] || vsound_fail "aplay -D $dev $1: the stream was never seen RUNNING in $st"
    # START on the shell's clock (between aplay's start and exit, 10 ms steps)
    START_MS=$(awk -v s="$START" 'BEGIN { printf "%d\n", s * 1000 }')
    [ "$START_MS" -ge $((EXEC_MS - 10)) ] && [ "$START_MS" -le $((EXIT_MS + 10)) ] ||
        vsound_fail "the stream's START ($START s) is not between aplay's start and exit ($EXEC_MS, $EXIT_MS ms of uptime): not on the same clock"
    # real time: from START to aplay's exit (its start-up, which a loaded TCG host
    # stretches to seconds, is not counted)
    el=$((EXIT_MS - START_MS))
    [ "$el" -ge $(($2 * 97 / 100 - 10)) ] || vsound_fail "aplay $1 too fast: $el ms from START to exit for $2 ms"
    [ "$el" -le $(($2 * 110 / 100 + 500)) ] || vsound_fail "aplay $1 too slow: $el ms from START to exit for $2 ms"
}

play_timed "$f1" "$ms1"
start1=$START exec1=$EXEC_MS exit1=$EXIT_MS
sleep "$(awk -v ms="$pause_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
play_timed "$f2" "$ms2"
start2=$START exec2=$EXEC_MS

awk -v s1="$start1" -v s2="$start2" -v ms1="$ms1" -v e1="$exec1" -v x1="$exit1" -v e2="$exec2" -v p="$pause_ms" 'BEGIN {
    gap = (s2 - s1) * 1000 - ms1
    printf "VSOUND-INFO: gap-ms %.1f\n", gap
    printf "VSOUND-INFO: gap: START %.3f s and %.3f s: %.1f ms from the end of the first file'"'"'s %d ms to the second file'"'"'s first frame (sleep %d ms)\n", s1, s2, gap, ms1, p
    printf "VSOUND-INFO: gap parts: aplay 1 started its stream %.0f ms after exec and exited %.0f ms after its %d ms ended; %d ms later aplay 2 was started, its stream %.0f ms after that (uptime: 10 ms steps)\n", s1 * 1000 - e1, x1 - (s1 * 1000 + ms1), ms1, e2 - x1, s2 * 1000 - e2
}'
vsound_check_dmesg "after playback"
exit 0

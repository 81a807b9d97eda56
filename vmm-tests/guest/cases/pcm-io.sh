#!/bin/sh
# pcm-io.sh: guest case (busybox sh): play files and/or record a known pattern, checking
# that each aplay/arecord exits 0 in real time and, for capture, that the pattern the
# host fed arrives byte for byte. The host side (run-suite.sh) checks what the daemon's
# host devices received.
#
# Environment (run-guest.sh --env):
#   PLAY="DEV@FILE@MS ..."  files to play, in order: `aplay -D DEV FILE`, MS = the file's
#                           duration; each must take MS*0.97 .. MS*1.1+500 ms (vsound_play)
#   PLAY_PARALLEL=1         play them all at once instead (each still in real time)
#   PLAY_GAP_MS=1000        between two files played in order: half of it, then the line
#                           "VSOUND-INFO: split" (a host pad client starts a new segment
#                           there), then the other half
#   CAPTURE="DEV@SECS@PATTERN[@FORMAT@RATE@CHANNELS@FRAME_BYTES]"
#                           after playing: record SECS s and find PATTERN in it
#                           (vsound_capture_pattern: silence, then the pattern exactly,
#                           then silence unless VSOUND_CAPTURE_TRAILING=any)
# Always: card 0 present, and no "timeout" / "failed to flush" in dmesg at the end.
set -u
. /usr/lib/vsound/lib.sh

vsound_wait_card 10 || vsound_fail "no sound card"
echo "--- /proc/asound/pcm"
cat /proc/asound/pcm

gap=${PLAY_GAP_MS:-1000}
half=$(awk -v ms="$gap" 'BEGIN { printf "%.3f", ms / 2000 }')
if [ "${PLAY_PARALLEL:-0}" = 1 ]; then
    pids=""
    for p in ${PLAY:-}; do
        dev=${p%%@*}
        rest=${p#*@}
        (vsound_play "$dev" "${rest%@*}" "${rest##*@}") &
        pids="$pids $!"
    done
    failed=0
    for pid in $pids; do
        wait "$pid" || failed=$((failed + 1))
    done
    [ "$failed" -eq 0 ] || vsound_fail "$failed of the parallel plays failed: $(head -n 1 "$VSOUND_REASON_FILE")"
else
    first=1
    for p in ${PLAY:-}; do
        if [ "$first" = 0 ]; then
            sleep "$half"
            vsound_info "split"
            sleep "$half"
        fi
        first=0
        dev=${p%%@*}
        rest=${p#*@}
        vsound_info "start $dev ${rest%@*}"
        vsound_play "$dev" "${rest%@*}" "${rest##*@}"
    done
fi
vsound_check_dmesg "after playback"

if [ -n "${CAPTURE:-}" ]; then
    # shellcheck disable=SC2046 # split DEV@SECS@... into arguments
    set -- $(echo "$CAPTURE" | tr @ ' ')
    vsound_capture_pattern "$@"
    vsound_check_dmesg "after capture"
fi
exit 0

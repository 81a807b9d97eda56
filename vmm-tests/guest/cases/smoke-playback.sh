#!/bin/sh
# smoke-playback.sh: guest case (busybox sh, runs inside the test guest as /case.sh).
#
# Usage (host):  vmm-tests/guest/run-guest.sh --socket SOCK --case vmm-tests/guest/cases/smoke-playback.sh
#                [--data tone.wav] [--env SMOKE_CHECK_SILENCE=0] ...
#
# Checks, on ALSA device $SMOKE_DEVICE (default hw:0,0):
#   1. sound card 0 is there;
#   2. playback of $SMOKE_SECONDS (default 2) s of 48 kHz stereo S16_LE exits 0 and takes
#      between SMOKE_PLAY_MIN_MS and SMOKE_PLAY_MAX_MS (default 1900..2500 per 2 s, scaled)
#      : a device that completes buffers faster or slower than real time fails. What is
#      played: the first /data/*.wav if run-guest.sh --data passed one (make it on the
#      host, e.g. `sox -n -r 48000 -c 2 -b 16 tone.wav synth 2 sine 440`), else raw noise
#      made in the guest from /dev/urandom;
#   3. capture with `arecord -d $SMOKE_SECONDS` exits 0 and the file holds
#      $SMOKE_SECONDS s of frames, and (SMOKE_CHECK_CAPTURE_TIME=1, default) took the
#      same time window as playback;
#   4. (SMOKE_CHECK_SILENCE=1, default) every captured sample is zero, as the null
#      device and QEMU's `-audiodev none` give. Set SMOKE_CHECK_SILENCE=0 for devices
#      that capture real data.
# Knobs are environment variables, set with run-guest.sh --env NAME=VALUE.
#
# Result: by exit status (the contract of /init, see build-initramfs.sh): exit 0 is
# VSOUND-RESULT: PASS; a failure calls vsound_fail REASON, which /init reports as
# VSOUND-RESULT: FAIL REASON. Measurements go out as VSOUND-INFO lines.
set -u
. /usr/lib/vsound/lib.sh

dev=${SMOKE_DEVICE:-hw:0,0}
secs=${SMOKE_SECONDS:-2}
min_ms=${SMOKE_PLAY_MIN_MS:-$((secs * 950))}
max_ms=${SMOKE_PLAY_MAX_MS:-$((secs * 1250))}
check_silence=${SMOKE_CHECK_SILENCE:-1}
check_capture_time=${SMOKE_CHECK_CAPTURE_TIME:-1}
rate=48000
channels=2
bytes=$((secs * rate * channels * 2))

vsound_wait_card 10 || vsound_fail "no sound card"
echo "--- /proc/asound/cards"
cat /proc/asound/cards
echo "--- /proc/asound/pcm"
cat /proc/asound/pcm

# --- playback ---
wav=""
for f in /data/*.wav; do
    [ -f "$f" ] && { wav=$f; break; }
done
if [ -n "$wav" ]; then
    what="$wav"
    set -- aplay -D "$dev" -q "$wav"
else
    dd if=/dev/urandom of=/tmp/play.raw bs=$((rate * channels * 2)) count="$secs" 2>/dev/null ||
        vsound_fail "could not make /tmp/play.raw"
    what="$secs s of noise"
    set -- aplay -D "$dev" -q -t raw -f S16_LE -r "$rate" -c "$channels" /tmp/play.raw
fi
echo "--- playing $what: $*"
t0=$(vsound_uptime_ms)
"$@"
rc=$?
play_ms=$(($(vsound_uptime_ms) - t0))
vsound_info "playback: aplay exit $rc after $play_ms ms"
[ "$rc" -eq 0 ] || vsound_fail "aplay exited with status $rc after $play_ms ms"
[ "$play_ms" -ge "$min_ms" ] || vsound_fail "playback too fast: $play_ms ms < $min_ms ms"
[ "$play_ms" -le "$max_ms" ] || vsound_fail "playback too slow: $play_ms ms > $max_ms ms"

# --- capture ---
echo "--- capturing $secs s"
t0=$(vsound_uptime_ms)
arecord -D "$dev" -q -d "$secs" -f S16_LE -r "$rate" -c "$channels" /tmp/cap.wav
rc=$?
cap_ms=$(($(vsound_uptime_ms) - t0))
size=$(stat -c %s /tmp/cap.wav 2>/dev/null || echo 0)
data=$((size - 44))
vsound_info "capture: arecord exit $rc after $cap_ms ms, $size bytes"
[ "$rc" -eq 0 ] || vsound_fail "arecord exited with status $rc after $cap_ms ms"
[ "$data" -ge "$bytes" ] || vsound_fail "capture holds $data bytes of data, expected $bytes"
if [ "$check_capture_time" = 1 ]; then
    [ "$cap_ms" -ge "$min_ms" ] || vsound_fail "capture too fast: $cap_ms ms < $min_ms ms"
    [ "$cap_ms" -le "$max_ms" ] || vsound_fail "capture too slow: $cap_ms ms > $max_ms ms"
fi
if [ "$check_silence" = 1 ]; then
    nonzero=$(tail -c +45 /tmp/cap.wav | tr -d '\000' | wc -c)
    [ "$nonzero" -eq 0 ] || vsound_fail "capture is not silent: $nonzero non-zero bytes"
fi
vsound_info "smoke: playback ${play_ms} ms, capture ${cap_ms} ms, ${data} bytes captured"
exit 0

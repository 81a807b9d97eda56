#!/bin/sh
# capture-dump.sh: guest case (busybox sh): record, and hand the recording to the host
# for checking, through a virtio-serial port (run-suite.sh adds a virtio-serial-pci
# device whose port CAPTURE_PORT, default "vsound.capture", writes to a file on the host).
#   1. `arecord -t raw -d SECS` on DEV; "VSOUND-INFO: capture running on DEV" as soon as
#      the PCM runs (the host starts feeding its pad then, and may pause the VM);
#   2. the recording (whatever arecord wrote) goes to the port, "VSOUND-INFO: capture
#      dump: N bytes, md5 M" (the host compares it with the file it got);
#   3. arecord must have exited 0 after SECS s of guest time (between SECS*0.97 and
#      SECS*1.1+0.5 s: a paused guest's clock stands still) with exactly
#      SECS*RATE*FRAME_BYTES bytes;
#   no "timeout" / "failed to flush" in dmesg.
# Environment: CAPTURE_DUMP="DEV@SECS[@FORMAT@RATE@CHANNELS@FRAME_BYTES]" (default format
# S16_LE 48000 2 4), CAPTURE_PORT.
set -u
. /usr/lib/vsound/lib.sh

# shellcheck disable=SC2046 # split DEV@SECS@... into arguments
set -- $(echo "${CAPTURE_DUMP:?CAPTURE_DUMP=DEV@SECS[@FORMAT@RATE@CHANNELS@FRAME_BYTES]}" | tr @ ' ')
dev=$1 secs=$2 fmt=${3:-S16_LE} rate=${4:-48000} ch=${5:-2} frame=${6:-4}
want=$((secs * rate * frame))
cap=/tmp/capture.raw

vsound_wait_card 10 || vsound_fail "no sound card"
name=${CAPTURE_PORT:-vsound.capture}
port=""
for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = "$name" ] && port=/dev/${d##*/}
done
[ -n "$port" ] && [ -c "$port" ] || vsound_fail "no virtio-serial port named $name"

card=${dev#*:}
card=${card%%,*}
case "$card" in CARD=*) # /proc/asound/NAME -> cardN
    card=$(readlink /proc/asound/"${card#CARD=}")
    card=${card#card} ;;
esac
pcm=${dev##*,}
pcm=${pcm#DEV=}
st=/proc/asound/card${card}/pcm${pcm}c/sub0/status
t0=$(vsound_uptime_ms)
arecord -q -D "$dev" -f "$fmt" -r "$rate" -c "$ch" -t raw -d "$secs" "$cap" 2>/tmp/arecord.err &
pid=$!
n=0
while ! grep -q 'state: RUNNING' "$st" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || break
    [ "$n" -ge 1000 ] && vsound_fail "capture on $dev not RUNNING after 10 s ($st)"
    sleep 0.01
    n=$((n + 1))
done
vsound_info "capture running on $dev"
wait "$pid"
rc=$?
el=$(($(vsound_uptime_ms) - t0))
size=$(stat -c %s "$cap" 2>/dev/null || echo 0)
nonzero=$(tr -d '\000' <"$cap" | wc -c)
vsound_info "capture $dev: arecord exit $rc after $el ms, $size bytes ($nonzero not zero)"
# The host gets what was recorded even when a check below fails (to see what came).
touch "$cap"
cat "$cap" >"$port" || vsound_fail "cannot write the capture to $port"
vsound_info "capture dump: $size bytes, md5 $(md5sum <"$cap" | cut -d' ' -f1), to $port"
[ "$rc" -eq 0 ] || vsound_fail "arecord -D $dev exited with status $rc after $el ms: $(head -n 1 /tmp/arecord.err)"
[ "$size" -eq "$want" ] || vsound_fail "arecord wrote $size bytes, expected $want ($secs s)"
[ "$el" -ge $((secs * 970)) ] || vsound_fail "capture too fast: $el ms for $secs s"
[ "$el" -le $((secs * 1100 + 500)) ] || vsound_fail "capture too slow: $el ms for $secs s"
vsound_check_dmesg "after the capture"
exit 0

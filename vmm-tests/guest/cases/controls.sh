#!/bin/sh
# controls.sh: guest case (busybox sh) for the volume and mute controls (QEMU with
# controls=on). The daemon's stream 0 (playback, hw:0,0, on a pad) has volume = true.
#   1. amixer lists "Master Playback Volume" (0..120, a dB scale from -60 dB in 0.5 dB
#      steps) and "Master Playback Switch";
#   2. `amixer -- sset Master -6dB` (-- or amixer takes -6dB for options), then plays /data/s16.wav (the host checks that the pad
#      got every sample halved); "split";
#   3. `amixer sset Master mute`, plays it again (the host checks silence); unmutes;
#   4. prints "host-volume" and waits: the host runs `vsound ctl volume 0 -12`; `cget`
#      must read 96, and `amixer events` (on the console) report the change: the host
#      checks its line (the guest was told, CTL_NOTIFY).
set -u
. /usr/lib/vsound/lib.sh

vsound_wait_card 10 || vsound_fail "no sound card"
amixer -c 0 controls >/tmp/controls 2>&1 || vsound_fail "amixer controls failed: $(cat /tmp/controls)"
sed 's/^/  amixer: /' /tmp/controls
grep -q "name='Master Playback Volume'" /tmp/controls || vsound_fail "no Master Playback Volume"
grep -q "name='Master Playback Switch'" /tmp/controls || vsound_fail "no Master Playback Switch"
amixer -c 0 cget name='Master Playback Volume' >/tmp/cget 2>&1
sed 's/^/  amixer: /' /tmp/cget
grep -q 'min=0,max=120' /tmp/cget || vsound_fail "volume range is not 0..120: $(cat /tmp/cget)"
grep -q 'dBscale-min=-60.00dB,step=0.50dB' /tmp/cget || vsound_fail "no dB scale: $(cat /tmp/cget)"
grep -q ': values=120' /tmp/cget || vsound_fail "the volume does not start at 0 dB"

amixer -c 0 -- sset Master -6dB >/tmp/sset 2>&1 || vsound_fail "amixer sset -6dB failed: $(cat /tmp/sset)"
sed 's/^/  amixer: /' /tmp/sset
grep -q '\[-6.00dB\]' /tmp/sset || vsound_fail "sset -6dB gave: $(cat /tmp/sset)"
vsound_info "start half"
vsound_play hw:CARD=SoundCard,DEV=0 /data/s16.wav 2000
sleep 0.5
vsound_info "split"
sleep 0.5

amixer -c 0 sset Master mute >/tmp/mute 2>&1 || vsound_fail "amixer mute failed: $(cat /tmp/mute)"
grep -q '\[off\]' /tmp/mute || vsound_fail "mute gave: $(cat /tmp/mute)"
vsound_info "start muted"
vsound_play hw:CARD=SoundCard,DEV=0 /data/s16.wav 2000
amixer -c 0 sset Master unmute >/dev/null 2>&1 || vsound_fail "amixer unmute failed"

# amixer events does not flush its output: on the console (a tty) it is line
# buffered, and the host finds its "event value" line in the console log.
amixer -c 0 events >/dev/console 2>&1 &
events=$!
sleep 0.5
vsound_info "host-volume"
n=0
while :; do
    amixer -c 0 cget name='Master Playback Volume' >/tmp/cget 2>&1
    grep -q ': values=96' /tmp/cget && break
    n=$((n + 1))
    [ "$n" -lt 50 ] || vsound_fail "the host's -12 dB did not reach the guest: $(cat /tmp/cget)"
    sleep 0.1
done
vsound_info "host volume read after $((n * 100)) ms"
sleep 0.5
kill "$events" 2>/dev/null
vsound_info "events done"
vsound_check_dmesg "at the end"
exit 0

#!/bin/sh
# daemon-restart-replug.sh: guest case (busybox sh) for a restart of the vsound daemon,
# recovered by re-plugging the device over QMP (QEMU 10's vhost-user-snd cannot reconnect
# to a restarted back-end; README, "A restarted daemon and QEMU 10"). run-suite.sh's
# daemon-restart-replug drives the host side; the two follow each other through console
# lines ("VSOUND-INFO: replug: ...") and one line the host sends on the virtio-serial port
# REPLUG_PORT (default "vsound.ctl"):
#   1. play REPLUG_PLAY_1 (vsound_play: exit 0 in real time), no "timeout" in dmesg, then
#      "VSOUND-INFO: replug: played, kill the daemon" (the host SIGKILLs vsound and starts
#      a new one on the same socket, with the same config);
#   2. wait (at most 30 s) for the host's line on the port: the new daemon is up;
#   3. the card is still there but QEMU did not reconnect it: aplay of REPLUG_PLAY_1 must
#      fail (its control requests time out, virtio_snd.msg_timeout_ms); the dmesg lines
#      with "timeout" so far are printed ("replug: dmesg before the re-plug: ...");
#   4. "VSOUND-INFO: replug: waiting for the re-plug" (the host: device_del, wait for
#      DEVICE_DELETED, chardev-remove); wait (at most 30 s) until the card is gone and
#      virtio_snd has no device left (its remove() has returned), write the marker
#      "vsound-replug: old device removed" into the kernel log and print
#      "VSOUND-INFO: replug: card gone" (the host then sends chardev-add, device_add);
#   5. wait (at most 15 s) for the new card (same name: ALSA card id SoundCard) and its
#      playback PCM 0, print "VSOUND-INFO: replug: card back";
#   6. play REPLUG_PLAY_2: exit 0 in real time; no "timeout" / "failed to flush" in dmesg
#      after the marker. (Run with vsound.check_dmesg=0: /init's check reads all of dmesg,
#      and step 3's timeouts are expected.)
# Environment: REPLUG_PLAY_1="DEV@FILE@MS", REPLUG_PLAY_2="DEV@FILE@MS" (DEV by card name,
# e.g. hw:CARD=SoundCard,DEV=0: the new card need not get the old index), REPLUG_PORT.
set -u
. /usr/lib/vsound/lib.sh

MARKER="vsound-replug: old device removed"
CARD_ID=SoundCard

vsound_wait_card 10 || vsound_fail "no sound card"
play_spec() { # play_spec DEV@FILE@MS: sets dev file ms
    dev=${1%%@*}
    rest=${1#*@}
    file=${rest%@*}
    ms=${rest##*@}
}
name=${REPLUG_PORT:-vsound.ctl}
port=""
for d in /sys/class/virtio-ports/*; do
    [ "$(cat "$d/name" 2>/dev/null)" = "$name" ] && port=/dev/${d##*/}
done
[ -n "$port" ] && [ -c "$port" ] || vsound_fail "no virtio-serial port named $name"

# snd_devices: the virtio devices bound to virtio_snd (empty once remove() returned)
snd_devices() { ls /sys/bus/virtio/drivers/virtio_snd/ 2>/dev/null | grep '^virtio' | tr '\n' ' '; }
# card_pcm: the playback PCM 0 node of card CARD_ID, if the card and the node are there
card_pcm() {
    local c
    c=$(readlink /proc/asound/$CARD_ID 2>/dev/null) || return 1
    [ -e "/dev/snd/pcmC${c#card}D0p" ] && echo "/dev/snd/pcmC${c#card}D0p"
}
# pci_of VIRTIO_DEV: its PCI address
pci_of() { basename "$(readlink -f "/sys/bus/virtio/devices/$1/..")"; }

old_dev=$(snd_devices)
vsound_info "replug: card $(readlink /proc/asound/$CARD_ID) on ${old_dev% } (PCI $(pci_of ${old_dev% }))"

# 1. the device works
play_spec "${REPLUG_PLAY_1:?REPLUG_PLAY_1=DEV@FILE@MS}"
vsound_play "$dev" "$file" "$ms"
vsound_check_dmesg "before the daemon restart"
vsound_info "replug: played, kill the daemon"

# 2. the host restarts the daemon and says so on the port. A read of the port returns
#    at once (EOF) while the host side is not connected: poll.
t0=$(vsound_uptime_ms)
line=""
while [ -z "$line" ]; do
    [ $(($(vsound_uptime_ms) - t0)) -lt 30000 ] ||
        vsound_fail "no word from the host on $port 30 s after asking for the daemon restart"
    line=$(timeout 5 head -n 1 "$port" 2>/dev/null | tr -d '\r')
    [ -n "$line" ] || sleep 0.1
done
vsound_info "replug: host says: $line"

# 3. QEMU kept the device, but nobody serves it
t0=$(vsound_uptime_ms)
timeout 20 aplay -D "$dev" "$file" >/tmp/aplay-dead.log 2>&1
rc=$?
el=$(($(vsound_uptime_ms) - t0))
vsound_info "replug: aplay before the re-plug: exit $rc after $el ms:" \
    "$(grep -v '^Playing' /tmp/aplay-dead.log | head -n 1)"
[ "$rc" -ne 0 ] ||
    vsound_fail "aplay worked on the device after the daemon restart, before any re-plug: did QEMU reconnect it? (README's claim)"
dmesg | grep -i -E 'timeout|failed to flush' | grep -v -i 'command line' | sed 's/^\[[ 0-9.]*\] *//' |
    while read -r l; do vsound_info "replug: dmesg before the re-plug: $l"; done

# 4. the old device goes away
vsound_info "replug: waiting for the re-plug"
t0=$(vsound_uptime_ms)
while [ -e /proc/asound/$CARD_ID ] || [ -n "$(snd_devices)" ]; do
    [ $(($(vsound_uptime_ms) - t0)) -lt 30000 ] ||
        vsound_fail "the card is still there 30 s after asking for the re-plug (virtio_snd has: $(snd_devices))"
    sleep 0.05
done
echo "$MARKER" >/dev/kmsg
vsound_info "replug: card gone after $(($(vsound_uptime_ms) - t0)) ms ($(head -n 1 /proc/asound/cards | sed 's/^ *//'))"

# 5. the new device comes
t0=$(vsound_uptime_ms)
until pcm=$(card_pcm); do
    [ $(($(vsound_uptime_ms) - t0)) -lt 15000 ] || vsound_fail "no card $CARD_ID 15 s after the old one went away"
    sleep 0.05
done
new_dev=$(snd_devices)
vsound_info "replug: card back after $(($(vsound_uptime_ms) - t0)) ms: $(readlink /proc/asound/$CARD_ID)," \
    "$pcm, on ${new_dev% } (PCI $(pci_of ${new_dev% }))"

# 6. and works
play_spec "${REPLUG_PLAY_2:?REPLUG_PLAY_2=DEV@FILE@MS}"
vsound_play "$dev" "$file" "$ms"
dmesg | grep -q -F "$MARKER" || vsound_fail "the marker is no longer in dmesg (ring buffer too small?)"
bad=$(dmesg | sed -n "/$MARKER/,\$p" | grep -i -E 'timeout|failed to flush')
[ -z "$bad" ] || vsound_fail "guest kernel logged after the re-plug: $(echo "$bad" | head -n 1 | sed 's/^\[[ 0-9.]*\] *//')"
exit 0

#!/bin/sh
# driver-reload.sh: guest case (busybox sh): play, then RELOAD_TIMES times (default 2):
# `rmmod virtio_snd`, "VSOUND-INFO: split" (a host pad client starts a new segment),
# `insmod virtio_snd.ko` with the parameters /init gave it (msg_timeout_ms...), wait for
# the card, and play again. Every aplay must exit 0 in real time; dmesg must show no
# "timeout" / "failed to flush" after any round.
#
# Environment: RELOAD_PLAY="DEV@FILE@MS" (see pcm-io.sh), RELOAD_TIMES=2.
set -u
. /usr/lib/vsound/lib.sh

vsound_wait_card 10 || vsound_fail "no sound card"
p=${RELOAD_PLAY:?RELOAD_PLAY=DEV@FILE@MS}
dev=${p%%@*}
rest=${p#*@}
file=${rest%@*}
ms=${rest##*@}

vsound_play "$dev" "$file" "$ms"
vsound_check_dmesg "after the first playback"
i=1
while [ "$i" -le "${RELOAD_TIMES:-2}" ]; do
    t0=$(vsound_uptime_ms)
    vsound_reload_snd 10
    vsound_info "split"
    vsound_info "reload $i: virtio_snd reloaded ($(vsound_module_params virtio_snd)), card back after $(($(vsound_uptime_ms) - t0)) ms"
    vsound_check_dmesg "after reload $i"
    vsound_play "$dev" "$file" "$ms"
    vsound_check_dmesg "after playback $i"
    i=$((i + 1))
done
exit 0

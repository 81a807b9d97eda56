#!/bin/sh
# hot-remove-error.sh: guest case (busybox sh) for a stream with on_remove = "error" on a
# pad (PENDING: needs the daemon's on_remove policy). The host pad client is connected at
# boot and follows the console: it disconnects on "VSOUND-INFO: detach-now" and connects
# again on "VSOUND-INFO: attach-now".
#   1. play FILE with the pad attached: exit 0 in real time;
#   2. detach-now, wait 1 s: aplay must fail with an I/O error: PREPARE/START answered
#      IO_ERR while the device is gone. aplay says "Input/output error" when START (or
#      a write) fails, but only "Unable to install hw params" when PREPARE does
#      (alsa-lib prepares inside snd_pcm_hw_params and aplay prints no errno there);
#      either is accepted;
#   3. attach-now, wait 1 s: aplay exits 0 in real time again;
#   no "timeout" / "failed to flush" in dmesg.
# Environment: HOTREMOVE_PLAY="DEV@FILE@MS".
set -u
. /usr/lib/vsound/lib.sh

vsound_wait_card 10 || vsound_fail "no sound card"
p=${HOTREMOVE_PLAY:?HOTREMOVE_PLAY=DEV@FILE@MS}
dev=${p%%@*}
rest=${p#*@}
file=${rest%@*}
ms=${rest##*@}

vsound_play "$dev" "$file" "$ms"
vsound_info "detach-now"
sleep 1
vsound_play_fails "$dev" "$file" "Input/output error|Unable to install hw params"
vsound_check_dmesg "after the refused playback"
vsound_info "attach-now"
sleep 1
vsound_play "$dev" "$file" "$ms"
vsound_check_dmesg "after the playback that followed the reconnect"
exit 0

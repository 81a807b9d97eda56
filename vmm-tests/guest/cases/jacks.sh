#!/bin/sh
# jacks.sh: guest case (busybox sh): the guest sees its jacks follow the pad (PENDING:
# needs the daemon's JACK_CONNECTED/JACK_DISCONNECTED events). Every jack control of
# card 0 (amixer -c 0 controls: names ending in " Jack", e.g. 'Line Out Jack' for an
# output stream's device, 'Line Jack' for an input's) must read:
#   off at boot (no pad client yet); on within JACK_WAIT_MS (default 3000) after
#   "VSOUND-INFO: jack-plug-1" (the host client connects); off after "jack-unplug-1"
#   (it disconnects); on again after "jack-plug-2".
# No "timeout" / "failed to flush" in dmesg.
set -u
. /usr/lib/vsound/lib.sh

vsound_wait_card 10 || vsound_fail "no sound card"
wait_ms=${JACK_WAIT_MS:-3000}
echo "--- amixer -c 0 controls"
amixer -c 0 controls
jacks=$(amixer -c 0 controls | sed -n "s/.*name='\(.* Jack\)'.*/\1/p" | tr ' ' '~')
[ -n "$jacks" ] || vsound_fail "card 0 has no jack controls"
vsound_info "jack controls: $(echo "$jacks" | tr '~\n' '  ')"

expect_all() { # expect_all on|off WHEN
    local j name
    for j in $jacks; do
        name=$(echo "$j" | tr '~' ' ')
        vsound_wait_jack "$name" "$1" "$wait_ms" ||
            vsound_fail "jack '$name' reads '$(vsound_jack "$name")', not $1, $wait_ms ms $2"
    done
}
expect_all off "after boot, with no pad client"
vsound_info "jack-plug-1"
expect_all on "after the pad client connected"
vsound_info "jack-unplug-1"
expect_all off "after the pad client disconnected"
vsound_info "jack-plug-2"
expect_all on "after the pad client connected again"
vsound_check_dmesg "after the jack changes"
exit 0

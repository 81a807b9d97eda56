#!/bin/sh
# reboot.sh: guest case (busybox sh) that runs over two boots of the same QEMU (run-guest.sh
# --boots 2: no -no-reboot). The initramfs is RAM and starts afresh on each boot, so the
# boot number is kept where a reset does not reach: a byte of the CMOS NVRAM (the RTC's
# battery-backed RAM, which QEMU keeps across resets and zeroes only when QEMU starts),
# through the rtc_cmos driver's nvmem file (or /dev/port). Each boot prints
# "VSOUND-INFO: boot N" first; the host counts boots by SeaBIOS's banner on its own.
#
#   boot 1, REBOOT_HOW=self: play REBOOT_PLAY_1 (vsound_play: exit 0 in real time), check
#       dmesg, then "VSOUND-INFO: rebooting" and `reboot -f` (busybox: sync, then the
#       reboot syscall, which runs the kernel's device shutdown first);
#   boot 1, REBOOT_HOW=host: "VSOUND-INFO: start DEV FILE" and play REBOOT_PLAY_1, which
#       the host interrupts with a QMP system_reset; if aplay ends the case fails;
#   boot 2: "VSOUND-INFO: split" (a host pad client starts a new segment), play
#       REBOOT_PLAY_2 (exit 0 in real time); /init then checks this boot's dmesg and
#       prints the verdict;
#   any other boot: fails.
#
# Environment: REBOOT_HOW=self|host, REBOOT_PLAY_1="DEV@FILE@MS", REBOOT_PLAY_2="DEV@FILE@MS".
set -u
. /usr/lib/vsound/lib.sh

# CMOS byte 0x7e: neither QEMU's pc machine nor SeaBIOS uses it. The nvmem file starts at
# CMOS byte 14 (after the clock registers).
CMOS_INDEX=126
CMOS_MAGIC=160 # stored: 160 + the number of the boot that last started
NVMEM=/sys/bus/nvmem/devices/cmos_nvram0/nvmem
cmos_get() {
    if [ -e "$NVMEM" ]; then
        dd if="$NVMEM" bs=1 skip=$((CMOS_INDEX - 14)) count=1 2>/dev/null
    else # index port 0x70, data port 0x71
        printf "\\$(printf %03o "$CMOS_INDEX")" | dd of=/dev/port bs=1 seek=112 count=1 conv=notrunc 2>/dev/null
        dd if=/dev/port bs=1 skip=113 count=1 2>/dev/null
    fi | od -A n -t u1 | tr -d ' \n'
}
cmos_set() {
    if [ -e "$NVMEM" ]; then
        printf "\\$(printf %03o "$1")" | dd of="$NVMEM" bs=1 seek=$((CMOS_INDEX - 14)) count=1 conv=notrunc 2>/dev/null
    else
        printf "\\$(printf %03o "$CMOS_INDEX")" | dd of=/dev/port bs=1 seek=112 count=1 conv=notrunc 2>/dev/null
        printf "\\$(printf %03o "$1")" | dd of=/dev/port bs=1 seek=113 count=1 conv=notrunc 2>/dev/null
    fi
    [ "$(cmos_get)" = "$1" ] || vsound_fail "cannot keep the boot number in CMOS byte $CMOS_INDEX (reads '$(cmos_get)' after writing $1)"
}

old=$(cmos_get)
[ -n "$old" ] || vsound_fail "cannot read CMOS byte $CMOS_INDEX (no $NVMEM, no /dev/port)"
if [ "$old" -gt "$CMOS_MAGIC" ] && [ "$old" -lt $((CMOS_MAGIC + 16)) ]; then
    boot=$((old - CMOS_MAGIC + 1))
else
    boot=1
fi
cmos_set $((CMOS_MAGIC + boot))
vsound_info "boot $boot (CMOS byte $CMOS_INDEX was $old)"

vsound_wait_card 10 || vsound_fail "no sound card in boot $boot"
play_spec() { # play_spec DEV@FILE@MS: sets dev file ms
    dev=${1%%@*}
    rest=${1#*@}
    file=${rest%@*}
    ms=${rest##*@}
}

case "$boot" in
    1)
        play_spec "${REBOOT_PLAY_1:?REBOOT_PLAY_1=DEV@FILE@MS}"
        case "${REBOOT_HOW:?REBOOT_HOW=self|host}" in
            self)
                vsound_play "$dev" "$file" "$ms"
                vsound_check_dmesg "in boot 1, before the reboot"
                vsound_info "rebooting"
                reboot -f
                sleep 10
                vsound_fail "reboot -f returned and the guest is still up 10 s later"
                ;;
            host)
                vsound_info "start $dev $file"
                vsound_play "$dev" "$file" "$ms"
                vsound_fail "boot 1's playback ended: the host did not reset the guest during it"
                ;;
            *) vsound_fail "REBOOT_HOW must be self or host, not $REBOOT_HOW" ;;
        esac
        ;;
    2)
        play_spec "${REBOOT_PLAY_2:?REBOOT_PLAY_2=DEV@FILE@MS}"
        vsound_info "split"
        vsound_info "start $dev $file"
        vsound_play "$dev" "$file" "$ms"
        vsound_check_dmesg "in boot 2"
        exit 0
        ;;
    *) vsound_fail "unexpected boot $boot: the case runs over two boots" ;;
esac

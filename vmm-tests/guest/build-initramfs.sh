#!/usr/bin/env bash
# build-initramfs.sh: build the base initramfs of vsound's test guest.
#
# Usage:  vmm-tests/guest/build-initramfs.sh [--force]
#
# Writes $VSOUND_GUEST_CACHE/initramfs.cpio.zst (default cache <repo>/target/guest-cache)
# and prints its path on stdout. It holds:
#   * busybox-static and its applets;
#   * the sound modules (virtio_snd and what it needs by modules.dep: soundcore, snd,
#     snd-timer, snd-pcm), decompressed from .ko.xz because busybox insmod reads no xz,
#     from the kernel that fetch-kernel.sh unpacked (run first, by this script if needed);
#     VSOUND_GUEST_MODULES="virtio_snd other_mod ..." changes the list;
#   * aplay, arecord, amixer, the libraries ldd lists for them and the dynamic loader,
#     and /usr/share/alsa/{alsa.conf,cards,pcm,ctl} (alsa-lib opens no device without);
#   * /usr/lib/vsound/lib.sh, helpers for case scripts (below);
#   * /init, which:
#       1. mounts proc, sysfs, devtmpfs and tmpfs (/tmp);
#       2. insmods the modules in dependency order; virtio_snd gets
#          msg_timeout_ms=<vsound.msg_timeout_ms from the kernel command line, default
#          3000>; any "<module>.<param>=<value>" on the command line is passed to that
#          module (as modprobe would), e.g. virtio_snd.pcm_buffer_ms=100;
#       3. waits up to vsound.card_wait_s (default 10) seconds for sound card 0;
#       4. sources /case.env if present (lines NAME=VALUE, exported), then runs
#          `sh /case.sh` from /, with a time limit of vsound.case_timeout_s (default 60).
#          Without /case.sh it only checks that card 0 appeared;
#       5. with vsound.check_dmesg=1 on the command line, fails a case that passed if the
#          kernel logged a timeout or "failed to flush" (vsound_check_dmesg);
#       6. prints exactly one line `VSOUND-RESULT: PASS` or `VSOUND-RESULT: FAIL <reason>`
#          on the console (with the kernel's console messages silenced first, so that no
#          kernel line can cut it). On FAIL, or always with vsound.dump_dmesg=1, the tail
#          of dmesg (vsound.dmesg_lines, default 60) comes before it between
#          `VSOUND-DMESG-BEGIN` and `VSOUND-DMESG-END`;
#       7. powers off (poweroff -f).
#
# Case scripts: a case script is a busybox sh script, put into the guest as /case.sh by a
# second cpio archive appended to this one (run-guest.sh --case does it; data files go to
# /data/). Its contract:
#   * exit 0: PASS. Exit non-zero: FAIL; the reason is the first line of
#     /tmp/vsound-reason if the script wrote one (vsound_fail does), else
#     "case exited with status N";
#   * it may `. /usr/lib/vsound/lib.sh` for: vsound_fail REASON (write reason, exit 1),
#     vsound_info MSG (prints "VSOUND-INFO: MSG", which run-guest.sh echoes),
#     vsound_uptime_ms, vsound_arg NAME DEFAULT (reads vsound.NAME= from the kernel
#     command line), vsound_wait_card SECS [CARD], vsound_check_dmesg [WHEN] (fails on a
#     kernel "timeout" or "failed to flush"), vsound_module_params MOD, vsound_reload_snd
#     [SECS] (rmmod + insmod virtio_snd with /init's parameters), vsound_play DEV FILE
#     EXPECT_MS (aplay in real time), vsound_play_fails DEV FILE TEXT,
#     vsound_capture_pattern DEV SECS PATTERN [FMT RATE CH FRAME] (arecord and find a
#     pattern), vsound_jack NAME, vsound_wait_jack NAME on|off MS (see lib.sh itself);
#   * it must not print lines starting with "VSOUND-RESULT:" itself.
#
# Rebuilt only when an input changed: this script, the kernel package, the Debian versions
# of busybox-static, alsa-utils, libasound2 and libc6, or VSOUND_GUEST_MODULES. --force
# rebuilds anyway. A rebuild takes about a second.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${VSOUND_GUEST_CACHE:-$REPO/target/guest-cache}
OUT=$CACHE/initramfs.cpio.zst
STAMP=$CACHE/initramfs.stamp
MODULES=${VSOUND_GUEST_MODULES:-virtio_snd}
BINARIES=(/usr/bin/aplay /usr/bin/amixer)
BIN_LINKS=(arecord:aplay)
ALSA_SHARE=(alsa.conf cards pcm ctl)

log() { printf 'build-initramfs: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

force=0
case "${1:-}" in
    --force) force=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) die "unknown argument: $1 (try --help)" ;;
esac

bash "$HERE/fetch-kernel.sh" >/dev/null
KDIR=$CACHE/kernel
MODDIR=$KDIR/modules
RELEASE=$(cat "$KDIR/release")

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo missing; }
stamp() {
    sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1
    cat "$KDIR/pkg"
    local p
    for p in busybox-static alsa-utils libasound2 libc6; do
        echo "$p $(pkg_version "$p")"
    done
    echo "modules: $MODULES"
}

want=$(stamp)
if [[ $force == 0 && -s $OUT && -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
    echo "$OUT"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.initramfs.lock"
flock 9
if [[ $force == 0 && -s $OUT && -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
    echo "$OUT"
    exit 0
fi

for tool in busybox cpio zstd xz ldd; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found (run scripts/install-deps.sh)"
done
BUSYBOX=/bin/busybox
if [[ ! -x $BUSYBOX ]] || ! "$BUSYBOX" --list-full >/dev/null 2>&1 || ldd "$BUSYBOX" >/dev/null 2>&1; then
    die "$BUSYBOX is not busybox-static (run scripts/install-deps.sh)"
fi

work=$(mktemp -d "$CACHE/.initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/lib/vsound,lib/modules,etc,proc,sys,dev,tmp,data,root,usr/share/alsa}

# --- busybox ---------------------------------------------------------------------------------
cp "$BUSYBOX" "$root/bin/busybox"
while read -r applet; do
    [[ -n $applet && $applet != bin/busybox ]] || continue
    [[ -e $root/$applet ]] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -s /bin/busybox "$root/$applet"
done < <("$BUSYBOX" --list-full)

# --- ALSA userland ---------------------------------------------------------------------------
copy_file() { # copy_file SRC: to the same path inside the image, following symlinks
    mkdir -p "$root$(dirname "$1")"
    cp -L "$1" "$root$1"
}
for bin in "${BINARIES[@]}"; do
    [[ -x $bin ]] || die "$bin not found (run scripts/install-deps.sh)"
    copy_file "$bin"
    # "libx.so => /path (addr)" and "/lib64/ld-linux-x86-64.so.2 (addr)"
    while read -r lib; do
        [[ -e $root$lib ]] || copy_file "$lib"
    done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
done
for link in "${BIN_LINKS[@]}"; do
    ln -sf "${link#*:}" "$root/usr/bin/${link%%:*}"
done
for f in "${ALSA_SHARE[@]}"; do
    [[ -e /usr/share/alsa/$f ]] || die "/usr/share/alsa/$f not found (install libasound2-data)"
    cp -a "/usr/share/alsa/$f" "$root/usr/share/alsa/"
done

# --- kernel modules, in load order -----------------------------------------------------------
declare -A dep_of=() seen=()
while IFS= read -r line; do
    dep_of[${line%%:*}]=${line#*:}
done <"$MODDIR/modules.dep"
# module path in modules.dep for a module name (dashes and underscores are the same)
mod_path() {
    local want=${1//-/_} p base
    for p in "${!dep_of[@]}"; do
        base=${p##*/}
        base=${base%%.ko*}
        [[ ${base//-/_} == "$want" ]] && { echo "$p"; return 0; }
    done
    return 1
}
order=()
visit() { # depth first: dependencies before the module
    local p=$1 d
    [[ -n ${seen[$p]:-} ]] && return 0
    seen[$p]=1
    for d in ${dep_of[$p]}; do visit "$d"; done
    order+=("$p")
}
for m in $MODULES; do
    p=$(mod_path "$m") || {
        grep -qE "/${m//[-_]/[-_]}\.ko" "$MODDIR/modules.builtin" && { log "$m is built in"; continue; }
        die "module $m not found in $MODDIR"
    }
    visit "$p"
done
: >"$root/lib/modules/load-order"
for p in "${order[@]}"; do
    name=${p##*/}
    name=${name%%.ko*}
    case "$p" in
        *.ko.xz) xz -dc "$MODDIR/$p" >"$root/lib/modules/$name.ko" ;;
        *.ko.zst) zstd -qdc "$MODDIR/$p" >"$root/lib/modules/$name.ko" ;;
        *.ko.gz) gzip -dc "$MODDIR/$p" >"$root/lib/modules/$name.ko" ;;
        *.ko) cp "$MODDIR/$p" "$root/lib/modules/$name.ko" ;;
        *) die "unexpected module file $p" ;;
    esac
    echo "$name" >>"$root/lib/modules/load-order"
done
log "kernel $RELEASE, modules: $(tr '\n' ' ' <"$root/lib/modules/load-order")"

# --- helpers for case scripts ----------------------------------------------------------------
cat >"$root/usr/lib/vsound/lib.sh" <<'EOF'
# Helpers for vsound guest case scripts (busybox sh). Source with: . /usr/lib/vsound/lib.sh
VSOUND_REASON_FILE=/tmp/vsound-reason

# vsound_arg NAME DEFAULT: value of the last vsound.NAME=... on the kernel command line
vsound_arg() {
    local a v="$2" words
    read -r words </proc/cmdline
    for a in $words; do
        case "$a" in "vsound.$1="*) v=${a#*=} ;; esac
    done
    echo "$v"
}
# milliseconds since boot
vsound_uptime_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
vsound_info() { echo "VSOUND-INFO: $*"; }
# vsound_fail REASON: record the reason of the failure and exit 1
vsound_fail() {
    echo "$*" >"$VSOUND_REASON_FILE"
    echo "vsound: FAIL: $*" >&2
    exit 1
}
# vsound_wait_card SECS [CARD]: wait until ALSA card CARD (default 0) has a PCM device
vsound_wait_card() {
    local n=0 card="${2:-0}"
    while [ "$n" -lt $(($1 * 10)) ]; do
        ls /dev/snd/pcmC"$card"D* >/dev/null 2>&1 && return 0
        sleep 0.1
        n=$((n + 1))
    done
    return 1
}
# vsound_check_dmesg [WHEN]: fail if the kernel logged a "timeout" or "failed to flush"
# (virtio_snd's words for a control request the device did not answer in time, and for
# I/O buffers that RELEASE did not get back); the kernel command line does not count
vsound_check_dmesg() {
    local bad
    bad=$(dmesg | grep -i -E 'timeout|failed to flush' | grep -v -i 'command line')
    [ -z "$bad" ] && return 0
    echo "$bad" | sed 's/^/vsound: dmesg: /' >&2
    vsound_fail "guest kernel logged${1:+ ($1)}: $(echo "$bad" | head -n 1 | sed 's/^\[[ 0-9.]*\] *//')"
}
# vsound_module_params MOD: the parameters /init gives module MOD: every
# "MOD.param=value" of the kernel command line; for virtio_snd also
# msg_timeout_ms=<vsound.msg_timeout_ms, default 3000> unless given
vsound_module_params() {
    local key a a_mod params="" words
    key=$(echo "$1" | tr - _)
    read -r words </proc/cmdline
    for a in $words; do
        a_mod=${a%%.*}
        [ "$a_mod" != "$a" ] || continue
        [ "$(echo "$a_mod" | tr - _)" = "$key" ] && params="$params ${a#*.}"
    done
    if [ "$key" = virtio_snd ]; then
        case "$params" in
            *msg_timeout_ms=*) ;;
            *) params="msg_timeout_ms=$(vsound_arg msg_timeout_ms 3000)$params" ;;
        esac
    fi
    # shellcheck disable=SC2086 # a word list, trimmed
    echo $params
}
# vsound_reload_snd [SECS]: rmmod virtio_snd, insmod it again with the parameters /init
# gave it, and wait up to SECS (default 10) for card 0 to come back
vsound_reload_snd() {
    local params n=0
    rmmod virtio_snd || vsound_fail "rmmod virtio_snd failed"
    while ls /dev/snd/pcmC0D* >/dev/null 2>&1; do
        [ "$n" -ge 50 ] && vsound_fail "card 0 still there 5 s after rmmod virtio_snd"
        sleep 0.1
        n=$((n + 1))
    done
    params=$(vsound_module_params virtio_snd)
    # shellcheck disable=SC2086 # params is a word list
    insmod /lib/modules/virtio_snd.ko $params || vsound_fail "insmod virtio_snd $params failed"
    vsound_wait_card "${1:-10}" || vsound_fail "no sound card ${1:-10} s after insmod virtio_snd $params"
}
# vsound_play DEV FILE EXPECT_MS [SLACK_MS]: `aplay -v -D DEV FILE`, which must exit 0
# after between EXPECT_MS*97/100 and EXPECT_MS*110/100+SLACK_MS (default
# $VSOUND_PLAY_SLACK_MS or 500) ms: real time. Prints
#   VSOUND-INFO: play DEV FILE: exit RC after N ms (expected EXPECT_MS ms)
#   VSOUND-INFO: hw-params DEV FILE period_size=FRAMES buffer_size=FRAMES
# Safe to run several at once in the background (one log per DEV and FILE).
vsound_play() {
    local dev="$1" file="$2" ms="$3" slack="${4:-${VSOUND_PLAY_SLACK_MS:-500}}" out t0 rc el
    out=/tmp/aplay.$(echo "$dev-$file" | tr -c 'A-Za-z0-9\n' _).log
    t0=$(vsound_uptime_ms)
    aplay -v -D "$dev" "$file" >"$out" 2>&1
    rc=$?
    el=$(($(vsound_uptime_ms) - t0))
    vsound_info "play $dev $file: exit $rc after $el ms (expected $ms ms)"
    vsound_info "hw-params $dev $file" \
        "period_size=$(sed -n 's/^ *period_size *: *\([0-9]*\).*/\1/p' "$out" | head -n 1)" \
        "buffer_size=$(sed -n 's/^ *buffer_size *: *\([0-9]*\).*/\1/p' "$out" | head -n 1)"
    if [ "$rc" -ne 0 ]; then
        grep -v -E '^ +[a-z_ ]+: ' "$out" | sed 's/^/  aplay: /' >&2
        vsound_fail "aplay -D $dev $file exited with status $rc after $el ms:" \
            "$(grep -E '^aplay: ' "$out" | head -n 1)"
    fi
    [ "$el" -ge $((ms * 97 / 100)) ] ||
        vsound_fail "playback of $file on $dev too fast: $el ms for $ms ms of audio"
    [ "$el" -le $((ms * 110 / 100 + slack)) ] ||
        vsound_fail "playback of $file on $dev too slow: $el ms for $ms ms of audio"
}
# vsound_play_fails DEV FILE REGEX: `aplay -D DEV FILE` must exit non-zero with a message
# matching the extended regular expression REGEX (e.g. "Input/output error")
vsound_play_fails() {
    local out=/tmp/aplay-fail.log t0 rc el
    t0=$(vsound_uptime_ms)
    aplay -D "$1" "$2" >"$out" 2>&1
    rc=$?
    el=$(($(vsound_uptime_ms) - t0))
    vsound_info "play (must fail) $1 $2: exit $rc after $el ms: $(grep -v '^Playing' "$out" | head -n 1)"
    [ "$rc" -ne 0 ] || vsound_fail "aplay -D $1 $2 succeeded ($el ms) but must fail with $3"
    grep -q -E "$3" "$out" || vsound_fail "aplay -D $1 $2 failed without '$3': $(head -n 3 "$out" | tr '\n' ' ')"
}
# vsound_capture_pattern DEV SECS PATTERN [FORMAT RATE CHANNELS FRAME_BYTES]: record SECS s
# (`arecord -t raw`, default S16_LE 48000 2 4) and find PATTERN (a raw file whose first
# frame is not silence) in it: the capture must be zero bytes (silence) up to a frame
# boundary, then PATTERN byte for byte, then (VSOUND_CAPTURE_TRAILING=silence, default)
# zero bytes to the end. Prints "VSOUND-INFO: capture running on DEV" as soon as the PCM
# runs (a host feeding the pattern waits for it), then the offset and md5sums.
vsound_capture_pattern() {
    local dev="$1" secs="$2" pat="$3" fmt="${4:-S16_LE}" rate="${5:-48000}" ch="${6:-2}"
    local frame="${7:-4}" cap=/tmp/capture.raw card pcm st pid n=0 rc size first off plen
    local want got
    card=${dev#*:}
    card=${card%%,*}
    pcm=${dev##*,}
    st=/proc/asound/card$card/pcm${pcm}c/sub0/status
    arecord -q -D "$dev" -f "$fmt" -r "$rate" -c "$ch" -t raw -d "$secs" "$cap" 2>/tmp/arecord.err &
    pid=$!
    while ! grep -q 'state: RUNNING' "$st" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || break
        [ "$n" -ge 1000 ] && vsound_fail "capture on $dev not RUNNING after 10 s"
        sleep 0.01
        n=$((n + 1))
    done
    vsound_info "capture running on $dev"
    wait "$pid"
    rc=$?
    size=$(stat -c %s "$cap" 2>/dev/null || echo 0)
    vsound_info "capture $dev: arecord exit $rc, $size bytes"
    [ "$rc" -eq 0 ] || vsound_fail "arecord -D $dev exited with status $rc: $(head -n 1 /tmp/arecord.err)"
    first=$(cmp "$cap" /dev/zero 2>&1 | sed -n 's/.*differ: char \([0-9]*\).*/\1/p')
    [ -n "$first" ] || vsound_fail "capture on $dev is all silence ($size bytes)"
    off=$(((first - 1) / frame * frame))
    plen=$(stat -c %s "$pat")
    vsound_info "capture $dev: pattern starts at byte $off ($((off / frame)) frames of silence)"
    [ $((off + plen)) -le "$size" ] ||
        vsound_fail "capture on $dev holds $size bytes: the pattern from byte $off ($plen bytes) is cut"
    tail -c +$((off + 1)) "$cap" | head -c "$plen" >/tmp/capture.aligned
    want=$(md5sum <"$pat" | cut -d' ' -f1)
    got=$(md5sum </tmp/capture.aligned | cut -d' ' -f1)
    vsound_info "capture $dev: md5 $got of $plen bytes at $off; first bytes" \
        "$(head -c 16 /tmp/capture.aligned | od -A n -t x1 | tr -s ' \n' ' ')"
    if [ "$got" != "$want" ]; then
        vsound_fail "captured bytes differ from $pat ($(cmp /tmp/capture.aligned "$pat" 2>&1 | head -n 1)," \
            "counting from capture byte $off)"
    fi
    if [ "${VSOUND_CAPTURE_TRAILING:-silence}" = silence ]; then
        n=$(tail -c +$((off + plen + 1)) "$cap" | cmp - /dev/zero 2>&1 | sed -n 's/.*differ: char \([0-9]*\).*/\1/p')
        [ -z "$n" ] || vsound_fail "capture on $dev is not silent after the pattern: byte $((off + plen + n - 1)) is not zero"
    fi
    rm -f /tmp/capture.aligned
}
# vsound_jack NAME: "on" or "off", the value of card 0's jack control NAME
vsound_jack() {
    amixer -c 0 cget iface=CARD,name="$1" 2>/dev/null | sed -n 's/^ *: values=//p'
}
# vsound_wait_jack NAME VALUE MS: wait up to MS ms until jack control NAME reads VALUE
vsound_wait_jack() {
    local n=0 t0
    t0=$(vsound_uptime_ms)
    while [ "$(vsound_jack "$1")" != "$2" ]; do
        [ "$n" -ge $(($3 / 20)) ] && return 1
        sleep 0.02
        n=$((n + 1))
    done
    vsound_info "jack '$1' is $2 after $(($(vsound_uptime_ms) - t0)) ms"
}
EOF

# --- /init -----------------------------------------------------------------------------------
cat >"$root/init" <<'EOF'
#!/bin/sh
# /init of the vsound test guest: written by vmm-tests/guest/build-initramfs.sh (see there).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
. /usr/lib/vsound/lib.sh

finish() { # finish PASS | finish FAIL REASON
    if [ "$1" != PASS ] || [ "$(vsound_arg dump_dmesg 0)" = 1 ]; then
        echo "VSOUND-DMESG-BEGIN"
        dmesg | tail -n "$(vsound_arg dmesg_lines 60)"
        echo "VSOUND-DMESG-END"
    fi
    echo 1 >/proc/sys/kernel/printk # no kernel line may cut the result line
    echo "VSOUND-RESULT: $*"
    sync
    poweroff -f
    sleep 5
    echo "vsound: poweroff failed" >&2
    exit 1 # init exits: the kernel panics (panic=-1 reboots, QEMU -no-reboot exits)
}

echo "vsound-guest: init at $(cut -d' ' -f1 /proc/uptime) s, $(uname -r)"

# --- modules ---
while read -r mod; do
    [ -n "$mod" ] || continue
    params=$(vsound_module_params "$mod")
    # shellcheck disable=SC2086 # params is a word list
    insmod "/lib/modules/$mod.ko" $params || finish FAIL "insmod $mod $params failed"
done </lib/modules/load-order

# --- sound card ---
card_wait=$(vsound_arg card_wait_s 10)
if vsound_wait_card "$card_wait"; then
    card=yes
    echo "vsound-guest: sound card 0 at $(cut -d' ' -f1 /proc/uptime) s: $(cat /proc/asound/card0/id 2>/dev/null)"
else
    card=no
    echo "vsound-guest: no sound card after ${card_wait} s"
fi

# --- case ---
if [ ! -f /case.sh ]; then
    [ "$card" = yes ] && finish PASS
    finish FAIL "no sound card after ${card_wait} s"
fi
if [ -f /case.env ]; then
    set -a
    . /case.env
    set +a
fi
case_timeout=$(vsound_arg case_timeout_s 60)
start=$(vsound_uptime_ms)
rm -f "$VSOUND_REASON_FILE"
(cd / && timeout -s KILL "$case_timeout" sh /case.sh)
rc=$?
elapsed=$(($(vsound_uptime_ms) - start))
echo "vsound-guest: case exited with status $rc after $elapsed ms"
if [ "$rc" -eq 0 ] && [ "$(vsound_arg check_dmesg 0)" = 1 ]; then
    (vsound_check_dmesg "checked after the case") || finish FAIL "$(head -n 1 "$VSOUND_REASON_FILE")"
fi
if [ "$rc" -eq 0 ]; then
    finish PASS
elif [ "$elapsed" -ge $((case_timeout * 1000)) ]; then
    finish FAIL "case timed out after ${case_timeout} s"
elif [ -s "$VSOUND_REASON_FILE" ]; then
    finish FAIL "$(head -n 1 "$VSOUND_REASON_FILE")"
else
    finish FAIL "case exited with status $rc"
fi
EOF
chmod 755 "$root/init"

# --- pack ------------------------------------------------------------------------------------
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
    zstd -q -T0 -10 >"$work/initramfs.cpio.zst"
mv "$work/initramfs.cpio.zst" "$OUT"
echo "$want" >"$STAMP"
log "wrote $OUT ($(du -h "$OUT" | cut -f1))"
echo "$OUT"

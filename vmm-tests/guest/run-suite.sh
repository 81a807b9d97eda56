#!/usr/bin/env bash
# run-suite.sh: the guest test suite. Each case starts its own vsound (the workspace's
# debug build unless VSOUND_BIN is set) with the config the case needs (templates in
# configs/, @DIR@ = the case's folder), host-side clients of its pads (pad-client.py),
# boots a real Linux guest under QEMU against it (run-guest.sh) with a case script
# (cases/), and checks the guest's verdict, what the host devices received
# (pcm-check.py), that the guest kernel logged no "timeout" / "failed to flush"
# (vsound.check_dmesg=1) and that the daemon is still alive and did not panic.
#
# Usage: vmm-tests/guest/run-suite.sh [--list] [CASE_NAME...]   (default: all cases)
# Prints one line per case with its time and a closing "N passed, N failed" line; exits
# 1 if any case failed, after printing, for each failed case, its output, the guest's
# dmesg, the daemon's log and the pad clients' logs.
#
# Cases (each documented above its case_ function below): default-play-record,
# pad-playback-s16, pad-playback-s32-mono, pad-playback-float-6ch, pad-capture,
# alsa-file, pipewire-beep-tone, two-groups, vmm-restart, driver-reload, hot-remove-silence,
# hot-remove-error, jacks, pause-resume-playback, pause-resume-capture,
# system-reset-playback, reboot-playback, daemon-restart-replug, pad-recipe-feed-first,
# pad-recipe-record-first, pad-fill-silence-gap, pad-tool-round-trip, controls,
# pad-mix-two-aplays.
# Host-side helpers: pad-client.py (records/feeds a pad, reacts to the guest console),
# pcm-check.py (compares received PCM with the file played), qmp.py (QEMU's monitor:
# pause, resume, reset the VM, unplug and plug a device). The test signals are made once
# per run with sox (-R: the same bytes every time) in the work folder.
#
# Environment: VSOUND_BIN; VSOUND_GUEST_CASES_PENDING=1 also runs cases listed in
# PENDING_CASES (none now); VSOUND_SUITE_KEEP=1 keeps the work
# folder (logs, received PCM) and prints its path; RUST_LOG (default debug);
# VSOUND_SUITE_USER (default vsound-test): run as root, the suite runs every daemon as
# this unprivileged user (created when missing: a system user in group audio), as a
# service would; run as another user, the daemons run as that user.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VSOUND_BIN=${VSOUND_BIN:-$REPO/target/debug/vsound}
[[ -x $VSOUND_BIN ]] || { echo "run-suite: no daemon at $VSOUND_BIN (cargo build first)" >&2; exit 2; }
for tool in python3 sox soxi md5sum; do
    command -v "$tool" >/dev/null 2>&1 || { echo "run-suite: $tool not found" >&2; exit 2; }
done

# Files the suite makes (configs, test signals) are readable by the daemon's user.
umask 022
# The daemon never runs as root here (see VSOUND_SUITE_USER above).
DAEMON_AS=() SUITE_USER=$(id -un)
if [[ $(id -u) -eq 0 ]]; then
    SUITE_USER=${VSOUND_SUITE_USER:-vsound-test}
    if ! id -u "$SUITE_USER" >/dev/null 2>&1; then
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --groups audio "$SUITE_USER"
    fi
    DAEMON_AS=(setpriv --reuid="$SUITE_USER" --regid="$SUITE_USER" --init-groups --)
fi
SUITE_UID=$(id -u "$SUITE_USER")
echo "run-suite: the daemons run as $SUITE_USER (uid $SUITE_UID, groups $(id -Gn "$SUITE_USER" | tr ' ' ','))"

WORK=$(mktemp -d /tmp/vsound-suite.XXXXXX)
chmod 755 "$WORK"
DATA=$WORK/data
# A copy the user can run whatever the checkout's permissions (a clone under /root)
install -m 755 "$VSOUND_BIN" "$WORK/vsound"
DAEMON_BIN=$WORK/vsound
DAEMON_PID=
GUEST_CMD=() GUEST_PID= QMP_OPTS=()
BG_PIDS=()     # pad clients and background guests of the current case
BG_PGIDS=()    # process groups of the case (setsid: a shell pipeline and its members)
CASE_NAME='' CDIR='' OUT=''

kill_bg() { # stop every background process of the case, by pid (and process group id)
    local pid
    for pid in "${BG_PGIDS[@]}"; do
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "${BG_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${BG_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    BG_PIDS=() BG_PGIDS=()
}
forget_pid() { # forget_pid PID: drop a reaped pid from BG_PIDS
    local p keep=()
    for p in "${BG_PIDS[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    BG_PIDS=("${keep[@]}")
}
cleanup() {
    kill_bg
    if [[ -n $DAEMON_PID ]]; then
        kill "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    if [[ ${VSOUND_SUITE_KEEP:-0} == 1 ]]; then
        echo "run-suite: work folder kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

passed=0
failed=0
failed_names=()
t_suite=$(date +%s%N)

say() { printf '%s\n' "$*" >>"$OUT"; }      # into the case's output
bad() { say "run-suite: $CASE_NAME: $*"; return 1; }

# config TEMPLATE: the case's copy of configs/TEMPLATE with @DIR@ filled in; prints its path
config() {
    local out=$CDIR/${1##*/}
    sed -e "s#@DIR@#$CDIR#g" -e "s#@PATTERN@#$DATA/pattern.raw#g" "$HERE/configs/$1" >"$out"
    echo "$out"
}

# start_daemon CONFIG(or "") [NAME=VALUE...]: starts vsound on $CDIR/vsound.sock with
# the extra environment given; log in $CDIR/daemon.log
start_daemon() {
    local config=$1 sock=$CDIR/vsound.sock
    shift
    rm -f "$sock"
    local args=(--socket "$sock")
    [[ -n $config ]] && args+=(--config "$config")
    env RUST_LOG="${RUST_LOG:-debug}" "$@" "${DAEMON_AS[@]}" "$DAEMON_BIN" "${args[@]}" >>"$CDIR/daemon.log" 2>&1 &
    DAEMON_PID=$!
    for _ in $(seq 200); do
        if [[ -S $sock ]]; then
            # setpriv execs the daemon: the pid is the daemon's, its owner the user's
            local uid
            uid=$(stat -c %u "/proc/$DAEMON_PID" 2>/dev/null || echo '?')
            [[ $uid == "$SUITE_UID" ]] || bad "vsound runs as uid $uid, not $SUITE_USER ($SUITE_UID)" || return 1
            return 0
        fi
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.05
    done
    bad "vsound did not start (see its log)"
}

# stop_daemon: stops vsound; fails if it had died before, or panicked
stop_daemon() {
    local alive=0
    [[ -n $DAEMON_PID ]] || return 0
    if kill -0 "$DAEMON_PID" 2>/dev/null; then alive=1; fi
    kill "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=
    ((alive)) || bad "vsound died during the case" || return 1
    if grep -q 'panicked' "$CDIR/daemon.log"; then
        bad "vsound panicked: $(grep -m1 'panicked' "$CDIR/daemon.log")"
    fi
}

# start_client NAME PAD [pad-client options...]: a pad client in the background,
# connected (unless --no-connect) before this returns; received bytes in
# $CDIR/NAME.0, .1, ... (one segment per connection or split), summary NAME.json, log
# NAME.log
start_client() {
    local name=$1 pad=$2
    shift 2
    python3 "$HERE/pad-client.py" --socket "$CDIR/$pad.sock" --out "$CDIR/$name" \
        --ready "$CDIR/$name.ready" --exit-after 600000 "$@" 2>"$CDIR/$name.log" &
    BG_PIDS+=($!)
    [[ " $* " == *" --no-connect "* ]] && return 0
    for _ in $(seq 200); do
        [[ -e $CDIR/$name.ready ]] && return 0
        sleep 0.05
    done
    bad "pad client $name did not connect to $pad"
}

# guest LOG CASE_SCRIPT [run-guest options...]: boot the guest on the case's daemon with
# cases/CASE_SCRIPT; console in $CDIR/LOG.log
# (guest_cmd sets GUEST_CMD to that command line, to start it in the background)
guest_cmd() {
    local log=$1 script=$2
    shift 2
    GUEST_CMD=("$HERE/run-guest.sh" --socket "$CDIR/vsound.sock" --case "$HERE/cases/$script"
        --log "$CDIR/$log.log" --timeout 120 --append "vsound.check_dmesg=1 vsound.dump_dmesg=1" "$@")
}
guest() {
    # In the background and waited for, so that a TERM or INT to the suite is handled at
    # once (the EXIT trap then stops run-guest, which stops its QEMU).
    guest_bg "$@"
    guest_wait
}
# guest_bg LOG CASE_SCRIPT [run-guest options...]: the same, in the background (while
# the case drives it, e.g. with qmp); guest_wait then waits for it, with its status
guest_bg() {
    guest_cmd "$@"
    "${GUEST_CMD[@]}" >>"$OUT" 2>&1 &
    GUEST_PID=$!
    BG_PIDS+=("$GUEST_PID")
}
guest_wait() {
    local rc=0
    wait "$GUEST_PID" || rc=$?
    forget_pid "$GUEST_PID" # reaped: never signal that pid again
    GUEST_PID=
    return $rc
}

# qmp_opts: the QEMU options (after run-guest's "--") for a QMP socket in the case's
# folder, into QMP_OPTS; qmp STEP...: qmp.py's steps on it (see qmp.py), its lines into
# the output
qmp_opts() { QMP_OPTS=(-qmp "unix:$CDIR/qmp.sock,server=on,wait=off"); }
qmp() {
    local rc=0
    python3 "$HERE/qmp.py" --socket "$CDIR/qmp.sock" --times "$CDIR/qmp-times.json" "$@" >"$CDIR/qmp.out" 2>&1 ||
        rc=$?
    cat "$CDIR/qmp.out" >>"$CDIR/qmp.log"
    sed 's/^/    /' "$CDIR/qmp.out" >>"$OUT"
    ((rc == 0)) || bad "QMP steps '$*' failed: $(grep -m1 'FAIL' "$CDIR/qmp.out")"
}

# around_pause NAME N: how many bytes segment N of pad client NAME received before QMP
# stop, while paused, and after cont (the times qmp saved)
around_pause() {
    python3 - "$CDIR/$1.json" "$2" "$CDIR/qmp-times.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
seg = c["segments"][int(sys.argv[2])]
t = json.load(open(sys.argv[3]))
stop = (t["stop"] - c["t0_mono"]) * 1000
cont = (t["cont"] - c["t0_mono"]) * 1000
b = [sum(n for ms, n in seg["receives"] if ms < stop),
     sum(n for ms, n in seg["receives"] if stop <= ms < cont),
     sum(n for ms, n in seg["receives"] if ms >= cont)]
first = seg["first_ms"] if seg["first_ms"] is not None else stop
print("%d bytes in the %.0f ms before the stop, %d while paused (%.0f ms), %d after cont"
      % (b[0], stop - first, b[1], cont - stop, b[2]))
PY
}

# seg_json NAME N FIELD: FIELD of segment N in the pad client NAME's summary
seg_json() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["segments"][int(sys.argv[2])][sys.argv[3]])' \
        "$CDIR/$1.json" "$2" "$3"
}

# wait_for_text FILE TEXT SECS: until FILE has a line with TEXT
wait_for_text() {
    local i
    for ((i = 0; i < $3 * 20; i++)); do
        grep -a -q -F "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    bad "no '$2' in $1 after $3 s"
}

# pcm MODE EXPECT GOT [pcm-check options...]: pcm-check.py, its verdict into the output
# (EXPECT: FILE1,FILE2,... for the sequence mode)
pcm() {
    local rc=0
    local e names=()
    for e in ${2//,/ }; do names+=("$(basename "$e")"); done
    say "    $(basename "$3") vs ${names[*]} ($1):"
    python3 "$HERE/pcm-check.py" "$@" >"$CDIR/pcm-check.out" 2>&1 || rc=$?
    sed 's/^/      /' "$CDIR/pcm-check.out" >>"$OUT"
    return $rc
}

# segments NAME N: the pad client NAME recorded exactly N segments
segments() {
    local n
    n=$(find "$CDIR" -maxdepth 1 -name "$1.[0-9]*" | wc -l)
    [[ $n -eq $2 ]] && return 0
    bad "pad client $1 recorded $n segments, expected $2 (see $1.log below)"
}

# period_bytes LOG DEV FILE FRAME: the guest's period for that playback, in bytes (from
# the "hw-params" line vsound_play prints), or 0
period_bytes() {
    local f
    f=$(grep -a -o "VSOUND-INFO: hw-params $2 $3 period_size=[0-9]*" "$CDIR/$1.log" |
        sed 's/.*=//' | sort -n | tail -n 1)
    echo $((${f:-0} * $4))
}

# bps FILE.wav: bytes per second of a WAV file
bps() { echo $(($(soxi -r "$1") * $(soxi -c "$1") * $(soxi -b "$1") / 8)); }

# --- PipeWire --------------------------------------------------------------------------
# pw_start: a headless PipeWire (server and session manager) as the daemon's user, in the
# private runtime folder PW_DIR=$CDIR/pw, with the null sink `vsnull`; stopped with the
# case's other background processes. pw_env: the environment a client needs (NAME=VALUE
# words); pw_run CMD...: CMD as the daemon's user in it (pw_exec: in the background).
PW_DIR=
pw_env() {
    echo "XDG_RUNTIME_DIR=$PW_DIR PIPEWIRE_RUNTIME_DIR=$PW_DIR HOME=$PW_DIR"
}
pw_run() {
    # shellcheck disable=SC2046
    env -u DBUS_SESSION_BUS_ADDRESS -u DISPLAY $(pw_env) "${DAEMON_AS[@]}" "$@"
}
# pw_exec CMD...: the same, replacing the shell: `pw_exec CMD &` makes $! CMD's own pid
# (so that kill_bg and kill -INT reach it, not a subshell). For the graph's processes
# (server, session manager, recorder): with a real-time priority (SCHED_FIFO 20) as a
# desktop's rtkit gives them, where the machine allows it; a graph process late by a
# quantum loses that quantum of the recording. The daemon keeps its normal priority.
pw_exec() {
    local rt=()
    chrt -f 20 true 2>/dev/null && rt=(chrt -f 20)
    # shellcheck disable=SC2046
    exec "${rt[@]}" env -u DBUS_SESSION_BUS_ADDRESS -u DISPLAY $(pw_env) "${DAEMON_AS[@]}" "$@"
}
pw_start() {
    local i
    command -v pipewire >/dev/null 2>&1 || bad "no pipewire (scripts/install-deps.sh installs it)" || return 1
    PW_DIR=$CDIR/pw
    mkdir -p -m 700 "$PW_DIR"
    chown "$SUITE_USER:" "$PW_DIR"
    pw_exec pipewire >>"$CDIR/pipewire.log" 2>&1 &
    BG_PIDS+=($!)
    for ((i = 0; i < 400; i++)); do
        [[ -S $PW_DIR/pipewire-0 ]] && break
        sleep 0.05
    done
    [[ -S $PW_DIR/pipewire-0 ]] || bad "PipeWire did not start (see pipewire.log)" || return 1
    pw_exec wireplumber >>"$CDIR/pipewire.log" 2>&1 &
    BG_PIDS+=($!)
    for ((i = 0; i < 200; i++)); do
        if pw_run pw-cli ls Node 2>/dev/null | grep -q 'node.name = "vsnull"'; then
            pw_run pw-cli ls Metadata 2>/dev/null | grep -q 'metadata.name = "default"' && return 0
        else
            pw_run pw-cli create-node adapter '{ factory.name=support.null-audio-sink node.name=vsnull
                media.class=Audio/Sink object.linger=true audio.position=[FL FR] }' >/dev/null 2>&1 || true
        fi
        sleep 0.1
    done
    bad "PipeWire has no sink vsnull after 20 s (see pipewire.log)"
}

# --- test signals ----------------------------------------------------------------------
# gen NAME SECS RATE CHANNELS ENCODING BITS SYNTH...: DATA/NAME.wav = the sines of SYNTH
# (one per channel) at -6 dB mixed with white noise at -26 dB (sox -R: repeatable), and
# DATA/NAME.raw = its PCM (sox NAME.wav -t raw)
gen() {
    local name=$1 secs=$2 rate=$3 ch=$4 enc=$5 bits=$6
    shift 6
    sox -R -n -r "$rate" -c "$ch" -b 32 -e floating-point "$DATA/$name.tone.wav" synth "$secs" "$@" gain -6
    sox -R -n -r "$rate" -c "$ch" -b 32 -e floating-point "$DATA/$name.noise.wav" synth "$secs" whitenoise gain -26
    sox -R -m "$DATA/$name.tone.wav" "$DATA/$name.noise.wav" -e "$enc" -b "$bits" "$DATA/$name.wav"
    sox "$DATA/$name.wav" -t raw "$DATA/$name.raw"
    rm -f "$DATA/$name.tone.wav" "$DATA/$name.noise.wav"
}
make_data() {
    mkdir -p "$DATA"
    gen s16 2 48000 2 signed-integer 16 sine 440 sine 663
    gen s16b 2 48000 2 signed-integer 16 sine 1000 square 220
    gen s16-1s 1 48000 2 signed-integer 16 sine 880 sine 1320
    gen s16-6s 6 48000 2 signed-integer 16 sine 550 sine 770
    gen s16-10s 10 48000 2 signed-integer 16 sine 330 sine 495
    gen s32m 1.5 44100 1 signed-integer 32 sine 523
    gen f6 1 96000 6 floating-point 32 sine 200 sine 300 sine 400 sine 500 sine 600 sine 700
    # The capture patterns (2 s; 3 s for pause-resume-capture): a sweep and noise, raw;
    # the first frame must not be silence (the guest finds it after leading silence by
    # its first non-zero byte).
    gen pattern 2 48000 2 signed-integer 16 sine 300-3000 sine 3000-300
    gen pattern3 3 48000 2 signed-integer 16 sine 200-4000 sine 4000-200
    local p
    for p in pattern pattern3; do
        mv "$DATA/$p.raw" "$DATA/$p.raw.tmp"
        python3 - "$DATA/$p.raw.tmp" "$DATA/$p.raw" <<'PY'
import sys
d = bytearray(open(sys.argv[1], "rb").read())
if not any(d[:4]):
    d[0:4] = b"\x01\x00\x01\x00"
open(sys.argv[2], "wb").write(d)
PY
        rm -f "$DATA/$p.raw.tmp" "$DATA/$p.wav"
    done
    # The README recipes' signals: a 3 s file fed to a pad's capture, a 100 ms beep (the
    # tone is s16-1s); their first frames are not silence (the noise), checked below.
    gen in3 3 48000 2 signed-integer 16 sine 440 sine 587
    gen beep 0.1 48000 2 signed-integer 16 sine 1000 sine 1500
    for p in in3 beep s16-1s; do
        python3 -c 'import sys; sys.exit(not any(open(sys.argv[1], "rb").read(4)))' "$DATA/$p.raw" || {
            echo "run-suite: $p.raw starts with a silent frame" >&2
            exit 2
        }
    done
}

# --- cases -----------------------------------------------------------------------------

# 0. The issue-2 acceptance check: default config, 2 s of 48 kHz stereo S16 played in
#    real time, 2 s of capture that is all silence. By hand on an idle machine aplay
#    takes 2.10-2.30 s (the issue asks 2.0-2.3 s); the bound here is 2.4 s because
#    aplay's own start-up under TCG grows on a loaded runner.
case_default_play_record() {
    start_daemon "" || return 1
    guest guest smoke-playback.sh --env SMOKE_PLAY_MIN_MS=2000 --env SMOKE_PLAY_MAX_MS=2400
}

# pad_play NAME FRAME_BYTES MS: start a daemon with configs/pad-out.toml and a client on
# its pad, play DATA/NAME.wav (MS ms long) on hw:0,0 with cases/pcm-io.sh, and check
# that the client received the WAV's PCM exactly: nothing before it (the daemon sends
# nothing while no stream runs), nothing missing, and after it at most the rest of the
# guest's last period as zero bytes (the guest kernel fills it with silence on drain;
# the guest prints its period).
pad_play() {
    local name=$1 frame=$2 ms=$3
    start_daemon "$(config pad-out.toml)" || return 1
    start_client rx pad0 || return 1
    guest guest pcm-io.sh --data "$DATA/$name.wav" --env "PLAY=hw:0,0@/data/$name.wav@$ms" || return 1
    kill_bg
    segments rx 1 || return 1
    pcm exact "$DATA/$name.raw" "$CDIR/rx.0" --frame "$frame" --rate "$(bps "$DATA/$name.wav")" \
        --max-tail "$(period_bytes guest hw:0,0 "/data/$name.wav" "$frame")"
}

# 1a. Playback through a pad is bit-exact: 2 s of S16 stereo 48 kHz.
case_pad_playback_s16() { pad_play s16 4 2000; }

# 1b. The same for S32 mono 44.1 kHz (1.5 s).
case_pad_playback_s32_mono() { pad_play s32m 4 1500; }

# 1c. The same for FLOAT 6 channels 96 kHz (1 s). aplay's default buffer here is 4
#     periods of 120 KiB (30 pages each: 32 descriptors per message without indirect
#     descriptors, in a 64-entry queue).
case_pad_playback_float_6ch() { pad_play f6 24 1000; }

# 2. Capture through a pad is bit-exact: once the guest's capture runs (it says so on the
#    console), the pad client feeds 2 s of a pattern in real time (180 ms ahead: the pad
#    keeps what arrives while a capture stream is open, in a ring of at least 64 KiB);
#    the guest's 4 s recording must be silence, the pattern byte for byte, silence. The
#    guest compares with its own copy of the pattern; the host compares the md5 the
#    guest prints with its own.
case_pad_capture() {
    start_daemon "$(config pad-in.toml)" || return 1
    start_client tx pad0 --feed "$DATA/pattern.raw" --feed-rate 192000 --feed-align 4 \
        --lead-ms 180 --watch "$CDIR/guest.log" --when "VSOUND-INFO: capture running:feed" || return 1
    guest guest pcm-io.sh --data "$DATA/pattern.raw" --env "CAPTURE=hw:0,0@4@/data/pattern.raw" || return 1
    kill_bg
    local want got fed
    want=$(md5sum <"$DATA/pattern.raw" | cut -d' ' -f1)
    got=$(grep -a -o 'VSOUND-INFO: capture hw:0,0: md5 [0-9a-f]*' "$CDIR/guest.log" | awk '{ print $5 }')
    fed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fed_bytes"])' "$CDIR/tx.json")
    say "    host fed $fed bytes; pattern md5 $want, guest's capture md5 ${got:-none}"
    [[ $fed -eq $(stat -c %s "$DATA/pattern.raw") ]] || bad "the client fed only $fed bytes" || return 1
    [[ $got == "$want" ]] || bad "the guest's md5 ${got:-none} is not the pattern's $want"
}

# 3. The ALSA backend, on alsa-lib's `file` plugin: the guest's playback lands in a file
#    on the host after exactly the ALSA sink's cushion of silence (the period or a quantum,
#    and 30 ms: vsound_devices::alsa::CUSHION_MS), then at most one period of silence; the
#    guest's capture reads the pattern from a file.
case_alsa_file() {
    local conf
    conf=$(config alsa-file.asound.conf) || return 1
    mv "$conf" "$CDIR/asound.conf"
    start_daemon "$(config alsa-file.toml)" ALSA_CONFIG_PATH="/usr/share/alsa/alsa.conf:$CDIR/asound.conf" ||
        return 1
    guest guest pcm-io.sh --data "$DATA/s16.wav" --data "$DATA/pattern.raw" \
        --env "PLAY=hw:0,0@/data/s16.wav@2000" --env "CAPTURE=hw:0,0@3@/data/pattern.raw" \
        --env VSOUND_CAPTURE_TRAILING=any || return 1
    stop_daemon || return 1 # closes the PCMs: the file is complete
    local period
    period=$(period_bytes guest hw:0,0 /data/s16.wav 4)
    # The cushion: the period or a sound server's quantum (1,024 frames, 4096 bytes of
    # S16 stereo at 48 kHz), whichever is longer, and 30 ms (5760 bytes)
    pcm exact "$DATA/s16.raw" "$CDIR/alsa-out.raw" --frame 4 --rate 192000 \
        --lead-silence "$(((period > 4096 ? period : 4096) + 5760))" --max-tail "$period"
}

# 3b. The ALSA backend on a real clock: PipeWire (pw_start), through pipewire-alsa's
#     `pipewire` PCM. The guest plays the 100 ms beep, then (after 500 ms) the 2 s tone,
#     each with aplay; pw-record on the null sink's monitor must hold both whole and bit
#     for bit, in order: nothing of either is cut (the PCM drains on close) and no frame
#     is lost or put in (the streams keep PipeWire's clock).
case_pipewire_beep_tone() {
    pw_start || return 1
    local env
    env=$(pw_env)
    # shellcheck disable=SC2086
    start_daemon "$(config pipewire.toml)" $env || return 1
    pw_exec pw-record -P '{ stream.capture.sink=true }' --target vsnull --format s16 \
        --rate 48000 --channels 2 "$PW_DIR/rec.wav" >>"$CDIR/pipewire.log" 2>&1 &
    local rec=$!
    BG_PIDS+=("$rec")
    sleep 0.5
    guest guest pcm-io.sh --data "$DATA/beep.wav" --data "$DATA/s16.wav" \
        --env "PLAY=hw:0,0@/data/beep.wav@100 hw:0,0@/data/s16.wav@2000" --env PLAY_GAP_MS=500 ||
        return 1
    sleep 0.5
    kill -INT "$rec" 2>/dev/null || true
    wait "$rec" 2>/dev/null || true
    forget_pid "$rec"
    sox "$PW_DIR/rec.wav" -t raw "$CDIR/rec.raw" || bad "pw-record left no recording" || return 1
    python3 - "$DATA/beep.raw" "$DATA/s16.raw" "$CDIR/rec.raw" >"$CDIR/pw-check.out" 2>&1 <<'PY'
import sys
beep, tone, got = (open(p, "rb").read() for p in sys.argv[1:4])
at = 0
for name, want in (("beep", beep), ("tone", tone)):
    i = got.find(want[:4096], at)
    while i >= 0 and i % 4:
        i = got.find(want[:4096], i + 1)
    if i < 0:
        sys.exit("the %s never reached the sink (%d bytes recorded)" % (name, len(got)))
    piece = got[i:i + len(want)]
    if piece != want:
        n = next((k for k in range(len(piece)) if piece[k:k + 1] != want[k:k + 1]), len(piece))
        sys.exit("the %s differs from byte %d of %d (frame %d)" % (name, n, len(want), n // 4))
    print("the %s (%d bytes) is whole and bit-exact at byte %d" % (name, len(want), i))
    at = i + len(want)
print("%d bytes recorded" % len(got))
PY
    local rc=$?
    sed 's/^/    /' "$CDIR/pw-check.out" >>"$OUT"
    ((rc == 0)) || bad "$(tail -n 1 "$CDIR/pw-check.out")"
}

# 4. Two output streams in groups 0 and 1 (the guest's hw:0,0 and hw:0,1), each on its
#    own pad, played at once: both aplay exit 0 in real time, both clients receive their
#    file exactly.
case_two_groups() {
    start_daemon "$(config two-groups.toml)" || return 1
    start_client rx0 pad0 || return 1
    start_client rx1 pad1 || return 1
    guest guest pcm-io.sh --data "$DATA/s16.wav" --data "$DATA/s16b.wav" --env PLAY_PARALLEL=1 \
        --env "PLAY=hw:0,0@/data/s16.wav@2000 hw:0,1@/data/s16b.wav@2000" || return 1
    kill_bg
    local ok=0
    segments rx0 1 || ok=1
    segments rx1 1 || ok=1
    pcm exact "$DATA/s16.raw" "$CDIR/rx0.0" --frame 4 --rate 192000 \
        --max-tail "$(period_bytes guest hw:0,0 /data/s16.wav 4)" || ok=1
    pcm exact "$DATA/s16b.raw" "$CDIR/rx1.0" --frame 4 --rate 192000 \
        --max-tail "$(period_bytes guest hw:0,1 /data/s16b.wav 4)" || ok=1
    return $ok
}

# 4b. Volume and mute controls (QEMU controls=on): the guest's amixer lists them with
#     their dB scale; `amixer sset Master -6dB` makes the pad receive every sample of
#     the file halved (exactly: rounded half away from zero), mute gives silence, and
#     the host's `vsound ctl volume 0 -12` reaches the guest's mixer (CTL_NOTIFY).
case_controls() {
    start_daemon "$(config pad-controls.toml)" || return 1
    start_client rx pad0 --watch "$CDIR/guest.log" --split-on "VSOUND-INFO: split" || return 1
    (
        while ! grep -a -q "VSOUND-INFO: host-volume" "$CDIR/guest.log" 2>/dev/null; do sleep 0.05; done
        "$VSOUND_BIN" ctl --socket "$CDIR/vsound.sock" volume 0 -12 >"$CDIR/ctl.out" 2>&1
    ) &
    BG_PIDS+=($!)
    guest guest controls.sh --data "$DATA/s16.wav" --device-opts ",controls=on" || return 1
    kill_bg
    segments rx 2 || return 1
    python3 - "$DATA/s16.raw" "$DATA/s16-half.raw" <<'PY'
import array, sys
src = array.array("h", open(sys.argv[1], "rb").read())
# the daemon's -6 dB: exactly half, rounded half away from zero
half = array.array("h", ((abs(v) + 1) // 2 * (1 if v >= 0 else -1) for v in src))
open(sys.argv[2], "wb").write(half.tobytes())
PY
    pcm exact "$DATA/s16-half.raw" "$CDIR/rx.0" --frame 4 --rate 192000 \
        --max-tail "$(period_bytes guest hw:CARD=SoundCard,DEV=0 /data/s16.wav 4)" || return 1
    python3 - "$CDIR/rx.1" 384000 <<'PY' >>"$OUT" || return 1
import sys
data = open(sys.argv[1], "rb").read()
print(f"    rx.1: {len(data)} bytes, {sum(1 for b in data if b)} non-zero")
sys.exit(0 if len(data) >= int(sys.argv[2]) and not any(data) else 1)
PY
    say "    host: $(cat "$CDIR/ctl.out")"
    grep -q "stream 0: -12.0 dB" "$CDIR/ctl.out" || bad "vsound ctl volume failed: $(cat "$CDIR/ctl.out")" || return 1
    # The guest was told: amixer events saw the value change after the host's call.
    local told
    told=$(tr -d '\r' <"$CDIR/guest.log" | sed -n '/VSOUND-INFO: host-volume/,/VSOUND-INFO: events done/p' |
        grep -c "event value: numid=[0-9]*,iface=MIXER,name='Master Playback Volume'" || true)
    say "    guest mixer events for Master Playback Volume after the host's call: $told"
    [[ $told -ge 1 ]] || bad "the guest's amixer events saw no change from the host (CTL_NOTIFY)"
}

# 4c. Mixing: two aplays at once on the two substreams of hw:0,0, both bound to one pad.
#     The pad's client must receive their sum, bit-exact: A's samples are multiples of
#     256 and B's below 128 in magnitude, so the sum decodes uniquely (B = the low byte,
#     sign-extended; A = the rest), and each part must be its file exactly, whatever
#     the offset between the two plays.
case_pad_mix_two_aplays() {
    python3 - "$DATA" <<'PY'
import math, struct, sys, wave
d = sys.argv[1]
def write(name, frames):
    with wave.open(f"{d}/{name}.wav", "wb") as w:
        w.setnchannels(2); w.setsampwidth(2); w.setframerate(48000)
        w.writeframes(b"".join(struct.pack("<hh", l, r) for l, r in frames))
    with open(f"{d}/{name}.raw", "wb") as f:
        f.write(b"".join(struct.pack("<hh", l, r) for l, r in frames))
n = 96000  # 2 s
# (phases so that neither file starts with a silent frame)
write("mixa", [(256 * round(60 * math.sin(2 * math.pi * 440 * i / 48000 + 0.5)),
                256 * round(50 * math.sin(2 * math.pi * 660 * i / 48000 + 1))) for i in range(n)])
write("mixb", [(round(100 * math.sin(2 * math.pi * 1000 * i / 48000 + 0.3)),
                round(90 * math.sin(2 * math.pi * 1500 * i / 48000 + 1))) for i in range(n)])
PY
    start_daemon "$(config pad-mix.toml)" || return 1
    start_client rx pad0 || return 1
    guest guest pcm-io.sh --data "$DATA/mixa.wav" --data "$DATA/mixb.wav" --env PLAY_PARALLEL=1 \
        --env "PLAY=hw:CARD=SoundCard,DEV=0,SUBDEV=0@/data/mixa.wav@2000 hw:CARD=SoundCard,DEV=0,SUBDEV=1@/data/mixb.wav@2000" ||
        return 1
    kill_bg
    segments rx 1 || return 1
    python3 - "$CDIR/rx.0" "$CDIR/rx-a.raw" "$CDIR/rx-b.raw" <<'PY' >>"$OUT" || return 1
import array, sys
r = array.array("h", open(sys.argv[1], "rb").read()[: (len(open(sys.argv[1], "rb").read()) // 2) * 2])
b = array.array("h", (((v & 0xFF) ^ 0x80) - 0x80 for v in r))
a = array.array("h", (v - x for v, x in zip(r, b)))
assert all(v % 256 == 0 for v in a)
open(sys.argv[2], "wb").write(a.tobytes())
open(sys.argv[3], "wb").write(b.tobytes())
print(f"    received {len(r) * 2} bytes; decoded into A and B parts")
PY
    # Either play may start first (up to half a second apart): silence around each part.
    pcm exact "$DATA/mixa.raw" "$CDIR/rx-a.raw" --frame 4 --rate 192000 --lead-silence auto --max-tail 96000 || return 1
    pcm exact "$DATA/mixb.raw" "$CDIR/rx-b.raw" --frame 4 --rate 192000 --lead-silence auto --max-tail 96000
}

# 5a. Hot removal, on_remove = "silence": the pad client disconnects 2 s into a
#     6 s aplay and reconnects at 4 s. aplay exits 0 in real time, no guest kernel
#     timeout; the first connection got the file's start, the second a contiguous later
#     piece of it from about 4 s to its end; then a following aplay is served, exactly.
case_hot_remove_silence() {
    start_daemon "$(config pad-out.toml)" || return 1
    start_client rx pad0 --at 2000:disconnect --at 4000:connect \
        --watch "$CDIR/guest.log" --split-on "VSOUND-INFO: split" || return 1
    guest guest pcm-io.sh --data "$DATA/s16-6s.wav" --data "$DATA/s16.wav" \
        --env "PLAY=hw:0,0@/data/s16-6s.wav@6000 hw:0,0@/data/s16.wav@2000" || return 1
    kill_bg
    segments rx 3 || return 1
    local ok=0 period
    period=$(period_bytes guest hw:0,0 /data/s16-6s.wav 4)
    pcm prefix "$DATA/s16-6s.raw" "$CDIR/rx.0" --frame 4 --rate 192000 --min-bytes 288000 || ok=1
    pcm substring "$DATA/s16-6s.raw" "$CDIR/rx.1" --frame 4 --rate 192000 --min-bytes 192000 \
        --max-tail "$period" --to-end --offset-ms 4000 --tolerance-ms 600 || ok=1
    pcm exact "$DATA/s16.raw" "$CDIR/rx.2" --frame 4 --rate 192000 \
        --max-tail "$(period_bytes guest hw:0,0 /data/s16.wav 4)" || ok=1
    return $ok
}

# 5b. Hot removal, on_remove = "error": with the pad's client gone, aplay fails
#     with an I/O error; after it reconnects, aplay works again (both good plays reach
#     the client exactly).
case_hot_remove_error() {
    start_daemon "$(config pad-out-error.toml)" || return 1
    start_client rx pad0 --watch "$CDIR/guest.log" \
        --when "VSOUND-INFO: detach-now:disconnect" --when "VSOUND-INFO: attach-now:connect" || return 1
    guest guest hot-remove-error.sh --data "$DATA/s16.wav" --env "HOTREMOVE_PLAY=hw:0,0@/data/s16.wav@2000" ||
        return 1
    kill_bg
    segments rx 2 || return 1
    local ok=0 period
    period=$(period_bytes guest hw:0,0 /data/s16.wav 4)
    pcm exact "$DATA/s16.raw" "$CDIR/rx.0" --frame 4 --rate 192000 --max-tail "$period" || ok=1
    pcm exact "$DATA/s16.raw" "$CDIR/rx.1" --frame 4 --rate 192000 --max-tail "$period" || ok=1
    return $ok
}

# 6. Jacks: the guest's jack controls follow the pad's client (off at boot, on
#    when it connects, off when it leaves, on again).
case_jacks() {
    start_daemon "$(config pad-duplex.toml)" || return 1
    start_client rx pad0 --no-connect --watch "$CDIR/guest.log" --when "VSOUND-INFO: jack-plug-1:connect" \
        --when "VSOUND-INFO: jack-unplug-1:disconnect" --when "VSOUND-INFO: jack-plug-2:connect" || return 1
    guest guest jacks.sh
}

# 7. VMM restart: QEMU is SIGKILLed 3 s into a 10 s aplay; a new QEMU connects to the
#    same daemon (not restarted) and the smoke case passes. The pad client (connected
#    throughout, a new segment after 1 s without bytes) got a prefix of the 10 s file
#    from the first VM, then the smoke WAV exactly from the second (tail: the smoke case
#    does not print its period; at most 500 ms of silence, the largest buffer).
case_vmm_restart() {
    start_daemon "$(config pad-out.toml)" || return 1
    start_client rx pad0 --split-idle-ms 1000 || return 1
    guest_cmd vm1 pcm-io.sh --data "$DATA/s16-10s.wav" --env "PLAY=hw:0,0@/data/s16-10s.wav@10000" \
        -- -pidfile "$CDIR/qemu1.pid"
    "${GUEST_CMD[@]}" >>"$OUT" 2>&1 & # run-guest itself: a TERM to it stops its QEMU
    local vm1=$! qpid
    BG_PIDS+=("$vm1")
    wait_for_text "$CDIR/vm1.log" "VSOUND-INFO: start hw:0,0" 60 || return 1
    sleep 3
    qpid=$(cat "$CDIR/qemu1.pid" 2>/dev/null) || bad "no QEMU pid file" || return 1
    say "    killing QEMU (pid $qpid) with SIGKILL, 3 s into the playback"
    kill -KILL "$qpid" || bad "QEMU $qpid was not running" || return 1
    local rc=0
    wait "$vm1" || rc=$?
    forget_pid "$vm1" # reaped: never signal that pid again
    ((rc != 0)) || bad "the first guest passed although QEMU was killed" || return 1
    say "    first guest: run-guest exited with status $rc, as expected (it reports any QEMU killed by a signal as a timeout)"
    kill -0 "$DAEMON_PID" 2>/dev/null || bad "vsound died when QEMU was killed" || return 1
    sleep 0.5
    guest vm2 smoke-playback.sh --data "$DATA/s16.wav" || return 1
    kill_bg
    segments rx 2 || return 1
    local ok=0
    pcm prefix "$DATA/s16-10s.raw" "$CDIR/rx.0" --frame 4 --rate 192000 --min-bytes 384000 || ok=1
    pcm exact "$DATA/s16.raw" "$CDIR/rx.1" --frame 4 --rate 192000 --max-tail 96000 || ok=1
    return $ok
}

# 8. Driver reload: play, then twice rmmod virtio_snd + insmod virtio_snd.ko (same
#    msg_timeout_ms) and play again: each aplay exits 0 in real time and reaches the pad
#    client exactly (one segment per play: the guest prints "split" after each reload).
case_driver_reload() {
    start_daemon "$(config pad-out.toml)" || return 1
    start_client rx pad0 --watch "$CDIR/guest.log" --split-on "VSOUND-INFO: split" || return 1
    guest guest driver-reload.sh --data "$DATA/s16.wav" --env "RELOAD_PLAY=hw:0,0@/data/s16.wav@2000" \
        --env RELOAD_TIMES=2 || return 1
    kill_bg
    segments rx 3 || return 1
    local ok=0 i period
    period=$(period_bytes guest hw:0,0 /data/s16.wav 4)
    for i in 0 1 2; do
        pcm exact "$DATA/s16.raw" "$CDIR/rx.$i" --frame 4 --rate 192000 --max-tail "$period" || ok=1
    done
    return $ok
}

# --- VM lifecycle: pause/resume, reset, reboot ------------------------------------------
# The guest's device by its card name (virtio_snd calls its card "SoundCard").
LIFE_DEV=hw:CARD=SoundCard,DEV=0
PAUSE_MS=1500 # how long the VM stays paused

# pause_vm SECS_IN: SECS_IN s from now, pause the VM with QMP stop for PAUSE_MS, then
# cont; checks that QEMU reports the VM paused (status and STOP event) and running again
pause_vm() {
    sleep "$1"
    say "    pausing the VM for $PAUSE_MS ms"
    qmp status=running stop event=STOP@5 status=paused \
        "sleep=$(awk -v ms="$PAUSE_MS" 'BEGIN { printf "%.3f", ms / 1000 }')" status=paused \
        cont event=RESUME@5 status=running
}

# 9a. Pause/resume during playback: 2 s into a 6 s aplay on the card's name
#     (hw:CARD=SoundCard,DEV=0) onto a pad, QMP stop pauses the VM (vhost-user stops the
#     rings: GET_VRING_BASE) for 1.5 s, then cont resumes it (SET_FEATURES, SET_VRING_*
#     again). The guest's clock stands still meanwhile, so aplay must still exit 0 in
#     real time by the guest's clock (vsound_play), dmesg must show no "timeout" /
#     "failed to flush", and the pad client must receive the file's PCM exactly: in
#     order, nothing lost, nothing twice, no silence inserted (a pad sends only what the
#     guest played), at most the last period's silence after it. That the VM really
#     stopped: QMP's status and events, and the pad's bytes spanning at least the file's
#     length plus half the pause in host time (the longest gap is printed too).
case_pause_resume_playback() {
    local ok=0 file=s16-6s ms=6000 span gap
    start_daemon "$(config pad-out.toml)" || return 1
    start_client rx pad0 || return 1
    qmp_opts
    guest_bg guest pcm-io.sh --data "$DATA/$file.wav" --env "PLAY=$LIFE_DEV@/data/$file.wav@$ms" \
        -- "${QMP_OPTS[@]}"
    wait_for_text "$CDIR/guest.log" "VSOUND-INFO: start $LIFE_DEV" 60 || return 1
    pause_vm 2 || return 1
    guest_wait || ok=1
    kill_bg
    segments rx 1 || return 1
    span=$(python3 -c 'import sys; print(int(float(sys.argv[2]) - float(sys.argv[1])))' \
        "$(seg_json rx 0 first_ms)" "$(seg_json rx 0 last_ms)" 2>/dev/null) || span=0
    gap=$(seg_json rx 0 max_gap_ms)
    say "    the pad client got $(seg_json rx 0 bytes) bytes over $span ms of host time (file $ms ms," \
        "paused $PAUSE_MS ms); longest gap $gap ms, at $(seg_json rx 0 max_gap_at_ms) ms"
    say "    pad bytes: $(around_pause rx 0)"
    pcm exact "$DATA/$file.raw" "$CDIR/rx.0" --frame 4 --rate 192000 \
        --max-tail "$(period_bytes guest "$LIFE_DEV" "/data/$file.wav" 4)" || return 1
    # All of it came: then it must have taken the pause longer in host time (the guest
    # played in real time by its clock, which stood still while paused).
    ((span >= ms + PAUSE_MS / 2)) ||
        bad "the file reached the pad within $span ms of host time, less than $ms + $PAUSE_MS / 2 ms:" \
            "the VM was not paused, or the daemon caught up on the pause" || ok=1
    return $ok
}

# 9b. Pause/resume during capture: the guest records 4 s (arecord, raw) from a pad while
#     the pad client feeds it a 3 s pattern in real time (from "capture running" on, 180 ms
#     ahead); 1 s into the recording the VM is paused for 1.5 s. The feeding goes on in
#     host time, like a microphone, and the pad keeps only the newest part of what came in
#     meanwhile (its ring: at least the guest's buffer, drops the oldest frames when
#     full), so part of the pattern is honestly lost. Checked: arecord exits 0 after 4 s
#     of guest time with exactly 4 s of bytes, no dmesg timeout; the recording (passed to
#     the host through a virtio-serial port, md5 checked) is silence and pieces of the
#     pattern in order (pcm-check pieces): it starts with the pattern's start, nothing
#     comes twice or out of order, nothing that is not the pattern or silence, the last
#     piece reaches the pattern's end, and at least 1 s of the pattern is there (3 s fed,
#     at most pause + 0.5 s lost).
case_pause_resume_capture() {
    local ok=0 secs=4 want got
    start_daemon "$(config pad-in.toml)" || return 1
    start_client tx pad0 --feed "$DATA/pattern3.raw" --feed-rate 192000 --feed-align 4 \
        --lead-ms 180 --watch "$CDIR/guest.log" --when "VSOUND-INFO: capture running:feed" || return 1
    qmp_opts
    guest_bg guest capture-dump.sh --env "CAPTURE_DUMP=$LIFE_DEV@$secs" -- "${QMP_OPTS[@]}" \
        -device virtio-serial-pci,id=vser0 -chardev "file,id=capdump,path=$CDIR/capture.raw" \
        -device virtserialport,bus=vser0.0,chardev=capdump,name=vsound.capture
    wait_for_text "$CDIR/guest.log" "VSOUND-INFO: capture running" 60 || return 1
    pause_vm 1 || return 1
    guest_wait || ok=1
    kill_bg
    say "    host fed $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fed_bytes"])' "$CDIR/tx.json") bytes"
    # (also when the guest failed: the guest sends what it recorded before its checks)
    want=$(tr -d '\r' <"$CDIR/guest.log" | grep -a -o 'VSOUND-INFO: capture dump: .*md5 [0-9a-f]*' | awk '{ print $NF }')
    [[ -n $want ]] || bad "the guest sent no recording" || return 1
    got=$(md5sum <"$CDIR/capture.raw" | cut -d' ' -f1)
    [[ $got == "$want" ]] ||
        bad "the recording on the host (md5 $got, $(stat -c %s "$CDIR/capture.raw") bytes) is not the guest's (md5 $want)" ||
        return 1
    pcm pieces "$DATA/pattern3.raw" "$CDIR/capture.raw" --frame 4 --rate 192000 \
        --from-start --to-end --min-bytes 192000 || ok=1
    return $ok
}

# 9c. System reset during playback: 2 s into a 6 s aplay (boot 1) the host resets the VM
#     with QMP system_reset (QEMU runs without -no-reboot for this case: run-guest.sh
#     --boots 2); the kernel boots again, the driver probes the device again, and a 1 s
#     aplay (boot 2) exits 0 in real time with no "timeout" in that boot's dmesg. The pad
#     client got a prefix of the 6 s file (at least 1.5 s) from boot 1 and the 1 s file
#     exactly from boot 2 (a new segment at boot 2's "split"). The guest tells its boots
#     apart by a CMOS byte (cases/reboot.sh); run-guest.sh counts them on the console.
case_system_reset_playback() {
    local ok=0 period
    start_daemon "$(config pad-out.toml)" || return 1
    start_client rx pad0 --watch "$CDIR/guest.log" --split-on "VSOUND-INFO: split" || return 1
    qmp_opts
    guest_bg guest reboot.sh --boots 2 --data "$DATA/s16-6s.wav" --data "$DATA/s16-1s.wav" --env REBOOT_HOW=host \
        --env "REBOOT_PLAY_1=$LIFE_DEV@/data/s16-6s.wav@6000" --env "REBOOT_PLAY_2=$LIFE_DEV@/data/s16-1s.wav@1000" \
        -- "${QMP_OPTS[@]}"
    wait_for_text "$CDIR/guest.log" "VSOUND-INFO: start $LIFE_DEV /data/s16-6s.wav" 60 || return 1
    sleep 2
    grep -a -q "VSOUND-INFO: play $LIFE_DEV /data/s16-6s.wav" "$CDIR/guest.log" &&
        { bad "boot 1's playback ended before the reset"; return 1; }
    say "    resetting the VM (QMP system_reset), 2 s into boot 1's playback"
    qmp status=running system_reset event=RESET@5 status=running || return 1
    guest_wait || ok=1
    kill_bg
    segments rx 2 || return 1
    period=$(period_bytes guest "$LIFE_DEV" /data/s16-1s.wav 4)
    pcm prefix "$DATA/s16-6s.raw" "$CDIR/rx.0" --frame 4 --rate 192000 --min-bytes 288000 || ok=1
    pcm exact "$DATA/s16-1s.raw" "$CDIR/rx.1" --frame 4 --rate 192000 --max-tail "$period" || ok=1
    return $ok
}

# 9d. Guest reboot: the guest plays 2 s (exit 0 in real time, no dmesg timeout), then
#     reboots itself with busybox `reboot -f` (run-guest.sh --boots 2: the kernel's
#     device shutdown, then a reset), boots again and plays 1 s (exit 0 in real time, no
#     "timeout" in that boot's dmesg); the pad client gets each file exactly (a new
#     segment at boot 2's "split").
case_reboot_playback() {
    local ok=0
    start_daemon "$(config pad-out.toml)" || return 1
    start_client rx pad0 --watch "$CDIR/guest.log" --split-on "VSOUND-INFO: split" || return 1
    guest guest reboot.sh --boots 2 --data "$DATA/s16.wav" --data "$DATA/s16-1s.wav" --env REBOOT_HOW=self \
        --env "REBOOT_PLAY_1=$LIFE_DEV@/data/s16.wav@2000" --env "REBOOT_PLAY_2=$LIFE_DEV@/data/s16-1s.wav@1000" ||
        ok=1
    kill_bg
    segments rx 2 || return 1
    pcm exact "$DATA/s16.raw" "$CDIR/rx.0" --frame 4 --rate 192000 \
        --max-tail "$(period_bytes guest "$LIFE_DEV" /data/s16.wav 4)" || ok=1
    pcm exact "$DATA/s16-1s.raw" "$CDIR/rx.1" --frame 4 --rate 192000 \
        --max-tail "$(period_bytes guest "$LIFE_DEV" /data/s16-1s.wav 4)" || ok=1
    return $ok
}

# --- daemon restart ---------------------------------------------------------------------

# 10. Daemon restart, recovered by a re-plug (README, "A restarted daemon and QEMU 10":
#     QEMU 10's vhost-user-snd does not reconnect, so its chardev has no reconnect-ms and
#     the device is re-plugged over QMP). The guest's device has an id (snd0; the chardev
#     is vsnd, as run-guest.sh names it) and a virtio-serial port on which the host sends
#     the guest one line. Steps (cases/daemon-restart-replug.sh has the guest's side):
#     the guest plays 1 s onto a pad (exit 0 in real time, no dmesg timeout); the host
#     SIGKILLs vsound, starts a new one on the same socket with the same config and a new
#     pad client, and tells the guest; aplay on the old device must now fail (QEMU did not
#     reconnect; its control requests time out); the host runs device_del snd0, waits for
#     its DEVICE_DELETED, chardev-remove vsnd, and, once the guest saw the card go (and
#     wrote a marker into its kernel log), chardev-add vsnd (a plain Unix socket client on
#     the same path) and device_add vhost-user-snd-pci,chardev=vsnd,id=snd0; the guest
#     waits for the card to come back (ACPI PCI hotplug on -machine pc) and plays 1 s
#     again: exit 0 in real time, and no "timeout" / "failed to flush" in dmesg after the
#     marker (the ones of the dead device are printed, not counted: vsound.check_dmesg=0,
#     the case checks itself). Each pad client got its play exactly. QEMU's own messages
#     (the dead socket, the re-plug) are printed with the case's output.
case_daemon_restart_replug() {
    local ok=0 cfg old file=s16-1s tell
    cfg=$(config pad-out.toml) || return 1
    start_daemon "$cfg" || return 1
    start_client rx pad0 || return 1
    qmp_opts
    guest_bg guest daemon-restart-replug.sh --device-opts ",id=snd0" --data "$DATA/$file.wav" \
        --env "REPLUG_PLAY_1=$LIFE_DEV@/data/$file.wav@1000" --env "REPLUG_PLAY_2=$LIFE_DEV@/data/$file.wav@1000" \
        --append "vsound.check_dmesg=0 vsound.dmesg_lines=100" -- "${QMP_OPTS[@]}" \
        -device virtio-serial-pci,id=vser0 -chardev "socket,id=ctl,path=$CDIR/ctl.sock,server=on,wait=off" \
        -device virtserialport,bus=vser0.0,chardev=ctl,name=vsound.ctl
    wait_for_text "$CDIR/guest.log" "VSOUND-INFO: replug: played, kill the daemon" 60 || return 1
    old=$DAEMON_PID
    say "    killing vsound (pid $old) with SIGKILL"
    kill -KILL "$old" || bad "vsound $old was not running" || return 1
    wait "$old" 2>/dev/null || true
    DAEMON_PID=
    start_daemon "$cfg" || return 1 # the same socket path, the same config
    say "    new vsound (pid $DAEMON_PID) on the same socket"
    start_client rx2 pad0 || return 1
    # The guest's word: one line on the port, the connection kept open (QEMU passes the
    # line on once the guest opened the port).
    python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
for _ in range(200):
    try:
        s.connect(sys.argv[1])
        break
    except OSError:
        time.sleep(0.05)
s.sendall(b"daemon restarted\n")
time.sleep(600)' "$CDIR/ctl.sock" 2>>"$CDIR/tell.log" &
    tell=$!
    BG_PIDS+=("$tell")
    wait_for_text "$CDIR/guest.log" "VSOUND-INFO: replug: waiting for the re-plug" 40 || return 1
    say "    re-plugging the device over QMP"
    qmp device_del=snd0 event=DEVICE_DELETED:snd0@15 chardev-remove=vsnd || return 1
    wait_for_text "$CDIR/guest.log" "VSOUND-INFO: replug: card gone" 15 || return 1
    # back to back: the daemon ends a connection on which no request came within 5 s
    qmp "chardev-add=vsnd,$CDIR/vsound.sock" device_add=vhost-user-snd-pci,chardev=vsnd,id=snd0 || return 1
    guest_wait || ok=1
    kill_bg
    tr -d '\r' <"$CDIR/guest.log" | grep -a -o 'qemu-system-[^:]*: .*' | sed 's/^qemu-system-[^:]*: //' | uniq -c |
        while read -r n msg; do say "    QEMU: $msg$( ((n == 1)) || echo " ($n times)")"; done
    segments rx 1 || ok=1
    segments rx2 1 || ok=1
    ((ok == 0)) || return 1
    pcm exact "$DATA/$file.raw" "$CDIR/rx.0" --frame 4 --rate 192000 \
        --max-tail "$(period_bytes guest "$LIFE_DEV" "/data/$file.wav" 4)" || ok=1
    pcm exact "$DATA/$file.raw" "$CDIR/rx2.0" --frame 4 --rate 192000 \
        --max-tail "$(period_bytes guest "$LIFE_DEV" "/data/$file.wav" 4)" || ok=1
    return $ok
}

# --- the README's pad recipes ------------------------------------------------------------
# The README and configs/pad.toml give shell recipes for a pad: feed the guest's
# microphone from a file with sox | socat, listen with socat. These cases run them as the
# README writes them (taken from README.md, only the socket path changed), on the
# repository's configs/pad.toml (only its two socket paths changed), with the guest's
# own arecord/aplay.

# readme_pad_config: $CDIR/pad.toml = the repository's configs/pad.toml with only its
# [daemon] socket and pad0 path moved into the case's folder; prints its path
readme_pad_config() {
    local out=$CDIR/pad.toml n
    sed -e "s#^socket = \"/tmp/vsound.sock\"\$#socket = \"$CDIR/vsound.sock\"#" \
        -e "s#^path = \"/tmp/vsound-pad0.sock\"\$#path = \"$CDIR/pad0.sock\"#" "$REPO/configs/pad.toml" >"$out"
    n=$(diff "$REPO/configs/pad.toml" "$out" | grep -c '^>') || true
    [[ $n -eq 2 ]] || bad "configs/pad.toml: expected its socket and pad0 path on /tmp, changed $n lines" || return 1
    echo "$out"
}

# readme_recipe START: the README's command that starts with START (inside backquotes),
# its pad socket /tmp/vsound-pad0.sock (configs/pad.toml's) moved to $CDIR/pad0.sock
readme_recipe() {
    local cmd
    cmd=$(grep -o "\`$1[^\`]*\`" "$REPO/README.md" | head -n 1 | tr -d '`')
    [[ -n $cmd ]] || bad "no \`$1...\` in README.md" || return 1
    [[ $cmd == *UNIX-CONNECT:/tmp/vsound-pad0.sock* ]] ||
        bad "the README's '$cmd' is not on configs/pad.toml's /tmp/vsound-pad0.sock" || return 1
    echo "${cmd//UNIX-CONNECT:\/tmp\/vsound-pad0.sock/UNIX-CONNECT:$CDIR/pad0.sock}"
}

# recipe_feed WAV: the README's recipe for feeding the guest's microphone,
#   sox in.wav -t raw -r 48000 -e signed -b 16 -c 2 - | socat -u - UNIX-CONNECT:<pad0.sock>
# verbatim (in.wav = a copy of WAV in $CDIR), in the background in its own process group;
# when it ends, $CDIR/recipe.rc has the exit status of sox and of socat (PIPESTATUS) and
# recipe.end the host time (ns); its stderr is in recipe.log. Connects on its own (the
# pad's log says when).
recipe_feed() {
    local cmd
    cmd=$(readme_recipe "sox in.wav ") || return 1
    cp "$1" "$CDIR/in.wav"
    rm -f "$CDIR/recipe.rc" "$CDIR/recipe.end"
    say "    host: $cmd"
    (cd "$CDIR" && exec setsid bash -c "$cmd"'
echo "${PIPESTATUS[*]}" >recipe.rc
date +%s%N >recipe.end' 2>"$CDIR/recipe.log") &
    BG_PIDS+=($!)
    BG_PGIDS+=($!)
}

# recipe_wait SECS: until the feeding recipe has ended (at most SECS s); checks that sox
# and socat exited 0
recipe_wait() {
    local i rc
    for ((i = 0; i < $1 * 20; i++)); do
        [[ -s $CDIR/recipe.rc ]] && break
        sleep 0.05
    done
    [[ -s $CDIR/recipe.rc ]] ||
        bad "sox | socat still running $1 s after the guest ended (not all of in.wav taken?)" || return 1
    rc=$(cat "$CDIR/recipe.rc")
    say "    sox | socat exit status: $rc"
    [[ $rc == "0 0" ]] || bad "sox | socat exited with '$rc' (sox, socat), not '0 0': $(head -n 2 "$CDIR/recipe.log")"
}

# recipe_capture WHEN: the two feeding cases. The daemon runs configs/pad.toml; the
# guest records 4 s (cases/capture-dump.sh: `arecord -D hw:CARD=SoundCard,DEV=0 -f
# S16_LE -r 48000 -c 2 -t raw -d 4`, exit 0 after 4 s with exactly 4 s of bytes, no
# dmesg timeout) and passes the recording to the host over a virtio-serial port (md5
# checked); the host starts the README's sox | socat recipe on the 3 s in3.wav at boot
# (WHEN=first: as soon as the pad's socket exists; the guest is started once the pad
# says its client attached) or once the guest says its capture runs (WHEN=record), and
# sox and socat must exit 0 (socat once the pad took the last byte: the pad reads only
# as fast as the guest records, so socat blocks until then). Prints when socat ended,
# from the guest's "capture running" (host time).
recipe_capture() {
    local ok=0 cfg want got t_run t_end
    cfg=$(readme_pad_config) || return 1
    start_daemon "$cfg" || return 1
    if [[ $1 == first ]]; then
        recipe_feed "$DATA/in3.wav" || return 1
        wait_for_text "$CDIR/daemon.log" "pad pad0: client attached" 10 || return 1
    fi
    guest_bg guest capture-dump.sh --env "CAPTURE_DUMP=$LIFE_DEV@4" -- \
        -device virtio-serial-pci,id=vser0 -chardev "file,id=capdump,path=$CDIR/capture.raw" \
        -device virtserialport,bus=vser0.0,chardev=capdump,name=vsound.capture
    wait_for_text "$CDIR/guest.log" "VSOUND-INFO: capture running" 60 || return 1
    t_run=$(date +%s%N)
    if [[ $1 == first ]]; then
        if [[ -s $CDIR/recipe.rc ]]; then
            say "    sox | socat had already ended when the guest's capture started"
        else
            say "    sox | socat still blocked when the guest's capture started"
        fi
    else
        recipe_feed "$DATA/in3.wav" || return 1
    fi
    guest_wait || ok=1
    recipe_wait 5 || ok=1
    if [[ -s $CDIR/recipe.end ]]; then
        t_end=$(cat "$CDIR/recipe.end")
        say "    socat ended $(((t_end - t_run) / 1000000)) ms after the guest's capture started (host time)"
    fi
    kill_bg
    grep -a -o 'pad pad0: .*' "$CDIR/daemon.log" | sed 's/^/    daemon: /' >>"$OUT"
    want=$(tr -d '\r' <"$CDIR/guest.log" | grep -a -o 'VSOUND-INFO: capture dump: .*md5 [0-9a-f]*' | awk '{ print $NF }')
    [[ -n $want ]] || bad "the guest sent no recording" || return 1
    got=$(md5sum <"$CDIR/capture.raw" | cut -d' ' -f1)
    [[ $got == "$want" ]] ||
        bad "the recording on the host (md5 $got, $(stat -c %s "$CDIR/capture.raw") bytes) is not the guest's (md5 $want)" ||
        return 1
    if [[ $1 == first ]]; then
        # the whole file was waiting: it starts at the recording's first frame
        pcm exact "$DATA/in3.raw" "$CDIR/capture.raw" --frame 4 --rate 192000 --max-tail 192000 || ok=1
    else
        # Any silence first, none required: a capture period is filled at its end with
        # what the pad holds, so a feed that starts within the first period (the host
        # answering "capture running" in under 43 ms: seen once in CI) begins the
        # recording with its first frame.
        pcm exact "$DATA/in3.raw" "$CDIR/capture.raw" --frame 4 --rate 192000 --lead-silence auto \
            --max-tail 192000 || ok=1
    fi
    return $ok
}

# 11a. The README's feeding recipe, file first: sox | socat runs from the guest's boot on
#      (before anything records) and blocks; the 4 s recording must be in3.wav's PCM
#      exactly from its first frame (the pad kept what was written before the capture
#      started, and lost nothing), then only silence (after socat closed, the pad
#      recorded what it had, then detached: the rest of the recording is silence).
case_pad_recipe_feed_first() { recipe_capture first; }

# 11b. The README's feeding recipe, recording first: the host starts sox | socat only
#      when the guest says its arecord runs; the recording must be silence (as long as
#      the host took to feed, to a period's precision: possibly none), in3.wav's PCM
#      exactly from its first frame, then silence.
case_pad_recipe_record_first() { recipe_capture record; }

# 11c. fill = "silence" (configs/pad-fill.toml, a raw S16 48 kHz stereo pad) keeps the
#      listener's timeline: the host listens with the README's recipe, `socat -u
#      UNIX-CONNECT:<pad0.sock> -`, into out.raw instead of aplay; the guest plays a
#      100 ms beep, sleeps 1 s and plays 1 s of tone (two aplay runs, cases/play-gap.sh;
#      each exits 0, in real time from its stream's START). The guest measures the pause
#      between the two sounds on the device's timeline from the kernel's START timestamps
#      of the two streams (START2 - START1 - 100 ms: the sleep plus aplay's own time, the
#      silence aplay pads the beep's last period with, its drain and exit, the second
#      aplay's start-up; 1.35-1.65 s here). out.raw must be silence, the beep exactly,
#      silence, the tone exactly, silence, and the silence between the two must last what
#      the guest measured, +- 30 ms. What it proves: without fill the pad sends only the
#      guest's frames, and the tone follows the beep's padded last period directly (28 ms
#      of silence between them with 2048-frame periods, measured); a fill that sent too
#      much or too little silence, dropped some of the pause, or let silence overlap or
#      cut the frames, shows up as a wrong gap or as a sound that is not bit-exact.
case_pad_fill_silence_gap() {
    local ok=0 cmd gap
    start_daemon "$(config pad-fill.toml)" || return 1
    cmd=$(readme_recipe "socat -u UNIX-CONNECT:") || return 1
    cmd=${cmd%% | *} # the listener, without its player
    say "    host: $cmd > out.raw"
    (cd "$CDIR" && exec bash -c "exec $cmd >out.raw" 2>"$CDIR/listener.log") &
    BG_PIDS+=($!)
    wait_for_text "$CDIR/daemon.log" "pad pad0: client attached" 10 || return 1
    guest guest play-gap.sh --data "$DATA/beep.wav" --data "$DATA/s16-1s.wav" \
        --env "GAP_PLAY=$LIFE_DEV@/data/beep.wav@100@/data/s16-1s.wav@1000" --env GAP_SLEEP_MS=1000 || ok=1
    kill_bg
    grep -a -o 'pad pad0: .*' "$CDIR/daemon.log" | sed 's/^/    daemon: /' >>"$OUT"
    gap=$(tr -d '\r' <"$CDIR/guest.log" | grep -a -o 'VSOUND-INFO: gap-ms [0-9.-]*' | awk '{ print $3 }')
    [[ -n $gap ]] || bad "the guest measured no gap" || return 1
    pcm sequence "$DATA/beep.raw,$DATA/s16-1s.raw" "$CDIR/out.raw" --frame 4 --rate 192000 \
        --gap-ms "$gap" --tolerance-ms 30 || ok=1
    return $ok
}

# 11d. `vsound pad play` and `vsound pad record` (the README's helper commands) round-trip
#      a file through the guest on configs/pad.toml: `vsound pad play pad0 in3.wav` runs
#      from boot (before anything records; it must exit 0 once the guest has recorded
#      everything) and the guest's 4 s arecord must be in3.wav's PCM exactly from its first
#      frame; then `vsound pad record pad0 out.wav --seconds 2` runs while the guest plays
#      s16.wav (2 s) with aplay: out.wav must be a valid WAV (S16, 48 kHz, 2 ch) whose data
#      is s16.wav's PCM exactly.
case_pad_tool_round_trip() {
    local ok=0 cfg want got rc
    cfg=$(readme_pad_config) || return 1
    start_daemon "$cfg" || return 1
    cp "$DATA/in3.wav" "$CDIR/in.wav"
    say "    host: vsound pad --config pad.toml play pad0 in.wav"
    ("$VSOUND_BIN" pad --config "$cfg" play pad0 "$CDIR/in.wav" >"$CDIR/play.out" 2>&1
        echo $? >"$CDIR/play.rc") &
    BG_PIDS+=($!)
    wait_for_text "$CDIR/daemon.log" "pad pad0: client attached" 10 || return 1
    guest_bg guest capture-dump.sh --env "CAPTURE_DUMP=$LIFE_DEV@4" -- \
        -device virtio-serial-pci,id=vser0 -chardev "file,id=capdump,path=$CDIR/capture.raw" \
        -device virtserialport,bus=vser0.0,chardev=capdump,name=vsound.capture
    guest_wait || ok=1
    for ((i = 0; i < 100; i++)); do
        [[ -s $CDIR/play.rc ]] && break
        sleep 0.1
    done
    rc=$(cat "$CDIR/play.rc" 2>/dev/null || echo none)
    say "    vsound pad play: exit $rc: $(tr '\n' ' ' <"$CDIR/play.out")"
    [[ $rc == 0 ]] || bad "vsound pad play exited $rc" || ok=1
    want=$(tr -d '\r' <"$CDIR/guest.log" | grep -a -o 'VSOUND-INFO: capture dump: .*md5 [0-9a-f]*' | awk '{ print $NF }')
    got=$(md5sum <"$CDIR/capture.raw" | cut -d' ' -f1)
    [[ -n $want && $got == "$want" ]] || bad "the recording did not reach the host intact" || return 1
    pcm exact "$DATA/in3.raw" "$CDIR/capture.raw" --frame 4 --rate 192000 --max-tail 192000 || ok=1
    kill_bg
    # Record what the guest plays.
    say "    host: vsound pad --config pad.toml record pad0 out.wav --seconds 2"
    ("$VSOUND_BIN" pad --config "$cfg" record pad0 "$CDIR/out.wav" --seconds 2 >"$CDIR/record.out" 2>&1
        echo $? >"$CDIR/record.rc") &
    BG_PIDS+=($!)
    wait_for_text "$CDIR/daemon.log" "pad pad0: client attached" 10 || return 1
    guest guest pcm-io.sh --data "$DATA/s16.wav" --env "PLAY=$LIFE_DEV@/data/s16.wav@2000" || ok=1
    for ((i = 0; i < 100; i++)); do
        [[ -s $CDIR/record.rc ]] && break
        sleep 0.1
    done
    rc=$(cat "$CDIR/record.rc" 2>/dev/null || echo none)
    say "    vsound pad record: exit $rc: $(tr '\n' ' ' <"$CDIR/record.out")"
    [[ $rc == 0 ]] || bad "vsound pad record exited $rc" || ok=1
    kill_bg
    [[ -s $CDIR/out.wav ]] || bad "no out.wav" || return 1
    say "    out.wav: $(soxi -t "$CDIR/out.wav") $(soxi -r "$CDIR/out.wav") Hz $(soxi -c "$CDIR/out.wav") ch $(soxi -b "$CDIR/out.wav") bit, $(soxi -s "$CDIR/out.wav") frames"
    [[ $(soxi -r "$CDIR/out.wav") == 48000 && $(soxi -c "$CDIR/out.wav") == 2 && $(soxi -b "$CDIR/out.wav") == 16 ]] ||
        bad "out.wav is not S16 48 kHz stereo" || ok=1
    sox "$CDIR/out.wav" -t raw "$CDIR/out.raw" || bad "sox cannot read out.wav" || return 1
    pcm exact "$DATA/s16.raw" "$CDIR/out.raw" --frame 4 --rate 192000 --max-tail 192000 || ok=1
    return $ok
}

# --- runner ----------------------------------------------------------------------------
CASES=(
    default-play-record
    pad-playback-s16
    pad-playback-s32-mono
    pad-playback-float-6ch
    pad-capture
    alsa-file
    pipewire-beep-tone
    two-groups
    vmm-restart
    driver-reload
    hot-remove-silence
    hot-remove-error
    jacks
    pause-resume-playback
    pause-resume-capture
    system-reset-playback
    reboot-playback
    daemon-restart-replug
    pad-recipe-feed-first
    pad-recipe-record-first
    pad-tool-round-trip
    pad-fill-silence-gap
    controls
    pad-mix-two-aplays
)
# Cases that need daemon work still in progress (none now).
PENDING_CASES=()

# run_case NAME: runs case_NAME (dashes as underscores) in $WORK/NAME
run_case() {
    local name=$1 fn=case_${1//-/_} ok=1 t0 el
    CASE_NAME=$name
    CDIR=$WORK/$name
    OUT=$CDIR/out
    mkdir -p "$CDIR"
    # the daemon creates its sockets (and ALSA file plugin output) here
    chown "$SUITE_USER:" "$CDIR"
    : >"$OUT"
    t0=$(date +%s%N)
    "$fn" || ok=0
    kill_bg
    stop_daemon || ok=0
    el=$((($(date +%s%N) - t0) / 100000000))
    el="$((el / 10)).$((el % 10))"
    if ((ok)); then
        passed=$((passed + 1))
        printf 'guest case %-28s ok (%ss)\n' "$name" "$el"
        grep -E '^run-guest: +|^    ' "$OUT" | grep -v 'console (last' | sed 's/^/    /' || true
    else
        failed=$((failed + 1))
        failed_names+=("$name")
        printf 'guest case %-28s FAILED (%ss)\n' "$name" "$el"
        # run-guest's own dmesg tail is mostly boot messages: shown below, filtered
        awk '/^run-guest: guest dmesg/ { skip = 1; next } skip && /^  \| / { next } { skip = 0; print }' "$OUT" |
            sed 's/^/    | /'
        local log
        for log in "$CDIR"/*.log; do
            [[ -f $log ]] || continue
            case "$(basename "$log")" in
                daemon.log) ;;
                guest.log | vm*.log)
                    if grep -a -q VSOUND-DMESG-BEGIN "$log"; then
                        echo "    --- guest kernel messages after /init started, $(basename "$log") (dumped at its end)"
                        tr -d '\r' <"$log" | awk '
                            /VSOUND-DMESG-END/ { p = 0 }
                            p { n++; line[n] = $0; if ($0 ~ /Run \/init as init process/) start = n }
                            /VSOUND-DMESG-BEGIN/ { p = 1 }
                            END {
                                shown = 0
                                for (i = start + 1; i <= n; i++)
                                    if (line[i] !~ /\]   (  |with )/) { print line[i]; shown++ }
                                if (!shown) print "(none)"
                            }' | sed 's/^/    | /'
                    else
                        echo "    --- guest console, $(basename "$log") (no dmesg dump; last 30 lines)"
                        tr -d '\r' <"$log" | tail -n 30 | sed 's/^/    | /'
                    fi
                    ;;
                *)
                    echo "    --- $(basename "$log") (last 30 lines)"
                    tail -n 30 "$log" | sed 's/^/    | /'
                    ;;
            esac
        done
        echo "    --- vsound log (last 60 lines)"
        tail -n 60 "$CDIR/daemon.log" 2>/dev/null | sed 's/^/    | /'
    fi
}

if [[ ${1:-} == --list ]]; then
    printf '%s\n' "${CASES[@]}"
    [[ ${#PENDING_CASES[@]} -eq 0 ]] || printf '%s (pending)\n' "${PENDING_CASES[@]}"
    exit 0
fi
SELECTED=("$@")
for name in "${SELECTED[@]}"; do
    [[ " ${CASES[*]} ${PENDING_CASES[*]} " == *" $name "* ]] || {
        echo "run-suite: no case $name (try --list)" >&2
        exit 2
    }
done
if [[ ${#SELECTED[@]} -eq 0 ]]; then
    SELECTED=("${CASES[@]}")
    if [[ ${VSOUND_GUEST_CASES_PENDING:-0} == 1 && ${#PENDING_CASES[@]} -gt 0 ]]; then
        SELECTED+=("${PENDING_CASES[@]}")
    fi
fi

# Kernel, initramfs and test signals first, so their one-time cost is not charged to a case.
"$HERE/fetch-kernel.sh" >/dev/null
"$HERE/build-initramfs.sh" >/dev/null
make_data

for name in "${SELECTED[@]}"; do
    run_case "$name"
done

el=$((($(date +%s%N) - t_suite) / 1000000000))
echo
echo "guest suite time: ${el} s"
((failed == 0)) || echo "failed: ${failed_names[*]}"
# The closing line CI reads: "N passed, N failed" after one word and a colon.
echo "guest-suite: $passed passed, $failed failed"
((failed == 0))

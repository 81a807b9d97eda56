#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time from the committed seed
# corpus, and each committed regression input once; exits non-zero if any
# target crashes (CI calls this). Needs no nightly toolchain: the stable one
# runs with RUSTC_BOOTSTRAP=1 (cargo-fuzz passes -Z flags).
#
#   fuzz/run-short.sh                 every target, 30 s each
#   FUZZ_SECONDS=5 fuzz/run-short.sh  shorter
#   FUZZ_TARGETS="config api" ...     some targets
#
# cargo-fuzz is installed if missing, into fuzz/target/tools (kept with the
# build cache). The build goes to fuzz/target; the corpus a run grows goes
# to fuzz/target/run-short/corpus (the committed seeds are not touched), a
# crash's input to fuzz/target/run-short/artifacts.
set -euo pipefail
cd "$(dirname "$0")"
here=$PWD

seconds=${FUZZ_SECONDS:-30}
targets=${FUZZ_TARGETS:-"control io vhost_user config api"}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$here/target"

if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ ! -x "$here/target/tools/bin/cargo-fuzz" ]; then
        echo "run-short: installing cargo-fuzz into fuzz/target/tools"
        cargo install --locked --quiet cargo-fuzz --version 0.13.2 --root "$here/target/tools"
    fi
    export PATH="$here/target/tools/bin:$PATH"
fi

start=$(date +%s)
# Every target in one build (one set of flags: a second set would rebuild).
nice cargo fuzz build -O --debug-assertions
built=$(date +%s)
echo "run-short: built in $((built - start)) s"

triple=$(rustc -vV | sed -n 's/^host: //p')
bin="$CARGO_TARGET_DIR/$triple/release"
work="$here/target/run-short"
mkdir -p "$work/artifacts"
passed=0
failed=0
failures=""
for t in $targets; do
    mkdir -p "$work/corpus/$t"
    log="$work/$t.log"
    ok=1
    # The regressions first: each input once.
    inputs=()
    if [ -d "regressions/$t" ]; then
        for f in regressions/"$t"/*; do
            [ -f "$f" ] && inputs+=("$f")
        done
    fi
    if [ ${#inputs[@]} -gt 0 ]; then
        if ! "$bin/$t" -runs=1 -timeout=30 "${inputs[@]}" >"$work/$t.regressions.log" 2>&1; then
            ok=0
            echo "run-short: $t: a regression input fails (see $work/$t.regressions.log)"
        fi
    fi
    if ! nice "$bin/$t" "$work/corpus/$t" "corpus/$t" \
        -max_total_time="$seconds" -timeout=30 -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/$t-" >"$log" 2>&1; then
        ok=0
        echo "run-short: $t: CRASH (log $log):"
        grep -E "panicked at|^SUMMARY|Test unit written" "$log" | head -5 || true
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    echo "run-short: $t: ${execs:-?} executions, ${rate:-?}/s"
    if [ $ok = 1 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        failures="$failures $t"
    fi
done
echo "run-short: $(( $(date +%s) - start )) s in all"
echo "fuzz: $passed passed, $failed failed"
if [ $failed -gt 0 ]; then
    echo "run-short: crashed:$failures"
    exit 1
fi

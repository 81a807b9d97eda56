#!/usr/bin/env bash
# test.sh: the whole test suite, as README and CI run it.
#
# Usage (as root on Debian 12):  scripts/test.sh
#
# 1. installs what the suite needs (idempotent: a no-op when present);
# 2. format and lint checks (cargo fmt --check, clippy -D warnings);
# 3. unit tests and the vmm-tests integration tests, which drive a real
#    vsound process through its vhost-user socket;
# 4. the loom models of the attach/detach protocol, the ring gate, deferred
#    completions and the hang watch (every interleaving);
# 5. the Debian package (scripts/package.sh): built, installed with dpkg, its units
#    checked with systemd-analyze and run as the service would (vmm-tests/packaging);
# 6. the guest suite: real Linux 6.12 guests under QEMU 10 attached to vsound;
# 7. a short fuzz run: every fuzz target from its seeds for FUZZ_SECONDS
#    (default 30) and every committed regression input once (fuzz/run-short.sh).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

step() { printf '\n==== %s\n' "$*"; }

step "dependencies"
if [[ $(id -u) -eq 0 ]]; then
    scripts/install-deps.sh
else
    echo "test.sh: not root; assuming scripts/install-deps.sh already ran" >&2
fi

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build"
cargo build --workspace --locked

step "unit and integration tests"
cargo test --workspace --locked

step "loom models: the attach/detach protocol, the ring gate, deferred completions, the hang watch, the ALSA I/O doorbell"
# Their own target dir: --cfg loom rebuilds the devices and backend crates.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-4} \
    cargo test -p vsound-devices --lib --release --locked attach::loom_model
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-4} \
    cargo test -p vsound-devices --lib --release --locked alsa::io::loom_model
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-4} \
    cargo test -p vsound --lib --release --locked gate::loom_model
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=${LOOM_MAX_PREEMPTIONS:-4} \
    cargo test -p vsound --lib --release --locked hangs::loom_model

step "Debian package: built, installed, run as the service would"
vmm-tests/packaging/test-package.sh

step "guest tests"
vmm-tests/guest/run-suite.sh

step "fuzzing (short run)"
fuzz/run-short.sh

#!/usr/bin/env bash
# run.sh: build and run the vsound daemon on its embedded default config
# (listening on /tmp/vsound.sock). Extra arguments go to vsound, e.g.
# `scripts/run.sh --config configs/pad.toml`.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
if [[ $(id -u) -eq 0 ]]; then
    scripts/install-deps.sh --build-only
fi
cargo build --release --locked --bin vsound
exec target/release/vsound "$@"

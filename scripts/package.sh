#!/usr/bin/env bash
# package.sh: build the Debian package of vsound.
#
# Usage (on Debian 12, as root or as a user who ran scripts/install-deps.sh
# --build-only):  scripts/package.sh
#
# 1. the release binary (cargo build --release --locked);
# 2. its man pages and bash/zsh/fish completions, generated from the clap
#    definitions (`vsound generate`), gzipped, into
#    $TARGET/release/package-assets/;
# 3. cargo-deb (pinned, installed once into $TARGET/tools), then
#    `cargo deb --no-build`: $TARGET/debian/vsound_VERSION-1_ARCH.deb.
# $TARGET is $CARGO_TARGET_DIR, else target/. Idempotent: run it again
# and only what changed is rebuilt. Prints the .deb's path last.
set -euo pipefail

readonly CARGO_DEB_VERSION=3.8.0

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
case $TARGET in /*) ;; *) TARGET=$REPO/$TARGET ;; esac

log() { printf 'package: %s\n' "$*" >&2; }

if [[ $(id -u) -eq 0 ]]; then
    scripts/install-deps.sh --build-only
    # What `dpkg -i` of the package needs besides libasound2 (which
    # libasound2-dev brought): its postinst creates the user with adduser.
    if ! dpkg-query -W -f='${db:Status-Abbrev}' adduser 2>/dev/null | grep -q '^ii'; then
        log "installing adduser (the package's postinst uses it)"
        DEBIAN_FRONTEND=noninteractive apt-get -y -q install --no-install-recommends adduser >&2 ||
            { apt-get -q update >&2 && DEBIAN_FRONTEND=noninteractive apt-get -y -q install --no-install-recommends adduser >&2; }
    fi
fi

log "release build"
cargo build --release --locked -p vsound --bin vsound >&2
BIN=$TARGET/release/vsound

log "man pages and completions"
ASSETS=$TARGET/release/package-assets
rm -rf "$ASSETS"
mkdir -p "$ASSETS/man" "$ASSETS/completions"
"$BIN" generate man "$ASSETS/man"
# -n: no name or time stamp in the gzip header (the same bytes every build).
gzip -9n "$ASSETS"/man/*.1
"$BIN" generate completions bash >"$ASSETS/completions/vsound.bash"
"$BIN" generate completions zsh >"$ASSETS/completions/_vsound"
"$BIN" generate completions fish >"$ASSETS/completions/vsound.fish"

CARGO_DEB=$TARGET/tools/bin/cargo-deb
if [[ $("$CARGO_DEB" --version 2>/dev/null || true) != *" $CARGO_DEB_VERSION" ]]; then
    log "installing cargo-deb $CARGO_DEB_VERSION into $TARGET/tools"
    # Its own target dir: never the workspace's build products.
    CARGO_TARGET_DIR=$TARGET/tools/build cargo install --locked --quiet \
        --root "$TARGET/tools" --version "$CARGO_DEB_VERSION" cargo-deb >&2
    rm -rf "$TARGET/tools/build"
fi

log "cargo deb"
# --strip: the release profile keeps line tables (debug = 1) for
# benchmarks; the package ships the binary without them.
DEB=$("$CARGO_DEB" --no-build --strip --locked -p vsound --quiet)
log "built $DEB"
echo "$DEB"

#!/usr/bin/env bash
# test-package.sh: build the Debian package (scripts/package.sh), then run
# the installed-package test (vmm-tests/tests/packaging.rs,
# the_debian_package_installs_a_working_service_and_goes_away_cleanly):
# dpkg -i, the files, man page, completions, `systemd-analyze verify` of the
# installed units, the `vsound` user, the service run as systemd runs it
# (systemd-socket-activate + setpriv to vsound, its ExecStart line) with a
# VMM and a pad client, `vsound ctl status`, SIGTERM, and its system calls
# checked against the unit's SystemCallFilter (strace); then dpkg -r and
# dpkg -P.
#
# Usage (as root on Debian 12):  vmm-tests/packaging/test-package.sh
# Not root: skipped (exit 0), it installs a package. On a machine that runs
# systemd and already has vsound installed, skipped too unless
# VSOUND_PACKAGE_TEST=force: the test purges the package at the end.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"

log() { printf 'test-package: %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    log "skipped: not root (it installs and purges the vsound package)"
    exit 0
fi
if ! command -v dpkg >/dev/null; then
    log "skipped: no dpkg"
    exit 0
fi
if [[ -d /run/systemd/system && ${VSOUND_PACKAGE_TEST:-} != force ]] &&
    dpkg-query -W -f='${db:Status-Abbrev}' vsound 2>/dev/null | grep -q '^ii'; then
    log "skipped: vsound is installed on this systemd machine (VSOUND_PACKAGE_TEST=force to test anyway: it purges it)"
    exit 0
fi

start=$SECONDS
DEB=$(scripts/package.sh)
log "built $DEB in $((SECONDS - start)) s"

start=$SECONDS
VSOUND_DEB=$DEB cargo test -p vmm-tests --test packaging --locked -- \
    --exact the_debian_package_installs_a_working_service_and_goes_away_cleanly --nocapture
log "installed-package test: $((SECONDS - start)) s"

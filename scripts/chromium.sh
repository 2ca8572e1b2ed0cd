#!/usr/bin/env bash
# Headless Chromium for the HTML report test (tests/e2e_policy.rs renders
# `esi-server policy report --html` with `chromium --headless --dump-dom` and takes a
# screenshot into target/artifacts/). Only Debian's package is used (apt-get install
# chromium) when the command is absent.
#
#   scripts/chromium.sh install   # install if needed and print the version (scripts/test.sh does this)
set -euo pipefail

NAME="chromium.sh"
LOG_NAME="chromium-setup.log"
# shellcheck source=scripts/lib/backend.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/backend.sh"

install() {
    mkdir -p "${OUT}"
    if ! command -v chromium >/dev/null 2>&1; then
        [[ "$(id -u)" -eq 0 ]] || die "chromium is not installed and installing it needs root (apt-get install chromium)"
        command -v apt-get >/dev/null 2>&1 || die "chromium is not installed and apt-get is missing"
        {
            apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
        } >>"${LOG}" 2>&1 || die "apt-get install chromium failed"
    fi
    command -v chromium >/dev/null 2>&1 || die "chromium is still not on PATH"
    # Debian's wrapper script warns on stderr on some machines; the version is on stdout.
    chromium --version 2>/dev/null || die "chromium --version failed"
}

case "${1:-}" in
    install) install ;;
    *)
        echo "usage: scripts/chromium.sh install" >&2
        exit 2
        ;;
esac

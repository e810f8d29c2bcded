#!/usr/bin/env bash
# The dashboard's browser test drives Debian's chromium (Playwright's own download needs the internet).
# Installs it when missing and we are root; otherwise says what to run.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium for the dashboard test (apt-get install -y chromium)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    [ -x "$CHROMIUM" ] && exit 0
fi
echo "error: $CHROMIUM is missing; the dashboard test needs it: run 'sudo apt-get install -y chromium'" >&2
exit 1

#!/usr/bin/env bash
# Screenshot an HTML report (e.g. <outdir>/analysis/report.html) in headless Chromium, to check
# that it renders and to look at it.
#
#   scripts/screenshot-report.sh REPORT.html OUT.png [WIDTHxHEIGHT]     (default 1400x4000)
#
# The PNG is exactly WIDTH x HEIGHT CSS pixels of the page from its top (Chromium's --screenshot
# takes the window, not the whole page: give a tall HEIGHT to see everything). Nothing is fetched
# from the network (the reports are self-contained; --headless has no network to reach here anyway).
#
# Needs `chromium`. When it is missing, the Debian package `chromium` is installed with apt-get
# (root only, as in CI; elsewhere install it yourself). Environment overrides:
#   CHROMIUM                  the browser command (default: chromium)
#   SCREENSHOT_TIMEOUT        seconds before the browser is killed (default 120)
set -euo pipefail

log() { printf '[screenshot-report] %s\n' "$*" >&2; }
die() { printf '[screenshot-report] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 2 && $# -le 3 ]] || die "usage: $0 REPORT.html OUT.png [WIDTHxHEIGHT]"
report=$1
out=$2
size=${3:-1400x4000}
[[ $size =~ ^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$ ]] || die "size must be WIDTHxHEIGHT (e.g. 1400x4000), got '$size'"
width=${BASH_REMATCH[1]}
height=${BASH_REMATCH[2]}
[[ -f $report ]] || die "no such file: $report"
browser=${CHROMIUM:-chromium}
timeout_s=${SCREENSHOT_TIMEOUT:-120}

install_chromium() {
    [[ $(id -u) -eq 0 ]] || die "'$browser' not found and not root: install the Debian package chromium (apt-get install chromium)"
    command -v apt-get >/dev/null || die "'$browser' not found and no apt-get: install Chromium yourself"
    log "installing chromium (apt-get update + install)"
    export DEBIAN_FRONTEND=noninteractive
    local aptlog
    aptlog=$(mktemp /tmp/screenshot-report-apt.XXXXXX)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; } >"$aptlog" 2>&1; then
        tail -n 30 "$aptlog" >&2
        die "apt-get install chromium failed (full log: $aptlog)"
    fi
    rm -f "$aptlog"
    command -v "$browser" >/dev/null || die "'$browser' still missing after apt-get install chromium"
}

command -v "$browser" >/dev/null || install_chromium

report_abs=$(cd "$(dirname "$report")" && pwd)/$(basename "$report")
mkdir -p "$(dirname "$out")"
out_abs=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
profile=$(mktemp -d /tmp/screenshot-report-profile.XXXXXX)   # a throw-away profile: no state is shared
trap 'rm -rf "$profile"' EXIT
rm -f "$out_abs"

# --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start; --disable-dev-shm-usage:
# containers often have a tiny /dev/shm. The page has no script, so no virtual-time budget is needed.
blog=$profile/chromium.log
if ! timeout "$timeout_s" "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
        --hide-scrollbars --no-first-run --no-default-browser-check --disable-extensions \
        --user-data-dir="$profile" --window-size="$width,$height" --screenshot="$out_abs" \
        "file://$report_abs" >"$blog" 2>&1; then
    tail -n 30 "$blog" >&2
    die "chromium failed (or ran over ${timeout_s} s) on $report_abs"
fi
[[ -s $out_abs ]] || { tail -n 30 "$blog" >&2; die "chromium wrote no screenshot to $out_abs"; }
log "wrote $out_abs (${width}x${height}) from $report_abs"

#!/usr/bin/env bash
# The headless browser for the operator console's tests (tests/console.rs): Debian's chromium and
# chromium-driver (ChromeDriver, the WebDriver server the test talks to), and a Chinese font
# (fonts-wqy-microhei, 5 MB) so that the screenshots show the console's labels, not boxes.
#
#   scripts/browser.sh install    apt-get install chromium chromium-driver fonts-wqy-microhei if missing
#   scripts/browser.sh env        print `export COINPAY_TEST_CHROMIUM=... COINPAY_TEST_CHROMEDRIVER=...`
#                                 (nothing, exit 1, when either is missing)
#
# Only Debian's packages: nothing downloads a browser build of its own.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
CHROMEDRIVER=${CHROMEDRIVER:-/usr/bin/chromedriver}
FONT=/usr/share/fonts/truetype/wqy/wqy-microhei.ttc

log() { printf '[browser %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
have() { [[ -x $CHROMIUM && -x $CHROMEDRIVER ]]; }
have_all() { have && [[ -f $FONT ]]; }

do_install() {
  if have_all; then
    log "already installed: $("$CHROMIUM" --version 2>/dev/null | head -n1); $("$CHROMEDRIVER" --version 2>/dev/null | cut -d' ' -f1-2)"
    return 0
  fi
  ((EUID == 0)) || die "install needs root (apt-get)"
  local log_file=${TMPDIR:-/tmp}/coinpay-browser-install.$$.log t0=$SECONDS
  # A fresh machine has no package lists: apt-get install fails without an update first.
  {
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq \
      && DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
           --no-install-recommends chromium chromium-driver fonts-wqy-microhei
  } >"$log_file" 2>&1 || { tail -n 40 "$log_file" >&2; die "apt-get install chromium chromium-driver fonts-wqy-microhei failed"; }
  rm -f "$log_file"
  have_all || die "still missing after install: $CHROMIUM, $CHROMEDRIVER or $FONT"
  log "installed in $((SECONDS - t0)) s: $("$CHROMIUM" --version 2>/dev/null | head -n1)"
}

case ${1:-} in
  install) do_install ;;
  env)
    have || exit 1
    printf 'export COINPAY_TEST_CHROMIUM=%q\nexport COINPAY_TEST_CHROMEDRIVER=%q\n' "$CHROMIUM" "$CHROMEDRIVER"
    ;;
  *) echo "usage: $0 install|env" >&2; exit 2 ;;
esac

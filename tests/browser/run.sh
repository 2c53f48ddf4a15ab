#!/usr/bin/env bash
# End-to-end browser check of the dashboard: starts the demo daemon on a
# random loopback port with a fresh data folder, waits for its first fit,
# proposes a second trial (for the proposals page) and asks a question (for
# the Ask page), then loads the pages in
# headless Chromium (tests/browser/check.mjs) at 375 and 1280 px.
# Screenshots go to target/browser/.
#
# Needs: Debian's chromium (/usr/bin/chromium, or set CHROMIUM), Node.js 20
# with npm, and a built binary (cargo build; NOF1D_BIN overrides the path).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
bin=${NOF1D_BIN:-$root/target/debug/nof1d}
out=$root/target/browser
[ -x "$bin" ] || cargo build --quiet
(cd tests/browser && { [ -d node_modules/playwright-core ] || npm ci --no-audit --no-fund --silent; })

data=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"' EXIT
"$bin" serve --demo --data-dir "$data" --listen 127.0.0.1:0 > "$data/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
  [ -s "$data/listen.addr" ] && break
  sleep 0.1
done
addr=$(tr -d '\n' < "$data/listen.addr")
base="http://$addr"
# The demo's first refit gives the effect charts something to show.
for _ in $(seq 1 600); do
  if curl -fsS "$base/api/trials/1" 2>/dev/null | grep -q '"data_through"'; then break; fi
  sleep 0.1
done
"$bin" trial propose protocols/study-timing.toml --participant demo --data-dir "$data" > /dev/null
# A question answered by the built-in proposer, for the Ask page.
"$bin" ask --offline --participant demo --data-dir "$data" "does magnesium help my migraines?" > /dev/null
node tests/browser/check.mjs "$base" "$out"
echo "screenshots in $out"

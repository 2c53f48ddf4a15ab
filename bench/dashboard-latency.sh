#!/usr/bin/env bash
# Dashboard latency under load: the release daemon on the demo, with simulated
# time fast enough (a simulated day every 0.86 s) that new data arrive and
# the refit job, ticking every second, fits almost every tick, and a
# `nof1d simulate` on one thread beside it as a second, continuous fit load
# (so one of the two cores is always busy fitting). `ab` (Debian's
# apache2-utils) then sends N requests, C at a time, to each page and prints
# the percentiles.
#
# Usage: bash bench/dashboard-latency.sh [N] [C]      (defaults 3000 and 4)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3000}
c=${2:-4}
bin=target/release/nof1d
[ -x "$bin" ] || cargo build --release
command -v ab >/dev/null || { echo "needs ab: apt-get install apache2-utils" >&2; exit 1; }
data=$(mktemp -d)
trap 'kill $pid $sim 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$data"' EXIT
printf '[jobs]\nrefit_seconds = 1\nsource_poll_seconds = 1\n' > "$data/nof1d.toml"
"$bin" serve --demo --config "$data/nof1d.toml" --data-dir "$data" --listen 127.0.0.1:0 \
  --time-scale 100000 > "$data/daemon.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do [ -s "$data/listen.addr" ] && break; sleep 0.1; done
base="http://$(tr -d '\n' < "$data/listen.addr")"
for _ in $(seq 1 600); do
  curl -fsS "$base/api/trials/1" 2>/dev/null | grep -q '"data_through"' && break
  sleep 0.1
done
"$bin" trial propose protocols/study-timing.toml --participant demo --data-dir "$data" > /dev/null
"$bin" simulate --protocol bench/two-arm-16-weeks.toml --trials 100000 --threads 1 \
  --out "$data/sim.json" > /dev/null 2>&1 &
sim=$!
sleep 3
printf '%-16s %8s %8s %8s %8s %10s\n' page p50_ms p90_ms p99_ms max_ms fits_during
for path in /trials/1 / /proposals /api/trials/1 /sources; do
  before=$(curl -fsS "$base/metrics" | awk '/^nof1d_fits_total/ {print $2}')
  out=$(ab -l -q -n "$n" -c "$c" "$base$path" 2>/dev/null)
  after=$(curl -fsS "$base/metrics" | awk '/^nof1d_fits_total/ {print $2}')
  pct() { echo "$out" | awk -v p="$1" '$1 == p"%" {print $2}'; }
  failed=$(echo "$out" | awk '/^Failed requests/ {print $3}')
  [ "$failed" = 0 ] || echo "warning: $failed failed requests on $path" >&2
  printf '%-16s %8s %8s %8s %8s %10s\n' "$path" "$(pct 50)" "$(pct 90)" "$(pct 99)" "$(pct 100)" "$((after - before))"
done

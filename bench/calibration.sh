#!/usr/bin/env bash
# Calibration on the stress suite (issue 16): for each design, the per-
# scenario table (false stops at the protocol's threshold and calibrated,
# power, the betting test beside them) and the wall time on this machine.
#
#   bash bench/calibration.sh [TRIALS]     (default 400: the daemon's setting)
#
# NOF1D: the binary (default target/release/nof1d; build it with
# `cargo build --release`). Results go to target/bench/calibration-*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
NOF1D=${NOF1D:-target/release/nof1d}
TRIALS=${1:-400}
mkdir -p target/bench
for design in protocols/meditation-anxiety.toml protocols/sleep-supplements.toml \
              protocols/study-timing.toml bench/two-arm-16-weeks.toml \
              bench/one-day-30-blocks.toml bench/three-day-30-blocks.toml; do
    name=$(basename "$design" .toml)
    effect=()
    # The designs with a MID near 0 are powered at 0.7 daily sd.
    case "$name" in *-30-blocks) effect=(--effect 0.7) ;; esac
    echo "== $name"
    start=$(date +%s.%N)
    "$NOF1D" simulate --protocol "$design" --suite --calibrate --trials "$TRIALS" \
        "${effect[@]}" --out "target/bench/calibration-$name.json"
    echo "wall: $(echo "$(date +%s.%N) - $start" | bc) s"
done

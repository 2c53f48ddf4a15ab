#!/usr/bin/env bash
# Mapped CSV import speed and memory: a minute log (time, heart rate, steps,
# mood) of ROWS rows, local times in Europe/Berlin (DST nights included),
# imported into a fresh data folder, then again (nothing new).
#   bash bench/mapped_import.sh [ROWS] [BINARY]
# Prints each import's line and its wall time and peak RSS (GNU time).
set -euo pipefail
rows=${1:-500000}
bin=${2:-target/release/nof1d}
bin=$(realpath "$bin")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/nof1d.toml" <<TOML
data_dir = "$work/data"
[web]
listen = "127.0.0.1:0"
[[participants]]
key = "anna"
name = "Anna"
email = "anna@example.invalid"
time_zone = "Europe/Berlin"
[[participants.imports]]
name = "log"
files = "log*.csv"
time = "time"
[[participants.imports.columns]]
column = "hr"
stream = "heart_rate"
unit = "bpm"
[[participants.imports.columns]]
column = "steps"
stream = "steps"
unit = "count"
[[participants.imports.columns]]
column = "mood"
stream = "mood"
unit = "score"
TOML
python3 - "$work/log-minutes.csv" "$rows" <<'PY'
import datetime, sys
path, rows = sys.argv[1], int(sys.argv[2])
t = datetime.datetime(2024, 1, 1)
with open(path, "w") as f:
    f.write("time,hr,steps,mood\n")
    for i in range(rows):
        stamp = (t + datetime.timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M")
        f.write(f"{stamp},{60 + i % 40},{i % 120},{i % 10}\n")
PY
ls -l "$work/log-minutes.csv"
cd "$work"
# The database is made by the daemon's first start.
timeout 8 "$bin" --config nof1d.toml serve >/dev/null 2>&1 || true
for run in first again; do
  /usr/bin/time -f "$run: %e s wall, peak RSS %M KB" "$bin" --config nof1d.toml import log-minutes.csv
done

#!/usr/bin/env bash
# Wall time of a T-day fit for each non-gaussian family (issue 4's 0.5 s bar):
# the simulated gaussian series of `nof1d bench simulate` mapped to counts,
# successes, n-of-7 successes and proportions, each fitted REPS times by
# `nof1d analyze --json`; prints the median and the range of the fit's own
# wall time, its evaluations and its verdict.
# Usage: bench/families.sh [DAYS] [REPS]; NOF1D=path/to/nof1d times another
# binary (unbuilt), e.g. one from an earlier commit.
set -euo pipefail
days=${1:-365}
reps=${2:-5}
bin=${NOF1D:-target/release/nof1d}
[ -n "${NOF1D:-}" ] || cargo build --release --quiet
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$bin" bench simulate --days "$days" > "$dir/gaussian.csv"
python3 - "$dir" <<'PY'
import csv, math, random, sys
d = sys.argv[1]
rows = list(csv.DictReader(open(f"{d}/gaussian.csv")))
random.seed(4)
def logistic(x):
    return 1 / (1 + math.exp(-x))
def poisson(lam):
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= random.random()
        if p < limit:
            return k
        k += 1
makers = {
    "poisson": lambda y: poisson(math.exp((y - 5) / 3 + 1)),
    "bernoulli": lambda y: int(random.random() < logistic((y - 5) / 2)),
    "binomial": lambda y: sum(random.random() < logistic((y - 5) / 2) for _ in range(7)),
    "beta": lambda y: round(min(max(random.betavariate(20 * logistic((y - 5) / 2), 20 * (1 - logistic((y - 5) / 2))), 1e-4), 1 - 1e-4), 5),
}
for family, make in makers.items():
    with open(f"{d}/{family}.csv", "w") as f:
        f.write("day,arm,y\n")
        for r in rows:
            f.write(f"{r['day']},{r['arm']},{make(float(r['y']))}\n")
PY
for family in poisson bernoulli binomial beta; do
  extra=()
  [ "$family" = binomial ] && extra=(--trials 7)
  for i in $(seq "$reps"); do
    "$bin" analyze --data "$dir/$family.csv" --family "$family" --mid 1.2 "${extra[@]}" --json > "$dir/$family-$i.json"
  done
  python3 - "$family" "$days" "$dir"/"$family"-*.json <<'PY'
import json, statistics, sys
family, days, files = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = [json.load(open(f)) for f in files]
ms = sorted(r["diagnostics"]["wall_ms"] for r in runs)
d = runs[-1]["diagnostics"]
e = runs[-1]["effects"][0]
print(f"{family} T={days}: median {statistics.median(ms):.0f} ms (range {ms[0]:.0f}-{ms[-1]:.0f}, {len(ms)} fits), "
      f"{d['evaluations']} evaluations, converged {d['converged']}, effect {e['mean']:.3f} sd {e['sd']:.3f}")
PY
done

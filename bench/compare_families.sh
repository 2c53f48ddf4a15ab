#!/usr/bin/env bash
# nof1d's non-gaussian fits against NumPyro (NUTS, latent path sampled) on the
# same data and priors: for each family (poisson, bernoulli, binomial of 7,
# beta; student_t: a gaussian outcome with t3 errors, fitted with nof1d's
# Student-t noise, `--noise student_t`) and each of SERIES generated series (bench/gen_family_series.py, 168
# days, seeds 1..SERIES), `nof1d analyze --json` with --seed 1..SEEDS and one
# NumPyro fit (4 chains x 1000 warm-up / 1000 draws). Prints per series the
# effect's mean and sd from nof1d (averaged over seeds, with the min..max over
# seeds) and from NumPyro (mean +- Monte Carlo se), |nof1d - NumPyro| in
# NumPyro posterior sds and in NumPyro MC se, NumPyro's diagnostics, and
# whether nof1d's printed priors are the ones NumPyro used.
# Raw CSV and JSON go to ${OUT:-target/bench/families}.
# Needs python3 with numpy and `pip install numpyro jax` (CPU). No cargo: the
# binary is ${NOF1D:-target/release/nof1d}. With REUSE_NUMPYRO=1 a NumPyro
# result already in the output folder is kept (the data are deterministic). NumPyro takes ~1.5-2 min a fit on one
# core; on a shared machine run it as
#   XLA_FLAGS="--xla_force_host_platform_device_count=1 --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
#     taskset -c 1 bench/compare_families.sh 2 5
# Usage: bench/compare_families.sh [SERIES_PER_FAMILY=3] [SEEDS=5]
set -euo pipefail
cd "$(dirname "$0")/.."
series=${1:-3}
seeds=${2:-5}
bin=${NOF1D:-target/release/nof1d}
out=${OUT:-target/bench/families}
families=${FAMILIES:-poisson bernoulli binomial beta}
mkdir -p "$out"
echo "nof1d: $bin; NumPyro: 4 chains x 1000/1000, target_accept 0.95; $series series a family, nof1d seeds 1..$seeds; raw files in $out"

for family in $families; do
  extra=()
  fit_family=$family
  [ "$family" = binomial ] && extra=(--trials 7)
  [ "$family" = student_t ] && fit_family=gaussian extra=(--noise student_t)
  for k in $(seq "$series"); do
    name="$family-$k"
    python3 bench/gen_family_series.py "$family" "$k" > "$out/$name.csv"
    for s in $(seq "$seeds"); do
      "$bin" analyze --data "$out/$name.csv" --comparator control --family "$fit_family" "${extra[@]}" \
        --direction higher --mid 1.2 --json --seed "$s" > "$out/$name-nof1d-seed$s.json"
    done
    if [ "${REUSE_NUMPYRO:-0}" = 1 ] && [ -s "$out/$name-numpyro.json" ]; then
      :
    else
      python3 bench/numpyro_compare.py "$out/$name.csv" --family "$fit_family" "${extra[@]}" \
        > "$out/$name-numpyro.json" || echo '{"failed": true}' > "$out/$name-numpyro.json"
    fi
    python3 - "$family" "$k" "$out/$name-numpyro.json" "$out/$name"-nof1d-seed*.json <<'PY'
import json, math, statistics, sys
family, k, npf, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
truth = {"poisson": -0.5, "bernoulli": -0.8, "binomial": 0.6, "beta": 0.3, "student_t": 0.5}[family]
runs = [json.load(open(f)) for f in files]
means = [r["effects"][0]["mean"] for r in runs]
sds = [r["effects"][0]["sd"] for r in runs]
conv = sum(bool(r["diagnostics"]["converged"]) for r in runs)
ms = statistics.median(r["diagnostics"]["wall_ms"] for r in runs)
m, s = statistics.mean(means), statistics.mean(sds)
print(f"\n{family} series {k} ({runs[0]['observations']} obs, true effect {truth:+.3f})")
print(f"  {'':22} {'mean':>9} {'(range over seeds / MC se)':>28} {'sd':>8} {'(range)':>17}")
print(f"  {'nof1d grid, ' + str(len(runs)) + ' seeds':22} {m:9.4f} {min(means):13.4f}..{max(means):<13.4f} {s:8.4f} {min(sds):8.4f}..{max(sds):<7.4f}"
      f"  converged {conv}/{len(runs)}, {ms:.0f} ms")
n = json.load(open(npf))
if n.get("failed"):
    print("  NumPyro failed"); sys.exit(0)
print(f"  {'NumPyro NUTS':22} {n['effect_mean']:9.4f} {'+- ' + format(n['effect_mc_se'], '.4f'):>28} {n['effect_sd']:8.4f} {'':17}"
      f"  ESS {n['effect_ess']:.0f}, R-hat {n['effect_rhat']:.3f} (max {n['max_rhat']:.3f} {n['max_rhat_of']}, "
      f"min ESS {n['min_ess']:.0f} {n['min_ess_of']}), "
      f"divergences {n['divergences']}, {n['process_seconds']:.0f} s")
d = abs(m - n["effect_mean"])
# the seed average's own error, nof1d's sd over seeds / sqrt(seeds), beside NumPyro's MC se
seed_sd = statistics.stdev(means) if len(means) > 1 else 0.0
both = math.hypot(n["effect_mc_se"], seed_sd / math.sqrt(len(means)))
print(f"  |nof1d - NumPyro| mean {d:.4f} = {d / n['effect_sd']:.3f} posterior sd = {d / n['effect_mc_se']:.2f} MC se "
      f"(per seed up to {max(abs(x - n['effect_mean']) for x in means) / n['effect_mc_se']:.2f}) = {d / both:.2f} se of the difference")
print(f"  nof1d's sd of the mean over seeds {seed_sd:.4f} = {seed_sd / n['effect_sd']:.3f} posterior sd; "
      f"sd ratio nof1d/NumPyro {s / n['effect_sd']:.3f} (MC error of NumPyro's sd ~{1 / math.sqrt(2 * n['effect_ess']):.3f})")
# the priors nof1d printed against those numpyro_compare.py uses
p = runs[0]["priors"]
h = p["hyper"]
want = {
    "baseline": [n["mu_prior_centre"], 2.0], "effect": [0.0, 1.0],
    "drift_time_median_days": 3.0, "drift_time_log_sd": 1.0, "drift_sd_scale": 1.0,
    "half_life_median_days": 1.0, "half_life_log_sd": 0.75,
}
got = {"baseline": p["baseline"], "effect": list(p["effects"].values())[0], **h}
if family == "beta":
    want.update(precision_median=20.0, precision_log_sd=1.0)
if family == "student_t":
    S = n["scale"]
    want.update(baseline=[n["mu_prior_centre"], 2.0 * S], effect=[0.0, S],
                drift_sd_scale=S, noise_sd_scale=S)
def same(g, v):
    g, v = (g, v) if isinstance(v, list) else ([g], [v])
    return isinstance(g, list) and len(g) == len(v) and all(
        isinstance(a, (int, float)) and abs(a - b) <= 1e-9 * (1 + abs(b)) for a, b in zip(g, v))
bad = [f"{key}: nof1d {got.get(key)} NumPyro {v}" for key, v in want.items() if not same(got.get(key), v)]
print("  priors: " + ("same as NumPyro's (mu centre %.4f)" % n["mu_prior_centre"] if not bad else "MISMATCH " + "; ".join(bad)))
PY
  done
done

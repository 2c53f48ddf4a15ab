#!/usr/bin/env bash
# nof1d against NumPyro on identical data and priors, each timed as a whole
# process. Needs: cargo, python3 with `pip install numpyro jax` (CPU).
# Usage: bench/compare_numpyro.sh [DAYS]   (default 365)
set -euo pipefail
cd "$(dirname "$0")/.."
days=${1:-365}
out=${OUT:-target/bench}
mkdir -p "$out"
cargo build --release --quiet
bin=target/release/nof1d
$bin bench simulate --days "$days" > "$out/data.csv"

now() { echo "$EPOCHREALTIME"; }
t0=$(now); $bin analyze --data "$out/data.csv" --comparator control --json > "$out/nof1d-grid.json"; t1=$(now)
t2=$(now); $bin analyze --data "$out/data.csv" --comparator control --json --method mcmc > "$out/nof1d-mcmc.json"; t3=$(now)
t4=$(now); $bin analyze --data "$out/data.csv" --comparator control --json --method nuts > "$out/nof1d-nuts.json"; t5=$(now)
python3 bench/numpyro_compare.py "$out/data.csv" > "$out/numpyro-kalman.json"
python3 bench/numpyro_compare.py "$out/data.csv" --naive > "$out/numpyro-naive.json" || echo '{"model":"naive","failed":true}' > "$out/numpyro-naive.json"

python3 - "$out" "$t0" "$t1" "$t2" "$t3" "$t4" "$t5" <<'PY'
import json, sys
out, t0, t1, t2, t3, t4, t5 = sys.argv[1], *map(float, sys.argv[2:])
g = json.load(open(f"{out}/nof1d-grid.json"))
m = json.load(open(f"{out}/nof1d-mcmc.json"))
u = json.load(open(f"{out}/nof1d-nuts.json"))
k = json.loads(open(f"{out}/numpyro-kalman.json").read())
n = json.loads(open(f"{out}/numpyro-naive.json").read())
ge, me = g["effects"][0], m["effects"][0]
mess = m["diagnostics"]["ess_bulk"]["effect:treatment"]
print(f"{'':34} {'mean':>9} {'sd':>8} {'process s':>10} {'ESS/s':>8}")
print(f"{'nof1d grid':34} {ge['mean']:9.4f} {ge['sd']:8.4f} {t1-t0:10.3f} {'':>8}")
print(f"{'nof1d MCMC (adaptive Metropolis)':34} {me['mean']:9.4f} {me['sd']:8.4f} {t3-t2:10.3f} {mess/(m['diagnostics']['wall_ms']/1000):8.0f}")
ue, uess = u["effects"][0], u["diagnostics"]["ess_bulk"]["effect:treatment"]
print(f"{'nof1d NUTS (nuts-rs, 4 chains)':34} {ue['mean']:9.4f} {ue['sd']:8.4f} {t5-t4:10.3f} {uess/(u['diagnostics']['wall_ms']/1000):8.0f}  divergences {sum(u['diagnostics']['divergences'])}, converged {u['diagnostics']['converged']}")
for r in (k, n):
    if r.get("failed"):
        print(f"{r['model']:34} failed"); continue
    print(f"{r['model'][:34]:34} {r['effect_mean']:9.4f} {r['effect_sd']:8.4f} {r['process_seconds']:10.3f} {r['effect_ess']/r['sampling_seconds']:8.0f}  divergences {r['divergences']}, R-hat {r['effect_rhat']:.3f}")
se = k["effect_sd"] / k["effect_ess"] ** 0.5
print(f"\ngrid vs NumPyro-Kalman: mean differs by {abs(ge['mean']-k['effect_mean'])/se:.2f} Monte Carlo se "
      f"(se {se:.4f}); sd ratio {ge['sd']/k['effect_sd']:.4f} (sd's own MC error ~{1/(2*k['effect_ess'])**0.5:.3f})")
print(f"speed-up, whole process: {k['process_seconds']/(t1-t0):.0f}x against NumPyro-Kalman")
PY

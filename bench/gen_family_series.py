#!/usr/bin/env python3
"""A synthetic two-arm series of a non-gaussian family, from nof1d's model.

Usage: gen_family_series.py FAMILY SEED [--days 168] [--trials 7] > data.csv
FAMILY: poisson, bernoulli, binomial, beta, student_t.

Prints nof1d analyze's CSV (`day,arm,y`; an empty y is a missing day):
14-day periods of `control` and `treatment`, each 28-day block's order by a
fair coin, 8% of the days (rounded) missing at random. The model is the one
`numpyro_compare.py --family FAMILY` fits (statistics.md sections 2-3), on
analyze's time axis: day d is observed at t = d + 0.5 and its arm is in force
from the start of day d.

    eta(t) = mu + beta * w(t) + x(t)

w: the treatment indicator through the onset/washout filter (half-life 3
days, w = 0 at t = 0); x: an OU drift (stationary sd 0.4, correlation time
5 days, x at the first day drawn from the stationary law). Observations:
poisson Poisson(exp eta); bernoulli Bernoulli(sigmoid eta); binomial
Binomial(n, sigmoid eta); beta Beta(m phi, (1 - m) phi), m = sigmoid eta;
student_t (a gaussian outcome with outlying days) eta + 0.5 e, e ~ Student-t
with 3 degrees of freedom (heavier-tailed than the 4 nof1d's model assumes).
The same seed gives the same file (numpy default_rng(seed)).
"""
import argparse
import math
import sys

import numpy as np

PERIOD = 14
DRIFT_SD = 0.4
DRIFT_TIME = 5.0
HALF_LIFE = 3.0
MISSING = 0.08


def logit(p):
    return math.log(p / (1 - p))


# family: (mu, beta, extra)
PARAMS = {
    "poisson": (math.log(1.5), -0.5),
    "bernoulli": (logit(0.3), -0.8),
    "binomial": (logit(0.4), 0.6),
    "beta": (logit(0.85), 0.3),
    "student_t": (5.0, 0.5),
}
T_SCALE = 0.5
T_DF = 3
BETA_PHI = 30.0


def onset(t, a, kappa):
    """numpy twin of numpyro_compare.onset: w at each row, w = 0 at t = 0."""
    w, out = 0.0, np.empty(len(t))
    prev_t, prev_a = 0.0, a[0]
    for i in range(len(t)):
        day_start = math.floor(t[i])
        l1 = max(day_start - prev_t, 0.0)
        l2 = t[i] - max(day_start, prev_t)
        p1 = math.exp(-kappa * l1)
        w = p1 * w + (1 - p1) * prev_a
        p2 = math.exp(-kappa * l2)
        w = p2 * w + (1 - p2) * a[i]
        out[i] = w
        prev_t, prev_a = t[i], a[i]
    return out


def simulate(family, seed, days, trials):
    rng = np.random.default_rng(seed)
    mu, beta = PARAMS[family]
    n_blocks = math.ceil(days / (2 * PERIOD))
    orders = rng.integers(0, 2, size=n_blocks)  # 1: treatment first
    d = np.arange(days)
    period = d // PERIOD
    block = period // 2
    second = period % 2
    a = np.where(orders[block] == 1, 1 - second, second).astype(float)
    n_missing = int(round(MISSING * days))
    missing = np.zeros(days, dtype=bool)
    missing[rng.choice(days, size=n_missing, replace=False)] = True
    t = d + 0.5
    w = onset(t, a, math.log(2) / HALF_LIFE)
    rho = math.exp(-1.0 / DRIFT_TIME)
    z = rng.standard_normal(days)
    x = np.empty(days)
    x[0] = DRIFT_SD * z[0]
    for i in range(1, days):
        x[i] = rho * x[i - 1] + DRIFT_SD * math.sqrt(1 - rho * rho) * z[i]
    eta = mu + beta * w + x
    p = 1 / (1 + np.exp(-eta))
    if family == "poisson":
        y = rng.poisson(np.exp(eta)).astype(str)
    elif family == "bernoulli":
        y = (rng.random(days) < p).astype(int).astype(str)
    elif family == "binomial":
        y = rng.binomial(trials, p).astype(str)
    elif family == "student_t":
        y = np.array([repr(float(u)) for u in eta + T_SCALE * rng.standard_t(T_DF, days)])
    else:
        v = rng.beta(p * BETA_PHI, (1 - p) * BETA_PHI)
        v = np.clip(v, 1e-9, 1 - 1e-9)  # exact 0/1 are outside the family's support
        y = np.array([repr(float(u)) for u in v])
    return d, a, np.where(missing, "", y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("family", choices=sorted(PARAMS))
    ap.add_argument("seed", type=int)
    ap.add_argument("--days", type=int, default=168)
    ap.add_argument("--trials", type=int, default=7)
    args = ap.parse_args()
    d, a, y = simulate(args.family, args.seed, args.days, args.trials)
    out = sys.stdout
    out.write("day,arm,y\n")
    for di, ai, yi in zip(d, a, y):
        out.write(f"{di},{'treatment' if ai == 1 else 'control'},{yi}\n")


if __name__ == "__main__":
    main()

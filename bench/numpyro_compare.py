#!/usr/bin/env python3
"""Fit the same CSV with the same model and priors in NumPyro.

Usage: numpyro_compare.py DATA.csv [--naive] [--chains 4] [--warmup 1000] [--samples 1000]

The model is nof1d's (statistics.md section 2) on nof1d analyze's time axis:
a row with day d is observed at t = d - d0 + 0.5; the arm on a row is in force
from the start of its day until a row with another arm. Priors are the
section 4 defaults with S = sd(y): mu ~ N(mean y, 2S), beta ~ N(0, S),
drift sd ~ HalfNormal(S), 1/lambda ~ LogNormal(ln 3, 1),
half-life ~ LogNormal(ln 1, 0.75), sigma_y ~ HalfNormal(S).

Default ("best way"): the OU drift is marginalised by a Kalman filter inside
NUTS (lax.scan), so NUTS explores 6 parameters. --naive samples the latent
path (T extra parameters, non-centred), as most users would write it.
Prints one JSON line: effect mean/sd, ESS, divergences, sampling seconds.
"""
import argparse
import csv
import json
import time

T0 = time.time()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
from numpyro.infer import MCMC, NUTS  # noqa: E402

jax.config.update("jax_enable_x64", True)


def load(path):
    days, arms, ys = [], [], []
    with open(path) as f:
        for row in csv.DictReader(f):
            days.append(float(row["day"]))
            arms.append(row["arm"])
            ys.append(float(row["y"]))
    d0 = min(days)
    t = np.array(days) - d0 + 0.5
    a = np.array([1.0 if x == "treatment" else 0.0 for x in arms])
    return t, a, np.array(ys)


def onset(t, a, kappa):
    """w(t_i): the treatment indicator through the onset/washout filter."""
    prev_t = jnp.concatenate([jnp.zeros(1), t[:-1]])
    prev_a = jnp.concatenate([a[:1], a[:-1]])
    day_start = jnp.floor(t)
    len1 = jnp.maximum(day_start - prev_t, 0.0)  # previous arm until today's start
    len2 = t - jnp.maximum(day_start, prev_t)  # today's arm until the observation

    def step(w, xs):
        l1, l2, pa, ca = xs
        p1 = jnp.exp(-kappa * l1)
        w = p1 * w + (1 - p1) * pa
        p2 = jnp.exp(-kappa * l2)
        w = p2 * w + (1 - p2) * ca
        return w, w

    _, ws = jax.lax.scan(step, 0.0, (len1, len2, prev_a, a))
    return ws


def kalman_loglik(r, t, lam, sd_x, sigma_y):
    """log p(r) for r = x + eps, x an OU process with stationary sd sd_x."""
    gaps = jnp.diff(jnp.concatenate([jnp.zeros(1), t]))

    def step(carry, xs):
        a, p, ll = carry
        g, y = xs
        rho = jnp.exp(-lam * g)
        a = rho * a
        p = rho * rho * p + sd_x**2 * (1 - rho * rho)
        f = p + sigma_y**2
        v = y - a
        ll = ll - 0.5 * (jnp.log(2 * jnp.pi * f) + v * v / f)
        k = p / f
        return (a + k * v, p * (1 - k), ll), None

    (_, _, ll), _ = jax.lax.scan(step, (0.0, sd_x**2, 0.0), (gaps, r))
    return ll


def model(t, a, y, S, naive):
    mu = numpyro.sample("mu", dist.Normal(jnp.mean(y), 2 * S))
    beta = numpyro.sample("beta", dist.Normal(0.0, S))
    sd_x = numpyro.sample("drift_sd", dist.HalfNormal(S))
    tau = numpyro.sample("drift_time", dist.LogNormal(jnp.log(3.0), 1.0))
    half = numpyro.sample("half_life", dist.LogNormal(0.0, 0.75))
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(S))
    lam = 1.0 / tau
    kappa = jnp.log(2.0) / half
    w = onset(t, a, kappa)
    if not naive:
        numpyro.factor("y", kalman_loglik(y - mu - beta * w, t, lam, sd_x, sigma_y))
        return
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([len(y)]))
    gaps = jnp.diff(jnp.concatenate([jnp.zeros(1), t]))

    def step(x, xs):
        g, zi = xs
        rho = jnp.exp(-lam * g)
        x = rho * x + sd_x * jnp.sqrt(1 - rho * rho) * zi
        return x, x

    x0 = sd_x * z[0]
    _, rest = jax.lax.scan(step, x0, (gaps[1:], z[1:]))
    xs = jnp.concatenate([x0[None], rest])
    numpyro.sample("y", dist.Normal(mu + beta * w + xs, sigma_y), obs=y)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--naive", action="store_true")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    t, a, y = load(args.data)
    S = float(np.std(y, ddof=1))
    numpyro.set_host_device_count(2)
    kernel = NUTS(model)
    mcmc = MCMC(kernel, num_warmup=args.warmup, num_samples=args.samples, num_chains=args.chains,
                chain_method="sequential", progress_bar=False)
    start = time.time()
    mcmc.run(jax.random.PRNGKey(0), jnp.array(t), jnp.array(a), jnp.array(y), S, args.naive,
             extra_fields=("diverging",))
    sampling = time.time() - start
    beta = np.asarray(mcmc.get_samples(group_by_chain=True)["beta"])
    ess = float(numpyro.diagnostics.effective_sample_size(beta))
    rhat = float(numpyro.diagnostics.split_gelman_rubin(beta))
    div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    print(json.dumps({
        "model": "naive (latent path sampled)" if args.naive else "kalman (latent path marginalised)",
        "observations": len(y),
        "effect_mean": float(beta.mean()),
        "effect_sd": float(beta.std()),
        "effect_ess": ess,
        "effect_rhat": rhat,
        "divergences": div,
        "sampling_seconds": sampling,
        "process_seconds": time.time() - T0,
    }))


if __name__ == "__main__":
    main()

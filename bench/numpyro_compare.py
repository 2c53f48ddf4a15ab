#!/usr/bin/env python3
"""Fit the same CSV with the same model and priors in NumPyro.

Usage: numpyro_compare.py DATA.csv [--naive] [--family F] [--trials N]
       [--chains 4] [--warmup 1000] [--samples 1000] [--target-accept A] [--seed S]

The model is nof1d's (statistics.md section 2) on nof1d analyze's time axis:
a row with day d is observed at t = d - d0 + 0.5; the arm on a row is in force
from the start of its day until a row with another arm. Priors are the
section 4 defaults with S = sd(y): mu ~ N(mean y, 2S), beta ~ N(0, S),
drift sd ~ HalfNormal(S), 1/lambda ~ LogNormal(ln 3, 1),
half-life ~ LogNormal(ln 1, 0.75), sigma_y ~ HalfNormal(S).

Default ("best way"): the OU drift is marginalised by a Kalman filter inside
NUTS (lax.scan), so NUTS explores 6 parameters. --naive samples the latent
path (T extra parameters, non-centred), as most users would write it.

--family poisson|bernoulli|binomial|beta (--trials N for binomial): the
same drift and onset on the link scale, eta = mu + beta w + x (log link for
poisson, logit for the others; beta: y ~ Beta(m phi, (1 - m) phi), m =
sigmoid eta). No Kalman filter exists for these, so the latent path is
always sampled (non-centred, as --naive). Priors as section 4 with S = 1:
mu ~ N(c, 2), c = log(mean y + 0.5) for poisson, logit(clip(mean y, 0.01,
0.99)) for bernoulli and beta, logit(clip(mean y / n, 0.01, 0.99)) for
binomial; beta ~ N(0, 1); drift sd ~ HalfNormal(1); precision phi ~
LogNormal(ln 20, 1); drift time and half-life as above. NUTS runs at
target_accept 0.95 for these (0.9 left a few divergences on beta and
binomial series); the JSON adds the worst R-hat and ESS over all parameters.

--family gaussian --noise student_t: Student-t errors with 4 degrees of
freedom and scale sigma_y ~ HalfNormal(S) (nof1d's `noise = "student_t"`),
the other priors as the gaussian's with S = robust_scale(y) (nof1d's: 1.4826
MAD with 15 values or more and a MAD above 0, else sd(y)); no Kalman filter exists
for these either, so the latent path is sampled (non-centred) and NUTS runs
at target_accept 0.95.

Rows with an empty outcome are missing days: their arm still counts for the
arm path (as in nof1d analyze), their outcome does not.
Prints one JSON line: effect mean/sd, ESS, R-hat, divergences, seconds.
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


FAMILIES = ("gaussian", "poisson", "bernoulli", "binomial", "beta")


def robust_scale(y):
    """nof1d's S for Student-t noise (engine::fit::SampleScale): 1.4826 times
    the median absolute deviation from the median, with 15 values or more and
    a MAD above 0; else the sample sd."""
    y = np.asarray(y, dtype=float)
    mad = float(np.median(np.abs(y - np.median(y))))
    if len(y) >= 15 and mad > 0:
        return 1.482602218505602 * mad
    return float(np.std(y, ddof=1))


def load(path):
    """All rows' times and arms (the arm path), and the observed rows' index and y."""
    days, arms, ys = [], [], []
    with open(path) as f:
        for row in csv.DictReader(f):
            days.append(float(row["day"]))
            arms.append(row["arm"])
            ys.append(row["y"].strip())
    order = np.argsort(days, kind="stable")
    days = np.array(days)[order]
    d0 = np.floor(days.min())
    t = days - d0 + 0.5
    a = np.array([1.0 if arms[i] == "treatment" else 0.0 for i in order])
    obs = np.array([i for i, j in enumerate(order) if ys[j] != ""], dtype=int)
    y = np.array([float(ys[j]) for j in order if ys[j] != ""])
    return t, a, obs, y


def logit(p):
    return float(np.log(p / (1 - p)))


def link_of_mean(family, y, trials):
    """Where the baseline prior is centred (section 4; nof1d's link_of_mean)."""
    m = float(np.mean(y))
    if family == "poisson":
        return float(np.log(m + 0.5))
    if family == "binomial":
        return logit(min(max(m / trials, 0.01), 0.99))
    return logit(min(max(m, 0.01), 0.99))


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


def ou_path(t, lam, sd_x, z):
    """x at times t, an OU process with stationary sd sd_x, x(t_0) stationary (non-centred)."""
    gaps = jnp.diff(t)

    def step(x, xs):
        g, zi = xs
        rho = jnp.exp(-lam * g)
        x = rho * x + sd_x * jnp.sqrt(1 - rho * rho) * zi
        return x, x

    x0 = sd_x * z[0]
    _, rest = jax.lax.scan(step, x0, (gaps, z[1:]))
    return jnp.concatenate([x0[None], rest])


def family_model(t_all, a_all, obs, y, family, trials, centre):
    """The non-gaussian families: latent path sampled, link scale, S = 1."""
    mu = numpyro.sample("mu", dist.Normal(centre, 2.0))
    beta = numpyro.sample("beta", dist.Normal(0.0, 1.0))
    sd_x = numpyro.sample("drift_sd", dist.HalfNormal(1.0))
    tau = numpyro.sample("drift_time", dist.LogNormal(jnp.log(3.0), 1.0))
    half = numpyro.sample("half_life", dist.LogNormal(0.0, 0.75))
    if family == "beta":
        phi = numpyro.sample("precision", dist.LogNormal(jnp.log(20.0), 1.0))
    w = onset(t_all, a_all, jnp.log(2.0) / half)[obs]
    t = t_all[obs]
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([len(obs)]))
    eta = mu + beta * w + ou_path(t, 1.0 / tau, sd_x, z)
    if family == "poisson":
        numpyro.sample("y", dist.Poisson(jnp.exp(eta)), obs=y)
    elif family == "bernoulli":
        numpyro.sample("y", dist.BernoulliLogits(eta), obs=y)
    elif family == "binomial":
        numpyro.sample("y", dist.BinomialLogits(eta, total_count=trials), obs=y)
    else:
        m = jax.nn.sigmoid(eta)
        numpyro.sample("y", dist.Beta(m * phi, (1 - m) * phi), obs=y)


def gaussian_priors(y, S):
    """The gaussian family's section 4 priors at scale S, but the noise's."""
    mu = numpyro.sample("mu", dist.Normal(jnp.mean(y), 2 * S))
    beta = numpyro.sample("beta", dist.Normal(0.0, S))
    sd_x = numpyro.sample("drift_sd", dist.HalfNormal(S))
    tau = numpyro.sample("drift_time", dist.LogNormal(jnp.log(3.0), 1.0))
    half = numpyro.sample("half_life", dist.LogNormal(0.0, 0.75))
    return mu, beta, sd_x, tau, half


def student_t_model(t_all, a_all, obs, y, S):
    """Gaussian family with Student-t(4) errors: latent path sampled, S = robust_scale(y)."""
    mu, beta, sd_x, tau, half = gaussian_priors(y, S)
    scale = numpyro.sample("noise_scale", dist.HalfNormal(S))
    w = onset(t_all, a_all, jnp.log(2.0) / half)[obs]
    t = t_all[obs]
    z = numpyro.sample("z", dist.Normal(0.0, 1.0).expand([len(obs)]))
    eta = mu + beta * w + ou_path(t, 1.0 / tau, sd_x, z)
    numpyro.sample("y", dist.StudentT(4.0, eta, scale), obs=y)


def model(t_all, a_all, obs, y, S, naive):
    mu, beta, sd_x, tau, half = gaussian_priors(y, S)
    sigma_y = numpyro.sample("sigma_y", dist.HalfNormal(S))
    lam = 1.0 / tau
    kappa = jnp.log(2.0) / half
    w = onset(t_all, a_all, kappa)[obs]
    t = t_all[obs]
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


def ess(x):
    """NumPyro's ESS (Geyer), with Stan's and ArviZ's cap: tau >= 1 / log10(draws).
    Without it a strongly antithetic chain gives tau < 0, a negative ESS."""
    n = x.shape[0] * x.shape[1]
    e = float(numpyro.diagnostics.effective_sample_size(x))
    cap = n * np.log10(n)
    return e if 0 < e < cap else cap


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("--naive", action="store_true")
    ap.add_argument("--family", choices=FAMILIES, default="gaussian")
    ap.add_argument("--trials", type=int, default=None, help="trials per observation (binomial)")
    ap.add_argument("--noise", choices=("normal", "student_t"), default="normal",
                    help="gaussian family: the measurement error")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--target-accept", type=float, default=None,
                    help="NUTS target acceptance (default 0.8 gaussian, 0.95 other families)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.family == "binomial" and not args.trials:
        ap.error("--family binomial needs --trials N")
    t, a, obs, y = load(args.data)
    numpyro.set_host_device_count(2)
    data = (jnp.array(t), jnp.array(a), jnp.array(obs), jnp.array(y))
    extra = {}
    if args.family == "gaussian" and args.noise == "student_t":
        S = robust_scale(y)
        fn, fargs = student_t_model, (*data, S)
        name = "gaussian, Student-t(4) errors (latent path sampled)"
        accept = args.target_accept or 0.95
        extra = {"family": "gaussian", "noise": "student_t", "scale": S,
                 "mu_prior_centre": float(np.mean(y))}
    elif args.family == "gaussian":
        S = float(np.std(y, ddof=1))
        fn, fargs = model, (*data, S, args.naive)
        name = "naive (latent path sampled)" if args.naive else "kalman (latent path marginalised)"
        accept = args.target_accept or 0.8
    else:
        centre = link_of_mean(args.family, y, args.trials)
        fn, fargs = family_model, (*data, args.family, args.trials, centre)
        name = f"{args.family} (latent path sampled)"
        accept = args.target_accept or 0.95
        extra = {"family": args.family, "trials": args.trials, "mu_prior_centre": centre}
    kernel = NUTS(fn, target_accept_prob=accept)
    mcmc = MCMC(kernel, num_warmup=args.warmup, num_samples=args.samples, num_chains=args.chains,
                chain_method="sequential", progress_bar=False)
    start = time.time()
    mcmc.run(jax.random.PRNGKey(args.seed), *fargs, extra_fields=("diverging",))
    sampling = time.time() - start
    samples = mcmc.get_samples(group_by_chain=True)
    beta = np.asarray(samples["beta"])
    effect_ess = ess(beta)
    rhat = float(numpyro.diagnostics.split_gelman_rubin(beta))
    div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    # every parameter, latent path included: the worst R-hat and bulk ESS
    rhats, esss = [], []
    for key, v in samples.items():
        v = np.asarray(v).reshape(v.shape[0], v.shape[1], -1)
        for j in range(v.shape[2]):
            label = key if v.shape[2] == 1 else f"{key}[{j}]"
            rhats.append((float(numpyro.diagnostics.split_gelman_rubin(v[:, :, j])), label))
            esss.append((ess(v[:, :, j]), label))
    print(json.dumps({
        "model": name,
        **extra,
        "observations": len(y),
        "effect_mean": float(beta.mean()),
        "effect_sd": float(beta.std()),
        "effect_ess": effect_ess,
        "effect_mc_se": float(beta.std()) / effect_ess ** 0.5,
        "effect_rhat": rhat,
        "max_rhat": max(rhats)[0],
        "max_rhat_of": max(rhats)[1],
        "min_ess": min(esss)[0],
        "min_ess_of": min(esss)[1],
        "divergences": div,
        "draws": int(beta.size),
        "target_accept": accept,
        "sampling_seconds": sampling,
        "process_seconds": time.time() - T0,
    }))


if __name__ == "__main__":
    main()

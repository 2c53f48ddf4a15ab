// The augmented filter in parallel over time (statistics.md §4) for long
// series: the same sums as filter.cu's pass, for a batch of points, in
// O(log n) dependent launches instead of n dependent steps.
//
// For fixed hyperparameters the filter's variance follows the Riccati map
// P_i = vy (rho_i^2 P_{i-1} + Q_i) / (rho_i^2 P_{i-1} + Q_i + vy), a Möbius
// map whose 2x2 matrices compose by product; given the gains, each column's
// filtered mean follows the affine map a_i = (1 - K_i) rho_i a_{i-1} + K_i x_i,
// and the onset/washout regressors the affine map w_i = Psi_i w_{i-1} + c_i.
// Prefix compositions of those maps (chunked scans, three launches each)
// give every step's state; the likelihood's terms are then independent,
// and chunked sums reduce them (Särkkä & García-Fernández 2021, "Temporal
// parallelization of Bayesian smoothers", for the scan).
//
// Layout: point b's element i of a buffer of width W is at (b n + i) W.
// Every kernel runs one thread an element, with no shared memory and no
// barriers, so the host build runs it one element at a time (common.h).
#include "common.h"

#define SCAN_MAX_ARMS 6

NOF1D_DEVICE void hyper_of(const double* theta, double* lambda, double* var_x, double* kappa, double* var_y) {
    *lambda = exp(-theta[0]);
    const double sd = exp(theta[1]);
    *var_x = sd * sd;
    *kappa = 0.6931471805599453 / exp(theta[2]);
    const double s = exp(theta[3]);
    *var_y = s * s;
}

// Each step's Möbius matrix [m0 m1; m2 m3] and the regressors' affine map
// [Psi, c_0 .. c_{p-1}] over the pieces of constant arm inside the gap.
NOF1D_KERNEL void scan_setup(
    long long n, long long batch, const double* thetas, const double* gap,
    const int* step_start, const double* piece_len, const int* piece_arm, int p,
    double* mob, double* wmap) {
    const long long idx = NOF1D_THREAD_INDEX;
    if (idx >= n * batch) return;
    const long long b = idx / n;
    const long long i = idx % n;
    double lambda, var_x, kappa, var_y;
    hyper_of(thetas + 4 * b, &lambda, &var_x, &kappa, &var_y);
    const double rho = exp(-lambda * gap[i]);
    const double q = var_x * (1.0 - rho * rho);
    double* m = mob + 4 * idx;
    m[0] = var_y * rho * rho;
    m[1] = var_y * q;
    m[2] = rho * rho;
    m[3] = q + var_y;
    double* w = wmap + (long long)(1 + p) * idx;
    double psi_all = 1.0;
    for (int j = 0; j < p; j++) w[1 + j] = 0.0;
    for (int k = step_start[i]; k < step_start[i + 1]; k++) {
        const double psi = exp(-kappa * piece_len[k]);
        for (int j = 0; j < p; j++) w[1 + j] *= psi;
        w[1 + piece_arm[k]] += 1.0 - psi;
        psi_all *= psi;
    }
    w[0] = psi_all;
}

// The prefix compositions run in three launches, each thread walking a
// chunk of CHUNK elements in turn (no barriers, so the host runs them too):
// the chunks' own compositions; then, one thread a point, the exclusive
// prefix over the chunks; then each chunk again from its prefix, in place.
// Möbius maps compose as 2x2 matrix products (later x earlier), scaled to
// their largest entry (a Möbius map is unchanged by scaling, and the
// products would overflow); affine maps [A, B_0 .. B_{w-1}] (x -> A x + B,
// one A for every column) as (A2 A1, A2 B1 + B2).

NOF1D_DEVICE void mobius_after(const double* later, double* acc) {
    double r0 = later[0] * acc[0] + later[1] * acc[2];
    double r1 = later[0] * acc[1] + later[1] * acc[3];
    double r2 = later[2] * acc[0] + later[3] * acc[2];
    double r3 = later[2] * acc[1] + later[3] * acc[3];
    double s = fabs(r0);
    if (fabs(r1) > s) s = fabs(r1);
    if (fabs(r2) > s) s = fabs(r2);
    if (fabs(r3) > s) s = fabs(r3);
    if (s > 0.0) {
        r0 /= s;
        r1 /= s;
        r2 /= s;
        r3 /= s;
    }
    acc[0] = r0;
    acc[1] = r1;
    acc[2] = r2;
    acc[3] = r3;
}

NOF1D_DEVICE void affine_after(const double* later, double* acc, int width) {
    for (int k = 1; k <= width; k++) acc[k] = later[0] * acc[k] + later[k];
    acc[0] = later[0] * acc[0];
}

NOF1D_DEVICE void identity(double* acc, int len, int mobius) {
    for (int k = 0; k < len; k++) acc[k] = 0.0;
    acc[0] = 1.0;
    if (mobius) acc[3] = 1.0;
}

// `kind` 0: Möbius (elements of 4); 1: affine of `width` columns
// (elements of 1 + width).
NOF1D_DEVICE void compose_after(int kind, const double* later, double* acc, int width) {
    if (kind == 0) {
        mobius_after(later, acc);
    } else {
        affine_after(later, acc, width);
    }
}

// Launch 1: chunk c of point b composes its elements into totals.
NOF1D_KERNEL void scan_chunks(long long n, long long batch, long long chunk, int kind, int width,
                              const double* elems, double* totals) {
    const long long chunks = (n + chunk - 1) / chunk;
    const long long idx = NOF1D_THREAD_INDEX;
    if (idx >= chunks * batch) return;
    const long long b = idx / chunks;
    const long long c = idx % chunks;
    const int len = kind == 0 ? 4 : 1 + width;
    double* acc = totals + (long long)len * idx;
    identity(acc, len, kind == 0);
    const long long end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
    for (long long i = c * chunk; i < end; i++) compose_after(kind, elems + (long long)len * (b * n + i), acc, width);
}

// Launch 2: one thread a point turns its chunk totals into exclusive
// prefixes (the composition of every chunk before).
NOF1D_KERNEL void scan_chunk_prefix(long long chunks, long long batch, int kind, int width, double* totals) {
    const long long b = NOF1D_THREAD_INDEX;
    if (b >= batch) return;
    const int len = kind == 0 ? 4 : 1 + width;
    double carry[8];
    double next[8];
    identity(carry, len, kind == 0);
    for (long long c = 0; c < chunks; c++) {
        double* t = totals + (long long)len * (b * chunks + c);
        for (int k = 0; k < len; k++) next[k] = carry[k];
        compose_after(kind, t, next, width);
        for (int k = 0; k < len; k++) {
            t[k] = carry[k];
            carry[k] = next[k];
        }
    }
}

// Launch 3: chunk c of point b walks its elements again from its prefix,
// leaving each element's inclusive prefix in place.
NOF1D_KERNEL void scan_apply(long long n, long long batch, long long chunk, int kind, int width,
                             const double* prefixes, double* elems) {
    const long long chunks = (n + chunk - 1) / chunk;
    const long long idx = NOF1D_THREAD_INDEX;
    if (idx >= chunks * batch) return;
    const long long b = idx / chunks;
    const long long c = idx % chunks;
    const int len = kind == 0 ? 4 : 1 + width;
    double acc[8];
    for (int k = 0; k < len; k++) acc[k] = prefixes[(long long)len * idx + k];
    const long long end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
    for (long long i = c * chunk; i < end; i++) {
        double* e = elems + (long long)len * (b * n + i);
        compose_after(kind, e, acc, width);
        for (int k = 0; k < len; k++) e[k] = acc[k];
    }
}

// From the variance's prefix maps: each step's innovation variance F_i and
// rho_i, and the filtered means' affine maps over the columns
// (y, 1, w of each effect arm): A = (1 - K) rho, B_c = K x_c.
NOF1D_KERNEL void scan_gains(
    long long n, long long batch, const double* thetas, const double* gap, const double* y,
    int p, const int* effect_arm, const double* mob_prefix, const double* w_prefix,
    double* fr, double* means) {
    const long long idx = NOF1D_THREAD_INDEX;
    if (idx >= n * batch) return;
    const long long i = idx % n;
    double lambda, var_x, kappa, var_y;
    hyper_of(thetas + 4 * (idx / n), &lambda, &var_x, &kappa, &var_y);
    double prev = var_x;
    if (i > 0) {
        const double* m = mob_prefix + 4 * (idx - 1);
        prev = (m[0] * var_x + m[1]) / (m[2] * var_x + m[3]);
    }
    const double rho = exp(-lambda * gap[i]);
    const double pm = rho * rho * prev + var_x * (1.0 - rho * rho);
    const double f = pm + var_y;
    const double k = pm / f;
    fr[2 * idx] = f;
    fr[2 * idx + 1] = rho;
    double* o = means + (long long)(2 + p) * idx;
    const double* w = w_prefix + (long long)(1 + p) * idx + 1;
    o[0] = (1.0 - k) * rho;
    o[1] = k * y[i];
    o[2] = k;
    for (int c = 1; c < p; c++) o[2 + c] = k * w[effect_arm[c - 1]];
}

// Each step's terms of the sums: log F, v^2/F, s_c = V_c v/F and the lower
// triangle of S_cd = V_c V_d / F, with v = y - rho a_y and V_c the
// regressor columns' innovations.
NOF1D_KERNEL void scan_terms(
    long long n, long long batch, const double* y, int p, const int* effect_arm,
    const double* w_prefix, const double* means_prefix, const double* fr, double* terms) {
    const long long idx = NOF1D_THREAD_INDEX;
    if (idx >= n * batch) return;
    const long long i = idx % n;
    const double f = fr[2 * idx];
    const double rho = fr[2 * idx + 1];
    const double* a = i > 0 ? means_prefix + (long long)(2 + p) * (idx - 1) + 1 : 0;
    const double* w = w_prefix + (long long)(1 + p) * idx + 1;
    const double v = y[i] - (a ? rho * a[0] : 0.0);
    double vx[SCAN_MAX_ARMS];
    vx[0] = 1.0 - (a ? rho * a[1] : 0.0);
    for (int c = 1; c < p; c++) vx[c] = w[effect_arm[c - 1]] - (a ? rho * a[1 + c] : 0.0);
    const long long width = 2 + p + p * (p + 1) / 2;
    double* t = terms + width * idx;
    const double inv_f = 1.0 / f;
    t[0] = log(f);
    t[1] = v * v * inv_f;
    int k = 2;
    for (int c = 0; c < p; c++) t[k++] = vx[c] * inv_f * v;
    for (int c = 0; c < p; c++)
        for (int d = 0; d <= c; d++) t[k++] = vx[c] * inv_f * vx[d];
}

// The terms' sums in two launches: each chunk's sum, then one thread a
// point adds its chunks' sums (in order).
NOF1D_KERNEL void sum_chunks(long long n, long long batch, long long chunk, int width,
                             const double* terms, double* partial) {
    const long long chunks = (n + chunk - 1) / chunk;
    const long long idx = NOF1D_THREAD_INDEX;
    if (idx >= chunks * batch) return;
    const long long b = idx / chunks;
    const long long c = idx % chunks;
    double* o = partial + (long long)width * idx;
    for (int k = 0; k < width; k++) o[k] = 0.0;
    const long long end = (c + 1) * chunk < n ? (c + 1) * chunk : n;
    for (long long i = c * chunk; i < end; i++) {
        const double* t = terms + (long long)width * (b * n + i);
        for (int k = 0; k < width; k++) o[k] += t[k];
    }
}

NOF1D_KERNEL void sum_points(long long chunks, long long batch, int width, const double* partial, double* totals) {
    const long long b = NOF1D_THREAD_INDEX;
    if (b >= batch) return;
    double* o = totals + (long long)width * b;
    for (int k = 0; k < width; k++) o[k] = 0.0;
    for (long long c = 0; c < chunks; c++) {
        const double* t = partial + (long long)width * (b * chunks + c);
        for (int k = 0; k < width; k++) o[k] += t[k];
    }
}

#ifndef __CUDACC_RTC__
NOF1D_HOST_LAUNCH(scan_setup,
                  (long long n, long long batch, const double* thetas, const double* gap,
                   const int* step_start, const double* piece_len, const int* piece_arm, int p,
                   double* mob, double* wmap),
                  (n, batch, thetas, gap, step_start, piece_len, piece_arm, p, mob, wmap))
NOF1D_HOST_LAUNCH(scan_chunks,
                  (long long n, long long batch, long long chunk, int kind, int width, const double* elems,
                   double* totals),
                  (n, batch, chunk, kind, width, elems, totals))
NOF1D_HOST_LAUNCH(scan_chunk_prefix, (long long chunks, long long batch, int kind, int width, double* totals),
                  (chunks, batch, kind, width, totals))
NOF1D_HOST_LAUNCH(scan_apply,
                  (long long n, long long batch, long long chunk, int kind, int width, const double* prefixes,
                   double* elems),
                  (n, batch, chunk, kind, width, prefixes, elems))
NOF1D_HOST_LAUNCH(scan_gains,
                  (long long n, long long batch, const double* thetas, const double* gap, const double* y,
                   int p, const int* effect_arm, const double* mob_prefix, const double* w_prefix,
                   double* fr, double* means),
                  (n, batch, thetas, gap, y, p, effect_arm, mob_prefix, w_prefix, fr, means))
NOF1D_HOST_LAUNCH(scan_terms,
                  (long long n, long long batch, const double* y, int p, const int* effect_arm,
                   const double* w_prefix, const double* means_prefix, const double* fr, double* terms),
                  (n, batch, y, p, effect_arm, w_prefix, means_prefix, fr, terms))
NOF1D_HOST_LAUNCH(sum_chunks,
                  (long long n, long long batch, long long chunk, int width, const double* terms, double* partial),
                  (n, batch, chunk, width, terms, partial))
NOF1D_HOST_LAUNCH(sum_points, (long long chunks, long long batch, int width, const double* partial, double* totals),
                  (chunks, batch, width, partial, totals))
#endif

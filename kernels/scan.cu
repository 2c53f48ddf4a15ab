// The augmented filter in parallel over time (statistics.md §4) for long
// series: the same sums as filter.cu's pass, for a batch of points, in
// O(log n) dependent launches instead of n dependent steps.
//
// For fixed hyperparameters the filter's variance follows the Riccati map
// P_i = vy (rho_i^2 P_{i-1} + Q_i) / (rho_i^2 P_{i-1} + Q_i + vy), a Möbius
// map whose 2x2 matrices compose by product; given the gains, each column's
// filtered mean follows the affine map a_i = (1 - K_i) rho_i a_{i-1} + K_i x_i,
// and the onset/washout regressors the affine map w_i = Psi_i w_{i-1} + c_i.
// Prefix compositions of those maps (Hillis–Steele scans, one launch a
// doubling) give every step's state; the likelihood's terms are then
// independent, and pairwise sums reduce them (Särkkä & García-Fernández
// 2021, "Temporal parallelization of Bayesian smoothers", for the scan).
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

// One Hillis–Steele step of the Möbius prefix product: element i becomes
// (its matrix) x (the matrix d earlier), scaled to its largest entry (a
// Möbius map is unchanged by scaling, and the products would overflow).
NOF1D_KERNEL void scan_mobius(long long n, long long batch, long long d, const double* in, double* out) {
    const long long idx = NOF1D_THREAD_INDEX;
    if (idx >= n * batch) return;
    const long long i = idx % n;
    const double* x = in + 4 * idx;
    double* o = out + 4 * idx;
    if (i < d) {
        for (int k = 0; k < 4; k++) o[k] = x[k];
        return;
    }
    const double* e = in + 4 * (idx - d);
    double r0 = x[0] * e[0] + x[1] * e[2];
    double r1 = x[0] * e[1] + x[1] * e[3];
    double r2 = x[2] * e[0] + x[3] * e[2];
    double r3 = x[2] * e[1] + x[3] * e[3];
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
    o[0] = r0;
    o[1] = r1;
    o[2] = r2;
    o[3] = r3;
}

// One Hillis–Steele step of an affine prefix composition: elements are
// [A, B_0 .. B_{width-1}] (x -> A x + B, one A for every column); element i
// becomes (its map) after (the map d earlier).
NOF1D_KERNEL void scan_affine(long long n, long long batch, int width, long long d, const double* in, double* out) {
    const long long idx = NOF1D_THREAD_INDEX;
    if (idx >= n * batch) return;
    const long long i = idx % n;
    const long long stride = 1 + width;
    const double* x = in + stride * idx;
    double* o = out + stride * idx;
    if (i < d) {
        for (int k = 0; k <= width; k++) o[k] = x[k];
        return;
    }
    const double* e = in + stride * (idx - d);
    o[0] = x[0] * e[0];
    for (int k = 1; k <= width; k++) o[k] = x[0] * e[k] + x[k];
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

// One pairwise-sum step: element j of each point's m elements becomes the
// sum of elements 2j and 2j + 1 (the last alone when m is odd).
NOF1D_KERNEL void reduce_pairs(long long m, long long batch, int width, const double* in, double* out) {
    const long long half = (m + 1) / 2;
    const long long idx = NOF1D_THREAD_INDEX;
    if (idx >= half * batch) return;
    const long long b = idx / half;
    const long long j = idx % half;
    const double* x = in + (b * m + 2 * j) * width;
    double* o = out + (b * half + j) * width;
    if (2 * j + 1 < m) {
        for (int k = 0; k < width; k++) o[k] = x[k] + x[width + k];
    } else {
        for (int k = 0; k < width; k++) o[k] = x[k];
    }
}

#ifndef __CUDACC_RTC__
NOF1D_HOST_LAUNCH(scan_setup,
                  (long long n, long long batch, const double* thetas, const double* gap,
                   const int* step_start, const double* piece_len, const int* piece_arm, int p,
                   double* mob, double* wmap),
                  (n, batch, thetas, gap, step_start, piece_len, piece_arm, p, mob, wmap))
NOF1D_HOST_LAUNCH(scan_mobius, (long long n, long long batch, long long d, const double* in, double* out),
                  (n, batch, d, in, out))
NOF1D_HOST_LAUNCH(scan_affine,
                  (long long n, long long batch, int width, long long d, const double* in, double* out),
                  (n, batch, width, d, in, out))
NOF1D_HOST_LAUNCH(scan_gains,
                  (long long n, long long batch, const double* thetas, const double* gap, const double* y,
                   int p, const int* effect_arm, const double* mob_prefix, const double* w_prefix,
                   double* fr, double* means),
                  (n, batch, thetas, gap, y, p, effect_arm, mob_prefix, w_prefix, fr, means))
NOF1D_HOST_LAUNCH(scan_terms,
                  (long long n, long long batch, const double* y, int p, const int* effect_arm,
                   const double* w_prefix, const double* means_prefix, const double* fr, double* terms),
                  (n, batch, y, p, effect_arm, w_prefix, means_prefix, fr, terms))
NOF1D_HOST_LAUNCH(reduce_pairs, (long long m, long long batch, int width, const double* in, double* out),
                  (m, batch, width, in, out))
#endif

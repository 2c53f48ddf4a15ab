// The augmented Kalman filter's exact log posterior and conditional effect
// posterior (statistics.md §4) for a batch of (series, theta) items, one
// thread an item, f64. It is `engine::model::filter_sums` with one lane,
// `finish` and `inference::LogPrior::at`, step for step in the same order:
// compiled without fused multiply-adds (NVRTC `--fmad=false`, host
// `-ffp-contract=off`) it gives the CPU's numbers up to the last bits of
// `exp`/`log`, which the tests measure.
#include "common.h"

// Layout of a series' integer header, `meta[s * META_LEN + ...]`.
#define META_N 0            // observations
#define META_P 1            // static coefficients (mu and one beta per non-comparator arm)
#define META_Y 2            // offset of y in `reals`
#define META_GAPS 3         // offset of the distinct gap lengths in `reals`
#define META_N_GAPS 4
#define META_PIECES 5       // offset of the distinct piece lengths in `reals`
#define META_N_PIECES 6
#define META_GAP_OF 7       // offset of each observation's gap index in `ints`
#define META_STEP_START 8   // offset of the n + 1 step starts in `ints`
#define META_STEPS 9        // offset of the (piece index, arm) pairs in `ints`
#define META_PRIOR 10       // offset of the priors in `reals` (see below)
#define META_EFFECT_ARM 11  // 6 entries: the arm of each beta
#define META_LEN 17

// The priors' block in `reals`: mean[P], sd[P], then the log prior's
// ln_median[2], log_sd[2], scale[2], constant[2].
#define MAX_ARMS 6
#define THETA_LEN 4
// One item's output: ok, log_post, log_lik, b_mean[6], b_cov[6 * 6].
#define OUT_OK 0
#define OUT_LOG_POST 1
#define OUT_LOG_LIK 2
#define OUT_B_MEAN 3
#define OUT_B_COV 9
#define OUT_LEN 45
// Distinct lengths whose exponentials are tabled; beyond that each step
// computes its own (the same value, computed again).
#define EXP_TABLE 16

NOF1D_DEVICE double exp_at(const double* table, int len, double rate, const double* lengths, int k) {
    return k < len ? table[k] : exp(-rate * lengths[k]);
}

NOF1D_DEVICE void filter_one(
    const int* meta, const int* ints, const double* reals,
    int series, const double* theta, double ln_2pi, double* out) {
    const int* m = meta + (long long)series * META_LEN;
    for (int k = 0; k < OUT_LEN; k++) out[k] = 0.0;
    for (int k = 0; k < THETA_LEN; k++) {
        if (!isfinite(theta[k]) || fabs(theta[k]) > 20.0) return;
    }
    const int n = m[META_N];
    const int p = m[META_P];
    const double* y = reals + m[META_Y];
    const double* gaps = reals + m[META_GAPS];
    const double* pieces = reals + m[META_PIECES];
    const int* gap_of = ints + m[META_GAP_OF];
    const int* step_start = ints + m[META_STEP_START];
    const int* steps = ints + m[META_STEPS];
    const double* prior = reals + m[META_PRIOR];
    const int* effect_arm = m + META_EFFECT_ARM;

    // hyper_of
    const double lambda = exp(-theta[0]);
    const double drift_sd = exp(theta[1]);
    const double kappa = 0.6931471805599453 / exp(theta[2]);
    const double sigma_y = exp(theta[3]);

    double rho_table[EXP_TABLE];
    double psi_table[EXP_TABLE];
    const int n_gaps = m[META_N_GAPS] < EXP_TABLE ? m[META_N_GAPS] : EXP_TABLE;
    const int n_pieces = m[META_N_PIECES] < EXP_TABLE ? m[META_N_PIECES] : EXP_TABLE;
    for (int k = 0; k < n_gaps; k++) rho_table[k] = exp(-lambda * gaps[k]);
    for (int k = 0; k < n_pieces; k++) psi_table[k] = exp(-kappa * pieces[k]);

    const double var_x = drift_sd * drift_sd;
    const double var_y = sigma_y * sigma_y;
    double pvar = var_x;
    double a_y = 0.0;
    double a_x[MAX_ARMS] = {0, 0, 0, 0, 0, 0};
    double w[MAX_ARMS] = {0, 0, 0, 0, 0, 0};
    double sum_log_f = 0.0;
    double prod_f = 1.0;
    double q = 0.0;
    double s[MAX_ARMS] = {0, 0, 0, 0, 0, 0};
    double big_s[MAX_ARMS][MAX_ARMS];
    for (int c = 0; c < MAX_ARMS; c++)
        for (int d = 0; d < MAX_ARMS; d++) big_s[c][d] = 0.0;
    double vx[MAX_ARMS];

    for (int i = 0; i < n; i++) {
        const double rho = exp_at(rho_table, n_gaps, lambda, gaps, gap_of[i]);
        for (int k = step_start[i]; k < step_start[i + 1]; k++) {
            const double psi = exp_at(psi_table, n_pieces, kappa, pieces, steps[2 * k]);
            for (int j = 0; j < p; j++) w[j] *= psi;
            w[steps[2 * k + 1]] += 1.0 - psi;
        }
        pvar = rho * rho * pvar + var_x * (1.0 - rho * rho);
        a_y *= rho;
        const double f = pvar + var_y;
        const double v = y[i] - a_y;
        const double inv_f = 1.0 / f;
        const double gain = pvar * inv_f;
        prod_f *= f;
        a_x[0] *= rho;
        vx[0] = 1.0 - a_x[0];
        for (int c = 1; c < p; c++) {
            a_x[c] *= rho;
            vx[c] = w[effect_arm[c - 1]] - a_x[c];
        }
        if (i % 8 == 7) {
            sum_log_f += log(prod_f);
            prod_f = 1.0;
        }
        q += v * v * inv_f;
        for (int c = 0; c < p; c++) {
            const double vc = vx[c] * inv_f;
            s[c] += vc * v;
            for (int d = 0; d <= c; d++) big_s[c][d] += vc * vx[d];
            a_x[c] += gain * vx[c];
        }
        a_y += gain * v;
        pvar *= var_y * inv_f;
    }
    sum_log_f += log(prod_f);

    // finish: A = S + P0^-1, its Cholesky factor, b_hat, A^-1, log p(y).
    const double* mean = prior;
    const double* sd = prior + p;
    double a[MAX_ARMS][MAX_ARMS];
    double rhs[MAX_ARMS];
    double quad_m0 = 0.0;
    double det_p0 = 1.0;
    for (int c = 0; c < p; c++) {
        const double var = sd[c] * sd[c];
        const double prec = 1.0 / var;
        for (int d = 0; d <= c; d++) a[c][d] = big_s[c][d];
        a[c][c] += prec;
        rhs[c] = s[c] + prec * mean[c];
        quad_m0 += prec * mean[c] * mean[c];
        det_p0 *= var;
    }
    double l[MAX_ARMS][MAX_ARMS];
    for (int c = 0; c < MAX_ARMS; c++)
        for (int d = 0; d < MAX_ARMS; d++) l[c][d] = 0.0;
    double det_a = 1.0;
    for (int j = 0; j < p; j++) {
        double acc = 0.0;
        for (int k = 0; k < j; k++) acc += l[j][k] * l[j][k];
        const double d = a[j][j] - acc;
        if (!(d > 0.0)) return;  // degenerate (or NaN)
        det_a *= d;
        const double l_jj = sqrt(d);
        l[j][j] = l_jj;
        for (int i = j + 1; i < p; i++) {
            double acc2 = 0.0;
            for (int k = 0; k < j; k++) acc2 += l[i][k] * l[j][k];
            l[i][j] = (a[i][j] - acc2) / l_jj;
        }
    }
    double z[MAX_ARMS];
    for (int i = 0; i < p; i++) {
        double acc = 0.0;
        for (int k = 0; k < i; k++) acc += l[i][k] * z[k];
        z[i] = (rhs[i] - acc) / l[i][i];
    }
    double b[MAX_ARMS];
    for (int i = p - 1; i >= 0; i--) {
        double acc = 0.0;
        for (int k = i + 1; k < p; k++) acc += l[k][i] * b[k];
        b[i] = (z[i] - acc) / l[i][i];
    }
    double mi[MAX_ARMS][MAX_ARMS];
    for (int j = 0; j < p; j++) {
        mi[j][j] = 1.0 / l[j][j];
        for (int i = j + 1; i < p; i++) {
            double acc = 0.0;
            for (int k = j; k < i; k++) acc += l[i][k] * mi[k][j];
            mi[i][j] = -acc / l[i][i];
        }
    }
    double rhs_b = 0.0;
    for (int c = 0; c < p; c++) rhs_b += rhs[c] * b[c];
    double log_det_a = 0.0;
    if (isfinite(det_a) && det_a > 0.0) {
        log_det_a = log(det_a);
    } else {
        for (int c = 0; c < p; c++) log_det_a += log(l[c][c] * l[c][c]);
    }
    double log_det_p0 = 0.0;
    if (isfinite(det_p0) && det_p0 > 0.0) {
        log_det_p0 = log(det_p0);
    } else {
        for (int c = 0; c < p; c++) log_det_p0 += log(sd[c] * sd[c]);
    }
    const double log_lik = -0.5 * ((double)n * ln_2pi + sum_log_f + q + quad_m0 - rhs_b
                                   + log_det_p0 + log_det_a);

    // LogPrior::at, all four coordinates (the gaussian family).
    const double* lp = prior + 2 * p;
    const double z0 = (theta[0] - lp[0]) / lp[2];
    const double z2 = (theta[2] - lp[1]) / lp[3];
    const double x1 = exp(theta[1]) / lp[4];
    double log_prior = lp[6] - 0.5 * (z0 * z0 + z2 * z2) - 0.5 * x1 * x1 + theta[1];
    const double x3 = exp(theta[3]) / lp[5];
    log_prior += lp[7] - 0.5 * x3 * x3 + theta[3];

    const double log_post = log_lik + log_prior;
    if (!isfinite(log_post)) return;
    out[OUT_OK] = 1.0;
    out[OUT_LOG_POST] = log_post;
    out[OUT_LOG_LIK] = log_lik;
    for (int r = 0; r < p; r++) {
        out[OUT_B_MEAN + r] = b[r];
        for (int c = 0; c < p; c++) {
            double acc = 0.0;
            for (int k = (r > c ? r : c); k < p; k++) acc += mi[k][r] * mi[k][c];
            out[OUT_B_COV + r * MAX_ARMS + c] = acc;
        }
    }
}

// One thread an item: item i is series `item_series[i]` at
// `thetas[4 i .. 4 i + 4]`; its result goes to `out[OUT_LEN i ..]`.
NOF1D_KERNEL void filter_batch(
    const int* meta, const int* ints, const double* reals,
    const int* item_series, const double* thetas, long long items,
    double ln_2pi, double* out) {
    const long long i = NOF1D_THREAD_INDEX;
    if (i >= items) return;
    filter_one(meta, ints, reals, item_series[i], thetas + THETA_LEN * i, ln_2pi,
               out + OUT_LEN * i);
}

#ifndef __CUDACC_RTC__
NOF1D_HOST_LAUNCH(filter_batch,
                  (const int* meta, const int* ints, const double* reals,
                   const int* item_series, const double* thetas, long long items,
                   double ln_2pi, double* out),
                  (meta, ints, reals, item_series, thetas, items, ln_2pi, out))
#endif

//! `ln` and `exp` written without branches or calls, so that a loop over an
//! array of them compiles to vector instructions (the beta family's
//! importance weights take three logarithms and an exponential per
//! observation per draw, `statistics.md` §3). Both use only `+ - * /` and
//! bit operations, with no fused multiply-add, so a vectorised loop gives
//! the same bits as a scalar one: a fit does not depend on the CPU.

// The constants are fdlibm's, digit for digit as published.
#![allow(clippy::excessive_precision)]

/// `2^52 + 1023`: turns a biased exponent field, or'ed into the mantissa
/// of `2^52`, into the unbiased exponent as a float.
const EXPONENT_MAGIC: f64 = 4_503_599_627_371_519.0;
const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;

/// `ln x` for positive normal `x` (not 0, subnormals, infinities or NaN),
/// within about one ulp: fdlibm's `__ieee754_log` without its branches.
/// `x = 2^k m` with `m` in [sqrt(2)/2, sqrt(2)), `f = m - 1`,
/// `s = f / (2 + f)`, and `ln m = f - f^2/2 + s (f^2/2 + R(s^2))` with
/// fdlibm's minimax polynomial `R`.
#[inline(always)]
pub fn ln(x: f64) -> f64 {
    const LG: [f64; 7] = [
        6.666_666_666_666_735_130e-01,
        3.999_999_999_940_941_908e-01,
        2.857_142_874_366_239_149e-01,
        2.222_219_843_214_978_396e-01,
        1.818_357_216_161_805_012e-01,
        1.531_383_769_920_937_332e-01,
        1.479_819_860_511_658_591e-01,
    ];
    // Moving the mantissa's top bits by sqrt(2)'s carries mantissas at or
    // above sqrt(2) into the exponent (musl's reduction, on 64 bits).
    let u = x
        .to_bits()
        .wrapping_add(0x3ff0_0000_0000_0000 - 0x3fe6_a09e_0000_0000);
    let k = f64::from_bits(0x4330_0000_0000_0000 | (u >> 52)) - EXPONENT_MAGIC;
    let m = f64::from_bits((u & 0x000f_ffff_ffff_ffff).wrapping_add(0x3fe6_a09e_0000_0000));
    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG[1] + w * (LG[3] + w * LG[5]));
    let t2 = z * (LG[0] + w * (LG[2] + w * (LG[4] + w * LG[6])));
    let hfsq = 0.5 * f * f;
    k * LN2_HI - ((hfsq - (s * (hfsq + t2 + t1) + k * LN2_LO)) - f)
}

/// `e^x` for `x <= 0`, within about one ulp; `x` below -700 is taken as -700
/// (`e^-700` is 1e-304: zero to every caller). `x = k ln 2 + r` with
/// `|r| <= ln(2)/2` (Cody–Waite), `e^r` by its Taylor series to `r^13`
/// (truncation below 5e-18), times `2^k` set in the exponent bits.
#[inline(always)]
pub fn exp_nonpositive(x: f64) -> f64 {
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
    let x = x.max(-700.0);
    let t = x * std::f64::consts::LOG2_E + ROUND;
    let k = t - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    for c in [
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + c;
    }
    // t's low mantissa bits hold k (two's complement, offset by 1.5 * 2^52):
    // (k + 1023) << 52 is 2^k.
    let biased = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(1023);
    p * f64::from_bits(biased << 52)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn ulps(a: f64, b: f64) -> f64 {
        ((a - b) / b.abs().max(f64::MIN_POSITIVE)).abs() / f64::EPSILON
    }

    #[test]
    fn ln_is_within_an_ulp_or_so_of_the_standard_library() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut worst: f64 = 0.0;
        let mut values = vec![
            1.0,
            2.0,
            0.5,
            std::f64::consts::SQRT_2,
            1e-300,
            1e300,
            8.0,
            1.0 + 1e-12,
        ];
        values.extend((0..200_000).map(|_| 10f64.powf(rng.random_range(-300.0..300.0))));
        values.extend((0..200_000).map(|_| rng.random_range(0.5..2.0)));
        for &x in &values {
            let (fast, exact) = (ln(x), x.ln());
            if exact == 0.0 {
                assert_eq!(fast, 0.0);
                continue;
            }
            worst = worst.max(ulps(fast, exact));
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
    }

    #[test]
    fn exp_is_within_an_ulp_or_so_of_the_standard_library() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let mut worst: f64 = 0.0;
        let mut values = vec![
            0.0,
            -1e-300,
            -1e-10,
            -0.5,
            -std::f64::consts::LN_2,
            -1.0,
            -700.0,
        ];
        values.extend((0..200_000).map(|_| -rng.random_range(0.0..700.0)));
        values.extend((0..200_000).map(|_| -rng.random_range(0.0..1.0)));
        for &x in &values {
            worst = worst.max(ulps(exp_nonpositive(x), x.exp()));
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(-1e6), (-700f64).exp());
    }
}

//! An anytime-valid test of "no effect" by betting on block differences
//! (testing by betting: Shafer 2021; Waudby-Smith & Ramdas 2024), the
//! comparator the simulator reports beside nof1d's own rule (`statistics.md`
//! §5, §6).
//!
//! Each completed block gives one difference `d` = the mean outcome in the
//! arm's period minus the mean in the comparator's period, signed so that
//! positive is better. Under the sharp null (the arm changes nothing) the
//! order of the arms inside a block is a fair coin independent of the data,
//! so `d` is symmetric about zero given everything before it, whatever the
//! noise (autocorrelated, skewed, trending). Any odd bounded `f` then has
//! `E[f(d) | past] = 0`, and the wealth `K_n = prod (1 + lambda_i f(d_i))`
//! with a bet `lambda_i in [0, 1/2]` chosen from the past is a nonnegative
//! martingale: by Ville's inequality `P(sup_n K_n >= 1/alpha) <= alpha`, at
//! every look, with no correction for how often one looks.

/// The largest fraction of wealth staked on one block.
const MAX_BET: f64 = 0.5;

/// One arm's betting test against the comparator.
#[derive(Debug, Clone)]
pub struct BettingTest {
    /// Reject when the wealth reaches `1 / alpha`.
    alpha: f64,
    log_wealth: f64,
    /// Sums of the bets' payoffs `f` and of `f^2`, for the next bet.
    sum_f: f64,
    sum_f2: f64,
    /// Sum and count of `|d|`, for the next difference's scale.
    sum_abs: f64,
    seen: u32,
    rejected: bool,
}

impl BettingTest {
    /// A test at level `alpha` (one-sided: the arm is better).
    pub fn new(alpha: f64) -> BettingTest {
        BettingTest {
            alpha,
            log_wealth: 0.0,
            sum_f: 0.0,
            sum_f2: 0.0,
            sum_abs: 0.0,
            seen: 0,
            rejected: false,
        }
    }

    /// Bets on one block difference `d` (positive = the arm is better) and
    /// says whether the test has rejected "no effect" (now or before).
    ///
    /// The payoff is `f = tanh(d / s)`, `s` the mean `|d|` of the blocks
    /// before; the bet is `lambda = clamp(sum f / (sum f^2 + 1), 0, 1/2)`
    /// over the blocks before (the growth-rate-optimal bet `E f / E f^2`,
    /// shrunk towards 0 while little is known). Both come from the past only.
    pub fn observe(&mut self, d: f64) -> bool {
        if self.rejected || !d.is_finite() {
            return self.rejected;
        }
        if self.seen > 0 && self.sum_abs > 0.0 {
            let scale = self.sum_abs / f64::from(self.seen);
            let f = (d / scale).tanh();
            let bet = (self.sum_f / (self.sum_f2 + 1.0)).clamp(0.0, MAX_BET);
            self.log_wealth += (bet * f).ln_1p();
            self.sum_f += f;
            self.sum_f2 += f * f;
        }
        self.sum_abs += d.abs();
        self.seen += 1;
        self.rejected = self.log_wealth >= -self.alpha.ln();
        self.rejected
    }

    /// The wealth so far (an e-value: `1` at the start).
    pub fn wealth(&self) -> f64 {
        self.log_wealth.exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::generate::normal;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    /// The share of `n` sequences of 30 block differences that reject.
    fn rejections(effect: f64, ar: f64, n: usize, seed: u64) -> f64 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut count = 0;
        for _ in 0..n {
            let mut test = BettingTest::new(0.05);
            let mut noise = normal(&mut rng);
            let mut rejected = false;
            for _ in 0..30 {
                // Two periods of strongly autocorrelated noise; the order
                // inside the block is a fair coin.
                let first = noise;
                noise = ar * noise + (1.0 - ar * ar).sqrt() * normal(&mut rng);
                let second = noise;
                noise = ar * noise + (1.0 - ar * ar).sqrt() * normal(&mut rng);
                let arm_first = rng.random::<bool>();
                let (arm, comparator) = if arm_first {
                    (first + effect, second)
                } else {
                    (second + effect, first)
                };
                rejected = test.observe(arm - comparator);
            }
            count += usize::from(rejected);
        }
        count as f64 / n as f64
    }

    #[test]
    fn the_betting_test_keeps_its_level_at_every_look_and_finds_an_effect() {
        // 4,000 null sequences: at a true rate of 5% the MC se is 0.34
        // points, so 6.4% would be 4 se above a test that merely holds 5%;
        // Ville's bound makes the true rate well below 5%.
        for ar in [0.0, 0.9] {
            let rate = rejections(0.0, ar, 4000, 11);
            assert!(rate <= 0.064, "AR {ar}: false rejections {rate}");
        }
        // An effect of one noise sd (0.71 sd of a block difference) is found
        // in most 30-block sequences: 79% on this seed; 1,000 sequences give
        // a se of 1.3 points, so 70% is 7 se below.
        let power = rejections(1.0, 0.0, 1000, 12);
        assert!(power > 0.7, "power {power}");
        let mut t = BettingTest::new(0.05);
        assert!(!t.observe(f64::NAN));
        assert_eq!(t.wealth(), 1.0);
    }
}

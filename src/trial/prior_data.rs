//! The proposer's prior meets the person's data (`system.md`,
//! "Hypotheses"; the hybrid of Personalization of Large Foundation Models
//! for Health Interventions, AAAI 2026: posterior ∝ likelihood × the
//! population model's prior). A trial whose effect prior came from a
//! proposer is fitted twice at every refit: with that prior (the answer it
//! decides on) and with the sceptical default `Normal(0, S)` (what the data
//! say with no head start). Their comparison gives the data's own estimate
//! and a prior–data conflict measure: the prior predictive tail probability
//! of that estimate (Box 1980),
//!
//! ```text
//! p = 2 Φ(−|m_D − m_0| / sqrt(s_0² + s_D²))
//! ```
//!
//! where `N(m_0, s_0²)` is the proposer's prior and `N(m_D, s_D²)` the
//! data's estimate, the sceptical posterior with its prior divided out
//! (Gaussian approximation of each arm's marginal posterior on the link
//! scale, `statistics.md` §4). A small `p` says the person's data disagree
//! with what the proposer expected.

use serde::{Deserialize, Serialize};

use crate::engine::fit::FitReport;
use crate::trial::protocol::Protocol;

/// Below this `p` the data are said to conflict with the proposer's prior.
pub const CONFLICT_P: f64 = 0.05;

/// The fit key of the sceptical refit of `stream`.
pub fn sceptical_key(stream: &str) -> String {
    format!("{stream}#sceptical")
}

/// Whether `protocol`'s effect prior is a proposer's, so that every fit
/// also has a sceptical twin.
pub fn has_proposer_prior(protocol: &Protocol) -> bool {
    protocol
        .hypothesis
        .as_ref()
        .is_some_and(|h| h.prior_from_proposer)
}

/// One arm: the two posteriors, the data's own estimate, the conflict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArmConflict {
    /// The arm's key.
    pub arm: String,
    /// The proposer's prior `[mean, sd]` as it stated it (link scale).
    pub proposer_prior: [f64; 2],
    /// Its sd after the floor, as the fit used it.
    pub floored_sd: f64,
    /// The posterior with it `[mean, sd]`.
    pub with_proposer: [f64; 2],
    /// P(better by MID) with it.
    pub with_proposer_p_mid: f64,
    /// The sceptical prior `[0, S]`.
    pub sceptical_prior: [f64; 2],
    /// The posterior with it `[mean, sd]`.
    pub sceptical: [f64; 2],
    /// P(better by MID) with it.
    pub sceptical_p_mid: f64,
    /// What the data alone say `[mean, sd]`, once they say anything.
    pub data_alone: Option<[f64; 2]>,
    /// The prior predictive tail probability of that estimate.
    pub conflict_p: Option<f64>,
}

impl ArmConflict {
    /// Whether the data disagree with the proposer's expectation.
    pub fn conflict(&self) -> bool {
        self.conflict_p.is_some_and(|p| p < CONFLICT_P)
    }

    /// In words, for the trial page and the report.
    pub fn describe(&self, unit: &str) -> String {
        let [m0, s0] = self.proposer_prior;
        let widened = if self.floored_sd > s0 {
            format!(" (widened to ± {:.2} for the fit)", self.floored_sd)
        } else {
            String::new()
        };
        let [m, s] = self.with_proposer;
        let [ms, ss] = self.sceptical;
        let mut out = format!(
            "{}: the proposer expected {m0:+.2} ± {s0:.2} {unit}{widened}. With that prior the effect is {m:+.2} ± {s:.2} (P(better by MID) {:.2}); with a sceptical prior it is {ms:+.2} ± {ss:.2} (P {:.2}).",
            self.arm, self.with_proposer_p_mid, self.sceptical_p_mid
        );
        match (self.data_alone, self.conflict_p) {
            (Some([md, sd]), Some(p)) => out.push_str(&format!(
                " Your data alone say {md:+.2} ± {sd:.2}; {}",
                if p < CONFLICT_P {
                    format!("that is far from the expectation (prior predictive p = {p:.3}): your data disagree with what the proposer expected.")
                } else {
                    format!("consistent with the expectation (prior predictive p = {p:.2}).")
                }
            )),
            _ => out.push_str(" The data do not yet say enough to compare."),
        }
        out
    }
}

/// Standard normal lower tail.
fn phi(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// The data's estimate from a posterior `N(m, s²)` under the prior
/// `N(m₀, S²)`: precisions subtract, `1/s_D² = 1/s² − 1/S²`, and so do the
/// precision-weighted means, `m_D = s_D² (m/s² − m₀/S²)`; `None` while the
/// data add (almost) nothing.
pub fn data_alone(posterior: [f64; 2], prior: [f64; 2]) -> Option<[f64; 2]> {
    let [m, s] = posterior;
    let [m0, big_s] = prior;
    let precision = 1.0 / (s * s) - 1.0 / (big_s * big_s);
    if !(precision.is_finite() && precision > 0.05 / (s * s)) {
        return None;
    }
    let var = 1.0 / precision;
    Some([var * (m / (s * s) - m0 / (big_s * big_s)), var.sqrt()])
}

/// The prior predictive tail probability of the data's estimate `[m_D,
/// s_D]` under the prior `[m_0, s_0]` (see the module comment).
pub fn conflict_p(prior: [f64; 2], data: [f64; 2]) -> f64 {
    let z = (data[0] - prior[0]).abs() / (prior[1].powi(2) + data[1].powi(2)).sqrt();
    2.0 * phi(-z)
}

/// Compares the fit with the proposer's prior and its sceptical twin, arm
/// by arm (arms whose prior is not the proposer's are left out). The
/// conflict is measured against the prior as the proposer stated it.
pub fn compare(protocol: &Protocol, main: &FitReport, sceptical: &FitReport) -> Vec<ArmConflict> {
    let stated_sd = protocol
        .hypothesis
        .as_ref()
        .and_then(|h| h.stated_effect_sd);
    let mut out = Vec::new();
    for (arm, prior) in &protocol.outcome.priors.effects {
        let (Some(a), Some(b)) = (
            main.effects.iter().find(|e| &e.arm == arm),
            sceptical.effects.iter().find(|e| &e.arm == arm),
        ) else {
            continue;
        };
        let Some(sp) = sceptical.priors.effects.get(arm).copied() else {
            continue;
        };
        let data = data_alone([b.mean, b.sd], sp);
        let stated = [prior.mean, stated_sd.unwrap_or(prior.sd)];
        out.push(ArmConflict {
            arm: arm.clone(),
            proposer_prior: stated,
            floored_sd: prior.sd,
            with_proposer: [a.mean, a.sd],
            with_proposer_p_mid: a.p_better_by_mid,
            sceptical_prior: sp,
            sceptical: [b.mean, b.sd],
            sceptical_p_mid: b.p_better_by_mid,
            data_alone: data,
            conflict_p: data.map(|d| conflict_p(stated, d)),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dividing_out_the_prior_recovers_the_likelihood() {
        // Likelihood N(1.2, 0.5²) times prior N(0, 2²): posterior precision
        // 4 + 0.25, mean 4 * 1.2 / 4.25.
        let post_var: f64 = 1.0 / 4.25;
        let post = [post_var * 4.0 * 1.2, post_var.sqrt()];
        let [m, s] = data_alone(post, [0.0, 2.0]).expect("informative");
        assert!(
            (m - 1.2).abs() < 1e-12 && (s - 0.5).abs() < 1e-12,
            "{m} {s}"
        );
        // With a prior mean: N(1.2, 0.5²) × N(1, 2²).
        let post = [post_var * (4.0 * 1.2 + 0.25 * 1.0), post_var.sqrt()];
        let [m, s] = data_alone(post, [1.0, 2.0]).expect("informative");
        assert!(
            (m - 1.2).abs() < 1e-12 && (s - 0.5).abs() < 1e-12,
            "{m} {s}"
        );
        // A posterior no narrower than the prior says nothing yet.
        assert!(data_alone([0.1, 2.0], [0.0, 2.0]).is_none());
    }

    #[test]
    fn the_conflict_p_is_a_two_sided_normal_tail() {
        assert!((conflict_p([0.0, 1.0], [0.0, 1.0]) - 1.0).abs() < 1e-12);
        // |d| / sqrt(2) = 1.96 → p = 0.05
        let d = 1.959_963_984_540_054 * 2f64.sqrt();
        assert!((conflict_p([0.0, 1.0], [d, 1.0]) - 0.05).abs() < 1e-9);
        assert!(conflict_p([-1.0, 0.3], [1.0, 0.3]) < 1e-5);
    }
}

//! The concrete change a low-powered design would need: where a design
//! finds twice its MID in under half of its virtual trials, the changes
//! that raise power (more blocks; longer periods, where the effect builds
//! or fades slowly) are simulated on their own virtual trials under the
//! same effect and thresholds, so that a proposal says "with 12 blocks
//! instead of 6 it would find it in 71%" rather than "consider more blocks".

use serde::Serialize;

use super::progress::Meter;
use super::{Rate, SimOptions, TrueEffect, operating, run_many, setup_for};
use crate::trial::protocol::{DesignKind, Protocol};

/// Power at twice the effect below which the changes are simulated.
pub const LOW_POWER: f64 = 0.5;

/// Fewest virtual trials a change is simulated on: a power near 50% is
/// then known to about ±7 points (one Monte Carlo se), enough to rank
/// the changes and to see whether one clears 50%.
const MIN_TRIALS: usize = 50;

/// One changed design and how it would do.
#[derive(Debug, Clone, Serialize)]
pub struct Redesign {
    /// The change, in words ("12 blocks at most instead of 6").
    pub change: String,
    /// Days per period of the changed design.
    pub period_days: u32,
    /// Most blocks of the changed design.
    pub max_blocks: u32,
    /// Its planned days at most (run-in included).
    pub planned_days: u32,
    /// Virtual trials it was simulated on.
    pub trials: usize,
    /// Stops for efficacy naming an arm with the effect, at twice the
    /// effect and the protocol's thresholds, ± one Monte Carlo se.
    pub power: Rate,
}

/// The changes tried, each alone: twice the blocks (at most 100, in pairs
/// for ABBA), and periods twice as long (at most 365 days, the washout
/// unchanged). A change that leaves the design invalid is not tried.
pub fn variants(p: &Protocol) -> Vec<(String, Protocol)> {
    let d = &p.design;
    let mut out = Vec::new();
    let mut blocks = (d.max_blocks * 2).min(100);
    if d.kind == DesignKind::Abba {
        blocks -= blocks % 2;
    }
    if blocks > d.max_blocks {
        let mut v = p.clone();
        v.design.max_blocks = blocks;
        out.push((
            format!("{blocks} blocks at most instead of {}", d.max_blocks),
            v,
        ));
    }
    let period = (d.period_days * 2).min(365);
    if period > d.period_days {
        let mut v = p.clone();
        v.design.period_days = period;
        out.push((
            format!("{period}-day periods instead of {}-day", d.period_days),
            v,
        ));
    }
    out.retain(|(_, v)| v.validate().is_empty());
    out
}

/// Simulates each of [`variants`] under `effect` (the doubled effect of
/// the design's own simulation) at the protocol's thresholds, on a quarter
/// of `options.trials` (at least [`MIN_TRIALS`], at most all) each, on
/// streams of their own. A variant that cannot be set up is left out.
pub(super) fn simulate_redesigns(
    protocol: &Protocol,
    options: &SimOptions,
    effect: TrueEffect,
    bar: &Meter,
) -> Vec<Redesign> {
    let n = (options.trials / 4)
        .max(MIN_TRIALS)
        .min(options.trials.max(1));
    let mut out = Vec::new();
    for (i, (change, variant)) in variants(protocol).into_iter().enumerate() {
        let Ok(setup) = setup_for(&variant, options) else {
            continue;
        };
        bar.inc_length(n as u64);
        bar.set_message(format!("{}: {change}", protocol.id));
        let trials = run_many(&setup, effect, 4 + i as u64, n, bar);
        let at = operating(
            &trials,
            variant.decision.efficacy,
            &setup.working,
            &setup.keys,
        );
        out.push(Redesign {
            change,
            period_days: variant.design.period_days,
            max_blocks: variant.design.max_blocks,
            planned_days: variant.planned_days(),
            trials: n,
            power: at.stop_efficacy_right_arm,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_changes_tried_are_valid_designs() {
        let text = include_str!("../../../protocols/meditation-anxiety.toml");
        let p = Protocol::parse(text, "meditation-anxiety.toml").unwrap();
        let v = variants(&p);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].1.design.max_blocks, 2 * p.design.max_blocks);
        assert_eq!(v[1].1.design.period_days, 2 * p.design.period_days);
        assert!(
            v[0].0
                .contains(&format!("instead of {}", p.design.max_blocks))
        );
        // Already at the limits: nothing to try.
        let mut full = p.clone();
        full.design.max_blocks = 100;
        full.design.period_days = 365;
        assert!(variants(&full).is_empty());
    }
}

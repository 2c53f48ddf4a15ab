//! Crossover designs: from a protocol and a seed to the day-by-day schedule
//! (`statistics.md` §7).
//!
//! A period is `period_days` days on one arm; a block holds each active arm
//! once. Orders inside blocks are drawn with a seeded ChaCha20 generator, so
//! the whole schedule is reproducible from the stored seed on any platform.
//! Pure functions only: the daemon stores what they return.

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::trial::protocol::{DesignKind, Protocol};

/// One day of a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledDay {
    /// Days since the trial's first day (run-in included), from 0.
    pub day: u32,
    /// Period number from 0; `None` during run-in.
    pub period: Option<u32>,
    /// Block number from 0; `None` during run-in.
    pub block: Option<u32>,
    /// Arm in force (index into the protocol's arms).
    pub arm: usize,
    /// A washout day at the start of a period.
    pub washout: bool,
}

/// Draws a fresh randomisation seed from the operating system.
pub fn draw_seed() -> Result<u64, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// One planned period: its block and arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedPeriod {
    /// Block number from 0.
    pub block: u32,
    /// Arm (index into the protocol's arms).
    pub arm: usize,
}

/// The full planned schedule of a protocol for `seed`: run-in days on the
/// comparator, then `max_blocks` blocks of periods.
pub fn schedule(protocol: &Protocol, seed: u64) -> Vec<ScheduledDay> {
    days_of(protocol, &plan(protocol, seed))
}

/// The planned periods of a protocol for `seed`: `max_blocks` blocks, each
/// holding every arm once in the order its design kind draws.
pub fn plan(protocol: &Protocol, seed: u64) -> Vec<PlannedPeriod> {
    let arms: Vec<usize> = (0..protocol.arms.len()).collect();
    to_periods(
        &block_orders(
            protocol.design.kind,
            &arms,
            protocol.design.max_blocks,
            seed,
        ),
        0,
    )
}

fn to_periods(orders: &[Vec<usize>], first_block: u32) -> Vec<PlannedPeriod> {
    orders
        .iter()
        .enumerate()
        .flat_map(|(b, order)| {
            order.iter().map(move |&arm| PlannedPeriod {
                block: first_block + b as u32,
                arm,
            })
        })
        .collect()
}

/// The days of a plan: run-in on the comparator, then each period's days
/// (washout days first).
pub fn days_of(protocol: &Protocol, periods: &[PlannedPeriod]) -> Vec<ScheduledDay> {
    let d = &protocol.design;
    let comparator = protocol.comparator_index();
    let mut days =
        Vec::with_capacity((d.run_in_days + d.period_days * periods.len() as u32) as usize);
    for day in 0..d.run_in_days {
        days.push(ScheduledDay {
            day,
            period: None,
            block: None,
            arm: comparator,
            washout: false,
        });
    }
    for (period, p) in periods.iter().enumerate() {
        for offset in 0..d.period_days {
            days.push(ScheduledDay {
                day: days.len() as u32,
                period: Some(period as u32),
                block: Some(p.block),
                arm: p.arm,
                washout: offset < d.washout_days,
            });
        }
    }
    days
}

/// Blocks complete once the first `done` periods of `periods` have run.
pub fn blocks_done(periods: &[PlannedPeriod], done: usize) -> u32 {
    let done = done.min(periods.len());
    if done == 0 {
        return 0;
    }
    let current = periods[done - 1].block;
    let finished = periods.get(done).is_none_or(|next| next.block != current);
    let started = periods[..done]
        .iter()
        .map(|p| p.block)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u32;
    if finished { started } else { started - 1 }
}

/// The plan after arms are dropped once `done` periods have run: the periods
/// already run, the rest of the current block without the dropped arms, then
/// fresh blocks of the `active` arms up to `max_blocks` in all, drawn from the
/// trial's seed and `done` (so the whole schedule stays reproducible from the
/// seed and the decisions). Three or more arms keep the design's kind (block
/// or Williams); two left are counterbalanced.
pub fn replan_after_drop(
    protocol: &Protocol,
    seed: u64,
    periods: &[PlannedPeriod],
    done: usize,
    active: &[usize],
) -> Vec<PlannedPeriod> {
    let done = done.min(periods.len());
    let mut out: Vec<PlannedPeriod> = periods[..done].to_vec();
    let current = out.last().map(|p| p.block);
    if let Some(block) = current {
        out.extend(
            periods[done..]
                .iter()
                .filter(|p| p.block == block && active.contains(&p.arm)),
        );
    }
    let next_block = current.map_or(0, |b| b + 1);
    let remaining = protocol.design.max_blocks.saturating_sub(next_block);
    let kind = match (active.len(), protocol.design.kind) {
        (2, _) => DesignKind::Counterbalanced,
        (_, DesignKind::Williams) => DesignKind::Williams,
        _ => DesignKind::Block,
    };
    let salt = seed ^ (done as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    out.extend(to_periods(
        &block_orders(kind, active, remaining, salt),
        next_block,
    ));
    out
}

/// The order of `arms` in each of `blocks` blocks, for a design kind.
///
/// - `Block`: an independent random permutation per block.
/// - `Counterbalanced`: AB or BA with probability 1/2 per block.
/// - `Abba`: blocks in pairs, the second the reverse of the first.
/// - `Williams`: rows of a Williams design with randomly permuted labels,
///   used in a random row order, reshuffled each time all rows are used.
pub fn block_orders(kind: DesignKind, arms: &[usize], blocks: u32, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(blocks as usize);
    match kind {
        DesignKind::Block => {
            for _ in 0..blocks {
                let mut order = arms.to_vec();
                order.shuffle(&mut rng);
                out.push(order);
            }
        }
        DesignKind::Counterbalanced => {
            for _ in 0..blocks {
                let mut order = arms.to_vec();
                if rng.random_bool(0.5) {
                    order.reverse();
                }
                out.push(order);
            }
        }
        DesignKind::Abba => {
            while out.len() < blocks as usize {
                let mut order = arms.to_vec();
                if rng.random_bool(0.5) {
                    order.reverse();
                }
                let mirror: Vec<usize> = order.iter().rev().copied().collect();
                out.push(order);
                if out.len() < blocks as usize {
                    out.push(mirror);
                }
            }
        }
        DesignKind::Williams => {
            let mut labels = arms.to_vec();
            labels.shuffle(&mut rng);
            let rows = williams_rows(arms.len());
            let mut row_order: Vec<usize> = Vec::new();
            while out.len() < blocks as usize {
                if row_order.is_empty() {
                    row_order = (0..rows.len()).collect();
                    row_order.shuffle(&mut rng);
                }
                let row = &rows[row_order.remove(0)];
                out.push(row.iter().map(|&i| labels[i]).collect());
            }
        }
    }
    out
}

/// Rows of a Williams design for `n` treatments labelled `0..n`.
///
/// First row `0, 1, n-1, 2, n-2, ...`; row `i` adds `i` modulo `n`. For even
/// `n` these `n` rows balance first-order carryover (each treatment follows
/// every other exactly once); for odd `n` the mirrored rows are added (2n rows).
pub fn williams_rows(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return Vec::new();
    }
    let mut first = Vec::with_capacity(n);
    let (mut lo, mut hi) = (0usize, n);
    for j in 0..n {
        if j % 2 == 0 {
            first.push(lo);
            lo += 1;
        } else {
            hi -= 1;
            first.push(hi);
        }
    }
    let mut rows: Vec<Vec<usize>> = (0..n)
        .map(|i| first.iter().map(|&t| (t + i) % n).collect())
        .collect();
    if n % 2 == 1 {
        let mirrored: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| r.iter().rev().copied().collect())
            .collect();
        rows.extend(mirrored);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn protocol(kind: &str, arms: usize, blocks: u32) -> Protocol {
        let mut text = String::from("id='t'\ntitle='t'\ncomparator='a0'\n");
        for i in 0..arms {
            text.push_str(&format!("[[arms]]\nkey='a{i}'\nlabel='A{i}'\n"));
        }
        text.push_str("[outcome]\nstream='s'\nfamily='gaussian'\ndirection='higher'\nmid=1.0\n");
        text.push_str(&format!(
            "[design]\ntype='{kind}'\nperiod_days=7\nwashout_days=2\nrun_in_days=5\nmin_blocks=2\nmax_blocks={blocks}\n"
        ));
        Protocol::parse(&text, "t.toml").unwrap()
    }

    #[test]
    fn every_block_holds_every_arm_once() {
        for (kind, k) in [
            ("block", 3),
            ("counterbalanced", 2),
            ("abba", 2),
            ("williams", 4),
            ("williams", 3),
        ] {
            let p = protocol(kind, k, 6);
            let days = schedule(&p, 42);
            assert_eq!(days.len() as u32, p.planned_days());
            for block in 0..6 {
                let mut count = BTreeMap::new();
                for d in days.iter().filter(|d| d.block == Some(block)) {
                    *count.entry(d.arm).or_insert(0) += 1;
                }
                assert_eq!(count.len(), k, "{kind}: block {block}");
                assert!(count.values().all(|&c| c == 7), "{kind}: {count:?}");
            }
            assert!(days[..5].iter().all(|d| d.arm == 0 && d.period.is_none()));
            let washout = days.iter().filter(|d| d.washout).count();
            assert_eq!(washout, 6 * k * 2);
        }
    }

    #[test]
    fn same_seed_same_schedule_other_seed_differs() {
        let p = protocol("block", 4, 8);
        assert_eq!(schedule(&p, 7), schedule(&p, 7));
        let differ = (0..20u64).any(|s| schedule(&p, s) != schedule(&p, 7));
        assert!(differ);
    }

    #[test]
    fn dropping_an_arm_keeps_blocks_balanced_and_reproducible() {
        let p = protocol("williams", 4, 6);
        let plan0 = plan(&p, 5);
        // Drop arm 2 after 6 periods (block 1 half run).
        let active = [0, 1, 3];
        let after = replan_after_drop(&p, 5, &plan0, 6, &active);
        assert_eq!(&after[..6], &plan0[..6]);
        assert_eq!(after, replan_after_drop(&p, 5, &plan0, 6, &active));
        assert!(after[6..].iter().all(|q| q.arm != 2));
        // Later blocks hold each active arm once, up to max_blocks in all.
        for block in 2..6 {
            let mut arms: Vec<usize> = after
                .iter()
                .filter(|q| q.block == block)
                .map(|q| q.arm)
                .collect();
            arms.sort();
            assert_eq!(arms, active.to_vec(), "block {block}");
        }
        assert_eq!(after.last().map(|q| q.block), Some(5));
        assert_eq!(blocks_done(&after, 6), 1);
        let end_of_block1 = after.iter().rposition(|q| q.block == 1).unwrap() + 1;
        assert_eq!(blocks_done(&after, end_of_block1), 2);
        assert_eq!(blocks_done(&after, after.len()), 6);
    }

    #[test]
    fn abba_pairs_mirror() {
        let orders = block_orders(DesignKind::Abba, &[0, 1], 6, 3);
        for pair in orders.chunks(2) {
            assert_eq!(pair[0][0], pair[1][1]);
            assert_eq!(pair[0][1], pair[1][0]);
        }
    }

    #[test]
    fn williams_balances_first_order_carryover() {
        for n in 2..=6 {
            let rows = williams_rows(n);
            let mut follows = BTreeMap::new();
            for r in &rows {
                let mut seen: Vec<usize> = r.clone();
                seen.sort();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "row is a permutation");
                for w in r.windows(2) {
                    *follows.entry((w[0], w[1])).or_insert(0) += 1;
                }
            }
            assert_eq!(
                follows.len(),
                n * (n - 1),
                "n={n}: every ordered pair occurs"
            );
            let counts: Vec<i32> = follows.values().copied().collect();
            assert!(counts.iter().all(|&c| c == counts[0]), "n={n}: {follows:?}");
        }
    }

    #[test]
    fn counterbalanced_orders_are_random_but_fair() {
        let orders = block_orders(DesignKind::Counterbalanced, &[0, 1], 4000, 11);
        let ab = orders.iter().filter(|o| o[0] == 0).count() as f64;
        // Binomial(4000, 1/2): sd = sqrt(4000)/2 ~ 31.6; allow 4 sd.
        assert!((ab - 2000.0).abs() < 4.0 * 31.7, "{ab}");
    }
}

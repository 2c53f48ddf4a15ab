//! `nof1d report TRIAL`: the protocol, the schedule as run, adherence, each
//! effect's posterior, the decision trail and the design's simulated error
//! rates, as plain text, Markdown or HTML.
//!
//! The report is built once as a list of blocks (headings, paragraphs,
//! tables) and then written in the chosen format, so the three never drift.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::engine::fit::FitReport;
use crate::service::store::{Store, StoreError};
use crate::trial::lifecycle;

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain text with aligned tables.
    Text,
    /// GitHub-flavoured Markdown.
    Markdown,
    /// A standalone HTML page (no external resources).
    Html,
}

impl Format {
    /// Parses `text`, `markdown`/`md` or `html`.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "text" | "txt" => Some(Format::Text),
            "markdown" | "md" => Some(Format::Markdown),
            "html" => Some(Format::Html),
            _ => None,
        }
    }
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such trial, or its stored data cannot be read.
    #[error("{0}")]
    Invalid(String),
}

enum Block {
    Heading(String),
    Para(String),
    Table(Vec<String>, Vec<Vec<String>>),
}

fn pct(p: f64) -> String {
    format!("{:.1}%", 100.0 * p)
}

/// Builds and renders the report of `trial_id`; `sim_trials` virtual trials
/// per condition give the design's error rates (0 skips them).
pub fn render(
    store: &Store,
    trial_id: i64,
    format: Format,
    sim_trials: usize,
) -> Result<String, ReportError> {
    let blocks = build(store, trial_id, sim_trials)?;
    Ok(match format {
        Format::Text => text(&blocks),
        Format::Markdown => markdown(&blocks),
        Format::Html => html(&blocks),
    })
}

fn build(store: &Store, trial_id: i64, sim_trials: usize) -> Result<Vec<Block>, ReportError> {
    let trial = store
        .trial(trial_id)?
        .ok_or_else(|| ReportError::Invalid(format!("there is no trial {trial_id}")))?;
    let protocol = trial
        .protocol()
        .map_err(|e| ReportError::Invalid(e.to_string()))?;
    let person = store.participant(trial.participant_id)?;
    let participant = person
        .as_ref()
        .map_or_else(|| "?".to_string(), |p| format!("{} ({})", p.name, p.key));
    let label = |arm: usize| -> String {
        protocol.arms.get(arm).map_or_else(
            || format!("arm {arm}"),
            |a| match &a.code {
                Some(code) => format!("{} [{code}]", a.label),
                None => a.label.clone(),
            },
        )
    };
    let mut b = vec![
        Block::Heading(format!("Trial {} — {}", trial.id, protocol.title)),
        Block::Para(format!(
            "Participant {participant}. Status: {}{}. Protocol {} (sha256 {}), randomisation seed {}.",
            trial.status,
            trial
                .stop_reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            protocol.id,
            trial.protocol_hash,
            trial.seed
        )),
    ];

    // Where the person stands, first: each arm's effect in words.
    let zone = person
        .as_ref()
        .and_then(|p| jiff::tz::TimeZone::get(&p.time_zone).ok())
        .unwrap_or(jiff::tz::TimeZone::UTC);
    let today = jiff::Timestamp::now().to_zoned(zone).date();
    let standing = crate::service::standing::of_trial(
        store,
        &trial,
        &protocol,
        &store.schedule(trial.id)?,
        today,
        &label,
    )?;
    if !standing.is_empty() {
        b.push(Block::Heading("Where you stand".into()));
        b.extend(standing.into_iter().map(Block::Para));
    }

    // Protocol.
    b.push(Block::Heading("Protocol".into()));
    let o = &protocol.outcome;
    b.push(Block::Para(format!(
        "Outcome {} ({}), {:?} family, {} is better, MID {}{}. Design: {:?}, periods of {} days ({} washout), run-in {} days, {}–{} blocks. Decisions: efficacy P(better by MID) ≥ {}, futility ≤ {}, drop arm P(best) < {}.",
        o.stream,
        o.unit,
        o.family,
        format!("{:?}", o.direction).to_lowercase(),
        o.mid,
        if o.family.has_ratio_mid() { " (ratio)" } else { "" },
        protocol.design.kind,
        protocol.design.period_days,
        protocol.design.washout_days,
        protocol.design.run_in_days,
        protocol.design.min_blocks,
        protocol.design.max_blocks,
        protocol.decision.efficacy,
        protocol.decision.futility,
        protocol.decision.drop_arm,
    )));
    b.push(Block::Para(match trial.locked {
        Some(l) => format!(
            "Efficacy threshold in force: P(better by MID) ≥ {} at the last block ({} boundary), {}. Futility threshold in force: {}.{}",
            l.efficacy,
            l.boundary.as_str(),
            l.source.describe(),
            match l.futility {
                Some(0.0) => "none (calibrated: the trial never stops for futility)".to_string(),
                Some(f) => format!("P(better by MID) ≤ {f} for every arm, calibrated"),
                None => format!(
                    "P(better by MID) ≤ {} for every arm, the protocol's",
                    protocol.decision.futility
                ),
            },
            match (protocol.arms.len() >= 3, l.drop_arm) {
                (false, _) => String::new(),
                (true, Some(0.0)) => {
                    " Arm drops: none (calibrated: every threshold tried gave up on the arms that work too often).".to_string()
                }
                (true, Some(d)) => format!(" Arm-drop threshold in force: P(best) < {d}, calibrated."),
                (true, None) if protocol.decision.drop_arm == 0.0 => {
                    " Arm drops: none (the protocol's).".to_string()
                }
                (true, None) => format!(
                    " Arm-drop threshold in force: P(best) < {}, the protocol's.",
                    protocol.decision.drop_arm
                ),
            }
        ),
        None => "Efficacy and futility thresholds: locked when the trial starts.".to_string(),
    }));
    // A trial that took its design's refined calibration reports that one.
    let first = store.calibration(&trial.protocol_hash)?;
    let refined = match (&first, store.refinement_taken(&trial)?) {
        (Some(first), Some(r)) => Some((
            r,
            first.efficacy,
            trial.thresholds_refined_at.clone().unwrap_or_default(),
        )),
        _ => None,
    };
    if let Some((r, first_efficacy, at)) = &refined {
        b.push(Block::Para(format!(
            "The thresholds are a refinement of the design's quick calibration (efficacy threshold {first_efficacy:.4}), run on up to {} virtual trials with no effect in a scenario and locked at {at}, before the trial's first look that could stop it: every decision is taken under the refined rule below.",
            r.null_trials
        )));
    }
    let shown = match refined {
        Some((r, _, _)) => Some(r.calibration),
        None => first,
    };
    if let Some(c) = shown {
        match c.report() {
            Ok(r) => {
                b.push(Block::Para(format!(
                    "Calibration of this design: threshold {:.4} ({} boundary) keeps false stops at or below {:.1}% with 95% confidence in every stress scenario (set by {}); {} virtual trials, seed {}, {:.0} s{}. Power at an effect of {} and the anytime-valid betting test on the same trials:",
                    c.efficacy,
                    c.boundary.as_str(),
                    100.0 * c.target,
                    c.binding,
                    r.timing.trials,
                    r.seed,
                    c.wall_ms / 1000.0,
                    if r.timing.resumed > 0 {
                        format!(
                            " ({} of them run before a stop part way and taken up: their time is not in this figure)",
                            r.timing.resumed
                        )
                    } else {
                        String::new()
                    },
                    format!("{} {}", r.effect, r.effect_unit).trim_end()
                )));
                if let (Some(f), Some(target)) = (r.futility, r.futility_target) {
                    b.push(Block::Para(format!(
                        "Futility threshold {f:.4} (the protocol states {}) gives up at most {:.0}% of trials whose arm works, with 95% confidence in every stress scenario (set by {}).",
                        r.protocol_futility.unwrap_or(protocol.decision.futility),
                        100.0 * target,
                        r.futility_binding.map_or("-", |s| s.name())
                    )));
                }
                if let (Some(d), Some(target), Some(last)) =
                    (r.drop_arm, r.futility_target, r.drop_tries.last())
                {
                    b.push(Block::Para(format!(
                        "Arm-drop threshold {d} (the protocol states {}; thresholds tried: {}) gives up on every arm that works in at most {:.0}% of trials, {}with 95% confidence in every stress scenario (at most {} of {} allowed; {} given up in {} in the {} scenario).",
                        r.protocol_drop_arm.unwrap_or(protocol.decision.drop_arm),
                        r.drop_tries
                            .iter()
                            .map(|t| format!(
                                "{} ({}: {} given up{})",
                                t.drop_arm,
                                if t.working_arms >= 2 {
                                    "two working arms"
                                } else {
                                    "one working arm"
                                },
                                t.dropped,
                                t.one_dropped
                                    .map(|(n, _)| format!(", one of them, the other kept, in up to {n}"))
                                    .unwrap_or_default()
                            ))
                            .collect::<Vec<_>>()
                            .join(", "),
                        100.0 * target,
                        if r.drop_tries.iter().any(|t| t.working_arms >= 2) {
                            "with one arm that works and with two alike (keeping one of two that work alike finds a right answer), "
                        } else {
                            "with one arm that works, "
                        },
                        last.allowed,
                        r.rows.first().map_or(0, |row| row.effect_trials),
                        crate::trial::simulate::suite::working_words(last.working_arms),
                        last.dropped,
                        last.scenario.name()
                    )));
                }
                let rate = |x: Option<&crate::trial::simulate::Rate>| {
                    x.map_or_else(
                        || "-".to_string(),
                        |x| format!("{} ± {}", pct(x.rate), pct(x.se)),
                    )
                };
                b.push(Block::Table(
                    vec![
                        "scenario".into(),
                        format!("false stops at {}", r.protocol_efficacy),
                        "false stops, calibrated".into(),
                        "power, calibrated".into(),
                        "given up though it works: stated → calibrated".into(),
                        "betting test: false stops".into(),
                        "betting test: power".into(),
                    ],
                    r.rows
                        .iter()
                        .map(|row| {
                            vec![
                                row.scenario.name().to_string(),
                                pct(row.protocol_false_stops.rate),
                                rate(row.calibrated_false_stops.as_ref()),
                                rate(row.calibrated_power.as_ref()),
                                match (&row.protocol_futility_stops, &row.calibrated_futility_stops)
                                {
                                    (Some(a), Some(c)) => {
                                        format!("{} → {}", pct(a.rate), rate(Some(c)))
                                    }
                                    _ => "-".to_string(),
                                },
                                rate(row.betting.as_ref().map(|x| &x.false_stops)),
                                rate(row.betting.as_ref().map(|x| &x.power_right_arm)),
                            ]
                        })
                        .collect(),
                ));
            }
            Err(e) => b.push(Block::Para(format!(
                "The stored calibration is unreadable: {e}"
            ))),
        }
    }
    b.push(Block::Table(
        vec!["arm".into(), "label".into(), "instructions".into()],
        protocol
            .arms
            .iter()
            .map(|a| {
                vec![
                    a.key.clone(),
                    label(protocol.arm_index(&a.key).unwrap_or(0)),
                    a.instructions.clone(),
                ]
            })
            .collect(),
    ));

    // Life cycle.
    b.push(Block::Heading("Life cycle".into()));
    b.push(Block::Table(
        vec![
            "when".into(),
            "from".into(),
            "to".into(),
            "by".into(),
            "why".into(),
        ],
        store
            .trial_events(trial.id)?
            .into_iter()
            .map(|e| {
                vec![
                    e.local_date.unwrap_or(e.at),
                    e.from_status.unwrap_or_else(|| "-".into()),
                    e.to_status,
                    e.actor,
                    e.reason,
                ]
            })
            .collect(),
    ));

    // Schedule as run, with adherence.
    let rows = store.schedule(trial.id)?;
    let runs: BTreeMap<_, _> = store.daily_runs(trial.id)?.into_iter().collect();
    let adherence: BTreeMap<u32, String> = store.adherence(trial.id)?.into_iter().collect();
    b.push(Block::Heading("Schedule as run".into()));
    let mut table = Vec::new();
    let mut adherence_counts: BTreeMap<String, usize> = BTreeMap::new();
    for (period, end) in lifecycle::period_ends(&rows) {
        let days: Vec<_> = rows.iter().filter(|r| r.period == Some(period)).collect();
        let Some(first) = days.first() else { continue };
        let sent = days
            .iter()
            .filter(|d| runs.get(&d.local_date).is_some_and(|s| s == "sent"))
            .count();
        let missed = days
            .iter()
            .filter(|d| runs.get(&d.local_date).is_some_and(|s| s == "missed"))
            .count();
        let mut adh: BTreeMap<&str, usize> = BTreeMap::new();
        for d in &days {
            if let Some(a) = adherence.get(&d.day) {
                *adh.entry(a.as_str()).or_default() += 1;
                *adherence_counts.entry(a.clone()).or_default() += 1;
            }
        }
        table.push(vec![
            period.to_string(),
            first.block.map_or_else(|| "-".into(), |x| x.to_string()),
            label(first.arm),
            format!("{} – {}", first.local_date, end),
            format!("{sent} sent, {missed} missed"),
            if adh.is_empty() {
                "-".into()
            } else {
                adh.iter()
                    .map(|(k, v)| format!("{v} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ]);
    }
    b.push(Block::Table(
        vec![
            "period".into(),
            "block".into(),
            "arm".into(),
            "dates".into(),
            "emails".into(),
            "adherence".into(),
        ],
        table,
    ));
    b.push(Block::Para(if adherence_counts.is_empty() {
        "No adherence reports yet; the analysis is by assigned arm (intention to treat).".into()
    } else {
        format!(
            "Adherence reports: {}.",
            adherence_counts
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }));

    // Posterior per outcome.
    b.push(Block::Heading("Effects (latest fit)".into()));
    for outcome in protocol.outcomes() {
        let Some(fit) = store.latest_fit(trial.id, &outcome.stream)? else {
            b.push(Block::Para(format!("{}: no fit yet.", outcome.stream)));
            continue;
        };
        let report: FitReport = serde_json::from_str(&fit.result_json)
            .map_err(|e| ReportError::Invalid(format!("fit {}: {e}", fit.id)))?;
        b.push(Block::Para(format!(
            "{}: {} observations through {}, {} ({}).",
            outcome.stream,
            fit.observations,
            fit.data_through,
            if report.diagnostics.converged {
                "converged"
            } else {
                "NOT converged"
            },
            report
                .diagnostics
                .reason
                .as_deref()
                .unwrap_or("all checks passed")
        )));
        b.push(Block::Table(
            vec![
                "arm".into(),
                "effect (mean)".into(),
                "90% interval".into(),
                "P(better)".into(),
                "P(better by MID)".into(),
                "P(best)".into(),
            ],
            report
                .effects
                .iter()
                .map(|e| {
                    vec![
                        e.arm.clone(),
                        format!("{:+.3}", e.mean),
                        format!("{:+.3} to {:+.3}", e.ci90[0], e.ci90[1]),
                        pct(e.p_better),
                        pct(e.p_better_by_mid),
                        pct(e.p_best),
                    ]
                })
                .collect(),
        ));
        for e in &report.effects {
            if let Some(n) = &e.natural {
                b.push(Block::Para(format!(
                    "{} in the outcome's own units: {}.",
                    e.arm,
                    n.describe()
                )));
            }
        }
        if std::ptr::eq(outcome, &protocol.outcome)
            && crate::trial::prior_data::has_proposer_prior(&protocol)
        {
            let key = crate::trial::prior_data::sceptical_key(&outcome.stream);
            let sceptical = store
                .latest_fit(trial.id, &key)?
                .and_then(|f| f.report().ok());
            let unit = if outcome.family == crate::engine::spec::Family::Gaussian {
                outcome.unit.as_str()
            } else {
                "(log ratio)"
            };
            match sceptical {
                Some(sc) => {
                    for a in crate::trial::prior_data::compare(&protocol, &report, &sc) {
                        b.push(Block::Para(format!(
                            "Against the proposer's expectation: {}",
                            a.describe(unit)
                        )));
                    }
                }
                None => b.push(Block::Para(
                    "The effect prior is the proposer's; its sceptical twin fit is not there yet."
                        .into(),
                )),
            }
        }
    }

    // The result in words, once stopped.
    if let Some((text, by)) = crate::service::hypotheses::conclusion_text(store, trial_id)? {
        b.push(Block::Heading("Conclusion".into()));
        b.push(Block::Para(format!("{text} (Written by {by}.)")));
    }

    // Decisions.
    b.push(Block::Heading("Decision trail".into()));
    b.push(Block::Table(
        vec![
            "period".into(),
            "when".into(),
            "fit".into(),
            "action".into(),
            "rule".into(),
        ],
        store
            .decisions(trial.id)?
            .into_iter()
            .map(|d| {
                vec![
                    d.period.map_or_else(|| "-".into(), |p| p.to_string()),
                    d.created_at,
                    d.fit_id.map_or_else(|| "-".into(), |f| f.to_string()),
                    d.action,
                    d.rule,
                ]
            })
            .collect(),
    ));

    // Design's error rates.
    if sim_trials > 0 {
        b.push(Block::Heading("The design's simulated error rates".into()));
        // The simulation is most of the report's time: its progress goes to
        // standard error (shown only on a terminal), the report to standard
        // output.
        let options = crate::trial::simulate::SimOptions {
            trials: sim_trials,
            progress: true,
            ..crate::trial::simulate::SimOptions::default()
        };
        match crate::trial::simulate::simulate_protocol(
            &protocol,
            &crate::trial::protocol::ProtocolHash::of(&trial.protocol_toml),
            &options,
        ) {
            Ok(r) => {
                let d = &r.default;
                b.push(Block::Para(format!(
                    "{} virtual trials per condition, data drawn from the priors, {:.0}% missing days, {:.0}% non-adherence, every refit and decision as the daemon takes them. Under no effect the trial stopped for efficacy (falsely) in {} (± {}); with {} better by {} it stopped for efficacy in {} (± {}), after {:.1} blocks on average.",
                    r.trials,
                    100.0 * r.missing,
                    100.0 * r.non_adherence,
                    pct(d.no_effect.stop_efficacy.rate),
                    pct(d.no_effect.stop_efficacy.se),
                    r.effect_arm,
                    format!("{} {}", r.effect, r.effect_unit).trim_end(),
                    pct(d.effect.stop_efficacy.rate),
                    pct(d.effect.stop_efficacy.se),
                    d.effect.blocks.mean
                )));
            }
            Err(e) => b.push(Block::Para(format!("Simulation failed: {e}"))),
        }
    }
    Ok(b)
}

fn text(blocks: &[Block]) -> String {
    let mut out = String::new();
    for block in blocks {
        match block {
            Block::Heading(h) => {
                let _ = writeln!(out, "\n{h}\n{}", "=".repeat(h.chars().count()));
            }
            Block::Para(p) => {
                let _ = writeln!(out, "{p}\n");
            }
            Block::Table(head, rows) => {
                let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
                for r in rows {
                    for (i, c) in r.iter().enumerate() {
                        if let Some(w) = widths.get_mut(i) {
                            *w = (*w).max(c.chars().count());
                        }
                    }
                }
                let line = |cells: &[String]| -> String {
                    cells
                        .iter()
                        .zip(&widths)
                        .map(|(c, w)| format!("{c:<w$}"))
                        .collect::<Vec<_>>()
                        .join("  ")
                        .trim_end()
                        .to_string()
                };
                let _ = writeln!(out, "{}", line(head));
                for r in rows {
                    let _ = writeln!(out, "{}", line(r));
                }
                out.push('\n');
            }
        }
    }
    out
}

fn markdown(blocks: &[Block]) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::new();
    for (i, block) in blocks.iter().enumerate() {
        match block {
            Block::Heading(h) => {
                let _ = writeln!(out, "{} {h}\n", if i == 0 { "#" } else { "##" });
            }
            Block::Para(p) => {
                let _ = writeln!(out, "{p}\n");
            }
            Block::Table(head, rows) => {
                let _ = writeln!(
                    out,
                    "| {} |",
                    head.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | ")
                );
                let _ = writeln!(out, "|{}", "---|".repeat(head.len()));
                for r in rows {
                    let _ = writeln!(
                        out,
                        "| {} |",
                        r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
                    );
                }
                out.push('\n');
            }
        }
    }
    out
}

/// Escapes text for HTML element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(blocks: &[Block]) -> String {
    let title = blocks
        .iter()
        .find_map(|b| match b {
            Block::Heading(h) => Some(h.as_str()),
            _ => None,
        })
        .unwrap_or("nof1d report");
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{}</title>\n<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem;line-height:1.4}}table{{border-collapse:collapse;margin:0.5rem 0 1rem;font-size:0.9rem}}th,td{{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:left;vertical-align:top}}th{{background:#f3f3f3}}</style></head><body>\n",
        escape(title)
    );
    for (i, block) in blocks.iter().enumerate() {
        match block {
            Block::Heading(h) => {
                let tag = if i == 0 { "h1" } else { "h2" };
                let _ = writeln!(out, "<{tag}>{}</{tag}>", escape(h));
            }
            Block::Para(p) => {
                let _ = writeln!(out, "<p>{}</p>", escape(p));
            }
            Block::Table(head, rows) => {
                out.push_str("<table><thead><tr>");
                for h in head {
                    let _ = write!(out, "<th scope=\"col\">{}</th>", escape(h));
                }
                out.push_str("</tr></thead><tbody>\n");
                for r in rows {
                    out.push_str("<tr>");
                    for c in r {
                        let _ = write!(out, "<td>{}</td>", escape(c));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody></table>\n");
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_escape_and_align() {
        let blocks = vec![
            Block::Heading("Trial <1>".into()),
            Block::Para("a & b".into()),
            Block::Table(
                vec!["x".into(), "y|z".into()],
                vec![vec!["long value".into(), "1".into()]],
            ),
        ];
        let h = html(&blocks);
        assert!(h.contains("<h1>Trial &lt;1&gt;</h1>"));
        assert!(h.contains("<p>a &amp; b</p>"));
        let m = markdown(&blocks);
        assert!(m.contains("| x | y\\|z |"));
        let t = text(&blocks);
        assert!(t.contains("x           y|z"), "{t}");
        assert_eq!(Format::parse("md"), Some(Format::Markdown));
        assert_eq!(Format::parse("pdf"), None);
    }
}

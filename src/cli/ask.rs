//! `nof1d ask` and `nof1d hypotheses`: what a proposer answered, in words.

use std::fmt::Write as _;

use crate::service::hypotheses::AskReport;
use crate::service::store::{ExchangeRow, HypothesisRow};
use crate::trial::hypothesis::Verdict;

/// Text that came from a model or from data, safe for a terminal: control
/// characters (escape sequences among them) shown as `?`, newlines kept.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
        .collect()
}

/// The answer to a question: kept hypotheses with their verdicts and
/// trials, refusals with reasons, what is missing, and the next step.
pub fn render_report(r: &AskReport, tau: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Proposer: {}", r.proposer);
    if let Some(why) = &r.failure {
        let _ = writeln!(out, "No answer: {}", printable(why));
    }
    for (c, hid, trial) in &r.kept {
        let cand = &c.candidate;
        let _ = writeln!(
            out,
            "\nHypothesis {hid}: {} against {} for {} (sigma {:.2}, tau {tau:.2})",
            printable(&cand.intervention),
            printable(&cand.comparator),
            c.protocol.outcome.stream,
            cand.sigma
        );
        let _ = writeln!(out, "  {}", printable(cand.rationale.trim()));
        if let Some(p) = c
            .protocol
            .outcome
            .priors
            .effects
            .get(cand.treatment_arm.trim())
        {
            let _ = writeln!(
                out,
                "  expected effect (prior): {:+.3} ± {:.3} {}",
                p.mean,
                p.sd,
                if c.protocol.outcome.family == crate::engine::spec::Family::Gaussian {
                    c.protocol.outcome.unit.as_str()
                } else {
                    "(log ratio)"
                }
            );
        }
        for n in &c.notes {
            let _ = writeln!(out, "  note: {}", printable(n));
        }
        if let Some(h) = &c.protocol.hypothesis {
            for s in &h.safety_notes {
                let _ = writeln!(out, "  safety: {}", printable(s));
            }
        }
        match (c.verdict, trial) {
            (Verdict::Test, Some(t)) => {
                let _ = writeln!(
                    out,
                    "  -> proposed as trial {t} ({}). Review it on /proposals, then `nof1d trial approve {t}`{}.",
                    c.protocol.id,
                    if c.protocol.needs_clinician {
                        " --clinician \"name, date\""
                    } else {
                        ""
                    }
                );
            }
            (Verdict::Test, None) => {
                let _ = writeln!(out, "  -> worth testing; not proposed again (see the note)");
            }
            (Verdict::Recommend, _) => {
                let _ = writeln!(
                    out,
                    "  -> a recommendation: uncertain below tau, so no experiment is proposed"
                );
            }
        }
    }
    for f in &r.refused {
        let _ = writeln!(out, "\nRefused {}:", printable(&f.what));
        for why in &f.reasons {
            let _ = writeln!(out, "  - {}", printable(why));
        }
    }
    for m in &r.missing {
        let _ = writeln!(
            out,
            "\nMissing: {} — {}",
            printable(&m.what),
            printable(&m.suggestion)
        );
    }
    if r.kept.is_empty() && r.failure.is_none() && r.missing.is_empty() {
        let _ = writeln!(out, "\nNo usable hypothesis.");
    }
    let _ = writeln!(
        out,
        "\n{} exchange(s) kept in the audit log (`nof1d hypotheses log`).",
        r.exchanges
    );
    out
}

/// The hypotheses recorded, one paragraph each.
pub fn render_list(rows: &[HypothesisRow]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        out.push_str("No hypotheses yet: `nof1d ask \"...\"` or `nof1d hypotheses propose`.\n");
    }
    for h in rows {
        let cand: Option<crate::trial::hypothesis::Candidate> =
            serde_json::from_str(&h.payload_json).ok();
        let what = cand
            .as_ref()
            .map(|c| {
                format!(
                    "{} against {} for {}",
                    c.intervention, c.comparator, c.outcome_stream
                )
            })
            .unwrap_or_else(|| "(unreadable payload)".into());
        let trial = match &h.trial {
            Some((id, status)) => format!("trial {id} ({status})"),
            None => "no trial".into(),
        };
        let _ = writeln!(
            out,
            "{} #{} {} — sigma {} — {} — {} — by {}",
            h.created_at,
            h.id,
            printable(&what),
            h.sigma.map_or("–".into(), |s| format!("{s:.2}")),
            h.verdict.as_deref().unwrap_or("–"),
            trial,
            h.proposer
        );
        if !h.question.is_empty() {
            let _ = writeln!(out, "    asked: {:?}", printable(&h.question));
        }
    }
    out
}

/// The audit log, verbatim.
pub fn render_log(rows: &[ExchangeRow]) -> String {
    let mut out = String::new();
    for e in rows {
        let _ = writeln!(
            out,
            "=== exchange {} ({} by {}, attempt {}, {}, HTTP {}) {} – {}",
            e.id,
            e.purpose,
            e.proposer,
            e.attempt,
            e.outcome,
            e.http_status.map_or("–".into(), |s| s.to_string()),
            e.started_at,
            e.finished_at
        );
        if !e.problems.is_empty() {
            let _ = writeln!(out, "--- problems\n{}", printable(&e.problems));
        }
        let _ = writeln!(out, "--- sent\n{}", printable(&e.request_json));
        let _ = writeln!(out, "--- received\n{}", printable(&e.response_body));
    }
    out
}

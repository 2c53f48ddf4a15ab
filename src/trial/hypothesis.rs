//! A proposer's hypotheses (`system.md`, "Hypotheses"): the answer an LLM
//! (or the built-in library) gives, its checks, and the protocol each valid
//! one becomes. Pure: the service sends, stores and proposes.
//!
//! Every hypothesis is checked whole before any of it is used: it must name
//! an intervention of the library, an outcome that protocol measures and the
//! person has (or can report), the outcome's own "better" direction, a
//! causal graph that is acyclic with a directed path from treatment to
//! outcome and a valid adjustment set, a finite prior and a `sigma` in
//! [0, 1]. Its prior is floored so that it cannot decide a trial by itself,
//! and checked against the person's own data (a prior predictive check).
//! At or above `tau` it becomes a proposed protocol, below it a
//! recommendation that needs no experiment.

use serde::{Deserialize, Serialize};

use crate::engine::spec::{Direction, Family, NormalPrior};
use crate::trial::causal::NamedGraph;
use crate::trial::library::{self, LibraryEntry};
use crate::trial::protocol::{Hypothesis, Protocol, Recorded};

/// `Φ⁻¹(0.8)`: the floor keeps the prior's own P(the treatment helps at
/// all) at or below 0.8.
const Z_80: f64 = 0.841_621_233_572_914_3;

/// Longest text accepted in one field of an answer.
const MAX_TEXT: usize = 2_000;
/// Most items accepted in one list of an answer.
const MAX_ITEMS: usize = 24;

/// What a proposer answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// Candidate hypotheses, most promising first.
    pub hypotheses: Vec<Candidate>,
    /// What would be needed to test something the library or the data
    /// cannot yet ("no migraine stream: add a daily self-report question").
    #[serde(default)]
    pub missing: Vec<Missing>,
}

/// Something the question needs that is not there.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Missing {
    /// What is missing.
    pub what: String,
    /// What the person could do.
    pub suggestion: String,
}

/// The expected effect, treatment minus comparator: outcome units for
/// gaussian outcomes, the log rate or odds ratio for the others.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EffectPrior {
    /// Mean.
    pub mean: f64,
    /// Standard deviation, > 0.
    pub sd: f64,
}

/// One hypothesis as a proposer states it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Candidate {
    /// The library protocol it tests (its `id`).
    pub library_id: String,
    /// The arm of that protocol that is the treatment (its `key`).
    pub treatment_arm: String,
    /// The intervention in words.
    pub intervention: String,
    /// The comparator (the protocol's comparator arm, key or label).
    pub comparator: String,
    /// The outcome stream (the protocol's primary or a secondary outcome).
    pub outcome_stream: String,
    /// Which way is better for that outcome.
    pub direction: Direction,
    /// The expected effect; absent: the design's sceptical default.
    #[serde(default)]
    pub effect_prior: Option<EffectPrior>,
    /// Onset/washout half-life in days; absent: the protocol's.
    #[serde(default)]
    pub half_life_days: Option<f64>,
    /// Uncertainty that the effect exists for this person, 0 (sure) to 1.
    pub sigma: f64,
    /// Why, in a few sentences.
    pub rationale: String,
    /// Suspected other causes of the outcome.
    #[serde(default)]
    pub confounders: Vec<String>,
    /// Suspected steps between treatment and outcome.
    #[serde(default)]
    pub mediators: Vec<String>,
    /// Causal arrows `[from, to]`; `"treatment"` and `"outcome"` name those.
    pub graph: Vec<[String; 2]>,
    /// Covariates to adjust for (never a mediator).
    #[serde(default)]
    pub adjust_for: Vec<String>,
    /// What to watch for.
    #[serde(default)]
    pub safety_notes: Vec<String>,
    /// The intervention changes prescribed medication.
    #[serde(default)]
    pub changes_medication: bool,
}

/// What a stream of the person's catalog is known to hold (summaries only).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamFacts {
    /// The stream's key.
    pub key: String,
    /// Days with data.
    pub days_with_data: usize,
    /// Mean of the daily values.
    pub mean: Option<f64>,
    /// Their standard deviation.
    pub sd: Option<f64>,
}

/// What the checks compare an answer with.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// The intervention library.
    pub library: &'a [LibraryEntry],
    /// The person's streams.
    pub streams: &'a [StreamFacts],
    /// At or above this `sigma` a hypothesis is tested.
    pub tau: f64,
    /// Who proposed, for the protocol (`llm:<model>`, `library`).
    pub proposer: &'a str,
}

/// Tested by a trial or recommended outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// `sigma >= tau`: worth an experiment; a trial is proposed.
    Test,
    /// `sigma < tau`: known well enough; no experiment needed.
    Recommend,
}

impl Verdict {
    /// As stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Test => "test",
            Verdict::Recommend => "recommend",
        }
    }
}

/// A hypothesis that passed every check, with the protocol it becomes.
#[derive(Debug, Clone)]
pub struct Checked {
    /// As the proposer stated it.
    pub candidate: Candidate,
    /// Test or recommend.
    pub verdict: Verdict,
    /// The protocol (validated).
    pub protocol: Protocol,
    /// Its text, as it would be locked.
    pub protocol_text: String,
    /// What the checks changed or noticed, in words.
    pub notes: Vec<String>,
}

/// The JSON schema of an [`Answer`], for structured output and the prompt.
pub fn answer_schema() -> serde_json::Value {
    let text = |d: &str| serde_json::json!({"type": "string", "description": d});
    let list = |d: &str| serde_json::json!({"type": "array", "items": {"type": "string"}, "description": d});
    serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["hypotheses", "missing"],
        "properties": {
            "hypotheses": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["library_id", "treatment_arm", "intervention", "comparator",
                                 "outcome_stream", "direction", "effect_prior", "half_life_days",
                                 "sigma", "rationale", "confounders", "mediators", "graph",
                                 "adjust_for", "safety_notes", "changes_medication"],
                    "properties": {
                        "library_id": text("id of the library protocol that tests it"),
                        "treatment_arm": text("key of that protocol's treatment arm"),
                        "intervention": text("the intervention in words"),
                        "comparator": text("key of that protocol's comparator arm"),
                        "outcome_stream": text("one of that protocol's outcome streams"),
                        "direction": {"type": "string", "enum": ["higher", "lower"]},
                        "effect_prior": {
                            "type": ["object", "null"],
                            "additionalProperties": false,
                            "required": ["mean", "sd"],
                            "properties": {"mean": {"type": "number"}, "sd": {"type": "number"}},
                            "description": "expected effect, treatment minus comparator: outcome units for gaussian outcomes, log rate or odds ratio otherwise; null: no expectation (a sceptical prior)"
                        },
                        "half_life_days": {"type": ["number", "null"], "description": "onset/washout half-life in days; null: the protocol's"},
                        "sigma": {"type": "number", "minimum": 0, "maximum": 1,
                                  "description": "uncertainty that it works for this person: 0 sure, 1 no idea"},
                        "rationale": text("why, in two or three sentences"),
                        "confounders": list("other causes of the outcome"),
                        "mediators": list("steps between treatment and outcome"),
                        "graph": {"type": "array",
                                  "items": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 2},
                                  "description": "causal arrows [from, to]; 'treatment' and 'outcome' name those nodes"},
                        "adjust_for": list("covariates to adjust for; never a mediator"),
                        "safety_notes": list("what to watch for"),
                        "changes_medication": {"type": "boolean"}
                    }
                }
            },
            "missing": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["what", "suggestion"],
                    "properties": {"what": text("what is missing"), "suggestion": text("what the person could do")}
                }
            }
        }
    })
}

/// Parses an answer strictly: one JSON object of the schema, nothing else
/// (a Markdown code fence around it is tolerated, as small models add one).
pub fn parse_answer(content: &str) -> Result<Answer, String> {
    let trimmed = content.trim();
    let body = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .unwrap_or(trimmed);
    serde_json::from_str(body.trim()).map_err(|e| {
        format!(
            "the answer is not a JSON object of the schema: {e} (answer began {})",
            crate::limits::excerpt(body)
        )
    })
}

/// Checks one candidate against the library and the person's data and
/// builds its protocol; the error lists every reason it was refused.
pub fn check(c: &Candidate, ctx: &Context<'_>) -> Result<Checked, Vec<String>> {
    let mut why = Vec::new();
    check_shape(c, &mut why);
    let Some(entry) = library::find(ctx.library, c.library_id.trim()) else {
        let ids: Vec<&str> = ctx.library.iter().map(|e| e.protocol.id.as_str()).collect();
        why.push(format!(
            "library_id {} is not in the intervention library ({})",
            crate::limits::excerpt(&c.library_id),
            ids.join(", ")
        ));
        return Err(why);
    };
    let mut protocol = entry.protocol.clone();
    let mut notes = Vec::new();

    // The treatment and the comparator are arms of that protocol.
    let arm = c.treatment_arm.trim();
    if protocol.arm_index(arm).is_none() || arm == protocol.comparator {
        let keys: Vec<&str> = protocol
            .arms
            .iter()
            .filter(|a| a.key != protocol.comparator)
            .map(|a| a.key.as_str())
            .collect();
        why.push(format!(
            "treatment_arm {} is not a treatment arm of {} ({})",
            crate::limits::excerpt(arm),
            protocol.id,
            keys.join(", ")
        ));
    }
    let comparator = &protocol.arms[protocol.comparator_index()];
    let named = c.comparator.trim();
    if !(named == comparator.key || named.eq_ignore_ascii_case(&comparator.label)) {
        why.push(format!(
            "comparator {}: {} compares with {:?} ({})",
            crate::limits::excerpt(named),
            protocol.id,
            comparator.key,
            comparator.label
        ));
    }

    // The outcome: the primary, or a secondary made primary.
    let stream = c.outcome_stream.trim();
    if protocol.outcome.stream != stream {
        match protocol.secondary.iter().position(|o| o.stream == stream) {
            Some(i) => {
                let new = protocol.secondary.remove(i);
                let old = std::mem::replace(&mut protocol.outcome, new);
                protocol.secondary.insert(0, old);
                notes.push(format!(
                    "{stream} is the primary outcome (the library has it as a secondary one)"
                ));
            }
            None => {
                let streams: Vec<&str> = protocol.outcomes().map(|o| o.stream.as_str()).collect();
                why.push(format!(
                    "outcome_stream {} is not measured by {} ({})",
                    crate::limits::excerpt(stream),
                    protocol.id,
                    streams.join(", ")
                ));
            }
        }
    }
    let facts = ctx
        .streams
        .iter()
        .find(|s| s.key == protocol.outcome.stream);
    match protocol
        .outcome
        .recorded(facts.is_some_and(|f| f.days_with_data > 0))
    {
        Ok(Recorded::Data) => {}
        Ok(Recorded::SelfReport(question)) => notes.push(format!(
            "{} has no data yet: it is a self-report, asked each day (\"{question}\")",
            protocol.outcome.stream
        )),
        Err(reason) => why.push(reason),
    }
    if c.direction != protocol.outcome.direction {
        why.push(format!(
            "direction {:?}: for {} the protocol says {:?} is better",
            c.direction, protocol.outcome.stream, protocol.outcome.direction
        ));
    }

    // The causal graph: its names, no cycle, a path, a valid adjustment set.
    let known = |n: &str| {
        n == "treatment"
            || n == "outcome"
            || c.confounders.iter().any(|x| x.trim() == n)
            || c.mediators.iter().any(|x| x.trim() == n)
    };
    for [a, b] in &c.graph {
        for n in [a, b] {
            if !known(n.trim()) {
                why.push(format!(
                    "graph names {}, which is not \"treatment\", \"outcome\", a confounder or a mediator",
                    crate::limits::excerpt(n)
                ));
            }
        }
    }
    // The protocol's graph adds confounder → outcome and confounder →
    // treatment arrows (`CausalGraph::of`): check cycles on that graph, and
    // the path from treatment to outcome on the proposer's own arrows.
    let mut full = c.graph.clone();
    for conf in &c.confounders {
        full.push([conf.trim().to_string(), "outcome".into()]);
        full.push([conf.trim().to_string(), "treatment".into()]);
    }
    match NamedGraph::from_edges(&full) {
        Err(e) => why.push(e.to_string()),
        Ok(g) => {
            let own_path = NamedGraph::from_edges(&c.graph)
                .is_ok_and(|own| own.has_path("treatment", "outcome"));
            if !own_path {
                why.push(crate::trial::causal::CausalError::NoPath.to_string());
            }
            for m in g.mediators("treatment", "outcome") {
                if c.confounders.iter().any(|x| x.trim() == m) {
                    why.push(format!(
                        "{m:?} is listed as a confounder but lies between treatment and outcome (a mediator)"
                    ));
                }
            }
            for (z, reason) in g.adjustment_problems("treatment", "outcome", &c.adjust_for, true) {
                why.push(format!("adjusting for {z:?}: {reason}"));
            }
        }
    }

    // The prior: floored, and checked against the person's data.
    let outcome = protocol.outcome.clone();
    let mut prior_from_proposer = false;
    let mut stated_effect_sd = None;
    if let Some(p) = c.effect_prior
        && p.mean.is_finite()
        && p.sd.is_finite()
        && p.sd > 0.0
    {
        let floor = prior_sd_floor(p.mean, outcome.mid().link(), outcome.direction);
        let sd = p.sd.max(floor);
        if sd > p.sd {
            notes.push(format!(
                "prior sd widened from {:.3} to {:.3} so that the prior alone never says more than 80% that it helps, nor rules out the MID",
                p.sd, sd
            ));
        }
        match prior_predictive(outcome.family, p.mean, sd, facts, &outcome) {
            PriorCheck::Plausible => {}
            PriorCheck::Note(n) => notes.push(n),
            PriorCheck::Implausible(n) => why.push(n),
        }
        protocol
            .outcome
            .priors
            .effects
            .insert(arm.to_string(), NormalPrior { mean: p.mean, sd });
        prior_from_proposer = true;
        stated_effect_sd = Some(p.sd);
    }
    if let Some(h) = c.half_life_days {
        protocol.outcome.priors.half_life_median_days = Some(h);
    }
    if !why.is_empty() {
        return Err(why);
    }

    let edges: Vec<[String; 2]> = c
        .graph
        .iter()
        .map(|[a, b]| [a.trim().to_string(), b.trim().to_string()])
        .collect();
    protocol.hypothesis = Some(Hypothesis {
        rationale: c.rationale.trim().to_string(),
        uncertainty: Some(c.sigma),
        confounders: trimmed(&c.confounders),
        mediators: trimmed(&c.mediators),
        edges,
        adjust_for: trimmed(&c.adjust_for),
        proposed_by: Some(ctx.proposer.to_string()),
        prior_from_proposer,
        stated_effect_sd,
        safety_notes: trimmed(&c.safety_notes),
    });
    if c.changes_medication && !protocol.needs_clinician {
        protocol.needs_clinician = true;
        notes.push(
            "it changes prescribed medication: approval needs a clinician's agreement".into(),
        );
    }
    let text = match toml::to_string(&protocol) {
        Ok(t) => format!(
            "# Proposed by {} from the library protocol {:?}.\n{t}",
            ctx.proposer, entry.protocol.id
        ),
        Err(e) => return Err(vec![format!("cannot write the protocol: {e}")]),
    };
    let protocol = Protocol::parse(&text, "proposal").map_err(|e| {
        e.issues
            .iter()
            .map(|i| format!("the protocol it makes is invalid: {}: {}", i.key, i.message))
            .collect::<Vec<_>>()
    })?;
    // A medication change is never merely recommended: it is tested, with
    // a clinician's agreement at approval, or not at all.
    let verdict = if c.sigma >= ctx.tau || protocol.needs_clinician {
        Verdict::Test
    } else {
        Verdict::Recommend
    };
    Ok(Checked {
        candidate: c.clone(),
        verdict,
        protocol,
        protocol_text: text,
        notes,
    })
}

fn trimmed(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Numbers in range, texts and lists of a sane size.
fn check_shape(c: &Candidate, why: &mut Vec<String>) {
    if !(0.0..=1.0).contains(&c.sigma) {
        why.push(format!("sigma {} must be between 0 and 1", c.sigma));
    }
    if let Some(p) = c.effect_prior
        && !(p.mean.is_finite() && p.sd.is_finite() && p.sd > 0.0)
    {
        why.push(format!(
            "effect_prior must have a finite mean and a positive sd (got mean {}, sd {})",
            p.mean, p.sd
        ));
    }
    if let Some(h) = c.half_life_days
        && !(h > 0.0 && h <= 365.0)
    {
        why.push(format!(
            "half_life_days {h} must be above 0 and at most 365"
        ));
    }
    if c.rationale.trim().is_empty() {
        why.push("rationale is empty".into());
    }
    let lists: [(&str, &[String]); 4] = [
        ("confounders", &c.confounders),
        ("mediators", &c.mediators),
        ("adjust_for", &c.adjust_for),
        ("safety_notes", &c.safety_notes),
    ];
    let texts = [
        ("intervention", c.intervention.as_str()),
        ("rationale", c.rationale.as_str()),
        ("comparator", c.comparator.as_str()),
    ]
    .into_iter()
    .chain(
        lists
            .iter()
            .flat_map(|(name, items)| items.iter().map(move |t| (*name, t.as_str()))),
    )
    .chain(c.graph.iter().flatten().map(|t| ("graph", t.as_str())));
    for (name, t) in texts {
        if t.chars().count() > MAX_TEXT {
            why.push(format!(
                "{name} has a text longer than {MAX_TEXT} characters"
            ));
        }
    }
    let lists = [
        ("confounders", c.confounders.len()),
        ("mediators", c.mediators.len()),
        ("graph", c.graph.len()),
        ("adjust_for", c.adjust_for.len()),
        ("safety_notes", c.safety_notes.len()),
    ];
    for (name, n) in lists {
        if n > MAX_ITEMS {
            why.push(format!("{name} has {n} items (at most {MAX_ITEMS})"));
        }
    }
}

/// The floor on the sd of a proposer's effect prior (link scale), so that
/// the prior alone neither stops nor drops anything: at least the MID, and
/// wide enough that both P(the treatment helps at all) ≤ 0.8 and P(it helps
/// by the MID) ≥ 0.2 before any data, i.e. `sd ≥ |mean| / Φ⁻¹(0.8)` and
/// `sd ≥ (MID − d·mean) / Φ⁻¹(0.8)` with `d` the better direction's sign.
/// Efficacy (P ≥ ~0.95), futility and arm-drop (P ≤ ~0.05) thresholds lie
/// outside [0.2, 0.8], so only the person's data can reach them.
pub fn prior_sd_floor(mean: f64, mid_link: f64, direction: Direction) -> f64 {
    let toward_better = direction.sign() * mean;
    (mean.abs() / Z_80)
        .max(mid_link.abs())
        .max((mid_link.abs() - toward_better) / Z_80)
}

/// The verdict of a prior predictive check.
#[derive(Debug, Clone, PartialEq)]
pub enum PriorCheck {
    /// Nothing to say.
    Plausible,
    /// Worth telling, not refusing.
    Note(String),
    /// Far outside the person's own data: refused.
    Implausible(String),
}

/// Standard normal upper tail.
fn upper_tail(z: f64) -> f64 {
    0.5 * libm::erfc(z / std::f64::consts::SQRT_2)
}

/// Checks what a prior on the effect implies for the outcome against the
/// person's data (the prior predictive of the treatment arm's daily level,
/// `statistics.md` §4): a gaussian effect whose mean exceeds twice the
/// person's day-to-day sd, or that moves a rating past its scale, and a
/// ratio effect whose mean exceeds a four-fold change are refused; priors
/// whose tails put more than 5% on such effects are noted.
pub fn prior_predictive(
    family: Family,
    mean: f64,
    sd: f64,
    facts: Option<&StreamFacts>,
    outcome: &crate::trial::protocol::Outcome,
) -> PriorCheck {
    let two_sided = |limit: f64| upper_tail((limit - mean) / sd) + upper_tail((limit + mean) / sd);
    if family != Family::Gaussian {
        let limit = 4f64.ln();
        if mean.abs() > limit {
            return PriorCheck::Implausible(format!(
                "the prior expects a {:.1}-fold change in {}: far outside what any lifestyle change does",
                mean.exp().max(1.0 / mean.exp()),
                outcome.stream
            ));
        }
        let tail = two_sided(limit);
        return if tail > 0.05 {
            PriorCheck::Note(format!(
                "the prior puts {:.0}% on more than a four-fold change; the data will have to rule that out",
                100.0 * tail
            ))
        } else {
            PriorCheck::Plausible
        };
    }
    if let Some(q) = &outcome.self_report {
        let range = f64::from(q.max - q.min);
        if mean.abs() > range || sd > 2.0 * range {
            return PriorCheck::Implausible(format!(
                "the prior ({mean:.2} ± {sd:.2}) does not fit {}'s scale {}–{}",
                outcome.stream, q.min, q.max
            ));
        }
    }
    let Some((level, spread)) = facts
        .and_then(|f| f.mean.zip(f.sd))
        .filter(|(_, s)| *s > 0.0)
    else {
        return PriorCheck::Note(format!(
            "no data of {} yet to check the prior against",
            outcome.stream
        ));
    };
    if mean.abs() > 2.0 * spread {
        return PriorCheck::Implausible(format!(
            "the prior expects a change of {mean:.2} {} in {}, more than twice this person's day-to-day sd ({spread:.2})",
            outcome.unit, outcome.stream
        ));
    }
    if let Some(q) = &outcome.self_report {
        let moved = level + mean;
        if moved < f64::from(q.min) || moved > f64::from(q.max) {
            return PriorCheck::Implausible(format!(
                "the prior moves {} from its mean {level:.2} to {moved:.2}, outside its scale {}–{}",
                outcome.stream, q.min, q.max
            ));
        }
    }
    let tail = two_sided(3.0 * spread);
    if tail > 0.05 {
        PriorCheck::Note(format!(
            "the prior puts {:.0}% on changes beyond 3 day-to-day sds of {}",
            100.0 * tail,
            outcome.stream
        ))
    } else {
        PriorCheck::Plausible
    }
}

/// The built-in proposer: the library entries whose words match the
/// question and goals best (or, with none matching, whose outcome the
/// person records), each as a candidate with the library's own uncertainty
/// and the design's sceptical prior.
pub fn offline_answer(text: &str, ctx: &Context<'_>, limit: usize) -> Answer {
    let mut scored: Vec<(usize, bool, &LibraryEntry)> = ctx
        .library
        .iter()
        .map(|e| {
            let has_data = e.protocol.outcomes().any(|o| {
                ctx.streams
                    .iter()
                    .any(|s| s.key == o.stream && s.days_with_data > 0)
            });
            (library::score(e, text), has_data, e)
        })
        .filter(|(s, has, _)| *s > 0 || (text.trim().is_empty() && *has))
        .collect();
    scored.sort_by_key(|s| std::cmp::Reverse((s.0, s.1)));
    let mut missing = Vec::new();
    if scored.is_empty() && !text.trim().is_empty() {
        missing.push(Missing {
            what: "an intervention in the library that matches the question".into(),
            suggestion: "write a protocol for it (see protocols/) and propose it with `nof1d trial propose FILE`, or configure an LLM".into(),
        });
    }
    let hypotheses = scored
        .into_iter()
        .take(limit)
        .map(|(_, _, e)| library_candidate(e))
        .collect();
    Answer {
        hypotheses,
        missing,
    }
}

/// A library entry as a candidate: its first treatment arm, its primary
/// outcome, its hypothesis's confounders, and no prior of its own.
pub fn library_candidate(e: &LibraryEntry) -> Candidate {
    let p = &e.protocol;
    let treatment = p.arms.iter().find(|a| a.key != p.comparator);
    let arm = treatment.map(|a| a.key.clone()).unwrap_or_default();
    let h = p.hypothesis.as_ref();
    let confounders: Vec<String> = h.map(|h| h.confounders.clone()).unwrap_or_default();
    let mut graph = vec![["treatment".to_string(), "outcome".to_string()]];
    for c in &confounders {
        graph.push([c.clone(), "outcome".to_string()]);
    }
    Candidate {
        library_id: p.id.clone(),
        treatment_arm: arm,
        intervention: treatment.map_or_else(|| p.title.clone(), |a| a.label.clone()),
        comparator: p.comparator.clone(),
        outcome_stream: p.outcome.stream.clone(),
        direction: p.outcome.direction,
        effect_prior: None,
        half_life_days: None,
        sigma: h.and_then(|h| h.uncertainty).unwrap_or(0.5),
        rationale: h
            .map(|h| h.rationale.trim().to_string())
            .unwrap_or_else(|| p.description.trim().to_string()),
        confounders,
        mediators: Vec::new(),
        graph,
        adjust_for: Vec::new(),
        safety_notes: Vec::new(),
        changes_medication: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(key: &str, mean: f64, sd: f64) -> StreamFacts {
        StreamFacts {
            key: key.into(),
            days_with_data: 60,
            mean: Some(mean),
            sd: Some(sd),
        }
    }

    fn ctx<'a>(streams: &'a [StreamFacts]) -> Context<'a> {
        Context {
            library: library::shipped(),
            streams,
            tau: 0.3,
            proposer: "llm:test",
        }
    }

    fn meditation() -> Candidate {
        Candidate {
            library_id: "meditation-anxiety".into(),
            treatment_arm: "meditation".into(),
            intervention: "ten minutes of morning meditation".into(),
            comparator: "none".into(),
            outcome_stream: "anxiety_evening".into(),
            direction: Direction::Lower,
            effect_prior: Some(EffectPrior {
                mean: -0.8,
                sd: 0.3,
            }),
            half_life_days: Some(2.0),
            sigma: 0.6,
            rationale: "Mindfulness trials show small average reductions in anxiety.".into(),
            confounders: vec!["work stress".into()],
            mediators: vec!["rumination".into()],
            graph: vec![
                ["treatment".into(), "rumination".into()],
                ["rumination".into(), "outcome".into()],
                ["work stress".into(), "outcome".into()],
            ],
            adjust_for: vec!["work stress".into()],
            safety_notes: vec![],
            changes_medication: false,
        }
    }

    #[test]
    fn a_good_hypothesis_becomes_a_protocol_with_a_floored_prior() {
        let streams = [facts("anxiety_evening", 5.0, 1.5)];
        let c = check(&meditation(), &ctx(&streams)).expect("valid");
        assert_eq!(c.verdict, Verdict::Test);
        let p = &c.protocol.outcome.priors.effects["meditation"];
        assert_eq!(p.mean, -0.8);
        // floor = max(0.8 / 0.8416, MID 1.0) = 1.0
        assert!((p.sd - 1.0).abs() < 1e-12, "{p:?}");
        let h = c.protocol.hypothesis.as_ref().expect("hypothesis");
        assert!(h.prior_from_proposer);
        assert_eq!(h.proposed_by.as_deref(), Some("llm:test"));
        assert!(Protocol::parse(&c.protocol_text, "x").is_ok());
        assert!(c.notes.iter().any(|n| n.contains("widened")));
        let mut low = meditation();
        low.sigma = 0.1;
        assert_eq!(
            check(&low, &ctx(&streams)).expect("valid").verdict,
            Verdict::Recommend
        );
    }

    #[test]
    fn every_kind_of_bad_hypothesis_is_refused_with_its_reason() {
        let streams = [facts("anxiety_evening", 5.0, 1.5)];
        let refused = |edit: &dyn Fn(&mut Candidate), needle: &str| {
            let mut c = meditation();
            edit(&mut c);
            let why = check(&c, &ctx(&streams)).expect_err("refused");
            assert!(
                why.iter().any(|w| w.contains(needle)),
                "{needle:?} not in {why:?}"
            );
        };
        refused(
            &|c| c.library_id = "cocaine".into(),
            "not in the intervention library",
        );
        refused(&|c| c.treatment_arm = "none".into(), "not a treatment arm");
        refused(&|c| c.comparator = "yoga".into(), "compares with");
        refused(
            &|c| c.outcome_stream = "migraine_day".into(),
            "not measured by",
        );
        refused(&|c| c.direction = Direction::Higher, "is better");
        refused(&|c| c.sigma = 1.5, "between 0 and 1");
        refused(
            &|c| {
                c.effect_prior = Some(EffectPrior {
                    mean: 1.0,
                    sd: -1.0,
                })
            },
            "positive sd",
        );
        refused(
            &|c| c.graph.push(["outcome".into(), "treatment".into()]),
            "cycle",
        );
        refused(
            &|c| c.graph = vec![["work stress".into(), "outcome".into()]],
            "no directed path",
        );
        refused(
            &|c| c.graph.push(["moon".into(), "outcome".into()]),
            "not \"treatment\"",
        );
        refused(&|c| c.adjust_for = vec!["rumination".into()], "mediator");
        refused(
            &|c| {
                c.effect_prior = Some(EffectPrior {
                    mean: -4.0,
                    sd: 1.0,
                })
            },
            "more than twice",
        );
    }

    #[test]
    fn an_outcome_without_data_must_be_reportable() {
        // screen-cutoff's sleep_asleep comes from a device, not a question.
        let c = Candidate {
            library_id: "screen-cutoff".into(),
            treatment_arm: "cutoff".into(),
            comparator: "usual".into(),
            outcome_stream: "sleep_asleep".into(),
            direction: Direction::Higher,
            ..meditation()
        };
        let c = Candidate {
            graph: vec![["treatment".into(), "outcome".into()]],
            mediators: vec![],
            adjust_for: vec![],
            effect_prior: None,
            ..c
        };
        let why = check(&c, &ctx(&[])).expect_err("no data");
        assert!(
            why.iter().any(|w| w.contains("connect a source")),
            "{why:?}"
        );
        // A secondary outcome the person has becomes the primary one.
        let streams = [facts("resting_heart_rate", 58.0, 3.0)];
        let c = Candidate {
            outcome_stream: "resting_heart_rate".into(),
            direction: Direction::Lower,
            ..c
        };
        let ok = check(&c, &ctx(&streams)).expect("secondary made primary");
        assert_eq!(ok.protocol.outcome.stream, "resting_heart_rate");
        assert_eq!(ok.protocol.secondary[0].stream, "sleep_asleep");
    }

    #[test]
    fn the_floor_keeps_the_prior_from_deciding_alone() {
        // P(better by m) under Normal(mean, sd), by an independent formula.
        let p_better_by = |mean: f64, sd: f64, m: f64, d: Direction| {
            0.5 * libm::erfc((m - d.sign() * mean) / (sd * std::f64::consts::SQRT_2))
        };
        for d in [Direction::Higher, Direction::Lower] {
            for (mean, mid) in [
                (0.5, 0.1),
                (-3.0, 1.0),
                (0.0, 0.4),
                (0.84, 1.0),
                (-0.84, 1.0),
            ] {
                let sd = prior_sd_floor(mean, mid, d);
                let helps = p_better_by(mean, sd, 0.0, d);
                let by_mid = p_better_by(mean, sd, mid, d);
                assert!(helps <= 0.8 + 1e-9, "{mean} {mid} {d:?}: P(better) {helps}");
                assert!(
                    by_mid >= 0.2 - 1e-9,
                    "{mean} {mid} {d:?}: P(by MID) {by_mid}"
                );
                assert!(sd >= mid);
            }
        }
    }

    #[test]
    fn answers_parse_strictly() {
        let good = serde_json::json!({"hypotheses": [meditation()], "missing": []}).to_string();
        assert_eq!(parse_answer(&good).expect("parses").hypotheses.len(), 1);
        assert!(parse_answer(&format!("```json\n{good}\n```")).is_ok());
        assert!(parse_answer(&format!("Sure! {good}")).is_err());
        assert!(parse_answer("{\"hypotheses\": [], \"extra\": 1}").is_err());
    }

    #[test]
    fn the_offline_proposer_answers_from_the_library() {
        let streams = [facts("anxiety_evening", 5.0, 1.5)];
        let a = offline_answer("does magnesium help my migraines?", &ctx(&streams), 3);
        assert_eq!(a.hypotheses[0].library_id, "magnesium-migraine");
        let checked =
            check(&a.hypotheses[0], &ctx(&streams)).expect("library candidates are valid");
        assert!(checked.notes.iter().any(|n| n.contains("self-report")));
        let a = offline_answer("", &ctx(&streams), 3);
        assert_eq!(a.hypotheses[0].library_id, "meditation-anxiety");
        let a = offline_answer("does juggling cure baldness", &ctx(&streams), 3);
        assert!(a.hypotheses.is_empty() && !a.missing.is_empty());
    }
}

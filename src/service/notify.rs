//! Notifications: composing messages for the outbox and delivering them.
//!
//! Every message is written to the outbox first (see `store`), keyed by
//! participant, trial, day and kind, and delivered later by the outbox job.
//! With no SMTP configured — the embedded default — delivery writes the
//! message as an `.eml` file under `data_dir/mail/`, named after its key, so
//! nothing is lost and a repeated delivery rewrites the same file.
//! The Message-ID is derived from the key, so mail systems can de-duplicate
//! the rare repeat after a crash between sending and marking.

use std::path::{Path, PathBuf};

use askama::Template;
use jiff::Timestamp;
use jiff::civil::Date;
use lettre::Transport;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::SmtpTransport;
use lettre::transport::smtp::authentication::Credentials;

use crate::service::config::{SmtpConfig, SmtpTls};
use sha2::{Digest, Sha256};

use crate::service::links::{LinkAction, LinkClaim, LinkKey};
use crate::service::store::{NewMessage, OutboxRow};
use crate::trial::lifecycle::DatedDay;
use crate::trial::protocol::Protocol;

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// An address did not parse: permanent, retrying cannot help.
    #[error("bad address {address:?}: {reason}")]
    Address {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
    /// The message could not be built: permanent.
    #[error("cannot build message: {0}")]
    Build(String),
    /// The SMTP server or the connection to it failed.
    #[error("SMTP: {message}")]
    Smtp {
        /// Whether it is this message's fault or every message's.
        fault: SmtpFault,
        /// What happened.
        message: String,
    },
    /// The SMTP settings cannot work (e.g. the password cannot be read).
    #[error("SMTP settings: {0}")]
    Settings(String),
    /// Writing the `.eml` file failed: temporary (disk full, permissions fixed later).
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Whose fault an SMTP failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpFault {
    /// A 5xx answer about this message (a recipient that does not exist, a
    /// message refused): retrying it cannot help.
    Message,
    /// The server, the connection or the account: refused credentials
    /// (530, 534, 535, 538), a 4xx answer, a time-out, a refused connection.
    /// Every message would fail alike, and may go once it is mended.
    Server,
}

/// 5xx answers about the session, not the message: authentication
/// required, too weak, refused, or needing encryption (RFC 4954). A
/// revoked app password must hold the mail, not fail every message.
const ACCOUNT_CODES: [u16; 4] = [530, 534, 535, 538];

impl SmtpFault {
    /// The fault of a failed `send`.
    fn of(e: &lettre::transport::smtp::Error) -> SmtpFault {
        match e.status().map(u16::from) {
            Some(code) if e.is_permanent() && !ACCOUNT_CODES.contains(&code) => SmtpFault::Message,
            _ => SmtpFault::Server,
        }
    }
}

impl NotifyError {
    /// True when retrying this message cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            NotifyError::Address { .. }
                | NotifyError::Build(_)
                | NotifyError::Smtp {
                    fault: SmtpFault::Message,
                    ..
                }
        )
    }

    /// True when every message would fail alike (the server, the account,
    /// the settings, the mail folder): the rest wait for the next run
    /// rather than each spend an attempt.
    pub fn holds_every_message(&self) -> bool {
        matches!(
            self,
            NotifyError::Settings(_)
                | NotifyError::Write { .. }
                | NotifyError::Smtp {
                    fault: SmtpFault::Server,
                    ..
                }
        )
    }
}

/// The Message-ID for an outbox key: stable, so a repeat can be de-duplicated.
pub fn message_id(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("<{hex}@nof1d>")
}

/// What the daily assignment says about today.
pub struct Assignment<'a> {
    /// Participant's key (for the outbox key).
    pub participant_key: &'a str,
    /// Participant's name.
    pub participant_name: &'a str,
    /// Participant's id.
    pub participant_id: i64,
    /// Address.
    pub email: &'a str,
    /// Trial id.
    pub trial_id: i64,
    /// The trial's protocol.
    pub protocol: &'a Protocol,
    /// Today's schedule row.
    pub today: &'a DatedDay,
    /// One-click links, when the dashboard can be reached.
    pub links: Option<Links<'a>>,
}

/// What one-click links need.
#[derive(Debug, Clone, Copy)]
pub struct Links<'a> {
    /// The signing key.
    pub key: &'a LinkKey,
    /// The dashboard's base URL (no trailing slash).
    pub base_url: &'a str,
    /// Valid until.
    pub expires: Timestamp,
}

/// One link in an email: its words and URL.
struct LinkLine {
    label: String,
    url: String,
}

fn link_lines(a: &Assignment<'_>) -> (Vec<LinkLine>, Vec<LinkLine>) {
    let Some(l) = a.links else {
        return (Vec::new(), Vec::new());
    };
    let url = |action: LinkAction| {
        let token = l.key.sign(&LinkClaim {
            participant_id: a.participant_id,
            trial_id: a.trial_id,
            date: a.today.local_date,
            action,
            expires: l.expires,
        });
        format!("{}/l/{token}", l.base_url)
    };
    let adherence = [
        (LinkAction::Done, "Done"),
        (LinkAction::NotDone, "Could not do it"),
        (LinkAction::SideEffect, "Side effect"),
    ]
    .into_iter()
    .map(|(action, label)| LinkLine {
        label: label.into(),
        url: url(action),
    })
    .collect();
    let ratings = a
        .protocol
        .outcome
        .self_report
        .as_ref()
        .map(|sr| {
            (sr.min..=sr.max)
                .map(|v| LinkLine {
                    label: v.to_string(),
                    url: url(LinkAction::Rate(v)),
                })
                .collect()
        })
        .unwrap_or_default();
    (adherence, ratings)
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{ subject }}</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 36em; margin: auto; padding: 1em; color: #222">
<p>Good morning {{ name }},</p>
<p style="font-size: 0.9em; color: #555">{{ title }}<br>{{ when }}</p>
<h1 style="font-size: 1.4em">Today: {{ arm }}</h1>
{% if !instructions.is_empty() %}<p>{{ instructions }}</p>{% endif %}
{% if let Some(note) = note %}<p><em>{{ note }}</em></p>{% endif %}
{% if !adherence.is_empty() %}<p>When you have done it, tell nof1d with one click:</p>
<p>{% for l in adherence %}<a href="{{ l.url }}" style="display: inline-block; padding: 0.5em 0.9em; margin: 0.2em; border: 1px solid #2a6; border-radius: 4px; color: #164; text-decoration: none">{{ l.label }}</a> {% endfor %}</p>{% endif %}
{% if let Some(q) = question %}<p>This evening, please answer: {{ q }}</p>
{% if !ratings.is_empty() %}<p>{% for l in ratings %}<a href="{{ l.url }}" style="display: inline-block; min-width: 1.6em; text-align: center; padding: 0.4em; margin: 0.1em; border: 1px solid #36a; border-radius: 4px; color: #124; text-decoration: none">{{ l.label }}</a>{% endfor %}</p>
<p style="font-size: 0.8em; color: #777">Each link opens a page with one button to confirm: nothing is recorded by merely opening it.</p>{% endif %}{% endif %}
<p style="font-size: 0.8em; color: #777">Sent by nof1d. Future days are not shown, so that your trial stays fair.</p>
</body></html>"#
)]
struct AssignmentHtml<'a> {
    subject: &'a str,
    name: &'a str,
    title: &'a str,
    when: &'a str,
    arm: &'a str,
    instructions: &'a str,
    note: Option<&'a str>,
    question: Option<&'a str>,
    adherence: &'a [LinkLine],
    ratings: &'a [LinkLine],
}

/// Composes today's assignment for the outbox: the arm in force today (its
/// code if blinded) with its instructions, the trial day and block; nothing
/// about any future day.
pub fn assignment_message(a: &Assignment<'_>) -> NewMessage {
    let p = a.protocol;
    let date: Date = a.today.local_date;
    let run_in = a.today.block.is_none();
    let arm = p.day_label(a.today.arm, run_in);
    let instructions = p.arms[a.today.arm].instructions.as_str();
    let total_blocks = p.design.max_blocks;
    let when = match a.today.block {
        Some(b) => format!(
            "{}, day {} of the trial, block {} of up to {}",
            date.strftime("%A %-d %B %Y"),
            a.today.day + 1,
            b + 1,
            total_blocks
        ),
        None => format!(
            "{}, day {} of the trial (run-in, before the first period)",
            date.strftime("%A %-d %B %Y"),
            a.today.day + 1
        ),
    };
    let note = if a.today.washout {
        Some(
            "This is a washout day at the start of a period: follow today's instructions as usual.",
        )
    } else if run_in && p.blinded {
        Some(
            "During run-in, take from the supply marked \"Run-in\": it holds the comparator, so that the run-in measures your baseline on it without showing which coded supply is which.",
        )
    } else if run_in {
        Some("During run-in nothing changes: this measures your usual baseline.")
    } else {
        None
    };
    let question = p.outcome.self_report.as_ref().map(|s| s.question.as_str());
    let subject = format!("Today ({}): {arm}", date.strftime("%a %-d %b"));
    let mut text = format!(
        "Good morning {},\n\n{}\n{when}\n\nToday: {arm}\n",
        a.participant_name, p.title
    );
    if !instructions.is_empty() {
        text.push_str(&format!("\n{instructions}\n"));
    }
    if let Some(n) = note {
        text.push_str(&format!("\n{n}\n"));
    }
    let (adherence, ratings) = link_lines(a);
    if !adherence.is_empty() {
        text.push_str("\nWhen you have done it, tell nof1d (each link opens a page with one button to confirm):\n");
        for l in &adherence {
            text.push_str(&format!("  {}: {}\n", l.label, l.url));
        }
    }
    if let Some(q) = question {
        text.push_str(&format!("\nThis evening, please answer: {q}\n"));
        for l in &ratings {
            text.push_str(&format!("  {}: {}\n", l.label, l.url));
        }
    }
    text.push_str(
        "\n-- \nSent by nof1d. Future days are not shown, so that your trial stays fair.\n",
    );
    let html = AssignmentHtml {
        subject: &subject,
        name: a.participant_name,
        title: &p.title,
        when: &when,
        arm,
        instructions,
        note,
        question,
        adherence: &adherence,
        ratings: &ratings,
    }
    .render()
    // Rendering a template with only string fields cannot fail; keep the
    // plain-text body if it ever does rather than losing the message.
    .unwrap_or_else(|_| format!("<pre>{}</pre>", html_escape(&text)));
    let key = format!("assignment/{}/{}/{date}", a.participant_key, a.trial_id);
    NewMessage {
        message_id: message_id(&key),
        key,
        participant_id: a.participant_id,
        trial_id: Some(a.trial_id),
        kind: "assignment".into(),
        local_date: Some(date),
        recipient: a.email.to_string(),
        subject,
        body_text: text,
        body_html: html,
    }
}

/// The evening reminder of a trial day whose self-report has not come: the
/// question and its one-click rating links, nothing else (no arm: the
/// morning's email said it). `None` where the outcome is not a
/// self-report. Its key names the day, so at most one goes out a day.
pub fn evening_reminder_message(a: &Assignment<'_>) -> Option<NewMessage> {
    let question = a.protocol.outcome.self_report.as_ref()?.question.as_str();
    let date = a.today.local_date;
    let (_, ratings) = link_lines(a);
    let subject = format!(
        "This evening ({}): {}",
        date.strftime("%a %-d %b"),
        a.protocol.title
    );
    let mut text = format!(
        "Good evening {},\n\nToday's answer for \"{}\" has not come yet. {question}\n",
        a.participant_name, a.protocol.title
    );
    for l in &ratings {
        text.push_str(&format!("  {}: {}\n", l.label, l.url));
    }
    text.push_str(
        "\nAlready answered, or answering on the dashboard? Then there is nothing to do.\n\n-- \nSent by nof1d: one reminder at most a day (evening_reminder in the config sets its time, or off).\n",
    );
    let html = ReminderHtml {
        subject: &subject,
        name: a.participant_name,
        title: &a.protocol.title,
        question,
        ratings: &ratings,
    }
    .render()
    .unwrap_or_else(|_| format!("<pre>{}</pre>", html_escape(&text)));
    let key = format!("reminder/{}/{}/{date}", a.participant_key, a.trial_id);
    Some(NewMessage {
        message_id: message_id(&key),
        key,
        participant_id: a.participant_id,
        trial_id: Some(a.trial_id),
        kind: "reminder".into(),
        local_date: Some(date),
        recipient: a.email.to_string(),
        subject,
        body_text: text,
        body_html: html,
    })
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>{{ subject }}</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 36em; margin: auto; padding: 1em; color: #222">
<p>Good evening {{ name }},</p>
<p>Today's answer for "{{ title }}" has not come yet. {{ question }}</p>
{% if !ratings.is_empty() %}<p>{% for l in ratings %}<a href="{{ l.url }}" style="display: inline-block; min-width: 1.6em; text-align: center; padding: 0.4em; margin: 0.1em; border: 1px solid #36a; border-radius: 4px; color: #124; text-decoration: none">{{ l.label }}</a>{% endfor %}</p>
<p style="font-size: 0.8em; color: #777">Each link opens a page with one button to confirm: nothing is recorded by merely opening it.</p>{% endif %}
<p style="font-size: 0.8em; color: #777">Already answered? Then there is nothing to do. Sent by nof1d: one reminder at most a day.</p>
</body></html>"#
)]
struct ReminderHtml<'a> {
    subject: &'a str,
    name: &'a str,
    title: &'a str,
    question: &'a str,
    ratings: &'a [LinkLine],
}

/// Who a message goes to.
#[derive(Debug, Clone, Copy)]
pub struct Recipient<'a> {
    /// Participant id.
    pub participant_id: i64,
    /// Participant key (for outbox keys).
    pub key: &'a str,
    /// Name.
    pub name: &'a str,
    /// Address.
    pub email: &'a str,
}

/// A plain message: a subject and paragraphs, as text and as HTML.
fn simple_message(
    to: Recipient<'_>,
    key: String,
    kind: &str,
    trial_id: Option<i64>,
    local_date: Option<Date>,
    subject: String,
    paragraphs: &[String],
) -> NewMessage {
    let mut text = format!("Hello {},\n\n", to.name);
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title></head><body style=\"font-family: system-ui, sans-serif; max-width: 36em; margin: auto; padding: 1em; color: #222\"><p>Hello {},</p>",
        html_escape(&subject),
        html_escape(to.name)
    );
    for p in paragraphs {
        text.push_str(p);
        text.push_str("\n\n");
        html.push_str(&format!("<p>{}</p>", html_escape(p)));
    }
    text.push_str("-- \nSent by nof1d.\n");
    html.push_str("<p style=\"font-size: 0.8em; color: #777\">Sent by nof1d.</p></body></html>");
    NewMessage {
        message_id: message_id(&key),
        key,
        participant_id: to.participant_id,
        trial_id,
        kind: kind.into(),
        local_date,
        recipient: to.email.to_string(),
        subject,
        body_text: text,
        body_html: html,
    }
}

/// "Your trial has started", with the locked protocol's hash.
pub fn trial_started_message(
    to: Recipient<'_>,
    trial_id: i64,
    protocol: &Protocol,
    protocol_hash: &str,
    start: Date,
    dashboard: &str,
    uncalibrated: Option<&str>,
) -> NewMessage {
    let mut lines = vec![
        format!(
            "Your trial \"{}\" starts on {}. Each morning you will get that day's assignment; future days stay hidden so that the trial stays fair.",
            protocol.title,
            start.strftime("%A %-d %B %Y")
        ),
        format!(
            "The protocol is locked: its SHA-256 is {protocol_hash}. Up to {} blocks of {} periods of {} days.",
            protocol.design.max_blocks,
            protocol.arms.len(),
            protocol.design.period_days
        ),
    ];
    if let Some(why) = uncalibrated {
        lines.push(format!(
            "Its stopping rule could not be calibrated for this design ({}), so it decides on the protocol's stated thresholds (P(better by MID) ≥ {} to stop for efficacy, {}), whose false-stop rate was not checked: treat an early stop with more caution than usual.",
            why,
            protocol.decision.efficacy,
            if protocol.decision.futility > 0.0 {
                format!("≤ {} for futility", protocol.decision.futility)
            } else {
                "never for futility".to_string()
            }
        ));
    }
    lines.push(format!("Dashboard: {dashboard}/"));
    simple_message(
        to,
        format!("trial-started/{}/{trial_id}", to.key),
        "trial_started",
        Some(trial_id),
        Some(start),
        format!("Your trial has started: {}", protocol.title),
        &lines,
    )
}

/// A decision in words: a stop or dropped arms, with the posterior numbers
/// and, from the fit it came from (`fit`), each arm's effect in the
/// outcome's own units where the family has them.
pub fn decision_message(
    to: Recipient<'_>,
    trial_id: i64,
    protocol: &Protocol,
    decision: &crate::trial::decide::Decision,
    fit: Option<&crate::engine::fit::FitReport>,
    today: Date,
    dashboard: &str,
) -> NewMessage {
    use crate::trial::decide::Action;
    let name = |arm: usize| protocol.display_label(arm).to_string();
    let headline = match &decision.action {
        Action::StopEfficacy { arm } => format!("Your trial has an answer: {} helps", name(*arm)),
        Action::StopFutility => {
            "Your trial has an answer: nothing reached the difference you care about".to_string()
        }
        Action::StopInconclusive => "Your trial has ended without a clear answer".to_string(),
        Action::StopSafety => "Your trial was stopped for safety".to_string(),
        Action::DropArms { arms } => format!(
            "{} dropped from your trial",
            arms.iter().map(|&a| name(a)).collect::<Vec<_>>().join(", ")
        ),
        Action::Continue => "Your trial goes on".to_string(),
    };
    // A blinded trial's effects are against the comparator, so naming a
    // code beside one would tell which code the comparator is: they are
    // shown, with the key, once the trial has ended.
    let ended = matches!(
        decision.action,
        Action::StopEfficacy { .. }
            | Action::StopFutility
            | Action::StopInconclusive
            | Action::StopSafety
    );
    let hidden = protocol.blinded && !ended;
    // The rule's words name arms by key: withheld with the numbers.
    let mut paragraphs = if hidden {
        vec![format!("{headline}."), BLINDED_ESTIMATES.to_string()]
    } else {
        vec![format!("{headline}. Rule: {}.", decision.rule)]
    };
    if let (false, Some(key)) = (hidden, protocol.code_key()) {
        paragraphs.push(format!("The trial has ended, so here is the key: {key}."));
    }
    // What a drop changes for the person: the arms they will still be
    // given, and in a blinded trial, which supply to set aside (its code
    // names no arm, so saying it keeps the blind).
    if let Action::DropArms { arms } = &decision.action {
        let dropped: Vec<String> = arms.iter().map(|&a| name(a)).collect();
        let remaining: Vec<String> = decision
            .look
            .active
            .iter()
            .filter(|a| !arms.contains(a))
            .map(|&a| name(a))
            .collect();
        let mut text = format!(
            "From now on you will not be given {}: the rest of the schedule was redrawn among {}, so check each morning's email for the day's arm.",
            dropped.join(" or "),
            remaining.join(", ")
        );
        if protocol.blinded {
            text.push_str(&format!(
                " Set the supply marked {} aside and do not use it.",
                dropped.join(" and ")
            ));
        }
        paragraphs.push(text);
    }
    // An ended trial's final answer in words, in the person's units and
    // direction, before the numbers.
    if let (false, true, Some(r)) = (hidden, ended, fit) {
        let comparator = name(protocol.comparator_index());
        let subject = crate::trial::standing::Subject::of(protocol, &comparator);
        let arms = crate::trial::standing::arms_of(r, protocol, name);
        let stage = crate::trial::standing::Stage::Ended(Some(decision.action.clone()));
        paragraphs.extend(crate::trial::standing::sentences(&subject, &arms, &stage));
    }
    for a in decision.arms.iter().filter(|_| !hidden) {
        paragraphs.push(format!(
            "{}: effect {:+.2} {} (90% interval {:+.2} to {:+.2}); probability it is better by at least the minimal important difference {:.0}%; probability it is the best arm {:.0}%.",
            name(a.arm),
            a.mean,
            protocol.outcome.unit,
            a.ci90[0],
            a.ci90[1],
            100.0 * a.p_better_by_mid,
            100.0 * a.p_best
        ));
        let natural = fit
            .and_then(|r| r.effects.iter().find(|e| e.arm == a.key))
            .and_then(|e| e.natural.as_ref());
        if let Some(n) = natural {
            paragraphs.push(format!("In your units: {}.", n.describe()));
        }
    }
    paragraphs.push(format!(
        "The full decision trail is on the dashboard: {dashboard}/"
    ));
    simple_message(
        to,
        format!("decision/{}/{trial_id}/{}", to.key, decision.look.period),
        "decision",
        Some(trial_id),
        Some(today),
        headline,
        &paragraphs,
    )
}

/// What a blinded trial's participant reads where estimates would be.
pub const BLINDED_ESTIMATES: &str = "This trial is blinded: its estimates compare each coded supply with the comparator, so they would tell you which is which. They are shown, with the key, when the trial ends.";

/// The past seven days' adherence reports by status, counted for the
/// weekly summary: the days of `schedule` in `[today - 7, today)` and the
/// `(day, status)` reports on them.
pub fn week_adherence(
    schedule: &[DatedDay],
    adherence: &[(u32, String)],
    today: Date,
) -> Vec<(String, usize)> {
    let week_start = today
        .checked_sub(jiff::Span::new().days(7))
        .unwrap_or(today);
    let days: Vec<u32> = schedule
        .iter()
        .filter(|r| r.local_date >= week_start && r.local_date < today)
        .map(|r| r.day)
        .collect();
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (day, status) in adherence {
        if days.contains(day) {
            *counts.entry(status.clone()).or_default() += 1;
        }
    }
    counts.into_iter().collect()
}

/// The weekly summary: the past seven days' adherence and the latest
/// estimate. Its key names the ISO week, so only the first one queued in a
/// week is kept.
pub fn weekly_summary_message(
    to: Recipient<'_>,
    trial_id: i64,
    protocol: &Protocol,
    today: Date,
    adherence: &[(String, usize)],
    standing: &[String],
    dashboard: &str,
) -> NewMessage {
    let mut paragraphs = vec![format!("Your week in \"{}\".", protocol.title)];
    // Where you stand, first (`service::standing::of_trial`; none before
    // the first fit). A running blinded trial's estimates would name the
    // comparator.
    if protocol.blinded && !standing.is_empty() {
        paragraphs.push(BLINDED_ESTIMATES.to_string());
    } else if !standing.is_empty() {
        paragraphs.extend(standing.iter().cloned());
        paragraphs.push(
            "Estimates move as data come in; the trial decides only at the end of a period."
                .to_string(),
        );
    }
    paragraphs.push(if adherence.is_empty() {
        "No adherence clicks last week: the links in each morning's email record whether you followed the day's assignment.".into()
    } else {
        format!(
            "Last week you reported: {}.",
            adherence
                .iter()
                .map(|(k, n)| format!("{n} {}", k.replace('_', " ")))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    paragraphs.push(format!("Dashboard: {dashboard}/"));
    simple_message(
        to,
        {
            // One per ISO week: the first assignment of a week carries it,
            // whichever day that is (a Monday missed while down skips nothing).
            let week = today.iso_week_date();
            format!(
                "weekly/{}/{trial_id}/{}-W{:02}",
                to.key,
                week.year(),
                week.week()
            )
        },
        "weekly_summary",
        Some(trial_id),
        Some(today),
        format!("Your week: {}", protocol.title),
        &paragraphs,
    )
}

/// A data source has failed for more than a day.
pub fn source_warning_message(
    to: Recipient<'_>,
    source: &str,
    since: &str,
    error: &str,
    dashboard: &str,
) -> NewMessage {
    simple_message(
        to,
        format!("source-warning/{}/{source}/{since}", to.key),
        "source_warning",
        None,
        None,
        format!("nof1d cannot read {source}"),
        &[
            format!("nof1d has not been able to read your data source \"{source}\" since {since}. The last error was: {error}"),
            "Nothing already stored is lost, and it will keep trying. If a password or token changed, update it in the configuration.".into(),
            format!("Sources: {dashboard}/"),
        ],
    )
}

/// Tells a participant, once a gap, that their trial's outcome data have
/// stopped coming (`gap`, as `trial::gap` found it); the key names the gap's
/// first day, so a gap is told once however long it lasts.
pub fn missing_data_message(
    to: Recipient<'_>,
    trial_id: i64,
    protocol: &crate::trial::protocol::Protocol,
    gap: crate::trial::gap::DataGap,
    today: Date,
    dashboard: &str,
) -> NewMessage {
    let outcome = &protocol.outcome;
    let self_report = outcome.self_report.is_some();
    let mut paragraphs = vec![
        format!("About your trial \"{}\":", protocol.title),
        gap.describe(&outcome.stream, self_report),
    ];
    paragraphs.push(if self_report {
        format!("Missed days: {dashboard}/trials/{trial_id}/report")
    } else {
        format!("Sources: {dashboard}/sources")
    });
    paragraphs.push(format!(
        "The trial goes on meanwhile: {dashboard}/trials/{trial_id}. This note comes once for each stretch without data (missing_data_days in the config sets after how many days, or 0 for never)."
    ));
    simple_message(
        to,
        format!("nudge/{}/{trial_id}/{}", to.key, gap.since),
        "nudge",
        Some(trial_id),
        Some(today),
        format!(
            "No {} data for {} days",
            outcome.stream.replace('_', " "),
            gap.days
        ),
        &paragraphs,
    )
}

/// Tells a participant, once, that a source they connected (Oura) refused
/// its grant and must be connected again.
pub fn source_reauthorisation_message(
    to: Recipient<'_>,
    source: &str,
    why: &str,
    dashboard: &str,
    now: Timestamp,
) -> NewMessage {
    simple_message(
        to,
        format!("source-reauthorisation/{}/{source}/{now}", to.key),
        "source_warning",
        None,
        None,
        format!("Connect {source} again"),
        &[
            format!("nof1d can no longer read \"{source}\": it refused the authorisation you gave ({why})."),
            "This happens when access is revoked, or after a long pause. Nothing already stored is lost; the other sources go on.".into(),
            format!("To read it again, press Connect beside {source} on the sources page: {dashboard}/sources"),
        ],
    )
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Builds the RFC 5322 message for an outbox row.
pub fn build_message(
    row: &OutboxRow,
    from: &str,
    date: Timestamp,
) -> Result<lettre::Message, NotifyError> {
    let parse = |address: &str| -> Result<Mailbox, NotifyError> {
        address
            .parse()
            .map_err(|e: lettre::address::AddressError| NotifyError::Address {
                address: address.to_string(),
                reason: e.to_string(),
            })
    };
    let system_time = std::time::SystemTime::from(date);
    lettre::Message::builder()
        .from(parse(from)?)
        .to(parse(&row.recipient)?)
        .subject(row.subject.clone())
        .message_id(Some(row.message_id.clone()))
        .date(system_time)
        .multipart(MultiPart::alternative_plain_html(
            row.body_text.clone(),
            row.body_html.clone(),
        ))
        .map_err(|e| NotifyError::Build(e.to_string()))
}

/// The SMTP transport for the settings: STARTTLS (required) or implicit TLS
/// against the system's web PKI roots, or a plain connection for a local
/// relay; with credentials when given.
pub fn smtp_transport(cfg: &SmtpConfig) -> Result<SmtpTransport, NotifyError> {
    let builder = match cfg.tls {
        SmtpTls::Starttls => SmtpTransport::starttls_relay(&cfg.host)
            .map_err(|e| NotifyError::Settings(format!("{}: {e}", cfg.host)))?,
        SmtpTls::Implicit => SmtpTransport::relay(&cfg.host)
            .map_err(|e| NotifyError::Settings(format!("{}: {e}", cfg.host)))?,
        SmtpTls::None => SmtpTransport::builder_dangerous(&cfg.host),
    };
    let mut builder = builder
        .port(cfg.port())
        .timeout(Some(std::time::Duration::from_secs(cfg.timeout_seconds)));
    if let (Some(user), Some(password)) = (&cfg.username, &cfg.password) {
        let secret = password
            .resolve("email.smtp.password")
            .map_err(|e| NotifyError::Settings(e.to_string()))?;
        builder = builder.credentials(Credentials::new(user.clone(), secret.expose().to_string()));
    }
    Ok(builder.build())
}

/// Sends a message through SMTP. A 5xx answer is permanent, except one
/// about the account ([`SmtpFault`]); a 4xx answer, a refused connection or
/// a time-out is temporary. Returns where it went.
pub fn deliver_smtp(
    row: &OutboxRow,
    from: &str,
    transport: &SmtpTransport,
    cfg: &SmtpConfig,
    date: Timestamp,
) -> Result<String, NotifyError> {
    let message = build_message(row, from, date)?;
    match transport.send(&message) {
        Ok(response) => Ok(format!(
            "smtp://{}:{} ({})",
            cfg.host,
            cfg.port(),
            response.code()
        )),
        Err(e) => Err(NotifyError::Smtp {
            fault: SmtpFault::of(&e),
            message: e.to_string(),
        }),
    }
}

/// Delivers a message as an `.eml` file in `dir`, atomically (write to a
/// temporary file, then rename). Returns the file's path.
pub fn deliver_to_file(
    row: &OutboxRow,
    from: &str,
    dir: &Path,
    date: Timestamp,
) -> Result<PathBuf, NotifyError> {
    let message = build_message(row, from, date)?;
    let name: String = row
        .key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{name}.eml"));
    let tmp = dir.join(format!(".{name}.eml.tmp"));
    crate::service::private::ensure_dir(dir).map_err(|source| NotifyError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    // The message holds live one-click tokens: 0600. A temporary file left
    // by a crash mid-write is replaced.
    let _ = std::fs::remove_file(&tmp);
    crate::service::private::write_new(&tmp, &message.formatted()).map_err(|source| {
        NotifyError::Write {
            path: tmp.clone(),
            source,
        }
    })?;
    std::fs::rename(&tmp, &path).map_err(|source| NotifyError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Backoff before retry number `attempts` (1-based): 30 s doubling, capped at 6 h.
pub fn backoff(attempts: i64) -> jiff::SignedDuration {
    let exp = attempts.clamp(1, 20) - 1;
    let secs = (30i64 << exp).min(6 * 3600);
    jiff::SignedDuration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Alice's assignment in trial 7, without links.
    fn alice<'a>(protocol: &'a Protocol, today: &'a DatedDay) -> Assignment<'a> {
        Assignment {
            participant_key: "alice",
            participant_name: "Alice",
            participant_id: 1,
            email: "alice@example.org",
            trial_id: 7,
            protocol,
            today,
            links: None,
        }
    }

    /// Two trials of the blinded migraine protocol with opposite keys
    /// (Box 1 is the placebo in one, magnesium in the other): every message
    /// the participant gets while the trial runs is the same text in both
    /// on the days they get the same code, and the run-in names no code,
    /// so nothing in them tells the boxes apart. The stop message gives
    /// the key.
    #[test]
    fn a_blinded_trials_messages_cannot_tell_the_arms_apart() {
        use crate::trial::decide::{Action, ArmNumbers, Decision, Look};
        let text = include_str!("../../protocols/magnesium-migraine.toml");
        let file = Protocol::parse(text, "m.toml").unwrap();
        let keyed = |want: &str| {
            (0..100u64)
                .map(|s| file.clone().with_trial_codes(s))
                .find(|p| p.code_key().unwrap().starts_with(want))
                .unwrap()
        };
        let a = keyed("Box 1 = Placebo");
        let b = keyed("Box 1 = Magnesium");
        let box_1 = |p: &Protocol| (0..2).find(|&i| p.display_label(i) == "Box 1").unwrap();
        let day = |arm: usize, block: Option<u32>| DatedDay {
            day: 3,
            local_date: "2026-11-25".parse().unwrap(),
            period: block,
            block,
            arm,
            washout: false,
        };
        let assignment = |p: &Protocol, today: &DatedDay| {
            let m = assignment_message(&alice(p, today));
            (m.subject, m.body_text, m.body_html)
        };
        // The run-in is on the placebo (arm 0) in both: the same message,
        // which names neither box.
        let run_in = assignment(&a, &day(0, None));
        assert_eq!(run_in, assignment(&b, &day(0, None)));
        for text in [&run_in.0, &run_in.1, &run_in.2] {
            assert!(!text.contains("Box 1") && !text.contains("Box 2"), "{text}");
        }
        // A day on Box 1: placebo in one trial, magnesium in the other.
        let on_box_1 = assignment(&a, &day(box_1(&a), Some(0)));
        assert_eq!(on_box_1, assignment(&b, &day(box_1(&b), Some(0))));
        assert!(on_box_1.0.contains("Box 1"));
        // A look that goes on, and one that stops.
        let to = Recipient {
            participant_id: 1,
            key: "alice",
            name: "Alice",
            email: "alice@example.org",
        };
        let decision = |p: &Protocol, action: Action| Decision {
            look: Look {
                period: 3,
                blocks_done: 2,
                last_period: false,
                active: vec![0, 1],
            },
            action,
            rule: "P(magnesium better by MID) = 0.40 is below 0.95".into(),
            thresholds: crate::trial::decide::trial_thresholds(&p.decision, (2, 4), None),
            arms: vec![ArmNumbers {
                arm: 1,
                key: "magnesium".into(),
                mean: -0.3,
                ci90: [-0.9, 0.2],
                p_better_by_mid: 0.4,
                p_best: 0.7,
            }],
            converged: true,
        };
        let today: Date = "2026-12-01".parse().unwrap();
        let message = |p: &Protocol, action: Action| {
            let m = decision_message(to, 7, p, &decision(p, action), None, today, "http://x");
            (m.subject, m.body_text)
        };
        let going_on = message(&a, Action::Continue);
        assert_eq!(going_on, message(&b, Action::Continue));
        assert!(going_on.1.contains(BLINDED_ESTIMATES), "{}", going_on.1);
        assert!(!going_on.1.contains("P(magnesium") && !going_on.1.contains("0.40"));
        // A dropped code is named with what to do, the same words
        // whichever arm it hides.
        let drop = |p: &Protocol| {
            message(
                p,
                Action::DropArms {
                    arms: vec![1 - box_1(p)],
                },
            )
        };
        let dropped = drop(&a);
        assert_eq!(dropped, drop(&b));
        assert_eq!(dropped.0, "Box 2 dropped from your trial");
        assert!(
            dropped.1.contains("From now on you will not be given Box 2: the rest of the schedule was redrawn among Box 1")
                && dropped.1.contains("Set the supply marked Box 2 aside"),
            "{}",
            dropped.1
        );
        let (_, stopped) = message(&b, Action::StopInconclusive);
        assert!(
            stopped.contains(
                "here is the key: Box 1 = Magnesium citrate 600 mg; Box 2 = Placebo; Run-in supply = Placebo"
            ),
            "{stopped}"
        );
    }

    #[test]
    fn assignment_names_today_only_and_respects_blinding() {
        let text = include_str!("../../protocols/sleep-supplements.toml");
        let p = Protocol::parse(text, "s.toml").unwrap();
        let today = DatedDay {
            day: 9,
            local_date: "2026-11-25".parse().unwrap(),
            period: Some(0),
            block: Some(0),
            arm: 2,
            washout: false,
        };
        let m = assignment_message(&alice(&p, &today));
        assert_eq!(m.key, "assignment/alice/7/2026-11-25");
        assert!(m.subject.contains("Bottle C"), "{}", m.subject);
        for body in [&m.body_text, &m.body_html] {
            assert!(body.contains("Bottle C"));
            assert!(!body.contains("Glycine"), "blinded label leaked: {body}");
            assert!(
                !body.contains("Bottle A")
                    && !body.contains("Bottle B")
                    && !body.contains("Bottle D")
            );
            assert!(body.contains("day 10 of the trial, block 1 of up to 4"));
        }
        assert_eq!(m.message_id, message_id(&m.key));
        let row = OutboxRow {
            id: 1,
            key: m.key.clone(),
            kind: m.kind.clone(),
            recipient: m.recipient.clone(),
            subject: m.subject.clone(),
            body_text: m.body_text.clone(),
            body_html: m.body_html.clone(),
            message_id: m.message_id.clone(),
            status: "pending".into(),
            attempts: 0,
            created_at: String::new(),
            delivered_to: None,
            last_error: None,
            participant_id: 1,
            local_date: None,
        };
        let dir = tempfile::tempdir().unwrap();
        let now: Timestamp = "2026-11-25T07:30:00Z".parse().unwrap();
        let path = deliver_to_file(&row, "nof1d <nof1d@localhost>", dir.path(), now).unwrap();
        let first = std::fs::read(&path).unwrap();
        let again = deliver_to_file(&row, "nof1d <nof1d@localhost>", dir.path(), now).unwrap();
        assert_eq!(path, again);
        let eml = String::from_utf8(first).unwrap();
        assert!(
            eml.contains(&format!("Message-ID: {}", m.message_id)),
            "{eml}"
        );
        assert!(eml.contains("multipart/alternative"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn bad_recipient_is_permanent() {
        let row = OutboxRow {
            id: 1,
            key: "k".into(),
            kind: "assignment".into(),
            recipient: "not an address".into(),
            subject: "s".into(),
            body_text: "t".into(),
            body_html: "<p>t</p>".into(),
            message_id: message_id("k"),
            status: "pending".into(),
            attempts: 0,
            created_at: String::new(),
            delivered_to: None,
            last_error: None,
            participant_id: 1,
            local_date: None,
        };
        let e = build_message(&row, "a@b.c", Timestamp::UNIX_EPOCH).unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().contains("not an address"));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1).as_secs(), 30);
        assert_eq!(backoff(2).as_secs(), 60);
        assert_eq!(backoff(30).as_secs(), 6 * 3600);
    }
}

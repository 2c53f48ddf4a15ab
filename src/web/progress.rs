//! A design's background work as it runs: how far the calibration on the
//! stress suite and the simulation of its error rates have got (virtual
//! trials done of those planned so far, time so far and left at the pace so
//! far, what runs now). The proposals page shows one reading; the page at
//! `/proposals/{id}/progress` reloads itself while the work runs (the
//! proposals page does not: it holds forms).

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::service::app::AppState;
use crate::service::jobs::DesignBoard;
use crate::service::store::{DesignWork, Store, StoreError, TrialRow};
use crate::trial::lifecycle::TrialStatus;
use crate::trial::protocol::ProtocolHash;
use crate::trial::simulate::progress::ProgressReading;

use super::{Viewer, internal, nav};

/// A running calibration's or simulation's progress.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProgressView {
    /// Virtual trials done.
    pub done: u64,
    /// Virtual trials planned so far: the plan grows where a scenario
    /// binds (it gets more trials), an arm-drop threshold is lowered, the
    /// fresh check runs or changes to the design are simulated.
    pub planned: u64,
    /// Percent of those planned that are done.
    pub percent: u32,
    /// Seconds since it started.
    pub elapsed_s: f64,
    /// Seconds left at the pace so far for the trials planned so far
    /// (none before the first is done).
    pub remaining_s: Option<f64>,
    /// What runs now, e.g. "meditation-anxiety (iid): no effect".
    pub stage: String,
}

impl ProgressView {
    /// The view of one reading.
    pub fn of(r: &ProgressReading) -> ProgressView {
        ProgressView {
            done: r.done,
            planned: r.planned,
            percent: (100.0 * r.fraction()).floor() as u32,
            elapsed_s: r.elapsed_s,
            remaining_s: r.remaining_s(),
            stage: r.stage.clone(),
        }
    }

    /// The reading in words, as HTML: a progress bar, the counts, the
    /// times, and what runs now.
    pub fn html(&self) -> String {
        let left = match self.remaining_s {
            Some(s) => format!(
                ", about {} left at this pace (longer if a scenario needs more trials)",
                duration(s)
            ),
            None => String::new(),
        };
        format!(
            r#"<progress max="{planned}" value="{done}">{percent}%</progress> {done} of {planned} virtual trials planned so far ({percent}%), {elapsed} so far{left}. <span class="muted">Now: {stage}.</span>"#,
            planned = self.planned,
            done = self.done,
            percent = self.percent,
            elapsed = duration(self.elapsed_s),
            stage = super::charts::escape(&self.stage),
        )
    }
}

/// Seconds in words: "45 s", "3 min 5 s", "1 h 2 min".
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// What the designs job is on now, for a design (`except`) that waits: the
/// first work running on another design, in words ("now on the refinement
/// of trial 2's design (“meditation-anxiety”): 120 of 400 virtual trials,
/// about 1 min left at this pace; trial 2 has started, so it goes first and
/// is not interrupted"), or `None`.
pub(super) fn busy_with(
    board: &DesignBoard,
    s: &Store,
    except: &ProtocolHash,
    now: jiff::Timestamp,
) -> Result<Option<String>, StoreError> {
    let Some((hash, work, reading)) = board.running().into_iter().find(|(h, _, _)| h != except)
    else {
        return Ok(None);
    };
    // The started trial the designs job runs a refinement for first, as
    // the job decides it; else a trial of the design still to come.
    let waiting = match work {
        DesignWork::Refinement => crate::service::jobs::started_trial_waiting(s, &hash, now)?,
        _ => None,
    };
    let trials: Vec<TrialRow> = s
        .trials()?
        .into_iter()
        .filter(|t| t.protocol_hash == hash)
        .collect();
    let named = match waiting {
        Some(id) => trials.iter().find(|t| t.id == id),
        None => trials
            .iter()
            .find(|t| matches!(t.status, TrialStatus::Approved | TrialStatus::Proposed)),
    };
    let Some(trial) = named.or(trials.first()) else {
        return Ok(None);
    };
    let what = match work {
        DesignWork::Calibration => "calibration",
        DesignWork::Simulation => "simulation",
        DesignWork::Refinement => "refinement",
    };
    let view = ProgressView::of(&reading);
    let left = view
        .remaining_s
        .map(|secs| format!(", about {} left at this pace", duration(secs)))
        .unwrap_or_default();
    let order = match (work, waiting) {
        (DesignWork::Refinement, Some(id)) => {
            format!("; trial {id} has started, so it goes first and is not interrupted")
        }
        (DesignWork::Refinement, None) => {
            "; it gives way to a proposal's calibration or simulation within seconds".into()
        }
        _ => String::new(),
    };
    Ok(Some(format!(
        "now on the {what} of trial {}'s design (“{}”): {} of {} virtual trials{left}{order}",
        trial.id, trial.protocol_id, view.done, view.planned
    )))
}

/// Where one work on a trial's design stands.
enum WorkState {
    /// Its result is stored.
    Done,
    /// Running now.
    Running(ProgressView),
    /// Given up on after its attempts (the proposals page, or an approved
    /// trial's page for a refinement, offers a retry where one may be).
    GivenUp(String),
    /// Not started: the designs job runs one design at a time (the
    /// refinements started trials wait on first, then approved trials'
    /// calibrations); what it is on now, if anything ([`busy_with`]).
    Waiting(Option<String>),
    /// Not done for this trial (a trial past its proposal is not simulated;
    /// calibration is switched off).
    NotDone,
}

/// One line of the page.
struct WorkLine {
    what: &'static str,
    state: WorkState,
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>{{ title }}</h1>
<p class="muted">Trial {{ id }}, protocol sha256 <code style="word-break:break-all">{{ hash }}</code>{% if reloading %} · this page reloads itself every {{ RELOAD_S }} seconds while the work runs or waits{% endif %}.</p>
<ul>{% for l in lines %}<li><strong>{{ l.what }}:</strong> {% match l.state %}{% when WorkState::Done %}done. <a href="{{ back }}">See it</a>.{% when WorkState::Running(p) %}running. {{ p.html()|safe }}{% when WorkState::GivenUp(why) %}given up: {{ why }}. <a href="{{ back }}">Back</a> says whether it can be tried again.{% when WorkState::Waiting(busy) %}waiting its turn (the designs job works on one design at a time: the refinements started trials wait on first, then approved trials' calibrations, proposals' work, and the other refinements){% if let Some(b) = busy %}: {{ b }}{% endif %}.{% when WorkState::NotDone %}not done for this trial.{% endmatch %}</li>{% endfor %}</ul>
<p><a href="{{ back }}">Back</a></p>"#
)]
struct ProgressPage {
    title: String,
    id: i64,
    hash: String,
    lines: Vec<WorkLine>,
    reloading: bool,
    back: String,
}

/// How often the page reloads while work runs or waits.
const RELOAD_S: u32 = 5;

/// GET `/proposals/{id}/progress`: the calibration and simulation of a
/// proposed or approved trial's design, as they run.
pub(super) async fn progress_page(
    State(state): State<AppState>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Path(id): axum::extract::Path<i64>,
) -> Response {
    let board = state.designs.clone();
    let calibrating = state.config.jobs.calibrate;
    let now = state.clock.now();
    let read = state
        .db
        .read(move |s| {
            let Some(t) = s.trial(id)? else {
                return Ok(None);
            };
            let hash = t.protocol_hash.clone();
            let busy = busy_with(&board, s, &hash, now)?;
            let line = |work: DesignWork, stored: bool, applies: bool| -> WorkLine {
                let state = if stored {
                    WorkState::Done
                } else if let Some(r) = board.reading(&hash, work) {
                    WorkState::Running(ProgressView::of(&r))
                } else if !applies {
                    WorkState::NotDone
                } else {
                    match s.design_failure(work, &hash) {
                        Ok(Some(f)) if f.given_up() => WorkState::GivenUp(f.error),
                        _ => WorkState::Waiting(busy.clone()),
                    }
                };
                WorkLine {
                    what: match work {
                        DesignWork::Calibration => "Calibration of its stopping rule",
                        DesignWork::Simulation => "Simulation of its error rates and power",
                        DesignWork::Refinement => {
                            "Refinement of its stopping rule on more virtual trials"
                        }
                    },
                    state,
                }
            };
            let waiting = matches!(t.status, TrialStatus::Proposed | TrialStatus::Approved);
            let mut lines = vec![
                line(
                    DesignWork::Calibration,
                    s.calibration(&hash)?.is_some(),
                    calibrating && waiting,
                ),
                line(
                    DesignWork::Simulation,
                    s.design_simulation(&hash)?.is_some(),
                    t.status == TrialStatus::Proposed,
                ),
            ];
            // Shown once the designs job has started it (it refines only
            // the designs of approved trials whose first calibration ran
            // fewer null trials than `jobs.refinement_trials`).
            let refined = s.refinement(&hash)?.is_some();
            let refining = board.reading(&hash, DesignWork::Refinement).is_some()
                || s.design_failure(DesignWork::Refinement, &hash)?.is_some();
            if refined || refining {
                lines.push(line(DesignWork::Refinement, refined, true));
            }
            Ok(Some((t, lines)))
        })
        .await;
    let (t, lines) = match read {
        Ok(Some(found)) => found,
        Ok(None) => {
            return (StatusCode::NOT_FOUND, format!("there is no trial {id}\n")).into_response();
        }
        Err(e) => return internal(&e.to_string()),
    };
    let reloading = lines
        .iter()
        .any(|l| matches!(l.state, WorkState::Running(_) | WorkState::Waiting(_)));
    let page = ProgressPage {
        title: format!("Design work for “{}”", t.protocol_id),
        id,
        hash: t.protocol_hash.to_string(),
        lines,
        reloading,
        back: if t.status == TrialStatus::Proposed {
            format!("/proposals#trial-{id}")
        } else {
            format!("/trials/{id}")
        },
    };
    match super::render_page_reloading(
        "Design work — nof1d",
        "",
        &nav(&viewer),
        &page,
        reloading.then_some(RELOAD_S),
    ) {
        Ok(html) => Html(html).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_seconds_minutes_and_hours() {
        assert_eq!(duration(0.4), "0 s");
        assert_eq!(duration(59.4), "59 s");
        assert_eq!(duration(185.0), "3 min 5 s");
        assert_eq!(duration(3720.0), "1 h 2 min");
        assert_eq!(duration(-3.0), "0 s");
    }

    #[test]
    fn a_reading_shows_its_counts_times_and_escaped_stage() {
        let reading = ProgressReading {
            done: 250,
            recalled: 0,
            planned: 1000,
            stage: "<b>x</b> (iid): no effect".into(),
            elapsed_s: 30.0,
        };
        // Trials recalled from a stopped run took no time: the pace is that
        // of the 50 run, 750 left at 0.6 s.
        let resumed = ProgressView::of(&ProgressReading {
            recalled: 200,
            ..reading.clone()
        });
        assert_eq!(resumed.remaining_s, Some(450.0));
        let v = ProgressView::of(&reading);
        assert_eq!(v.percent, 25);
        assert_eq!(v.remaining_s, Some(90.0));
        let html = v.html();
        assert!(html.contains("250 of 1000 virtual trials planned so far (25%), 30 s so far, about 1 min 30 s left"), "{html}");
        assert!(
            html.contains("&lt;b&gt;x&lt;/b&gt; (iid): no effect"),
            "{html}"
        );
    }
}

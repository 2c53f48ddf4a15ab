//! The hypotheses job: writes each stopped trial's conclusion in words
//! (the LLM's when its numbers check, else the template's), and proposes
//! from each participant's goals every `hypotheses.propose_every_days`
//! days, and again when one of their trials has ended (what it found goes
//! into the next proposal). The demo participant gets no scheduled
//! proposals: its one trial is the demonstration.

use crate::service::app::AppState;
use crate::service::hypotheses::{Purpose, ask_in_daemon, conclude_stopped};

use super::JobError;

/// Proposes for every participant whose turn has come; a summary for the
/// job board.
pub(crate) async fn propose_due(state: &AppState) -> Result<String, JobError> {
    let concluded = conclude_stopped(state)
        .await
        .map_err(|e| JobError::Item(format!("conclusions: {e}")))?;
    let every = state.config.hypotheses.propose_every_days;
    if every == 0 {
        return Ok(format!(
            "{concluded} conclusions written; scheduled proposals are off"
        ));
    }
    let now = state.clock.now();
    let people = state.db.read(|s| s.participants()).await?;
    let mut done = Vec::new();
    let mut errors = Vec::new();
    for p in people.into_iter().filter(|p| !p.is_demo) {
        let has_goals = state
            .config
            .participants
            .iter()
            .any(|c| c.key == p.key && !c.goals.is_empty());
        if !has_goals {
            continue;
        }
        let pid = p.id;
        let (last, ended) = state.db.read(move |s| s.proposal_times(pid)).await?;
        let due = match last {
            None => true,
            Some(last) => {
                let age_days = now.duration_since(last).as_secs_f64() / 86_400.0;
                age_days >= f64::from(every) || ended.is_some_and(|e| e > last)
            }
        };
        if !due {
            continue;
        }
        let key = p.key.clone();
        match ask_in_daemon(state, p, Purpose::Propose, String::new(), "hypotheses job").await {
            Ok(r) => done.push(format!(
                "{key}: {} kept, {} refused{}",
                r.kept.len(),
                r.refused.len(),
                r.failure.map(|f| format!(" ({f})")).unwrap_or_default()
            )),
            Err(e) => errors.push(format!("{key}: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(JobError::Item(errors.join("; ")));
    }
    Ok(format!(
        "{concluded} conclusions written; {}",
        if done.is_empty() {
            "no participant due".into()
        } else {
            done.join("; ")
        }
    ))
}

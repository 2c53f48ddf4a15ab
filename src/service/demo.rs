//! The demo participant: a simulated person in a running trial, so that a
//! first `nof1d serve --demo` shows a live trial at once.
//!
//! Seeding creates the participant, the meditation/anxiety trial (from the
//! shipped protocol, with a seed drawn from the OS) starting 42 days ago —
//! 14 days of run-in and four weeks of periods — and a demo source whose
//! ratings follow the model with a known effect: meditation lowers the
//! evening anxiety rating by 1.5 points (the protocol's MID is 1.0). The
//! history arrives through the source's first poll, like any real data, and
//! a new rating arrives every simulated evening after that.
//! Every step is idempotent, so a crash during seeding is repaired by the
//! next start.

use jiff::{Span, Timestamp};

use crate::engine::generate::ModelParams;
use crate::service::config::ParticipantConfig;
use crate::service::store::{Locking, Proposal, StatusChange, Store};
use crate::trial::calendar::local_date;
use crate::trial::decide::LockedThresholds;
use crate::trial::design;
use crate::trial::lifecycle::{self, TrialStatus};
use crate::trial::protocol::{Protocol, ProtocolHash};

/// The demo trial's protocol, as shipped.
pub const PROTOCOL_TEXT: &str = include_str!("../../protocols/meditation-anxiety.toml");
/// The demo participant's key.
pub const PARTICIPANT_KEY: &str = "demo";
/// The demo source's name.
pub const SOURCE_NAME: &str = "demo-simulator";
/// Source kind stored for the demo.
pub const SOURCE_KIND: &str = "demo";
/// Days of history the demo starts with (run-in included).
pub const HISTORY_DAYS: i64 = 42;
/// Local time the simulated participant gives the evening rating.
pub const RATING_TIME: &str = "21:00";
/// The known effect of meditation on the anxiety rating (lower is better).
pub const TRUE_EFFECT: f64 = -1.5;

/// Errors while seeding or loading the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::service::store::StoreError),
    /// The shipped protocol did not validate (a build defect).
    #[error(transparent)]
    Protocol(#[from] crate::trial::protocol::ProtocolError),
    /// The demo zone is not usable.
    #[error(transparent)]
    Config(#[from] crate::service::config::ConfigError),
    /// The OS would not give a random seed.
    #[error("cannot draw a random seed: {0}")]
    Seed(getrandom::Error),
    /// Stored demo state is inconsistent.
    #[error("demo: {0}")]
    Invalid(String),
}

/// The true parameters of the simulated participant (gaussian model, rating scale).
pub fn true_params(protocol: &Protocol) -> ModelParams {
    let mut beta = vec![0.0; protocol.arms.len()];
    if let Some(i) = protocol.arm_index("meditation") {
        beta[i] = TRUE_EFFECT;
    }
    let lambda: f64 = 1.0 / 4.0;
    ModelParams {
        mu: 5.5,
        beta,
        lambda,
        // Stationary drift sd of 0.8 rating points.
        sigma_x: 0.8 * (2.0 * lambda).sqrt(),
        kappa: std::f64::consts::LN_2 / 1.5,
        sigma_y: 0.9,
    }
}

/// The demo participant's configuration.
pub fn participant_config(time_zone: &str) -> ParticipantConfig {
    ParticipantConfig {
        key: PARTICIPANT_KEY.into(),
        name: "Demo Participant".into(),
        email: "demo@example.invalid".into(),
        time_zone: time_zone.into(),
        assignment_time: "07:30".into(),
        // Its reminder comes from [demo] (Config::evening_reminder).
        evening_reminder: "off".into(),
        // And its nudge (Config::missing_data_days).
        missing_data_days: 0,
        streams: Vec::new(),
        imports: Vec::new(),
        home_assistant: Vec::new(),
        oura: Vec::new(),
        strava: Vec::new(),
        withings: Vec::new(),
        // And its push channels (Config::push).
        push: Vec::new(),
        goals: vec!["calmer evenings, less anxiety".into()],
    }
}

/// Creates whatever part of the demo is missing. Returns the demo trial's id.
pub fn ensure_seeded(store: &mut Store, time_zone: &str, now: Timestamp) -> Result<i64, DemoError> {
    let participant = participant_config(time_zone).resolve()?;
    let pid = store.upsert_participant(&participant, true, now)?;
    let protocol = Protocol::parse(PROTOCOL_TEXT, "meditation-anxiety.toml")?;
    let existing = store
        .trials()?
        .into_iter()
        .find(|t| t.participant_id == pid && t.protocol_id == protocol.id);
    // The demo trial goes through the life cycle every trial goes through
    // (proposed → approved → running), started HISTORY_DAYS ago so that a
    // newcomer sees data at once. Each step is its own transaction and is
    // taken only if the trial is not past it, so a crash between two steps
    // is finished at the next start.
    let trial = match existing {
        Some(t) => t,
        None => {
            let seed = design::draw_seed().map_err(DemoError::Seed)?;
            let hash = ProtocolHash::of(PROTOCOL_TEXT);
            let id = store.propose_trial(
                &Proposal {
                    participant_id: pid,
                    protocol_id: &protocol.id,
                    protocol_toml: PROTOCOL_TEXT,
                    protocol_hash: &hash.0,
                    seed,
                },
                "demo",
                now,
            )?;
            store
                .trial(id)?
                .ok_or_else(|| DemoError::Invalid(format!("demo trial {id} vanished")))?
        }
    };
    let today = local_date(now, &participant.time_zone);
    let start = match trial.start_date {
        Some(d) => d,
        None => today
            .checked_sub(Span::new().days(HISTORY_DAYS))
            .map_err(|e| DemoError::Invalid(e.to_string()))?,
    };
    if trial.status == TrialStatus::Proposed {
        store.change_status(
            &StatusChange {
                trial_id: trial.id,
                to: TrialStatus::Approved,
                actor: "demo",
                reason: "demo trial approved",
                local_date: today,
                start_date: Some(start),
                shifted: &[],
                reviewed: None,
            },
            now,
        )?;
    }
    if matches!(trial.status, TrialStatus::Proposed | TrialStatus::Approved) {
        let schedule = lifecycle::dated(&protocol, &design::plan(&protocol, trial.seed), start)
            .map_err(|e| DemoError::Invalid(e.to_string()))?;
        // The demo starts at once, before any calibration could run: it
        // decides on its protocol's stated threshold, and says so.
        let locked = Locking {
            thresholds: LockedThresholds::stated(&protocol.decision),
            refined: false,
        };
        store.start_trial(trial.id, start, &schedule, locked, &[], "demo", now)?;
    }
    let trial_id = trial.id;
    let sim_seed = design::draw_seed().map_err(DemoError::Seed)?;
    let config = serde_json::json!({ "trial_id": trial_id, "seed": sim_seed.to_string() });
    store.ensure_source(pid, SOURCE_NAME, SOURCE_KIND, &config.to_string(), now)?;
    Ok(trial_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_is_idempotent_and_history_arrives_by_poll() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("db.sqlite")).unwrap();
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let t1 = ensure_seeded(&mut store, "Europe/London", now).unwrap();
        let counts = store.counts().unwrap();
        let t2 = ensure_seeded(&mut store, "Europe/London", now).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(store.counts().unwrap(), counts);
        let rows = store.sources().unwrap();
        assert_eq!(rows.len(), 1);
        let config = crate::service::config::Config::default();
        let source = crate::service::sources::adapter_for(&rows[0], &store, &config)
            .unwrap()
            .expect("the demo kind has an adapter");
        let poll = source.poll(None, now).unwrap();
        // Days -42..-1 have their evening rating; today's (21:00) has not come.
        assert_eq!(poll.observations.len() as i64, HISTORY_DAYS);
        let run = store
            .begin_run(rows[0].id, crate::service::store::RunWay::Poll, "", now)
            .unwrap();
        let n = store
            .record_poll(
                rows[0].id,
                run,
                &poll.observations,
                &poll.withdrawn,
                poll.cursor.as_deref(),
                now,
            )
            .unwrap();
        assert_eq!(n.stored as i64, HISTORY_DAYS);
    }
}

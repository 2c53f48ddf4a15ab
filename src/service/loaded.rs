//! A stored trial loaded once: its row, its locked protocol parsed, its
//! participant, the participant's time zone and assignment time. Jobs load
//! every trial they touch once per tick through [`LoadedTrial::load_all`]
//! instead of re-parsing the stored TOML at each use.

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;

use crate::service::store::{ParticipantRow, TrialRow};
use crate::trial::calendar::{local_date, local_instant, parse_hhmm};
use crate::trial::protocol::Protocol;

/// Why a stored trial could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The trial's participant row is missing.
    #[error("trial {0}: its participant {1} is missing")]
    Participant(i64, i64),
    /// The locked protocol no longer parses (a newer format, a bad edit).
    #[error("trial {0}: {1}")]
    Protocol(i64, String),
    /// The participant's zone is unknown.
    #[error("participant {0}: zone {1}: {2}")]
    Zone(String, String, String),
    /// Neither the protocol nor the participant gives a valid assignment time.
    #[error("participant {0}: bad assignment time {1:?}")]
    AssignmentTime(String, String),
}

/// A trial with everything a job needs to act on it.
#[derive(Debug, Clone)]
pub struct LoadedTrial {
    /// The stored row.
    pub row: TrialRow,
    /// The locked protocol, parsed.
    pub protocol: Protocol,
    /// The participant.
    pub participant: ParticipantRow,
    /// The participant's zone.
    pub zone: TimeZone,
    /// The local time of the daily assignment: the protocol's, else the
    /// participant's.
    pub assignment_time: Time,
}

impl LoadedTrial {
    /// Loads `row` with its participant from `participants`.
    pub fn load(row: TrialRow, participants: &[ParticipantRow]) -> Result<LoadedTrial, LoadError> {
        let participant = participants
            .iter()
            .find(|p| p.id == row.participant_id)
            .cloned()
            .ok_or(LoadError::Participant(row.id, row.participant_id))?;
        let protocol = row
            .protocol()
            .map_err(|e| LoadError::Protocol(row.id, e.to_string()))?;
        let zone = TimeZone::get(&participant.time_zone).map_err(|e| {
            LoadError::Zone(
                participant.key.clone(),
                participant.time_zone.clone(),
                e.to_string(),
            )
        })?;
        let assignment_time =
            assignment_time(&protocol, &participant.assignment_time).ok_or_else(|| {
                LoadError::AssignmentTime(
                    participant.key.clone(),
                    participant.assignment_time.clone(),
                )
            })?;
        Ok(LoadedTrial {
            row,
            protocol,
            participant,
            zone,
            assignment_time,
        })
    }

    /// Loads every trial in `rows` that `keep` selects; the ones that cannot
    /// be loaded come back as errors, so one bad trial stops no other.
    pub fn load_all(
        rows: Vec<TrialRow>,
        participants: &[ParticipantRow],
        keep: impl Fn(&TrialRow) -> bool,
    ) -> (Vec<LoadedTrial>, Vec<LoadError>) {
        let (mut loaded, mut errors) = (Vec::new(), Vec::new());
        for row in rows.into_iter().filter(|r| keep(r)) {
            match LoadedTrial::load(row, participants) {
                Ok(t) => loaded.push(t),
                Err(e) => errors.push(e),
            }
        }
        (loaded, errors)
    }

    /// The trial's id.
    pub fn id(&self) -> i64 {
        self.row.id
    }

    /// The participant's civil date at `now`.
    pub fn today(&self, now: Timestamp) -> Date {
        local_date(now, &self.zone)
    }

    /// When the assignment of `date` is due.
    pub fn assignment_instant(&self, date: Date) -> Timestamp {
        local_instant(date, self.assignment_time, &self.zone)
    }

    /// Whether today's assignment time has come at `now`.
    pub fn assignment_time_reached(&self, now: Timestamp) -> bool {
        now >= self.assignment_instant(self.today(now))
    }
}

/// The local assignment time of a trial: the protocol's, else the participant's.
pub fn assignment_time(protocol: &Protocol, participant_time: &str) -> Option<Time> {
    protocol
        .notification
        .assignment_time
        .as_deref()
        .and_then(parse_hhmm)
        .or_else(|| parse_hhmm(participant_time))
}

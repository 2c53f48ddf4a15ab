//! Files and pushed payloads into the store: which reader a file needs,
//! which source its records belong to, and the run log of each import.
//! Used alike by `nof1d import`, the inbox folder and the push endpoint.
//!
//! Imports write in batches, each one transaction with its counts, on a
//! connection of their own: they are safe while the daemon runs, and a
//! crash mid-import leaves whole batches only; importing the file again
//! completes it and doubles nothing (records are unique per source).

use std::path::Path;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::service::sources::mapped::{self, MappedError, Mapping};
use crate::service::sources::{apple_health, health_auto_export};
use crate::service::store::{ParticipantRow, RunWay, SourceRow, Store, StoreError, Upserted};
use crate::service::streams::StreamRules;

/// The source kind of Apple Health exports.
pub const APPLE_HEALTH: &str = "apple_health";
/// The source kind of Health Auto Export (pushed or as files).
pub const HEALTH_AUTO_EXPORT: &str = "health_auto_export";

/// The source kind of files read through a mapping in the config.
pub const MAPPED: &str = "mapped";

/// What importing a participant's files needs from the config.
#[derive(Debug, Clone, Default)]
pub struct ImportSettings {
    /// Day rules and device preferences by stream.
    pub rules: StreamRules,
    /// Mapped CSV/JSON imports.
    pub mappings: Vec<Mapping>,
}

/// Observations written per transaction in a file import.
const BATCH: usize = 20_000;

/// Why an import or push stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The file could not be read.
    #[error("{file}: {message}")]
    File {
        /// The file.
        file: String,
        /// What went wrong.
        message: String,
    },
    /// No reader knows this file.
    #[error(
        "{0}: not a file nof1d can import (Apple Health export.zip or export.xml, Health Auto Export JSON, or a CSV/JSON file matched by a mapping in the config's [[participants.imports]]{1})"
    )]
    Unknown(String, String),
    /// `--mapping` names no mapping of the participant.
    #[error("no import mapping {0:?} for this participant ({1})")]
    NoMapping(String, String),
    /// A mapped file could not be read as its mapping says.
    #[error("{file}: {source}")]
    Mapped {
        /// The file.
        file: String,
        /// Why.
        source: Box<MappedError>,
    },
    /// The payload is not the expected format.
    #[error("{0}")]
    Payload(#[from] health_auto_export::PayloadError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an import or push did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    /// The file name or `push`.
    pub what: String,
    /// The source the records went to.
    pub source: String,
    /// Rows stored, updated, already present.
    pub counts: Upserted,
    /// Records refused.
    pub refused: usize,
    /// The first problems, one a line (refusals by reason, replaced
    /// characters, damage).
    pub problems: Vec<String>,
    /// Where the file was damaged (everything before it was kept).
    pub damaged: Option<String>,
}

impl IngestReport {
    /// One line for people: `export.zip: 1520 stored, 0 updated, 3 already present, 2 refused`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{} → {}: {} stored, {} updated, {} already present, {} refused",
            self.what,
            self.source,
            self.counts.stored,
            self.counts.updated,
            self.counts.unchanged,
            self.refused
        );
        if let Some(d) = &self.damaged {
            line.push_str(&format!(
                "; stopped early: {d} (everything before it was kept)"
            ));
        }
        line
    }
}

fn problems_of(refused: &std::collections::BTreeMap<String, usize>) -> Vec<String> {
    refused
        .iter()
        .take(crate::limits::LISTED_PROBLEMS)
        .map(|(why, n)| format!("{n} × {why}"))
        .collect()
}

/// Imports one file for `participant`: a CSV/JSON file through the mapping
/// named by `mapping` or else the first whose file pattern matches its name,
/// Apple's export (zip or XML) or Health Auto Export JSON, each into the
/// participant's source of that kind or name (made on first use).
pub fn import_file(
    store: &mut Store,
    participant: &ParticipantRow,
    settings: &ImportSettings,
    path: &Path,
    mapping: Option<&str>,
    now: Timestamp,
) -> Result<IngestReport, IngestError> {
    let rules = &settings.rules;
    let file = path.display().to_string();
    let home = TimeZone::get(&participant.time_zone).map_err(|e| IngestError::File {
        file: file.clone(),
        message: format!("participant zone {}: {e}", participant.time_zone),
    })?;
    let io = |e: std::io::Error| IngestError::File {
        file: file.clone(),
        message: e.to_string(),
    };
    let name = path
        .file_name()
        .map_or_else(|| file.clone(), |n| n.to_string_lossy().into_owned());
    let chosen = match mapping {
        Some(wanted) => Some(
            settings
                .mappings
                .iter()
                .find(|m| m.name == wanted)
                .ok_or_else(|| {
                    IngestError::NoMapping(wanted.to_string(), mapping_list(settings))
                })?,
        ),
        None => settings.mappings.iter().find(|m| m.matches(&name)),
    };
    if let Some(m) = chosen {
        return import_mapped(store, participant, m, &home, rules, path, &name, now);
    }
    let head = read_head(path).map_err(io)?;
    if head.starts_with(b"PK\x03\x04") || looks_like_apple_xml(&head) {
        let source_id =
            store.ensure_source(participant.id, "apple-health", APPLE_HEALTH, "{}", now)?;
        let run = store.begin_run(source_id, RunWay::Import, &name, now)?;
        let input = apple_health::open_export(path).map_err(io)?;
        let mut counts = Upserted::default();
        let result = apple_health::read_export(input, &home, rules, BATCH, &mut |batch| {
            counts.add(store.record_batch(source_id, run, batch, now)?);
            Ok::<(), StoreError>(())
        });
        let xml = match result {
            Ok(r) => r,
            Err(e) => {
                store.finish_run(run, 0, "", Some(&e.to_string()), now)?;
                return Err(e.into());
            }
        };
        let refused = xml.refused.values().sum();
        let mut problems = problems_of(&xml.refused);
        if xml.replaced_chars > 0 {
            problems.push(format!(
                "{} characters XML does not allow (or invalid UTF-8) were replaced",
                xml.replaced_chars
            ));
        }
        if let Some(d) = &xml.damaged {
            problems.push(format!("stopped early: {d}"));
        }
        store.finish_run(
            run,
            refused,
            &problems.join("\n"),
            xml.damaged.as_deref(),
            now,
        )?;
        return Ok(IngestReport {
            what: name,
            source: "apple-health".into(),
            counts,
            refused,
            problems,
            damaged: xml.damaged,
        });
    }
    if head.trim_ascii_start().starts_with(b"{") {
        let body = std::fs::read(path).map_err(io)?;
        let source = hae_source(store, participant, now)?;
        return ingest_payload(
            store,
            &source,
            &home,
            rules,
            &body,
            RunWay::Import,
            &name,
            now,
        );
    }
    Err(IngestError::Unknown(file, mapping_hint(settings)))
}

fn mapping_list(settings: &ImportSettings) -> String {
    if settings.mappings.is_empty() {
        return "it has none".into();
    }
    let names: Vec<String> = settings
        .mappings
        .iter()
        .map(|m| format!("{} ({})", m.name, m.pattern()))
        .collect();
    format!("it has: {}", names.join(", "))
}

fn mapping_hint(settings: &ImportSettings) -> String {
    if settings.mappings.is_empty() {
        String::new()
    } else {
        format!(
            "; this participant's mappings match: {}",
            mapping_list(settings)
        )
    }
}

/// Imports a CSV or JSON file through `mapping` into its source, in
/// batches; the run log keeps what was refused and converted.
#[allow(clippy::too_many_arguments)]
fn import_mapped(
    store: &mut Store,
    participant: &ParticipantRow,
    mapping: &Mapping,
    home: &TimeZone,
    rules: &StreamRules,
    path: &Path,
    name: &str,
    now: Timestamp,
) -> Result<IngestReport, IngestError> {
    let file = path.display().to_string();
    let format = mapping.format_of(name).ok_or_else(|| IngestError::File {
        file: file.clone(),
        message: format!(
            "mapping {:?}: say format = \"csv\" or \"json\" (the file name does not tell)",
            mapping.name
        ),
    })?;
    let input = std::fs::File::open(path).map_err(|e| IngestError::File {
        file: file.clone(),
        message: e.to_string(),
    })?;
    let units = store.stream_units(participant.id)?;
    let source_id = store.ensure_source(participant.id, &mapping.name, MAPPED, "{}", now)?;
    let run = store.begin_run(source_id, RunWay::Import, name, now)?;
    let mut counts = Upserted::default();
    let result = mapped::read(
        mapping,
        format,
        std::io::BufReader::with_capacity(1 << 20, input),
        home,
        rules,
        &units,
        BATCH,
        &mut |batch| {
            counts.add(store.record_batch(source_id, run, batch, now)?);
            Ok::<(), ImportFailure>(())
        },
    );
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            store.finish_run(run, 0, "", Some(&e.to_string()), now)?;
            return Err(match e {
                ImportFailure::Store(e) => e.into(),
                ImportFailure::Mapped(source) => IngestError::Mapped {
                    file,
                    source: Box::new(source),
                },
            });
        }
    };
    let refused = report.refused.values().sum();
    let mut problems = problems_of(&report.refused);
    for (column, how) in &report.converted {
        problems.push(format!("{column:?} converted {how}"));
    }
    if report.empty > 0 {
        problems.push(format!("{} empty cells skipped", report.empty));
    }
    if report.dst_ambiguous > 0 {
        problems.push(format!(
            "{} local times fell in a daylight-saving change: the earlier of a repeated hour was taken, a skipped hour moved forward",
            report.dst_ambiguous
        ));
    }
    store.finish_run(run, refused, &problems.join("\n"), None, now)?;
    Ok(IngestReport {
        what: name.to_string(),
        source: mapping.name.clone(),
        counts,
        refused,
        problems,
        damaged: None,
    })
}

/// Why a mapped import stopped: the file, or the store.
#[derive(Debug, thiserror::Error)]
enum ImportFailure {
    #[error(transparent)]
    Mapped(#[from] MappedError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The participant's Health Auto Export source (pushes and files share it,
/// so a day sent both ways is stored once).
pub fn hae_source(
    store: &mut Store,
    participant: &ParticipantRow,
    now: Timestamp,
) -> Result<SourceRow, StoreError> {
    let existing = store
        .sources()?
        .into_iter()
        .find(|s| s.participant_id == participant.id && s.kind == HEALTH_AUTO_EXPORT);
    if let Some(s) = existing {
        return Ok(s);
    }
    let id = store.ensure_source(
        participant.id,
        "health-auto-export",
        HEALTH_AUTO_EXPORT,
        "{}",
        now,
    )?;
    store
        .sources()?
        .into_iter()
        .find(|s| s.id == id)
        .ok_or_else(|| StoreError::Refused("source vanished".into()))
}

/// Stores one Health Auto Export payload into `source` in one
/// transaction: a push either lands whole or not at all (the app retries).
#[allow(clippy::too_many_arguments)]
pub fn ingest_payload(
    store: &mut Store,
    source: &SourceRow,
    home: &TimeZone,
    rules: &StreamRules,
    body: &[u8],
    way: RunWay,
    what: &str,
    now: Timestamp,
) -> Result<IngestReport, IngestError> {
    let run = store.begin_run(source.id, way, what, now)?;
    let parsed = match health_auto_export::parse(body, home, rules) {
        Ok(p) => p,
        Err(e) => {
            store.finish_run(run, 0, "", Some(&e.to_string()), now)?;
            return Err(e.into());
        }
    };
    let counts = match store.record_batch(source.id, run, &parsed.observations, now) {
        Ok(c) => c,
        Err(e) => {
            store.finish_run(run, 0, "", Some(&e.to_string()), now)?;
            return Err(e.into());
        }
    };
    let refused = parsed.refused.values().sum();
    let problems = problems_of(&parsed.refused);
    store.finish_run(run, refused, &problems.join("\n"), None, now)?;
    Ok(IngestReport {
        what: what.to_string(),
        source: source.name.clone(),
        counts,
        refused,
        problems,
        damaged: None,
    })
}

fn read_head(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4096);
    std::fs::File::open(path)?
        .take(4096)
        .read_to_end(&mut head)?;
    Ok(head)
}

fn looks_like_apple_xml(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    text.trim_start().starts_with("<?xml")
        && (text.contains("<!DOCTYPE HealthData") || text.contains("<HealthData"))
}

/// Gives `source` a new push token (256 random bits, 64 hex digits) and
/// returns it: only its SHA-256 is stored, so it is shown this once; an
/// earlier token stops working.
pub fn new_push_token(store: &mut Store, source_id: i64) -> Result<String, IngestError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| IngestError::File {
        file: "push token".into(),
        message: format!("cannot draw random bytes: {e}"),
    })?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    store.set_push_token(source_id, &token_sha256(&token))?;
    Ok(token)
}

/// The stored form of a push token.
pub fn token_sha256(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

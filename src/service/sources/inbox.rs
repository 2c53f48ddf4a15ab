//! The inbox folder: files dropped in `<data>/inbox/` (for the only
//! participant) or `<data>/inbox/<participant>/` are imported once, then
//! moved to `done/` (with a `.report.txt`) or `failed/` (with a
//! `.reason.txt`) beside them. A file still being written (changed in the
//! last few seconds, or named `.part`/`.tmp`/hidden) waits for the next
//! sweep. A crash mid-import leaves the file in the inbox: the next sweep
//! imports it again, and records already stored are not doubled.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;

use crate::service::sources::ingest::{ImportSettings, IngestReport, import_file};
use crate::service::store::{ParticipantRow, Store};

/// How long a file must have been left alone before it is imported.
const SETTLE: Duration = Duration::from_secs(5);

/// The inbox folder of a data folder.
pub fn inbox_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("inbox")
}

/// What one sweep did: a line per file.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Files imported whole.
    pub imported: Vec<IngestReport>,
    /// Files moved to `failed/`, with why.
    pub failed: Vec<String>,
}

/// Imports every settled file in the inbox. `settings_of` gives a
/// participant's import settings.
pub fn sweep(
    store: &mut Store,
    data_dir: &Path,
    settings_of: &dyn Fn(&str) -> ImportSettings,
    now: Timestamp,
) -> std::io::Result<Sweep> {
    let inbox = inbox_dir(data_dir);
    let mut done = Sweep::default();
    if !inbox.is_dir() {
        return Ok(done);
    }
    let people = store
        .participants()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let real: Vec<&ParticipantRow> = people.iter().filter(|p| !p.is_demo).collect();
    // (folder, participant for its files: None where it is ambiguous)
    let mut folders: Vec<(PathBuf, Option<&ParticipantRow>, String)> = vec![(
        inbox.clone(),
        match real.as_slice() {
            [one] => Some(*one),
            [] => people.first(),
            _ => None,
        },
        "several participants: put the file in inbox/<participant>/".to_string(),
    )];
    for p in &people {
        folders.push((inbox.join(&p.key), Some(p), String::new()));
    }
    for (folder, who, ambiguous) in folders {
        for file in settled_files(&folder)? {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let result = match who {
                Some(p) => match import_file(store, p, &settings_of(&p.key), &file, None, now) {
                    // The store failing is not the file's fault: it stays
                    // in the inbox for the next sweep.
                    Err(e @ crate::service::sources::ingest::IngestError::Store(_)) => {
                        done.failed.push(format!(
                            "{name}: {e} (left in the inbox; tried again next time)"
                        ));
                        continue;
                    }
                    other => other.map_err(|e| e.to_string()),
                },
                None => Err(ambiguous.clone()),
            };
            match result {
                Ok(report) if report.damaged.is_none() => {
                    let text = format!("{}\n{}\n", report.summary(), report.problems.join("\n"));
                    file_away(&folder, &file, "done", "report", &text)?;
                    done.imported.push(report);
                }
                Ok(report) => {
                    let text = format!("{}\n{}\n", report.summary(), report.problems.join("\n"));
                    file_away(&folder, &file, "failed", "reason", &text)?;
                    done.failed.push(format!("{name}: {}", report.summary()));
                }
                Err(why) => {
                    file_away(&folder, &file, "failed", "reason", &format!("{why}\n"))?;
                    done.failed.push(format!("{name}: {why}"));
                }
            }
        }
    }
    Ok(done)
}

/// Regular files of `folder` that nobody is writing any more.
fn settled_files(folder: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Ok(files);
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.ends_with(".part") || name.ends_with(".tmp") {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        let quiet = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= SETTLE);
        if quiet {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Moves `file` into `folder/<to>/` (a numbered name if one is there
/// already) and writes `<name>.<note>.txt` beside it.
fn file_away(folder: &Path, file: &Path, to: &str, note: &str, text: &str) -> std::io::Result<()> {
    let target_dir = folder.join(to);
    crate::service::private::ensure_dir(&target_dir)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let mut target = target_dir.join(&name);
    let mut n = 1;
    while target.exists() {
        target = target_dir.join(format!("{n}-{name}"));
        n += 1;
    }
    let note_path = target.with_file_name(format!(
        "{}.{note}.txt",
        target
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    std::fs::write(&note_path, text)?;
    std::fs::rename(file, &target)
}

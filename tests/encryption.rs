//! Encryption at rest with the real binary: a database created with
//! `database.key` is SQLCipher-encrypted (file, WAL and backups), unreadable
//! without the key, and served as usual with it; `nof1d encrypt` and
//! `nof1d decrypt` convert an existing database by copy, verify and swap,
//! and refuse while a daemon holds the folder.

#![cfg(feature = "encryption")]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, run, run_ok};
use nof1d::service::config::Secret;
use nof1d::service::store::Store;

const KEY: &str = "0d4c9be2a17f5e8830b6c2f4a9e1d7c5b3a8f6e2d4c1b9a7";

/// A config with the demo's clock pinned and, when `keyed`, `database.key`
/// from a file; returns its path.
fn config(dir: &Path, keyed: bool) -> PathBuf {
    let key_file = dir.join("db-key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let path = dir.join(if keyed { "keyed.toml" } else { "plain.toml" });
    let database = if keyed {
        format!(
            "[database]\nkey = {{ file = {:?} }}\n",
            key_file.display().to_string()
        )
    } else {
        String::new()
    };
    std::fs::write(
        &path,
        format!(
            "{database}[jobs]\ncalibrate = false\n[clock]\nstart = {:?}\n",
            common::PINNED_START
        ),
    )
    .unwrap();
    path
}

/// True when `needle` appears in the file's bytes.
fn contains(path: &Path, needle: &str) -> bool {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn is_plain_sqlite(path: &Path) -> bool {
    std::fs::read(path)
        .unwrap()
        .starts_with(b"SQLite format 3\0")
}

fn key() -> Secret {
    Secret::new(KEY.to_string())
}

#[test]
fn a_keyed_database_backup_and_wal_hold_no_plain_text_and_need_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = config(dir.path(), true);
    let d = Daemon::start(&data, &["--demo", "--config", cfg.to_str().unwrap()]);
    d.wait_jobs(1, Duration::from_secs(60));
    assert_eq!(d.get("/trials/1").0, 200);
    assert_eq!(d.json("/api/trials/1")["status"], "running");
    let db = data.join("nof1d.sqlite");
    let wal = data.join("nof1d.sqlite-wal");
    // The demo's stream name is in every plain database; never here.
    assert!(
        std::fs::metadata(&wal).unwrap().len() > 0,
        "the WAL is in use"
    );
    for f in [&db, &wal] {
        assert!(!contains(f, "anxiety_evening"), "{} leaks", f.display());
    }
    assert!(!is_plain_sqlite(&db));
    // Without the key: refused with a hint, nothing written.
    let e = Store::open_read_only(&db).err().unwrap().to_string();
    assert!(e.contains("set database.key"), "{e}");
    let wrong = Secret::new("f".repeat(8) + "0123456789abcdef0123456789");
    let e = Store::open_read_only_keyed(&db, Some(&wrong))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("the key is wrong"), "{e}");
    // A backup is encrypted with the same key.
    let backup = dir.path().join("backup.sqlite");
    run_ok(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "backup",
            backup.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!is_plain_sqlite(&backup));
    assert!(!contains(&backup, "anxiety_evening"));
    let copy = Store::open_read_only_keyed(&backup, Some(&key())).unwrap();
    assert!(copy.counts().unwrap().schedule_days > 0);
    // The CLI reads it with the key from the config.
    run_ok(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "trial",
            "list",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
    );
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
}

#[test]
fn encrypt_and_decrypt_convert_an_existing_database_and_refuse_while_a_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let plain = config(dir.path(), false);
    let keyed = config(dir.path(), true);
    let d = Daemon::start(&data, &["--demo", "--config", plain.to_str().unwrap()]);
    d.wait_jobs(1, Duration::from_secs(60));
    let db = data.join("nof1d.sqlite");
    let nof1d = |config: &Path, what: &str| {
        run(
            &[
                "--config",
                config.to_str().unwrap(),
                what,
                "--data-dir",
                data.to_str().unwrap(),
            ],
            dir.path(),
        )
    };
    // While the daemon holds the folder: refused, nothing changed.
    let out = nof1d(&keyed, "encrypt");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another nof1d is already running"));
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
    let before = Store::open_read_only(&db).unwrap().counts().unwrap();
    assert!(is_plain_sqlite(&db) && contains(&db, "anxiety_evening"));

    let out = nof1d(&keyed, "encrypt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rows copied and checked"));
    assert!(!is_plain_sqlite(&db) && !contains(&db, "anxiety_evening"));
    let after = Store::open_read_only_keyed(&db, Some(&key()))
        .unwrap()
        .counts()
        .unwrap();
    assert_eq!(after, before);
    // The daemon runs on it with the key, and refuses it without.
    let d = Daemon::start(&data, &["--demo", "--config", keyed.to_str().unwrap()]);
    assert_eq!(d.json("/api/trials/1")["status"], "running");
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
    let stderr = common::serve_refused(&data, dir.path());
    assert!(stderr.contains("database.key"), "{stderr}");

    let out = nof1d(&keyed, "decrypt");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_plain_sqlite(&db));
    let back = Store::open_read_only(&db).unwrap().counts().unwrap();
    assert_eq!(back.trials, before.trials);
    assert!(back.schedule_days >= before.schedule_days);
    // Encrypting needs a key in the config.
    let out = nof1d(&plain, "encrypt");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("database.key is not set"));
}

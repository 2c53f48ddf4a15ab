//! The binary's commands, and start-up refusals that must leave data untouched.

use crate::common;

use common::run;

#[test]
fn version_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["--version"], dir.path());
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("nof1d {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn shipped_protocols_pass_check() {
    let root = env!("CARGO_MANIFEST_DIR");
    let files: Vec<String> = std::fs::read_dir(format!("{root}/protocols"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".toml"))
        .collect();
    assert!(files.len() >= 5);
    let mut args = vec!["protocol", "check"];
    args.extend(files.iter().map(String::as_str));
    let out = run(&args, std::path::Path::new(root));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains(": ok (")).count(),
        files.len()
    );
}

#[test]
fn broken_protocol_is_rejected_with_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocols/meditation-anxiety.toml"
    ))
    .unwrap();
    let bad = good
        .replace("period_days = 7", "period_days = 7\nwashout_days = 9")
        .replace("washout_days = 0\n", "")
        .replace("mid = 1.0", "mid = -1.0");
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, &bad).unwrap();
    let period_line = bad
        .lines()
        .position(|l| l.starts_with("washout_days = 9"))
        .unwrap()
        + 1;
    let mid_line = bad
        .lines()
        .position(|l| l.starts_with("mid = -1.0"))
        .unwrap()
        + 1;
    let out = run(&["protocol", "check", "broken.toml"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "broken.toml:line {mid_line}: outcome.mid: must be a positive number (got -1)"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "broken.toml:line {period_line}: design.washout_days: must be shorter than the period"
        )),
        "{stderr}"
    );

    let syntax = dir.path().join("syntax.toml");
    std::fs::write(&syntax, good.replace("[design]", "[design\n")).unwrap();
    let out = run(&["protocol", "check", "syntax.toml"], dir.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("syntax.toml:line"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn non_loopback_without_auth_is_refused_before_touching_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = run(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
    assert!(stderr.contains("web.token"), "{stderr}");
    assert!(
        !data.exists(),
        "nothing may be created when start-up is refused"
    );
}

#[test]
fn newer_or_unreadable_database_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("nof1d.sqlite");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch("CREATE TABLE future (x); PRAGMA user_version = 42;")
            .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let stderr = common::serve_refused(&data, dir.path());
    assert!(stderr.contains("schema version 42"), "{stderr}");
    assert!(stderr.contains("newer nof1d"), "{stderr}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    assert!(!data.join("nof1d.sqlite-wal").exists());

    std::fs::write(
        &db,
        b"this is not a database, it is a shopping list\n".repeat(200),
    )
    .unwrap();
    let before = std::fs::read(&db).unwrap();
    let stderr = common::serve_refused(&data, dir.path());
    assert!(
        stderr.contains("not a readable SQLite database"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before);
}

#[test]
fn bad_config_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "[web]\nlisten = \"127.0.0.1:8080\"\nlistne = 1\n",
    )
    .unwrap();
    let out = run(&["--config", "c.toml", "serve"], dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("listne"), "{stderr}");
    let out = run(&["--config", "missing.toml", "serve"], dir.path());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file missing.toml"));
}

//! Data sources end to end on the real binary: `nof1d import` of an Apple
//! Health export (zip and XML, again, cut short, killed mid-way), Health
//! Auto Export pushed over real HTTP with a source token, the inbox folder,
//! and the stream catalog.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, client, run, run_ok};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The numbers before "stored", "updated" and "already present" in an import's line.
fn counts(line: &str) -> (u64, u64, u64) {
    let n = |word: &str| -> u64 {
        let before = &line[..line
            .find(word)
            .unwrap_or_else(|| panic!("{word} in {line}"))];
        before
            .split_whitespace()
            .last()
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("a number before {word} in {line}"))
    };
    (n(" stored"), n(" updated"), n(" already present"))
}

/// Observation rows in the data folder's database (read-only).
fn observations(data: &Path) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        data.join("nof1d.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row("SELECT COUNT(*) FROM observations", [], |r| r.get(0))
        .unwrap()
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The demo participant gives the database someone to import for.
    let d = Daemon::start(&data, &["--demo"]);
    d.terminate();
    (dir, data)
}

#[test]
fn an_apple_export_imports_once_whatever_its_form_and_damage() {
    let (dir, data) = setup();
    let cwd = dir.path();
    let xml = cwd.join("export.xml");
    let d = data.to_str().unwrap();
    run_ok(
        &[
            "bench",
            "apple-export",
            "--days",
            "20",
            "--hr-minutes",
            "10",
            "--out",
            xml.to_str().unwrap(),
        ],
        cwd,
    );
    let first = stdout(&run_ok(
        &[
            "import",
            "--participant",
            "demo",
            "--data-dir",
            d,
            "export.xml",
        ],
        cwd,
    ));
    let (stored, _, present) = counts(&first);
    // 20 days × (144 heart rates + 6 steps + rhr + hrv + weight + mindful
    // + 2 workout + 5 sleep stages + 3 of them asleep) = 20 × 164.
    assert_eq!((stored, present), (20 * 164, 0), "{first}");
    let again = stdout(&run_ok(
        &[
            "import",
            "--participant",
            "demo",
            "--data-dir",
            d,
            "export.xml",
        ],
        cwd,
    ));
    assert_eq!(counts(&again), (0, 0, stored), "{again}");
    // The same export zipped as Apple ships it: nothing new.
    let zip_path = cwd.join("export.zip");
    {
        let file = std::fs::File::create(&zip_path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        zip.start_file::<_, ()>(
            "apple_health_export/export.xml",
            zip::write::SimpleFileOptions::default(),
        )
        .unwrap();
        std::io::Write::write_all(&mut zip, &std::fs::read(&xml).unwrap()).unwrap();
        zip.finish().unwrap();
    }
    let zipped = stdout(&run_ok(
        &[
            "import",
            "--participant",
            "demo",
            "--data-dir",
            d,
            "export.zip",
        ],
        cwd,
    ));
    assert_eq!(counts(&zipped), (0, 0, stored), "{zipped}");
    // Cut short: what came before is kept (already present), the command
    // says where it stopped and exits non-zero.
    let bytes = std::fs::read(&xml).unwrap();
    std::fs::write(cwd.join("cut.xml"), &bytes[..bytes.len() * 2 / 3]).unwrap();
    let cut = run(
        &[
            "import",
            "--participant",
            "demo",
            "--data-dir",
            d,
            "cut.xml",
        ],
        cwd,
    );
    assert!(!cut.status.success());
    let text = stdout(&cut);
    assert!(
        text.contains("stopped early") && text.contains("byte"),
        "{text}"
    );
    let (s, _, p) = counts(&text);
    assert_eq!(s, 0, "{text}");
    assert!(p > stored / 2, "{text}");
    // Not an export at all.
    std::fs::write(cwd.join("notes.txt"), "hello").unwrap();
    let bad = run(
        &[
            "import",
            "--participant",
            "demo",
            "--data-dir",
            d,
            "notes.txt",
        ],
        cwd,
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a file nof1d can import"));
    // An unknown participant is named with the ones there are.
    let who = run(
        &[
            "import",
            "--participant",
            "alice",
            "--data-dir",
            d,
            "export.xml",
        ],
        cwd,
    );
    assert!(String::from_utf8_lossy(&who.stderr).contains("participants: demo"));
}

#[test]
fn kill_nine_during_an_import_then_again_completes_it_without_doubles() {
    let (dir, data) = setup();
    let cwd = dir.path();
    let d = data.to_str().unwrap();
    run_ok(
        &[
            "bench",
            "apple-export",
            "--days",
            "120",
            "--hr-minutes",
            "2",
            "--out",
            "big.xml",
        ],
        cwd,
    );
    // The reference: the same file into a fresh database.
    let (_ref_dir, ref_data) = setup();
    let reference = stdout(&run_ok(
        &[
            "import",
            "--participant",
            "demo",
            "--data-dir",
            ref_data.to_str().unwrap(),
            "big.xml",
        ],
        cwd,
    ));
    let (total, _, _) = counts(&reference);
    let mut child = std::process::Command::new(common::bin())
        .args([
            "import",
            "--participant",
            "demo",
            "--data-dir",
            d,
            "big.xml",
        ])
        .current_dir(cwd)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as its first batch is in.
    let before = observations(&data);
    let deadline = Instant::now() + Duration::from_secs(60);
    while observations(&data) == before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = stdout(&run_ok(
        &[
            "import",
            "--participant",
            "demo",
            "--data-dir",
            d,
            "big.xml",
        ],
        cwd,
    ));
    let (stored, updated, present) = counts(&resumed);
    assert_eq!(updated, 0);
    assert_eq!(stored + present, total, "{resumed}");
    assert!(
        present > 0,
        "the kill came after some batches were in: {resumed}"
    );
    // Both databases now hold the same rows.
    assert_eq!(observations(&data), observations(&ref_data));
}

#[test]
fn pushed_days_land_once_with_the_source_token_and_fill_the_catalog() {
    let (dir, data) = setup();
    let cwd = dir.path();
    let d = data.to_str().unwrap();
    let token = stdout(&run_ok(
        &["push-token", "--participant", "demo", "--data-dir", d],
        cwd,
    ))
    .trim()
    .to_string();
    assert_eq!(token.len(), 64);
    let daemon = Daemon::start(&data, &[]);
    let payload = stdout(&run_ok(
        &["bench", "hae-payload", "--day", "2026-11-20"],
        cwd,
    ));
    let push = |token: &str, body: &str| {
        client()
            .post(daemon.url("/push"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    let first = push(&token, &payload);
    assert_eq!(first.status(), 200);
    let first: serde_json::Value = first.json().unwrap();
    let stored = first["counts"]["stored"].as_u64().unwrap();
    // 1440 heart rates + 48 steps + rhr + hrv + weight + 2 bp + distance
    // + 5 sleep + 2 workout.
    assert_eq!(stored, 1440 + 48 + 3 + 2 + 1 + 5 + 2);
    // The app re-sends the day: nothing added. Then the day fills: updated.
    let again: serde_json::Value = push(&token, &payload).json().unwrap();
    assert_eq!(again["counts"]["unchanged"].as_u64(), Some(stored));
    let filled = payload.replace(r#""qty":54,"#, r#""qty":53,"#);
    let third: serde_json::Value = push(&token, &filled).json().unwrap();
    assert_eq!(
        (
            third["counts"]["stored"].as_u64(),
            third["counts"]["updated"].as_u64()
        ),
        (Some(0), Some(1))
    );
    // Wrong token, no token, the dashboard's token: 401. Garbage: 400 naming it.
    assert_eq!(push("0".repeat(64).as_str(), &payload).status(), 401);
    assert_eq!(
        client()
            .post(daemon.url("/push"))
            .body("{}")
            .send()
            .unwrap()
            .status(),
        401
    );
    let garbage = push(&token, "{\"data\": 5}");
    assert_eq!(garbage.status(), 400);
    assert!(
        garbage
            .text()
            .unwrap()
            .contains("not a Health Auto Export payload")
    );
    // A payload too large is refused before it is read.
    let huge = "x".repeat(65 << 20);
    assert_eq!(push(&token, &huge).status(), 413);
    // The catalog: steps counted from one device a day (the watch, busier
    // only by ties: both have 24 a day, so the name decides), heart rate a level.
    let streams = daemon.json("/api/streams");
    let all: Vec<&serde_json::Value> = streams
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["streams"].as_array().unwrap())
        .collect();
    let steps = all.iter().find(|s| s["key"] == "steps").unwrap();
    assert_eq!(steps["daily"], "sum");
    assert_eq!(steps["origins"].as_array().unwrap().len(), 2);
    let counted = steps["origins"][0][0].as_str().unwrap();
    let per_hour = if counted.contains("Watch") { 120 } else { 100 };
    let expected: u64 = (0..24).map(|h| per_hour + h * 10).sum();
    assert_eq!(steps["mean"].as_f64(), Some(expected as f64));
    let hr = all.iter().find(|s| s["key"] == "heart_rate").unwrap();
    assert_eq!(hr["daily"], "mean");
    assert_eq!(hr["unit"], "bpm");
    let sleep = all.iter().find(|s| s["key"] == "sleep_asleep").unwrap();
    assert_eq!(sleep["first"], "2026-11-20");
    assert_eq!(sleep["mean"].as_f64(), Some(420.0));
    // The sources page lists the pushes.
    let (status, page) = daemon.get("/sources");
    assert_eq!(status, 200);
    assert!(page.contains("push ") && page.contains(" bytes"), "{page}");
    let metrics = daemon.get("/metrics").1;
    assert!(
        metrics.contains("nof1d_source_runs{way=\"push\"}"),
        "{metrics}"
    );
    daemon.terminate();
}

#[test]
fn the_inbox_imports_dropped_files_and_files_away_the_bad_ones() {
    let (dir, data) = setup();
    let cwd = dir.path();
    let inbox = data.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    run_ok(
        &[
            "bench",
            "apple-export",
            "--days",
            "3",
            "--hr-minutes",
            "60",
            "--out",
            inbox.join("export.xml").to_str().unwrap(),
        ],
        cwd,
    );
    std::fs::write(inbox.join("notes.txt"), "not health data").unwrap();
    std::fs::write(inbox.join("half.json.part"), "{").unwrap();
    // Settled: the sweep leaves files changed in the last seconds alone.
    std::thread::sleep(Duration::from_secs(6));
    let config = dir.path().join("fast.toml");
    std::fs::write(&config, "[jobs]\nsource_poll_seconds = 1\n").unwrap();
    let daemon = Daemon::start(&data, &["--config", config.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !inbox.join("done/export.xml").exists() || !inbox.join("failed/notes.txt").exists() {
        assert!(
            Instant::now() < deadline,
            "inbox not swept: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = std::fs::read_to_string(inbox.join("done/export.xml.report.txt")).unwrap();
    assert!(
        report.contains("apple-health") && report.contains("stored"),
        "{report}"
    );
    let reason = std::fs::read_to_string(inbox.join("failed/notes.txt.reason.txt")).unwrap();
    assert!(reason.contains("not a file nof1d can import"), "{reason}");
    assert!(
        inbox.join("half.json.part").exists(),
        "a partial upload waits"
    );
    daemon.terminate();
}

/// A participant with a mapped spreadsheet: a diary kept in a European
/// spreadsheet (semicolons, decimal commas, day.month.year dates, a
/// column name with an umlaut, weight in pounds).
const MAPPED_CONFIG: &str = r#"
[[participants]]
key = "anna"
name = "Anna"
email = "anna@example.invalid"
time_zone = "Europe/Berlin"

[[participants.imports]]
name = "diary"
files = "diary*.csv"
time = "Datum"
time_format = "%d.%m.%Y"
decimal_comma = true
[[participants.imports.columns]]
column = "Stimmung"
stream = "mood"
unit = "score"
[[participants.imports.columns]]
column = "Migräne"
stream = "migraine"
unit = "yes/no"
[[participants.imports.columns]]
column = "Gewicht"
stream = "body_mass"
unit = "lb"
"#;

#[test]
fn a_mapped_spreadsheet_imports_once_updates_what_changed_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let data = cwd.join("data");
    let config = common::write_config(
        cwd,
        &format!("[jobs]\nsource_poll_seconds = 1\n{MAPPED_CONFIG}"),
    );
    let cfg = config.to_str().unwrap();
    let d = data.to_str().unwrap();
    Daemon::start(&data, &["--config", cfg]).terminate();

    let mut diary = String::from("Datum;Stimmung;Migräne;Gewicht\n");
    for day in 1..=28 {
        let migraine = if day % 5 == 0 {
            "ja?"
        } else if day % 4 == 0 {
            "yes"
        } else {
            "no"
        };
        diary.push_str(&format!(
            "{day:02}.02.2026;{},5;{migraine};{},2\n",
            4 + day % 3,
            150 + day % 2
        ));
    }
    std::fs::write(cwd.join("diary-feb.csv"), &diary).unwrap();
    let import = |file: &str| run(&["import", "--config", cfg, "--data-dir", d, file], cwd);
    let first = import("diary-feb.csv");
    let text = stdout(&first);
    assert!(
        first.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // 28 moods + 28 weights + 23 readable migraine answers ("ja?" × 5 refused).
    assert_eq!(counts(&text), (79, 0, 0), "{text}");
    assert!(text.contains("diary-feb.csv → diary:"), "{text}");
    assert!(
        text.contains("5 refused") && text.contains("\"ja?\" is not a number"),
        "{text}"
    );
    assert_eq!(observations(&data), 79);

    // Again: nothing new. One day's mood changed in the spreadsheet: updated.
    assert_eq!(counts(&stdout(&import("diary-feb.csv"))), (0, 0, 79));
    std::fs::write(
        cwd.join("diary-feb.csv"),
        diary.replacen("01.02.2026;5,5", "01.02.2026;7,0", 1),
    )
    .unwrap();
    assert_eq!(counts(&stdout(&import("diary-feb.csv"))), (0, 1, 78));
    let conn = rusqlite::Connection::open_with_flags(
        data.join("nof1d.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let (mood, weight_unit): (f64, String) = conn
        .query_row(
            "SELECT (SELECT value FROM observations o JOIN streams s ON s.id = o.stream_id
                     WHERE s.key = 'mood' AND o.local_date = '2026-02-01'),
                    (SELECT unit FROM streams WHERE key = 'body_mass')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((mood, weight_unit.as_str()), (7.0, "lb"));

    // A file whose column is not the mapping's: nothing stored, the column named.
    std::fs::write(
        cwd.join("diary-mar.csv"),
        "Datum;Laune;Migräne;Gewicht\n01.03.2026;5;no;150\n",
    )
    .unwrap();
    let bad = import("diary-mar.csv");
    let err = String::from_utf8_lossy(&bad.stderr).into_owned();
    assert!(!bad.status.success());
    assert!(
        err.contains("no column \"Stimmung\"") && err.contains("\"Laune\""),
        "{err}"
    );
    // A CSV no mapping matches: the mappings there are, named.
    std::fs::write(cwd.join("steps.csv"), "date,steps\n2026-03-01,9000\n").unwrap();
    let unknown = String::from_utf8_lossy(&import("steps.csv").stderr).into_owned();
    assert!(unknown.contains("diary (diary*.csv)"), "{unknown}");
    // --mapping names one that does not exist.
    let none = run(
        &[
            "import",
            "--config",
            cfg,
            "--data-dir",
            d,
            "--mapping",
            "sleep",
            "steps.csv",
        ],
        cwd,
    );
    assert!(String::from_utf8_lossy(&none.stderr).contains("no import mapping \"sleep\""));
    assert_eq!(observations(&data), 79);

    // The inbox picks the mapping by the file's name.
    let inbox = data.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::write(
        inbox.join("diary-mar.csv"),
        "Datum;Stimmung;Migräne;Gewicht\n01.03.2026;6;no;149,8\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let daemon = Daemon::start(&data, &["--config", cfg]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !inbox.join("done/diary-mar.csv").exists() {
        assert!(
            Instant::now() < deadline,
            "inbox not swept: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let report = std::fs::read_to_string(inbox.join("done/diary-mar.csv.report.txt")).unwrap();
    assert!(report.contains("3 stored"), "{report}");
    daemon.terminate();
    assert_eq!(observations(&data), 82);
}

/// A multipart body: the CSRF token first, then a file.
fn multipart(csrf: &str, file_name: &str, content: &str) -> (String, Vec<u8>) {
    let boundary = "nof1d-test-boundary-7d91";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\nContent-Type: text/csv\r\n\r\n{content}\r\n\
         --{boundary}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

#[test]
fn the_sources_page_imports_an_uploaded_file_and_makes_a_push_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("nof1d.toml");
    std::fs::write(&config, MAPPED_CONFIG).unwrap();
    let daemon = Daemon::start(&data, &["--config", config.to_str().unwrap()]);
    let http = common::no_redirects();
    let page = http
        .get(daemon.url("/sources"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        page.contains("Upload and import") && page.contains("New push token"),
        "{page}"
    );
    let csrf = common::csrf_of(&page);
    let diary = "Datum;Stimmung;Migräne;Gewicht\n01.04.2026;6;no;149,8\n02.04.2026;5;yes;150\n";
    let upload = |token: &str| {
        let (kind, body) = multipart(token, "diary-april.csv", diary);
        http.post(daemon.url("/sources/upload"))
            .header("Content-Type", kind)
            .body(body)
            .send()
            .unwrap()
    };
    let first = upload(&csrf);
    assert_eq!(first.status(), 200);
    let text = first.text().unwrap();
    assert!(text.contains("diary-april.csv → diary: 6 stored"), "{text}");
    let again = upload(&csrf).text().unwrap();
    assert!(again.contains("6 already present"), "{again}");
    // A forged form writes nothing.
    assert_eq!(upload("forged").status(), 403);
    assert_eq!(observations(&data), 6);
    assert_eq!(
        std::fs::read_dir(data.join("uploads")).unwrap().count(),
        0,
        "uploads are deleted once imported"
    );

    // A new push token from the page works at /push at once.
    let made = http
        .post(daemon.url("/sources/push-token"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap()
        .text()
        .unwrap();
    let token = made
        .split("<code>")
        .nth(1)
        .and_then(|s| s.split("</code>").next())
        .unwrap()
        .to_string();
    assert_eq!(token.len(), 64, "{made}");
    let payload = stdout(&run_ok(
        &["bench", "hae-payload", "--day", "2026-11-20"],
        dir.path(),
    ));
    let pushed = client()
        .post(daemon.url("/push"))
        .bearer_auth(&token)
        .body(payload)
        .send()
        .unwrap();
    assert_eq!(pushed.status(), 200);
    assert!(observations(&data) > 6);
    daemon.terminate();
}

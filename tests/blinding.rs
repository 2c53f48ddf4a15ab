//! A blinded trial through the real daemon: proposed and approved from the
//! command line, run on simulated time into its first period, then read as
//! its participant and as the investigator. The participant's pages, JSON
//! and emails name codes only, never an arm's label or key; the run-in names
//! no code; the key (drawn for this trial) is the investigator's.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, hash, run, session};
use nof1d::service::store::Store;

const PARTICIPANT_PASSWORD: &str = "quiet evening 77";
const INVESTIGATOR_PASSWORD: &str = "jar keeper 4242";

/// Two arms in coded jars, a 2-day run-in, 2-day periods, two blocks. The
/// title and instructions name no arm, as a blinded protocol's must.
const PROTOCOL: &str = r#"
id = "calm-tea"
title = "Evening tea and calm"
comparator = "plain"
blinded = true

[[arms]]
key = "plain"
label = "Plain black tea"
instructions = "Brew one bag from today's jar after dinner."
code = "Jar A"

[[arms]]
key = "lavender"
label = "Lavender tea"
instructions = "Brew one bag from today's jar after dinner."
code = "Jar B"

[outcome]
stream = "calm"
unit = "points"
family = "gaussian"
direction = "higher"
mid = 1.0
scale = 2.0

[outcome.self_report]
question = "How calm did you feel this evening, from 0 (restless) to 10 (calm)?"
min = 0
max = 10

[design]
type = "block"
period_days = 2
run_in_days = 2
min_blocks = 2
max_blocks = 2
"#;

fn config(data: &Path, time_scale: f64) -> String {
    let config = common::write_config(
        data,
        &format!(
            "[web]\npassword_hash = {:?}\ninvestigator_password_hash = {:?}\n\
             [jobs]\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\n\
             design_seconds = 1\ndesign_trials = 12\ncalibration_trials = 8\n\
             [clock]\ntime_scale = {time_scale:.1}\n\
             [[participants]]\nkey = \"alice\"\nname = \"Alice\"\nemail = \"alice@example.org\"\n\
             time_zone = \"UTC\"\n",
            hash(PARTICIPANT_PASSWORD),
            hash(INVESTIGATOR_PASSWORD),
        ),
    );
    config.display().to_string()
}

fn wait(what: &str, d: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while !done() {
        assert!(Instant::now() < deadline, "{what}; log:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_blinded_trial_shows_its_participant_codes_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let protocol = dir.path().join("calm-tea.toml");
    std::fs::write(&protocol, PROTOCOL).unwrap();
    let cli = |args: &[&str]| {
        let mut all = vec!["trial", "--data-dir", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = run(&all, &data);
        assert!(out.status.success(), "{args:?}: {out:?}");
    };

    // At real speed: the proposal's design is simulated and calibrated
    // before it is approved to start tomorrow (the command line reads the
    // real clock; the daemon's runs from it).
    let slow = config(&data, 1.0);
    let d = Daemon::start(&data, &["--config", &slow]);
    cli(&[
        "propose",
        protocol.to_str().unwrap(),
        "--participant",
        "alice",
    ]);
    let investigator = session(&d, INVESTIGATOR_PASSWORD);
    wait("the proposal was not calibrated", &d, || {
        !investigator.json(&d, "/api/proposals")[0]["calibration"].is_null()
    });
    let tomorrow = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .tomorrow()
        .unwrap()
        .to_string();
    cli(&["approve", "1", "--start", &tomorrow]);
    drop(d);

    // A simulated day every six seconds from now: the rest of today, the
    // run-in and the first days of the first period go by, and what follows
    // (the stop and its undo within a simulated day, before the trial's
    // last day) has room on a loaded machine.
    let fast = config(&data, 14_400.0);
    let d = Daemon::start(&data, &["--config", &fast]);
    let store = || Store::open_read_only(&data.join("nof1d.sqlite")).unwrap();
    wait("the first period did not begin", &d, || {
        store()
            .recent_messages(50)
            .unwrap()
            .iter()
            .filter(|m| m.kind == "assignment")
            .count()
            >= 4
    });
    let trial = store().trial(1).unwrap().unwrap();
    let key = trial.protocol().unwrap().code_key().unwrap();
    assert!(key.contains("Run-in supply = Plain black tea"), "{key}");

    // Every email so far: the run-in's name no jar, the period's name one,
    // and none names an arm's label or key.
    let messages = store().recent_messages(50).unwrap();
    let run_in_days: Vec<_> = store()
        .schedule(1)
        .unwrap()
        .iter()
        .filter(|r| r.block.is_none())
        .map(|r| r.local_date.to_string())
        .collect();
    assert_eq!(run_in_days.len(), 2);
    for m in &messages {
        for text in [&m.subject, &m.body_text, &m.body_html] {
            for secret in ["Plain black tea", "Lavender", "lavender"] {
                assert!(!text.contains(secret), "{secret} in {}: {text}", m.key);
            }
        }
        if m.kind == "assignment" {
            let run_in = m
                .local_date
                .as_ref()
                .is_some_and(|d| run_in_days.contains(d));
            let named = m.subject.contains("Run-in supply");
            let jar = m.body_text.contains("Jar A") || m.body_text.contains("Jar B");
            assert_eq!((named, jar), (run_in, !run_in), "{}", m.body_text);
        }
    }

    // The participant's page and JSON: codes only, in order, the run-in
    // uncoloured, no key and no estimate.
    let participant = session(&d, PARTICIPANT_PASSWORD);
    let mine = participant.json(&d, "/api/trials/1");
    assert_eq!(mine["view"], "participant");
    assert_eq!(mine["arms"], serde_json::json!(["Jar A", "Jar B"]));
    assert!(mine["key"].is_null(), "{mine}");
    assert_eq!(mine["estimates_hidden"], true);
    for day in mine["calendar"].as_array().unwrap() {
        if day["arm"] == "Run-in supply" {
            assert!(day["arm_index"].is_null(), "{day}");
        }
    }
    let (status, page) = participant.get(&d, "/trials/1");
    assert_eq!(status, 200);
    for text in [&page, &mine.to_string(), &participant.get(&d, "/").1] {
        for secret in [
            "Plain black tea",
            "Lavender",
            "\"plain\"",
            "\"lavender\"",
            &key,
        ] {
            assert!(!text.contains(secret), "{secret} shown to the participant");
        }
    }
    assert!(
        page.contains("This trial is blinded: its estimates"),
        "{page}"
    );
    // Its data and decisions name the arms: no download for the
    // participant, and no link to one; the investigator gets them.
    assert!(!page.contains("/export/days.csv"), "{page}");
    for file in ["days.csv", "decisions.csv"] {
        let (status, body) = participant.get(&d, &format!("/trials/1/export/{file}"));
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("only the investigator"), "{body}");
    }

    // The investigator sees the key drawn for this trial, and can download
    // the days by arm key.
    let (status, days) = investigator.get(&d, "/trials/1/export/days.csv");
    assert_eq!(status, 200, "{days}");
    assert!(days.starts_with("date,day,period,block,arm,"), "{days}");
    assert!(days.contains(",lavender,"), "{days}");
    let (_, page) = investigator.get(&d, "/trials/1");
    assert!(
        page.contains(&format!("Key of this trial's codes: {key}")),
        "{page}"
    );
    assert!(page.contains("The participant sees it when the trial ends"));

    // A stop by hand can be undone for a day: until then the participant
    // still sees codes only (else stopping, reading the key and undoing
    // would unblind the trial); the undo puts it back as it was.
    let csrf = common::csrf_of(&participant.get(&d, "/trials/1/confirm/stop").1);
    let (status, _) = participant.post(
        &d,
        "/trials/1/stop",
        &format!("csrf={csrf}&confirm=yes&reason=just+looking"),
    );
    assert_eq!(status, 303);
    let mine = participant.json(&d, "/api/trials/1");
    assert_eq!(mine["status"], "stopped");
    assert!(
        mine["key"].is_null(),
        "the key while the stop can be undone: {mine}"
    );
    assert_eq!(mine["estimates_hidden"], true);
    for text in [
        &participant.get(&d, "/trials/1").1,
        &participant.get(&d, "/").1,
    ] {
        assert!(!text.contains(&key), "the key while the stop can be undone");
    }
    let (status, _) = participant.post(&d, "/trials/1/undo", &format!("csrf={csrf}"));
    assert_eq!(status, 303);
    assert_eq!(participant.json(&d, "/api/trials/1")["status"], "running");
}

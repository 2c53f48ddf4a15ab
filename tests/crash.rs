//! Crash safety on the real binary: `kill -9` at random moments, restart,
//! and check that no row is lost or doubled and that the schedule and the
//! next assignment are unchanged.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::Daemon;
use nof1d::service::store::Store;
use rand::{RngExt, SeedableRng};

/// What must survive a crash unchanged.
#[derive(Debug, PartialEq)]
struct Snapshot {
    seed: u64,
    protocol_hash: String,
    schedule: Vec<nof1d::trial::lifecycle::DatedDay>,
    counts: nof1d::service::store::Counts,
    next_assignment: serde_json::Value,
    today_arm: serde_json::Value,
}

fn snapshot(d: &Daemon, db: &Path) -> Snapshot {
    let store = Store::open_read_only(db).unwrap();
    let trials = store.trials().unwrap();
    assert_eq!(trials.len(), 1, "exactly one demo trial");
    let status = d.json("/api/status");
    Snapshot {
        seed: trials[0].seed,
        protocol_hash: trials[0].protocol_hash.to_string(),
        schedule: store.schedule(trials[0].id).unwrap(),
        counts: store.counts().unwrap(),
        next_assignment: status["trials"][0]["next_assignment"].clone(),
        today_arm: status["trials"][0]["today_arm"].clone(),
    }
}

/// Invariants that hold at any moment, whatever was killed when.
fn check_invariants(db: &Path, mail_dir: &Path) {
    let store = Store::open_read_only(db).unwrap();
    assert_eq!(store.quick_check().unwrap(), "ok");
    let trial = &store.trials().unwrap()[0];
    let obs = store.observations(1, "anxiety_evening", &[]).unwrap();
    let dates: Vec<_> = obs.iter().map(|o| o.1).collect();
    let unique: BTreeSet<_> = dates.iter().collect();
    assert_eq!(
        unique.len(),
        dates.len(),
        "one observation per day, never doubled"
    );
    // Contiguous from the trial's first day: nothing lost in between.
    let start = trial.start_date.unwrap();
    for (i, d) in dates.iter().enumerate() {
        assert_eq!(
            nof1d::trial::calendar::days_between(start, *d),
            i as i64,
            "gap before {d}"
        );
    }
    // One assignment message per day that ran; each delivered message has its file.
    let runs = store.daily_runs(trial.id).unwrap();
    let sent_days = runs.iter().filter(|r| r.1 == "sent").count();
    let messages = store.recent_messages(10_000).unwrap();
    assert_eq!(messages.len(), sent_days, "one message per day that ran");
    let keys: BTreeSet<_> = messages.iter().map(|m| m.key.clone()).collect();
    assert_eq!(keys.len(), messages.len());
    for m in messages.iter().filter(|m| m.status == "sent") {
        let path = m.delivered_to.as_ref().unwrap();
        assert!(Path::new(path).exists(), "{path}");
    }
    let files = std::fs::read_dir(mail_dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
                .count()
        })
        .unwrap_or(0);
    assert!(files <= messages.len(), "no stray mail files");
}

#[test]
fn kill_9_during_start_and_seeding_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("nof1d.sqlite");
    let args = common::pinned_demo_args(&data);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(20261125);
    // Kill early and often, before and during the first seeding.
    for _ in 0..6 {
        let d = Daemon::spawn(&data, &args);
        std::thread::sleep(Duration::from_millis(rng.random_range(5..250)));
        d.kill9();
    }
    let d = Daemon::start(&data, &args);
    d.wait_jobs(1, Duration::from_secs(30));
    let reference = snapshot(&d, &db);
    check_invariants(&db, &data.join("mail"));
    assert_eq!(reference.counts.observations, 42);
    assert_eq!(reference.counts.outbox, 1);
    d.kill9();

    for round in 0..5 {
        let d = Daemon::start(&data, &args);
        // Sometimes kill before the jobs ran, sometimes after.
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..100)));
            d.kill9();
            continue;
        }
        d.wait_jobs(1, Duration::from_secs(30));
        assert_eq!(snapshot(&d, &db), reference, "round {round}");
        check_invariants(&db, &data.join("mail"));
        d.kill9();
    }
}

#[test]
fn kill_9_while_simulated_days_pass_keeps_every_day_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("nof1d.sqlite");
    // One simulated day per 10 real seconds; every job ticks each second.
    // The timeline starts at noon (common::PINNED_START): from the real time
    // of day, a start after about 22:30 crossed midnight before the first
    // assignment tick, and the run then saw one morning instead of two.
    let config = common::write_config(
        &data,
        &format!(
            "[jobs]\nsource_poll_seconds = 1\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\n[clock]\ntime_scale = 8640.0\nstart = {:?}\n",
            common::PINNED_START
        ),
    );
    let args = ["--demo", "--config", config.to_str().unwrap()];
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let first = Daemon::start(&data, &args);
    first.wait_jobs(1, Duration::from_secs(30));
    let seed = Store::open_read_only(&db).unwrap().trials().unwrap()[0].seed;
    let schedule = Store::open_read_only(&db).unwrap().schedule(1).unwrap();
    first.kill9();
    let mut max_obs = 0;
    for _ in 0..8 {
        let d = Daemon::start(&data, &args);
        std::thread::sleep(Duration::from_millis(rng.random_range(300..3000)));
        d.kill9();
        check_invariants(&db, &data.join("mail"));
        let store = Store::open_read_only(&db).unwrap();
        assert_eq!(store.trials().unwrap()[0].seed, seed);
        assert_eq!(store.schedule(1).unwrap(), schedule);
        let n = store.counts().unwrap().observations;
        assert!(n >= max_obs, "observations never disappear");
        max_obs = n;
    }
    // Simulated days did pass: new ratings and new assignments arrived.
    let store = Store::open_read_only(&db).unwrap();
    assert!(
        store.counts().unwrap().observations > 42,
        "{:?}",
        store.counts()
    );
    assert!(
        store.counts().unwrap().daily_runs > 1,
        "{:?}",
        store.counts()
    );
    let d = Daemon::start(&data, &args);
    d.wait_jobs(2, Duration::from_secs(30));
    let (exit, log) = d.terminate();
    assert!(exit.success(), "{log}");
    check_invariants(&db, &data.join("mail"));
}

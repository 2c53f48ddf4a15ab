//! Trials that run themselves (the real daemon, simulated time): the demo
//! trial goes from running to a stop decision untouched; decisions can be
//! recomputed from their stored fits; the life cycle from the command line
//! (propose, approve, automatic start, conflicts, pause/resume, adverse
//! events); the simulator's report.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, run};
use nof1d::engine::fit::FitReport;
use nof1d::service::store::{DesignWork, Store};
use nof1d::trial::decide::{self, Decision};
use nof1d::trial::lifecycle::TrialStatus;

/// Jobs every second and `scale` simulated seconds per real second.
fn fast_config(data: &Path, scale: f64) -> std::path::PathBuf {
    common::write_config(
        data,
        &format!(
            "[jobs]\nsource_poll_seconds = 1\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\ndesign_seconds = 1\ncalibration_trials = 8\n[clock]\ntime_scale = {scale:.1}\n[email]\nweekly_summary = true\n"
        ),
    )
}

fn store(data: &Path) -> Store {
    Store::open_read_only(&data.join("nof1d.sqlite")).unwrap()
}

#[test]
fn the_demo_trial_runs_to_a_stop_decision_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // About 1.7 simulated days a second: the demo's remaining 56 days in
    // ~32 s. Not a whole number of days per one-second tick, so ticks fall
    // at every time of day and assignments (07:30) go out.
    let config = fast_config(&data, 150_000.0);
    let d = Daemon::start(&data, &["--demo", "--config", config.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let trial = store(&data).trial(1).unwrap().unwrap();
        if trial.status == TrialStatus::Stopped {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trial did not stop; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let d_overview = d.get("/").1;
    let (status, _) = d.terminate();
    assert!(status.success());

    let s = store(&data);
    let trial = s.trial(1).unwrap().unwrap();
    let reason = trial.stop_reason.clone().unwrap();
    assert!(reason.starts_with("stop_"), "{reason}");
    // The life cycle records who stopped it and why.
    let events = s.trial_events(1).unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (
            last.from_status.as_deref(),
            last.to_status.as_str(),
            last.actor.as_str()
        ),
        (Some("running"), "stopped", "daemon")
    );
    // A stop by a decision stands: it cannot be undone as a stop by hand can.
    drop(s);
    let (ok, out) = cli(dir.path(), &data, &["undo-stop", "1"]);
    assert!(
        !ok && out.contains("a stop by a decision or for safety stands"),
        "{out}"
    );
    let s = store(&data);

    // One decision per look, from the first look at 2 blocks to the stop;
    // each one recomputes from its stored fit to the same decision.
    let decisions = s.decisions(1).unwrap();
    assert!(!decisions.is_empty());
    let periods: Vec<u32> = decisions.iter().filter_map(|d| d.period).collect();
    let mut unique = periods.clone();
    unique.dedup();
    assert_eq!(periods, unique, "one decision per look");
    assert_eq!(
        decisions.last().unwrap().action,
        reason.split(':').next().unwrap()
    );
    let keys = vec!["none".to_string(), "meditation".to_string()];
    for row in &decisions {
        let stored: Decision = serde_json::from_str(&row.numbers_json).unwrap();
        let Some(fit_id) = row.fit_id else { continue };
        let fit = s.fit(fit_id).unwrap().unwrap();
        let report: FitReport = serde_json::from_str(&fit.result_json).unwrap();
        let again = decide::decide(stored.thresholds, 0, &stored.look, &report, &keys);
        assert_eq!(again, stored, "decision {} recomputes", row.id);
    }
    // The participant was told, in words, with the numbers; and got a
    // weekly summary each Monday.
    let messages = s.recent_messages(1000).unwrap();
    let told: Vec<_> = messages.iter().filter(|m| m.kind == "decision").collect();
    assert_eq!(told.len(), 1, "one decision message (the stop)");
    assert!(
        told[0]
            .body_text
            .contains("probability it is better by at least the minimal important difference"),
        "{}",
        told[0].body_text
    );
    // Its final answer in words comes before the numbers.
    let body = &told[0].body_text;
    let words = body
        .find("Final answer")
        .or_else(|| body.find("The trial stopped"));
    let numbers = body.find("probability it is better");
    assert!(
        words.is_some() && words < numbers,
        "no final answer in words first: {body}"
    );
    // The overview says where the person stands first.
    let overview = d_overview;
    assert!(overview.contains("class=\"standing\""), "{overview}");
    let weekly = messages
        .iter()
        .filter(|m| m.kind == "weekly_summary")
        .count();
    // One per ISO week with an assignment: the run spans about 8 weeks; a
    // loaded machine may skip whole weeks.
    assert!(
        (2..=10).contains(&weekly),
        "{weekly} weekly summaries over 8 weeks"
    );
    // Nothing was assigned after the stop.
    let stop_date: jiff::civil::Date = last.local_date.as_deref().unwrap().parse().unwrap();
    let runs = s.daily_runs(1).unwrap();
    assert!(runs.iter().all(|(date, _)| *date <= stop_date), "{runs:?}");
    // Report renders the trail.
    let md = report_markdown(dir.path(), &data, 1);
    assert!(md.contains("## Decision trail"), "{md}");
    assert!(md.contains(&decisions.last().unwrap().action), "{md}");

    // The days export: one row a scheduled day, each day's value the mean
    // of the stored observations (the protocol's aggregation), and it reads
    // back with `nof1d analyze --protocol`.
    let days_csv = dir.path().join("days.csv");
    let (ok, out) = cli(
        dir.path(),
        &data,
        &["export", "1", "--out", days_csv.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let schedule = s.schedule(1).unwrap();
    let observations = s
        .observations(trial.participant_id, "anxiety_evening", &[])
        .unwrap();
    let mut reader = csv::Reader::from_path(&days_csv).unwrap();
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        [
            "date",
            "day",
            "period",
            "block",
            "arm",
            "washout",
            "adherence",
            "email",
            "anxiety_evening",
            "observations"
        ]
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), schedule.len());
    let mut with_data = 0;
    for (row, day) in rows.iter().zip(&schedule) {
        assert_eq!(row[0], day.local_date.to_string());
        assert_eq!(row[4], keys[day.arm]);
        let values: Vec<f64> = observations
            .iter()
            .filter(|o| o.1 == day.local_date)
            .map(|o| o.2)
            .collect();
        assert_eq!(row[9], values.len().to_string(), "{row:?}");
        if values.is_empty() {
            assert_eq!(&row[8], "", "{row:?}");
        } else {
            with_data += 1;
            let mean = values.iter().sum::<f64>() / values.len() as f64;
            let exported: f64 = row[8].parse().unwrap();
            assert!((exported - mean).abs() < 1e-9, "{row:?} against {values:?}");
        }
    }
    assert!(with_data > 20, "{with_data} days with data");
    let protocol = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/protocols/meditation-anxiety.toml"
    );
    let out = run(
        &[
            "analyze",
            "--data",
            days_csv.to_str().unwrap(),
            "--protocol",
            protocol,
            "--json",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let analysis: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(analysis["input"]["observations"], with_data);
    // The decisions export: one row an arm (one arm besides the
    // comparator) of each decision, with the action it took.
    let decisions_csv = dir.path().join("decisions.csv");
    let (ok, out) = cli(
        dir.path(),
        &data,
        &[
            "export",
            "1",
            "--decisions",
            "--out",
            decisions_csv.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let mut reader = csv::Reader::from_path(&decisions_csv).unwrap();
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), decisions.len(), "{out}");
    for (row, decision) in rows.iter().zip(&decisions) {
        assert_eq!(row[3], decision.action);
        assert_eq!(row[5], *"meditation");
    }
}

/// A data folder under `dir` with the fast config, where the daemon ran
/// once (so the database holds the demo participant and its running
/// trial 1) and stopped cleanly: `(data folder, config file)`.
fn seed_demo(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let data = dir.join("data");
    let config = fast_config(&data, 1.0);
    let args = ["--demo", "--config", config.to_str().unwrap()];
    let d = Daemon::start(&data, &args);
    d.wait_jobs(1, Duration::from_secs(30));
    let (status, _) = d.terminate();
    assert!(status.success());
    (data, config)
}

/// `nof1d report TRIAL` in markdown, without its simulation; it must
/// succeed.
fn report_markdown(dir: &Path, data: &Path, trial: i64) -> String {
    let trial = trial.to_string();
    let out = run(
        &[
            "report",
            &trial,
            "--data-dir",
            data.to_str().unwrap(),
            "--sim-trials",
            "0",
            "--format",
            "markdown",
        ],
        dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cli(dir: &Path, data: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["trial", "--data-dir", data.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = run(&all, dir);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn life_cycle_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = seed_demo(dir.path());
    let args = ["--demo", "--config", config.to_str().unwrap()];
    let root = env!("CARGO_MANIFEST_DIR");
    let meditation = format!("{root}/protocols/meditation-anxiety.toml");
    let study = format!("{root}/protocols/study-timing.toml");

    // A second trial on the demo's outcome stream: proposed and approved
    // for today, but the daemon refuses to start it beside the running one.
    let (ok, out) = cli(
        dir.path(),
        &data,
        &["propose", &meditation, "--participant", "demo"],
    );
    assert!(ok, "{out}");
    assert!(out.contains("trial 2 proposed"), "{out}");
    let (ok, out) = cli(
        dir.path(),
        &data,
        &["propose", &study, "--participant", "nobody"],
    );
    assert!(!ok && out.contains("no participant \"nobody\""), "{out}");
    // An outcome nothing records (no question, no source has sent it) is
    // refused, naming the streams that have data.
    let caffeine = format!("{root}/protocols/caffeine-cutoff.toml");
    let (ok, out) = cli(
        dir.path(),
        &data,
        &["propose", &caffeine, "--participant", "demo"],
    );
    assert!(
        !ok && out.contains("nothing records")
            && out.contains("streams with data: anxiety_evening"),
        "{out}"
    );
    // Illegal transitions are refused with the reason.
    let (ok, out) = cli(dir.path(), &data, &["pause", "2"]);
    assert!(
        !ok && out.contains("trial 2 is proposed; it cannot become paused"),
        "{out}"
    );
    let today = store(&data).participants().unwrap()[0].time_zone.clone();
    let tz = jiff::tz::TimeZone::get(&today).unwrap();
    let today = jiff::Timestamp::now().to_zoned(tz).date().to_string();
    let (ok, out) = cli(dir.path(), &data, &["approve", "2", "--start", &today]);
    assert!(ok, "{out}");

    // A pause and a resume move the rest of the demo schedule.
    let before = store(&data).schedule(1).unwrap();
    let (ok, out) = cli(dir.path(), &data, &["pause", "1", "--reason", "holiday"]);
    assert!(ok, "{out}");
    let today_date: jiff::civil::Date = today.parse().unwrap();
    let on = today_date.checked_add(jiff::Span::new().days(4)).unwrap();
    // Today moves too unless its assignment already went out (after 07:30
    // local); the demo's history before the pause never moves.
    let ran_today = store(&data).last_daily_run(1).unwrap() == Some(today_date);
    let first_moved = if ran_today {
        today_date.tomorrow().unwrap()
    } else {
        today_date
    };
    let shift = first_moved.until(on).unwrap().get_days();
    let (ok, out) = cli(dir.path(), &data, &["resume", "1", "--on", &on.to_string()]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("moved {shift} days")), "{out}");
    let after = store(&data).schedule(1).unwrap();
    assert_eq!(before.len(), after.len());
    for (a, b) in before.iter().zip(&after) {
        // Same days, periods, blocks and arms: block balance untouched.
        assert_eq!(
            (a.day, a.period, a.block, a.arm),
            (b.day, b.period, b.block, b.arm)
        );
        let moved = if a.local_date >= first_moved {
            i64::from(shift)
        } else {
            0
        };
        assert_eq!(
            a.local_date
                .checked_add(jiff::Span::new().days(moved))
                .unwrap(),
            b.local_date
        );
    }

    let d = Daemon::start(&data, &args);
    d.wait_jobs(2, Duration::from_secs(30));
    let health = d.json("/healthz");
    let error = health["jobs"]["assignments"]["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("trial 2 cannot start") && error.contains("anxiety_evening"),
        "{health}"
    );
    assert_eq!(
        store(&data).trial(2).unwrap().unwrap().status.as_str(),
        "approved"
    );
    drop(d);

    // An adverse event stops the running trial at once; a stopped trial
    // cannot be resumed; rejecting the proposal-turned-approval works.
    let (ok, out) = cli(
        dir.path(),
        &data,
        &["adverse-event", "1", "--note", "headache"],
    );
    assert!(ok, "{out}");
    let s = store(&data);
    let t1 = s.trial(1).unwrap().unwrap();
    assert_eq!(t1.status.as_str(), "stopped");
    assert_eq!(
        t1.stop_reason.as_deref(),
        Some("safety: adverse event reported")
    );
    assert_eq!(
        s.decisions(1).unwrap().last().unwrap().action,
        "stop_safety"
    );
    let (ok, out) = cli(dir.path(), &data, &["resume", "1"]);
    assert!(!ok && out.contains("it cannot become running"), "{out}");
    let (ok, out) = cli(dir.path(), &data, &["undo-stop", "1"]);
    assert!(
        !ok && out.contains("a stop by a decision or for safety stands"),
        "{out}"
    );

    // With the demo trial stopped, the daemon starts trial 2 on its own,
    // once its design is calibrated, with the calibrated threshold locked.
    let d = Daemon::start(&data, &args);
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while store(&data).trial(2).unwrap().unwrap().status.as_str() != "running" {
        // Where it does not, the jobs' state says which one held it.
        assert!(
            std::time::Instant::now() < deadline,
            "trial 2 did not start: {}\n{}",
            d.try_get("/healthz"),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(d);
    let s = store(&data);
    let t2 = s.trial(2).unwrap().unwrap();
    assert_eq!(t2.status.as_str(), "running");
    let calibration = s.calibration(&t2.protocol_hash).unwrap().unwrap();
    let locked = t2.locked.unwrap();
    assert_eq!(locked.source, decide::ThresholdSource::Calibrated);
    assert_eq!(locked.efficacy, calibration.efficacy);
    // Futility is locked with it (calibrated: every calibration runs the 29
    // trials under the effect a scenario that takes).
    assert!(calibration.futility.is_some(), "{calibration:?}");
    assert_eq!(locked.futility, calibration.futility);
    assert_eq!(locked.drop_arm, calibration.drop_arm);
    // The demo started at once, on its protocol's stated threshold.
    let t1 = s.trial(1).unwrap().unwrap();
    assert_eq!(
        t1.locked.map(|l| (l.efficacy, l.source)),
        Some((0.95, decide::ThresholdSource::Protocol))
    );
    assert_eq!(s.schedule(2).unwrap().len() as u32, 14 + 6 * 2 * 7);
    let events = s.trial_events(2).unwrap();
    let path: Vec<&str> = events.iter().map(|e| e.to_status.as_str()).collect();
    assert_eq!(path, ["proposed", "approved", "running"]);
    let started = s.recent_messages(100).unwrap();
    let started: Vec<_> = started
        .iter()
        .filter(|m| m.kind == "trial_started")
        .collect();
    assert_eq!(started.len(), 1);
    assert!(
        started[0].body_text.contains(&t2.protocol_hash.0),
        "{}",
        started[0].body_text
    );
    let (ok, out) = cli(dir.path(), &data, &["list"]);
    assert!(
        ok && out.contains("running") && out.contains("stopped"),
        "{out}"
    );

    // A stop by hand can be undone within a day: back to running.
    let (ok, out) = cli(
        dir.path(),
        &data,
        &["stop", "2", "--reason", "pressed by mistake"],
    );
    assert!(ok && out.contains("undo-stop 2"), "{out}");
    let (ok, out) = cli(dir.path(), &data, &["undo-stop", "2"]);
    assert!(ok && out.contains("it is running again"), "{out}");
    let events = store(&data).trial_events(2).unwrap();
    let path: Vec<&str> = events.iter().map(|e| e.to_status.as_str()).collect();
    assert_eq!(
        path,
        ["proposed", "approved", "running", "stopped", "running"]
    );
    assert_eq!(
        events.last().unwrap().reason,
        "stop undone (it was: pressed by mistake)"
    );
    // Paused, stopped, undone: paused since the pause, not since the undo.
    assert!(cli(dir.path(), &data, &["pause", "2", "--reason", "away"]).0);
    let paused_on = store(&data)
        .trial_events(2)
        .unwrap()
        .last()
        .unwrap()
        .local_date
        .clone();
    assert!(cli(dir.path(), &data, &["stop", "2", "--reason", "oops"]).0);
    let (ok, out) = cli(dir.path(), &data, &["undo-stop", "2"]);
    assert!(ok && out.contains("it is paused again"), "{out}");
    let last = store(&data)
        .trial_events(2)
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last.to_status.as_str(), last.local_date),
        ("paused", paused_on)
    );
    // An adverse event reported after a stop by hand makes the stop stand.
    assert!(cli(dir.path(), &data, &["stop", "2", "--reason", "unwell"]).0);
    assert!(cli(dir.path(), &data, &["adverse-event", "2", "--note", "rash"]).0);
    let (ok, out) = cli(dir.path(), &data, &["undo-stop", "2"]);
    assert!(
        !ok && out.contains("a stop by a decision or for safety stands"),
        "{out}"
    );
}

#[test]
fn a_design_that_cannot_be_calibrated_starts_on_its_stated_thresholds_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = seed_demo(dir.path());
    let args = ["--demo", "--config", config.to_str().unwrap()];
    // Two fewer migraine days a month is the shipped MID; twenty cannot
    // happen from the simulated baseline of 7.5, so every calibration
    // attempt fails the same way.
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/protocols/magnesium-migraine.toml"))
        .unwrap()
        .replace("mid_natural = 2.0", "mid_natural = 20.0");
    let protocol = dir.path().join("migraine-20.toml");
    std::fs::write(&protocol, text).unwrap();
    let (ok, out) = cli(
        dir.path(),
        &data,
        &[
            "propose",
            protocol.to_str().unwrap(),
            "--participant",
            "demo",
        ],
    );
    assert!(ok, "{out}");
    let zone = store(&data).participants().unwrap()[0].time_zone.clone();
    let tz = jiff::tz::TimeZone::get(&zone).unwrap();
    let today = jiff::Timestamp::now().to_zoned(tz).date().to_string();
    let (ok, out) = cli(dir.path(), &data, &["approve", "2", "--start", &today]);
    assert!(ok, "{out}");

    let d = Daemon::start(&data, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    while store(&data).trial(2).unwrap().unwrap().status.as_str() != "running" {
        assert!(
            Instant::now() < deadline,
            "trial 2 did not start: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The job counts its third failure just after storing it, and trial 2
    // may start in between.
    let mut health = d.json("/healthz");
    while health["jobs"]["designs"]["failures"].as_u64().unwrap_or(0) < 3 {
        assert!(Instant::now() < deadline, "{health}");
        std::thread::sleep(Duration::from_millis(200));
        health = d.json("/healthz");
    }
    drop(d);
    let s = store(&data);
    let t2 = s.trial(2).unwrap().unwrap();
    // Tried three times, then given up on; the failure is kept, not retried.
    let failure = s
        .design_failure(DesignWork::Calibration, &t2.protocol_hash)
        .unwrap()
        .unwrap();
    assert_eq!(failure.attempts, 3, "{failure:?}");
    assert!(
        failure.error.contains("mid_natural") && failure.error.contains("cannot happen"),
        "{failure:?}"
    );
    assert!(s.calibration(&t2.protocol_hash).unwrap().is_none());
    // Each failed attempt was a failed run of the designs job (on
    // `/healthz` while it was the last), and the job went on after them.
    assert_eq!(health["jobs"]["designs"]["failures"], 3, "{health}");
    // The trial decides on the protocol's stated thresholds, and says so.
    let locked = t2.locked.unwrap();
    assert_eq!(locked.source, decide::ThresholdSource::Protocol);
    assert_eq!(locked.efficacy, t2.protocol().unwrap().decision.efficacy);
    assert_eq!(locked.futility, None);
    let started: Vec<_> = s
        .recent_messages(100)
        .unwrap()
        .into_iter()
        .filter(|m| m.kind == "trial_started" && m.key.ends_with("/2"))
        .collect();
    assert_eq!(started.len(), 1);
    assert!(
        started[0].body_text.contains("could not be calibrated")
            && started[0].body_text.contains("mid_natural"),
        "{}",
        started[0].body_text
    );
}

#[test]
fn simulate_reports_error_rates_with_monte_carlo_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = env!("CARGO_MANIFEST_DIR");
    let protocol = format!("{root}/bench/two-arm-16-weeks.toml");
    let out_file = dir.path().join("sim.json");
    let out = run(
        &[
            "simulate",
            "--protocol",
            &protocol,
            "--trials",
            "12",
            "--calibrate",
            "--json",
            "--out",
            out_file.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_file).unwrap()).unwrap();
    assert_eq!(report["trials"], 12);
    let rate = &report["default"]["no_effect"]["stop_efficacy"];
    let p = rate["rate"].as_f64().unwrap();
    let se = rate["se"].as_f64().unwrap();
    assert!((se - (p * (1.0 - p) / 12.0).sqrt()).abs() < 1e-12);
    let c = report["calibrated"]["result"]["efficacy"].as_f64().unwrap();
    assert!(c > 0.5 && c <= 1.0, "{c}");
    // In-sample, calibration keeps the false-stop rate at or below 5%.
    assert!(
        report["calibrated"]["in_sample_false_stop"]["rate"]
            .as_f64()
            .unwrap()
            <= 0.05
    );
    assert!(report["timing"]["fits"].as_u64().unwrap() > 0);
    // Bad input names the problem.
    let out = run(
        &["simulate", "--protocol", &protocol, "--scenario", "wobbly"],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--scenario \"wobbly\""));
}

#[test]
fn a_started_trials_refinement_comes_first_and_an_unstarted_ones_yields_to_a_new_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = seed_demo(dir.path());
    // The quick calibration gives every scenario its floor of 59 null
    // trials; the refinement gives the binding ones up to 120 (long enough,
    // 12 s measured on two cores, for a new proposal to come in while it runs
    // and for the refinement to check, every 2 s, whether to yield). Real
    // time: the trials' first decisive looks are weeks away.
    const REFINEMENT_TRIALS: usize = 120;
    let config = data.join("refine.toml");
    std::fs::write(
        &config,
        format!("[jobs]\nsource_poll_seconds = 1\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\ndesign_seconds = 1\ndesign_threads = 2\ndesign_trials = 20\ncalibration_trials = 60\nrefinement_trials = {REFINEMENT_TRIALS}\n"),
    )
    .unwrap();
    let args = ["--demo", "--config", config.to_str().unwrap()];
    let root = env!("CARGO_MANIFEST_DIR");
    let meditation = format!("{root}/protocols/meditation-anxiety.toml");
    let text = std::fs::read_to_string(&meditation).unwrap();
    // Variants of the design: another title is another protocol text (so
    // another design); another stream lets two trials be active at once.
    let variant = |name: &str, from: &str, to: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text.replace(from, to)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let title = "title = \"Ten minutes";
    let later = variant(
        "later.toml",
        "stream = \"anxiety_evening\"",
        "stream = \"anxiety_evening_later\"",
    );
    let first_proposal = variant("p1.toml", title, "title = \"Retitled: ten minutes");
    let second_proposal = variant("p2.toml", title, "title = \"Again: ten minutes");
    // The demo trial makes room on its stream.
    let (ok, out) = cli(dir.path(), &data, &["stop", "1", "--reason", "room"]);
    assert!(ok, "{out}");
    let propose = |file: &str, id: i64| {
        let (ok, out) = cli(
            dir.path(),
            &data,
            &["propose", file, "--participant", "demo"],
        );
        assert!(ok && out.contains(&format!("trial {id} proposed")), "{out}");
    };
    propose(&meditation, 2);
    propose(&later, 3);
    let zone = store(&data).participants().unwrap()[0].time_zone.clone();
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get(&zone).unwrap())
        .date();
    // Trial 2 starts today; trial 3 in two days (nothing of its data
    // exists while this test runs, even across midnight).
    let later_start = today.checked_add(jiff::ToSpan::days(2)).unwrap();
    for (id, start) in [("2", today), ("3", later_start)] {
        let (ok, out) = cli(
            dir.path(),
            &data,
            &["approve", id, "--start", &start.to_string()],
        );
        assert!(ok, "{out}");
    }

    let d = Daemon::start(&data, &args);
    let deadline = Instant::now() + Duration::from_secs(480);
    let refining = |id: i64| {
        while !d
            .get(&format!("/proposals/{id}/progress"))
            .1
            .contains("Refinement of its stopping rule")
        {
            assert!(
                Instant::now() < deadline,
                "no refinement ran for trial {id}: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Trial 2 started: its refinement does not yield to a proposal filed
    // while it runs, which waits for it.
    refining(2);
    let t2 = store(&data).trial(2).unwrap().unwrap();
    assert_eq!(t2.status, TrialStatus::Running);
    assert!(
        store(&data)
            .refinement(&t2.protocol_hash)
            .unwrap()
            .is_none()
    );
    propose(&first_proposal, 4);
    // The proposal's progress page says what it waits for.
    let (_, waiting) = d.get("/proposals/4/progress");
    assert!(
        waiting.contains("now on the refinement of trial 2")
            && waiting.contains("trial 2 has started, so it goes first and is not interrupted"),
        "{waiting}"
    );
    let refined = loop {
        let t2 = store(&data).trial(2).unwrap().unwrap();
        if t2.thresholds_refined_at.is_some() {
            break t2;
        }
        assert!(
            Instant::now() < deadline,
            "trial 2 was not refined: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // Trial 3 has not started: its refinement runs after the proposal's
    // work and yields to a proposal filed while it runs.
    refining(3);
    propose(&second_proposal, 5);
    let t3 = store(&data).trial(3).unwrap().unwrap();
    let later_refinement = loop {
        if let Some(r) = store(&data).refinement(&t3.protocol_hash).unwrap() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "trial 3's design was not refined: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (status, page) = d.get("/trials/2");
    let (_, proposals) = d.get("/proposals");
    let log = d.log();
    drop(d);
    let yields: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("calibration refinement yields to other design work"))
        .collect();
    assert!(
        !yields.is_empty() && yields.iter().all(|l| l.contains(t3.protocol_hash.short())),
        "{log}"
    );
    let s = store(&data);
    let first = s.calibration(&refined.protocol_hash).unwrap().unwrap();
    let refinement = s.refinement(&refined.protocol_hash).unwrap().unwrap();
    let most = |c: &nof1d::service::store::CalibrationRow| c.report().unwrap().most_null_trials();
    assert_eq!(most(&first), 59);
    assert_eq!(refinement.null_trials, REFINEMENT_TRIALS);
    assert_eq!(most(&refinement.calibration), REFINEMENT_TRIALS);
    assert_eq!(later_refinement.null_trials, REFINEMENT_TRIALS);
    // Trial 2's refinement ran through. Trial 3's was stopped part way by
    // the yield and, run again, took up the virtual trials it had run (kept
    // in the store as they finished) instead of starting over; they are
    // forgotten once it is stored.
    let resumed = |c: &nof1d::service::store::CalibrationRow| c.report().unwrap().timing.resumed;
    assert_eq!(resumed(&refinement.calibration), 0);
    assert!(resumed(&later_refinement.calibration) > 0, "{log}");
    assert!(
        s.kept_trials(DesignWork::Refinement, &t3.protocol_hash)
            .unwrap()
            .is_empty()
    );
    // Trial 2 decides with its refinement, taken while it ran before its
    // first decisive look.
    let locked = refined.locked.unwrap();
    assert_eq!(locked.source, decide::ThresholdSource::Calibrated);
    assert_eq!(
        (locked.efficacy, locked.futility, locked.boundary),
        (
            refinement.calibration.efficacy,
            refinement.calibration.futility,
            refinement.calibration.boundary
        )
    );
    // Trial 3 waits for its start, where it locks its refinement.
    let t3 = s.trial(3).unwrap().unwrap();
    assert_eq!(t3.status, TrialStatus::Approved);
    assert!(t3.locked.is_none());
    // The proposal filed while trial 2's refinement ran was calibrated and
    // simulated after it; the one filed while trial 3's ran, before it.
    let stored = |id: i64| {
        let hash = s.trial(id).unwrap().unwrap().protocol_hash;
        (
            s.calibration(&hash).unwrap().unwrap().created_at,
            s.design_simulation(&hash).unwrap().unwrap().created_at,
        )
    };
    let (calibrated, simulated) = stored(4);
    assert!(calibrated >= refinement.calibration.created_at);
    assert!(simulated >= refinement.calibration.created_at);
    let (calibrated, simulated) = stored(5);
    assert!(calibrated <= later_refinement.calibration.created_at);
    assert!(simulated <= later_refinement.calibration.created_at);
    // The proposal says its quick calibration will be refined.
    assert!(
        proposals.contains(&format!(
            "calibrated again on up to {REFINEMENT_TRIALS} virtual trials"
        )),
        "{proposals}"
    );
    // The trial page says so, and shows the refined calibration.
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("These thresholds are a refinement"), "{page}");
    assert!(
        page.contains(&format!("{:.4}", refinement.calibration.efficacy)),
        "{page}"
    );
}

/// Makes room on the demo's stream (stops trial 1), then proposes
/// meditation-anxiety as trial 2 and approves it to start in two days (none
/// of its data exists while a test runs, even across midnight); returns its
/// design's hash.
fn meditation_approved_in_two_days(
    dir: &Path,
    data: &Path,
) -> nof1d::trial::protocol::ProtocolHash {
    let root = env!("CARGO_MANIFEST_DIR");
    let meditation = format!("{root}/protocols/meditation-anxiety.toml");
    let (ok, out) = cli(dir, data, &["stop", "1", "--reason", "room"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(
        dir,
        data,
        &["propose", &meditation, "--participant", "demo"],
    );
    assert!(ok && out.contains("trial 2 proposed"), "{out}");
    let zone = store(data).participants().unwrap()[0].time_zone.clone();
    let start = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get(&zone).unwrap())
        .date()
        .checked_add(jiff::ToSpan::days(2))
        .unwrap()
        .to_string();
    let (ok, out) = cli(dir, data, &["approve", "2", "--start", &start]);
    assert!(ok, "{out}");
    store(data).trial(2).unwrap().unwrap().protocol_hash
}

/// A daemon stopped while it calibrates, and again while it refines, a
/// design keeps the virtual trials each had run; started again, each takes
/// them up instead of starting over, and forgets them once it is stored.
#[test]
fn a_calibration_and_a_refinement_stopped_by_a_restart_take_up_the_virtual_trials_they_ran() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = seed_demo(dir.path());
    let config = common::write_config(
        &data,
        "[jobs]\nsource_poll_seconds = 1\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\ndesign_seconds = 1\ndesign_threads = 2\ndesign_trials = 20\ncalibration_trials = 60\nrefinement_trials = 120\n",
    );
    let args = ["--demo", "--config", config.to_str().unwrap()];
    // Its refinement runs last and its first decisive look is weeks away.
    let hash = meditation_approved_in_two_days(dir.path(), &data);
    let kept = |work: DesignWork| store(&data).kept_trials(work, &hash).unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(300);
    // Stopped (SIGTERM) once `work` has kept some of its trials (it writes
    // them every 2 s), well before its 11 or 12 s are up; what it ran up to
    // the stop is kept, the trial in hand included.
    let stopped_during = |work: DesignWork| {
        let d = Daemon::start(&data, &args);
        while kept(work) < 10 {
            assert!(Instant::now() < deadline, "no trials kept: {}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        let (status, log) = d.terminate();
        assert!(status.success(), "{log}");
        let stopped_with = kept(work);
        assert!(stopped_with >= 10, "{stopped_with}");
        stopped_with
    };
    let calibration_kept = stopped_during(DesignWork::Calibration);
    assert!(store(&data).calibration(&hash).unwrap().is_none());
    // Started again, the calibration takes up every one of them; then the
    // refinement is stopped in turn.
    let refinement_kept = stopped_during(DesignWork::Refinement);
    assert!(store(&data).refinement(&hash).unwrap().is_none());
    let d = Daemon::start(&data, &args);
    let refinement = loop {
        if let Some(r) = store(&data).refinement(&hash).unwrap() {
            break r;
        }
        assert!(Instant::now() < deadline, "not refined: {}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(d);
    // The report says how many of its calibration's trials were run before
    // the stop, whose time its figure leaves out.
    let report = report_markdown(dir.path(), &data, 2);
    assert!(
        report.contains(&format!(
            "({calibration_kept} of them run before a stop part way and taken up"
        )),
        "{report}"
    );
    let calibration = store(&data).calibration(&hash).unwrap().unwrap();
    for (row, kept_at_stop) in [
        (&calibration, calibration_kept),
        (&refinement.calibration, refinement_kept),
    ] {
        let timing = row.report().unwrap().timing;
        assert_eq!(timing.resumed, kept_at_stop);
        assert!(timing.trials > timing.resumed);
    }
    assert_eq!(refinement.null_trials, 120);
    assert_eq!(kept(DesignWork::Calibration), 0);
    assert_eq!(kept(DesignWork::Refinement), 0);
}

#[test]
fn an_approved_trials_refinement_given_up_on_is_tried_again_from_its_page() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = seed_demo(dir.path());
    let config = |name: &str, refinement_trials: usize| {
        let path = data.join(name);
        std::fs::write(
            &path,
            format!("[jobs]\nsource_poll_seconds = 1\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\ndesign_seconds = 1\ndesign_threads = 2\ndesign_trials = 20\ncalibration_trials = 60\nrefinement_trials = {refinement_trials}\n"),
        )
        .unwrap();
        path.to_str().unwrap().to_string()
    };
    // Nothing of its data exists while this test runs, so whoever retries
    // its refinement has seen no estimate of it.
    let hash = meditation_approved_in_two_days(dir.path(), &data);
    // Refinement off: the design gets its quick calibration only.
    let quick = config("quick.toml", 0);
    let d = Daemon::start(&data, &["--demo", "--config", &quick]);
    let deadline = Instant::now() + Duration::from_secs(240);
    while store(&data).calibration(&hash).unwrap().is_none() {
        assert!(Instant::now() < deadline, "not calibrated: {}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = d.terminate();
    assert!(status.success());
    // Its refinement failed three times and was given up on.
    {
        let mut s = Store::open(&data.join("nof1d.sqlite")).unwrap();
        for _ in 0..3 {
            s.record_design_failure(
                DesignWork::Refinement,
                &hash,
                "the machine ran out of memory",
                jiff::Timestamp::now(),
            )
            .unwrap();
        }
    }
    let refining = config("refining.toml", 100);
    let d = Daemon::start(&data, &["--demo", "--config", &refining]);
    // Two runs of the designs job: a refinement that ran would have ended
    // within the first (about 10 s) and been stored.
    while d.json("/healthz")["jobs"]["designs"]["runs"]
        .as_u64()
        .unwrap_or(0)
        < 2
    {
        assert!(Instant::now() < deadline, "{}", d.json("/healthz"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(store(&data).refinement(&hash).unwrap().is_none());
    assert!(
        !d.log().contains("design calibration refined"),
        "{}",
        d.log()
    );
    let (_, page) = d.get("/trials/2");
    assert!(
        page.contains("The refinement of this design")
            && page.contains("the machine ran out of memory"),
        "{page}"
    );
    assert!(
        page.contains(">Try the refinement again</button>"),
        "{page}"
    );
    let csrf = common::csrf_of(&page);
    let retry = |id: i64, body: String| {
        common::no_redirects()
            .post(d.url(&format!("/proposals/{id}/refinement/retry")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .unwrap()
    };
    assert_eq!(retry(2, "csrf=forged".into()).status().as_u16(), 403);
    // Only an approved trial's (trial 1, the demo, is stopped).
    assert_eq!(retry(1, format!("csrf={csrf}")).status().as_u16(), 409);
    let r = retry(2, format!("csrf={csrf}"));
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/trials/2");
    let refinement = loop {
        if let Some(r) = store(&data).refinement(&hash).unwrap() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "not refined after the retry: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, page) = d.get("/trials/2");
    drop(d);
    assert_eq!(refinement.null_trials, 100);
    // The trial locks it at its start.
    assert_eq!(
        store(&data).trial(2).unwrap().unwrap().status,
        TrialStatus::Approved
    );
    assert_eq!(
        common::count(
            &data,
            "SELECT COUNT(*) FROM audit_log WHERE action = 'refinement.retried' AND trial_id = 2",
        ),
        1
    );
    assert!(!page.contains("The refinement of this design"), "{page}");
}

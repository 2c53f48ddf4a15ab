//! The real daemon on a random loopback port: demo, status page, health,
//! lock, backup while running, auth, clean shutdown.

use crate::common;

use std::time::Duration;

use common::{Daemon, client, no_redirects, run, run_ok};

#[test]
fn demo_shows_a_live_trial_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = common::pinned_demo_args(&data);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start(&data, &args);
    d.wait_jobs(1, Duration::from_secs(30));

    let (status, page) = d.get("/");
    assert_eq!(status, 200);
    assert!(
        page.contains("Ten minutes of morning meditation against none"),
        "{page}"
    );
    assert!(page.contains("Demo Participant"));
    assert!(page.contains("day 43 of 98"), "{page}");
    assert!(page.contains("anxiety_evening: 42 obs."), "{page}");

    let health = d.json("/healthz");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["database"]["ok"], true);

    let status = d.json("/api/status");
    let trial = &status["trials"][0];
    assert_eq!(trial["status"], "running");
    assert_eq!(trial["day"], 43);
    assert!(
        trial["next_assignment"]
            .as_str()
            .unwrap()
            .ends_with("07:30 GMT")
            || trial["next_assignment"]
                .as_str()
                .unwrap()
                .ends_with("07:30 BST")
    );
    // The engine refitted the demo trial on its 42 days of history.
    let fit = &trial["latest_fit"];
    assert_eq!(fit["observations"], 42, "{trial}");
    // Keyed objects, not arrays (api_version 2).
    assert_eq!(status["api_version"], 2);
    let effect = &fit["effects"][0];
    assert_eq!(effect["arm"], "Morning meditation");
    assert!(effect["mean"].is_f64() && effect["p_better_by_mid"].is_f64());
    assert_eq!(effect["ci90"].as_array().map(Vec::len), Some(2));
    assert!(status["jobs"][0]["name"].is_string() && status["jobs"][0]["runs"].is_u64());
    assert!(status["participants"][0]["streams"].is_array());
    assert!(page.contains("P(better by MID)"), "{page}");
    // The demo participant gets today's email on the first start.
    let mail: Vec<_> = std::fs::read_dir(data.join("mail")).unwrap().collect();
    assert_eq!(mail.len(), 1);
    assert_eq!(status["outbox"][0]["status"], "sent");

    // A second daemon on the same folder is refused, and the first is unharmed.
    let stderr = common::serve_refused(&data, dir.path());
    assert!(
        stderr.contains("another nof1d is already running on data folder"),
        "{stderr}"
    );
    assert_eq!(d.get("/healthz").0, 200);

    // An online backup while the daemon runs.
    let backup = dir.path().join("backup.sqlite");
    run_ok(
        &[
            "backup",
            backup.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
    );
    let copy = nof1d::service::store::Store::open_read_only(&backup).unwrap();
    assert_eq!(copy.quick_check().unwrap(), "ok");
    assert_eq!(copy.counts().unwrap().observations, 42);
    assert_eq!(copy.counts().unwrap().schedule_days, 98);
    let again = run(
        &[
            "backup",
            backup.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!again.status.success(), "backup must not overwrite");

    let (exit, log) = d.terminate();
    assert!(exit.success(), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("stopped cleanly"), "{log}");

    // After a clean stop the lock is free and a restart changes nothing.
    let store = nof1d::service::store::Store::open_read_only(&data.join("nof1d.sqlite")).unwrap();
    let before = store.counts().unwrap();
    let d = Daemon::start(&data, &args);
    d.wait_jobs(1, Duration::from_secs(30));
    assert_eq!(store.counts().unwrap().observations, before.observations);
    assert_eq!(store.counts().unwrap().outbox, before.outbox);
    assert_eq!(store.counts().unwrap().trials, 1);
}

#[test]
fn token_protects_everything_but_health() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("token"),
        "9f86d081884c7d659a2feaa0c55ad015s3cret\n",
    )
    .unwrap();
    std::fs::write(
        data.join("nof1d.toml"),
        format!(
            "[web]\ntoken = {{ file = {:?} }}\n",
            data.join("token").display().to_string()
        ),
    )
    .unwrap();
    let d = Daemon::start(
        &data,
        &["--config", data.join("nof1d.toml").to_str().unwrap()],
    );
    assert_eq!(d.get("/healthz").0, 200);
    // A page sends a browser to the login; the API answers 401.
    let page = no_redirects().get(d.url("/")).send().unwrap();
    assert_eq!(page.status().as_u16(), 303);
    assert_eq!(page.headers()["location"], "/login?next=/");
    assert_eq!(d.get("/api/status").0, 401);
    assert_eq!(d.get("/metrics").0, 401);
    let ok = client()
        .get(d.url("/api/status"))
        .bearer_auth("9f86d081884c7d659a2feaa0c55ad015s3cret")
        .send()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let bad = client()
        .get(d.url("/api/status"))
        .bearer_auth("9f86d081884c7d659a2feaa0c55ad015s3crem")
        .send()
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    assert!(
        !d.log().contains("9f86d081884c7d659a2feaa0c55ad015s3cret"),
        "the token must never be logged"
    );
}

#[test]
fn password_allows_binding_beyond_loopback() {
    use argon2::PasswordHasher;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let salt = argon2::password_hash::SaltString::from_b64("c29tZXNhbHRzb21lc2FsdA").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(b"correct horse", &salt)
        .unwrap()
        .to_string();
    let config = data.join("nof1d.toml");
    std::fs::write(&config, format!("[web]\npassword_hash = {hash:?}\n")).unwrap();
    // 0.0.0.0 is accepted with a password; we still only talk to it over loopback.
    let d = Daemon::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ],
    );
    let addr = std::fs::read_to_string(data.join("listen.addr")).unwrap();
    assert!(addr.starts_with("0.0.0.0:"), "{addr}");
    let port = addr.trim().rsplit(':').next().unwrap().to_string();
    // Without a session: the login page for a browser, 401 for the API.
    let r = no_redirects()
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let r = client()
        .get(format!("http://127.0.0.1:{port}/api/status"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // HTTP Basic is not a way in (logins go through the rate-limited form).
    let r = client()
        .get(format!("http://127.0.0.1:{port}/api/status"))
        .basic_auth("anyone", Some("correct horse"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    drop(d);
}

#[test]
fn trial_page_charts_api_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = common::pinned_demo_args(&data);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let d = Daemon::start(&data, &args);
    d.wait_jobs(1, Duration::from_secs(30));
    let (status, page) = d.get("/trials/1");
    assert_eq!(status, 200);
    // Outcome, counterfactual, one effect and one probability chart, each described.
    assert_eq!(page.matches("<svg").count(), 4, "{page}");
    assert!(page.contains("always Morning meditation"), "{page}");
    assert!(page.contains("42 observations over days"), "{page}");
    assert!(page.contains("role=\"img\""));
    // The run-in is grey, named in the chart's legend and text, never in
    // the comparator's colour; P(better by MID) and P(best) are two lines.
    assert!(page.contains("(run-in: grey, "), "{page}");
    assert!(page.contains("class=\"runin\""), "{page}");
    assert!(
        page.contains("P(better by MID): ends at ") && page.contains("; P(best): ends at "),
        "{page}"
    );
    // Every shown day's details without hover: a table (and the squares'
    // labels for screen readers), with the day's value.
    let table = page
        .split("<summary>Day by day</summary>")
        .nth(1)
        .and_then(|rest| rest.split("</details>").next())
        .expect("a day-by-day table");
    assert_eq!(
        table.matches("<tr><td>").count() + table.matches("<tr class=\"today-row\"><td>").count(),
        43,
        "{table}"
    );
    assert_eq!(
        table.matches("<td>run-in (No meditation)</td>").count(),
        14,
        "{table}"
    );
    assert!(table.contains("<td>Morning meditation</td>"), "{table}");
    let valued = table
        .split("<tr")
        .filter(|row| row.ends_with("</td></tr>") && !row.ends_with("<td></td></tr>"))
        .count();
    assert!(valued >= 40, "{valued} days with a value: {table}");
    assert!(page.contains("aria-label=\""), "{page}");
    // Where the person stands, in words, with the next check's date.
    let standing = &d.json("/api/trials/1")["standing"][0];
    let standing = standing.as_str().unwrap();
    assert!(
        standing.starts_with("Anxiety evening is about ")
            && standing.contains(" on Morning meditation than on ")
            && standing.contains("next check on "),
        "{standing}"
    );
    assert!(page.contains("Where you stand"), "{page}");
    // Concealment: every day after today is grey and carries no arm.
    let detail = d.json("/api/trials/1");
    let today = detail["calendar"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c["today"] == true)
        .unwrap();
    for c in &detail["calendar"].as_array().unwrap()[today + 1..] {
        assert!(c["arm"].is_null(), "future day shown: {c}");
    }
    assert!(detail["calendar"][today]["arm"].is_string());
    assert_eq!(detail["fits"].as_array().unwrap().len(), 1);
    assert_eq!(detail["decisions"][0]["action"], "continue");
    let (status, _) = d.get("/trials/999");
    assert_eq!(status, 404);
    // Pause (from its confirmation page) and resume; a form without the
    // page's anti-CSRF token is refused and changes nothing.
    assert!(
        page.contains("action=\"/trials/1/confirm/pause\""),
        "{page}"
    );
    let (_, confirm) = d.get("/trials/1/confirm/pause");
    let token = confirm
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's forms carry a CSRF token")
        .to_string();
    let post = |path: &str, body: String| {
        no_redirects()
            .post(d.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(post("/trials/1/pause", "csrf=forged".into()), 403);
    assert_eq!(post("/trials/1/pause", String::new()), 403);
    assert_eq!(d.json("/api/trials/1")["status"], "running");
    assert_eq!(
        post("/trials/1/pause", format!("csrf={token}&confirm=yes")),
        303
    );
    assert_eq!(d.json("/api/trials/1")["status"], "paused");
    assert_eq!(
        post("/trials/1/pause", format!("csrf={token}&confirm=yes")),
        409
    );
    assert_eq!(post("/trials/1/resume", format!("csrf={token}")), 303);
    let detail = d.json("/api/trials/1");
    assert_eq!(detail["status"], "running");
    let events = detail["events"].as_array().unwrap();
    assert_eq!(events.last().unwrap()["actor"], "dashboard");
    // The sources page, and polling on demand (also behind the form token).
    let (status, sources) = d.get("/sources");
    assert_eq!(status, 200);
    assert!(
        sources.contains("demo-simulator") && sources.contains("anxiety_evening"),
        "{sources}"
    );
    let runs_before = d.json("/healthz")["jobs"]["sources"]["runs"]
        .as_u64()
        .unwrap();
    assert_eq!(post("/sources/poll", "csrf=forged".into()), 403);
    assert_eq!(post("/sources/poll", format!("csrf={token}")), 303);
    // A run of its own, or (where the job's tick was under way) that run
    // once it ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let runs_after = d.json("/healthz")["jobs"]["sources"]["runs"]
            .as_u64()
            .unwrap();
        if runs_after > runs_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{runs_before} -> {runs_after}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Prometheus text format.
    let (status, metrics) = d.get("/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE nof1d_fits_total counter"),
        "{metrics}"
    );
    assert!(metrics.contains("nof1d_observations 42"), "{metrics}");
    assert!(
        metrics.contains("nof1d_decisions_total{action=\"continue\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE nof1d_fit_duration_seconds summary"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nof1d_job_runs_total{job=\"outbox\"}"),
        "{metrics}"
    );
}

/// A home server that sleeps (or a process held up longer than a job's
/// period, as under heavy load) wakes to find the wall clock ahead of every
/// job's schedule: each job must go on ticking, not stop for good.
#[test]
fn jobs_keep_running_after_the_process_is_frozen_past_their_period() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = common::write_config(
        &data,
        "[jobs]\nsource_poll_seconds = 1\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\ndesign_seconds = 1\n",
    );
    let d = Daemon::start(&data, &["--demo", "--config", config.to_str().unwrap()]);
    d.wait_jobs(2, Duration::from_secs(30));
    let pid = d.child.id().to_string();
    let signal = |name: &str| {
        let ok = std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    // Frozen for four periods, as by a suspend: no thread runs, the wall
    // clock goes on.
    signal("-STOP");
    std::thread::sleep(Duration::from_secs(4));
    signal("-CONT");
    let runs = |h: &serde_json::Value, job: &str| h["jobs"][job]["runs"].as_u64().unwrap_or(0);
    let jobs = ["sources", "refits", "assignments", "outbox", "designs"];
    let woke = d.json("/healthz");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = d.json("/healthz");
        if jobs.iter().all(|j| runs(&now, j) >= runs(&woke, j) + 3) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a job stopped ticking after the freeze: before {woke}\nnow {now}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

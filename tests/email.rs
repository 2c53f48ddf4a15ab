//! Email through a real SMTP server on loopback: the day's message arrives
//! once at the participant's local time, across a DST change; an SMTP outage
//! is ridden out; a rejected recipient is marked failed, not retried; the
//! one-click links record adherence and ratings, and forged or expired
//! tokens change nothing; kill -9 mid-delivery loses nothing and repeats
//! only what it must (with the same Message-ID).

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::smtp::{AuthSink, SmtpSink, smtp_config};
use common::{Daemon, client};
use nof1d::service::store::Store;

/// Jobs every second, `scale` simulated seconds per real second from the
/// simulated instant `start` (so that no test depends on the real time of
/// day: before 07:30 there is no email yet, near midnight the day ends).
fn config(data: &Path, scale: f64, start: &str, extra: &str) -> PathBuf {
    std::fs::create_dir_all(data).unwrap();
    let path = data.join("nof1d.toml");
    std::fs::write(
        &path,
        format!(
            "[jobs]\nsource_poll_seconds = 1\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\n[demo]\ntime_zone = \"Europe/London\"\n[clock]\ntime_scale = {scale:.1}\nstart = {start:?}\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn store(data: &Path) -> Store {
    Store::open_read_only(&data.join("nof1d.sqlite")).unwrap()
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_days_email_arrives_once_at_local_time_across_a_dst_change() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sink = SmtpSink::start();
    // Simulated time from 21:30 GMT on Saturday 27 March 2027 (five real
    // seconds before the day ends, for the 27th's email to go out on a
    // loaded machine); clocks go forward at 01:00 GMT on the 28th. Half an
    // hour a second.
    let cfg = config(
        &data,
        1800.0,
        "2027-03-27T21:30:00Z",
        &smtp_config(sink.addr),
    );
    let d = Daemon::start(&data, &["--demo", "--config", cfg.to_str().unwrap()]);
    // Started after the 27th's 07:30: that day's email goes at once. The
    // 28th's is due at 07:30 BST = 06:30 UTC, 7.5 simulated hours later.
    let got = sink.wait_for(2, Duration::from_secs(40));
    // Let another simulated hour pass: nothing more arrives.
    std::thread::sleep(Duration::from_secs(3));
    drop(d);
    let got_now = sink.received();
    assert_eq!(got_now.len(), 2, "exactly one email per day");
    let subjects: Vec<String> = got
        .iter()
        .map(|m| m.parsed().subject().unwrap_or_default().to_string())
        .collect();
    assert!(subjects[0].contains("Sat 27 Mar"), "{subjects:?}");
    assert!(subjects[1].contains("Sun 28 Mar"), "{subjects:?}");
    assert_ne!(got[0].message_id(), got[1].message_id());
    assert_eq!(got[0].to, vec!["demo@example.invalid".to_string()]);

    // The 28th's assignment was queued at its local time: at or after
    // 07:30 BST, and before 08:30 BST (07:30 GMT, when a job reading the
    // time in GMT would queue it): a tick (30 simulated minutes) and a real
    // second of slack for a loaded machine.
    let s = store(&data);
    let tz = jiff::tz::TimeZone::get("Europe/London").unwrap();
    let messages = s.recent_messages(10).unwrap();
    let m28 = messages
        .iter()
        .find(|m| m.local_date.as_deref() == Some("2027-03-28"))
        .unwrap();
    let queued: jiff::Timestamp = m28.created_at.parse().unwrap();
    let local = queued.to_zoned(tz);
    let minutes = i32::from(local.hour()) * 60 + i32::from(local.minute());
    assert!(
        (7 * 60 + 30..8 * 60 + 30).contains(&minutes),
        "queued at {local}"
    );
    assert_eq!(local.offset().seconds(), 3600, "BST");
    assert!(messages.iter().all(|m| m.status == "sent"));

    // Multipart: plain text and HTML, the day's arm, nothing about the future.
    let parsed = got[1].parsed();
    let text = parsed.body_text(0).unwrap().to_string();
    let html = parsed.body_html(0).unwrap().to_string();
    assert!(text.contains("Today: "), "{text}");
    assert!(html.contains("<h1"), "{html}");
    assert!(!text.to_lowercase().contains("tomorrow"), "{text}");
}

#[test]
fn an_smtp_outage_is_ridden_out_and_a_rejection_is_final() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A port with nothing listening yet: the server is "down".
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    // A minute a second: the first retries come after 30 s, 60 s, ... simulated.
    let cfg = config(&data, 60.0, common::PINNED_START, &smtp_config(addr));
    let d = Daemon::start(&data, &["--demo", "--config", cfg.to_str().unwrap()]);
    // Attempts are counted when they start ("sending"): wait for the second
    // to have failed and the message to be back in the queue.
    // What is asserted is the snapshot the wait saw: a third attempt may
    // be under way by the next read.
    let mut status = serde_json::Value::Null;
    wait_until("two failed attempts", Duration::from_secs(30), || {
        status = d.json("/api/status");
        status["outbox"][0]["attempts"].as_i64().unwrap_or(0) >= 2
            && status["outbox"][0]["status"] == "pending"
    });
    assert!(
        status["outbox"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("SMTP"),
        "{status}"
    );
    // The server comes up on that port: delivery resumes by itself.
    let sink = SmtpSink::on(std::net::TcpListener::bind(addr).unwrap());
    let got = sink.wait_for(1, Duration::from_secs(60));
    wait_until("marked sent", Duration::from_secs(10), || {
        d.json("/api/status")["outbox"][0]["status"] == "sent"
    });
    assert_eq!(got.len(), 1);
    drop(d);

    // A server that rejects the recipient (550): failed at once, not retried.
    let dir2 = tempfile::tempdir().unwrap();
    let data2 = dir2.path().join("data");
    let rejecting = SmtpSink::start();
    rejecting.reject_all(true);
    let cfg2 = config(
        &data2,
        60.0,
        common::PINNED_START,
        &smtp_config(rejecting.addr),
    );
    let d2 = Daemon::start(&data2, &["--demo", "--config", cfg2.to_str().unwrap()]);
    wait_until("marked failed", Duration::from_secs(30), || {
        d2.json("/api/status")["outbox"][0]["status"] == "failed"
    });
    std::thread::sleep(Duration::from_secs(2));
    let status = d2.json("/api/status");
    assert_eq!(status["outbox"][0]["attempts"], 1, "{status}");
    assert!(
        status["outbox"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("550"),
        "{status}"
    );
    assert!(rejecting.received().is_empty());
}

#[test]
fn refused_smtp_credentials_hold_the_mail_until_they_are_mended() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A server that refuses the credentials (535, as after a password
    // change revokes an app password): a fault of the account, not of the
    // message, so nothing is marked failed and the job says why.
    let sink = AuthSink::start();
    let cfg = config(&data, 60.0, common::PINNED_START, &sink.config(dir.path()));
    let d = Daemon::start(&data, &["--demo", "--config", cfg.to_str().unwrap()]);
    // Attempts are counted when they start ("sending"): wait for none to
    // be under way.
    let mut status = serde_json::Value::Null;
    wait_until("two refused attempts", Duration::from_secs(30), || {
        status = d.json("/api/status");
        sink.refusals() >= 2
            && status["outbox"]
                .as_array()
                .is_some_and(|o| o.iter().all(|m| m["status"] == "pending"))
    });
    let outbox = status["outbox"].as_array().unwrap();
    assert!(!outbox.is_empty(), "{status}");
    for message in outbox {
        assert_eq!(message["status"], "pending", "{status}");
    }
    assert!(
        outbox
            .iter()
            .any(|m| m["last_error"].as_str().unwrap_or_default().contains("535")),
        "{status}"
    );
    // Held, the job shows failing in every run, also those with nothing
    // due (each message waits out its backoff).
    std::thread::sleep(Duration::from_secs(2));
    let health = d.json("/healthz");
    assert_eq!(health["status"], "degraded", "{health}");
    let job = &health["jobs"]["outbox"];
    assert_eq!(job["failing"], true, "{health}");
    assert!(
        job["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("delivery held"),
        "{health}"
    );
    // The password is mended: what waited goes out by itself, once.
    sink.accept();
    wait_until("all sent", Duration::from_secs(60), || {
        let status = d.json("/api/status");
        status["outbox"]
            .as_array()
            .is_some_and(|o| o.iter().all(|m| m["status"] == "sent"))
    });
    let sent = d.json("/api/status")["outbox"].as_array().unwrap().len();
    assert_eq!(sink.received().len(), sent);
    drop(d);
}

#[test]
fn a_restart_once_the_password_is_mended_sends_what_waited_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sink = AuthSink::start();
    // Real time: a refused message is due again 30 s after its attempt.
    let cfg = config(&data, 1.0, common::PINNED_START, &sink.config(dir.path()));
    let args = ["--demo", "--config", cfg.to_str().unwrap()];
    let d = Daemon::start(&data, &args);
    // Every message tried and refused, none under way: a kill then leaves
    // each waiting on its retry (not an attempt cut short, which keeps its
    // backoff).
    wait_until("every message refused", Duration::from_secs(30), || {
        let outbox = store(&data).recent_messages(50).unwrap();
        sink.refusals() >= 1
            && !outbox.is_empty()
            && outbox
                .iter()
                .all(|m| m.status == "pending" && m.attempts >= 1)
    });
    let refused = Instant::now();
    // The password is mended in the config, and the daemon restarted (a
    // kill: quick however loaded the machine).
    d.kill9();
    sink.accept();
    let d = Daemon::start(&data, &args);
    let all_sent = || {
        let outbox = store(&data).recent_messages(50).unwrap();
        outbox.iter().all(|m| m.status == "sent")
    };
    // Within 25 s of the refusal: before its backoff of 30 s had passed.
    while !all_sent() {
        assert!(
            refused.elapsed() < Duration::from_secs(25),
            "what waited was not sent at the restart: {:?}",
            store(&data)
                .recent_messages(50)
                .unwrap()
                .iter()
                .map(|m| (&m.key, &m.status, m.attempts))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = store(&data).recent_messages(50).unwrap().len();
    assert_eq!(sink.received().len(), sent);
    drop(d);
}

/// The links in a received assignment, by their label.
fn links(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (label, url) = l.trim().split_once(": http")?;
            Some((label.to_string(), format!("http{url}")))
        })
        .collect()
}

fn post(url: &str) -> (u16, String) {
    let r = client()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap_or_default())
}

#[test]
fn an_evening_reminder_comes_once_on_a_day_whose_rating_has_not() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let sink = SmtpSink::start();
    // 19:40 GMT on Tuesday 12 January 2027 in London, two minutes a
    // second; the demo is reminded at 20:00 (its simulated person answers
    // at 21:00).
    let cfg = data.join("nof1d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[jobs]\nsource_poll_seconds = 1\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\n[demo]\ntime_zone = \"Europe/London\"\nevening_reminder = \"20:00\"\n[clock]\ntime_scale = 120.0\nstart = \"2027-01-12T19:40:00Z\"\n{}",
            smtp_config(sink.addr)
        ),
    )
    .unwrap();
    let d = Daemon::start(&data, &["--demo", "--config", cfg.to_str().unwrap()]);
    // The day's assignment at once (07:30 has passed), the reminder 10 s on.
    let got = sink.wait_for(2, Duration::from_secs(40));
    let subjects: Vec<String> = got
        .iter()
        .map(|m| m.parsed().subject().unwrap_or_default().to_string())
        .collect();
    assert!(
        subjects[0].starts_with("Today (Tue 12 Jan)"),
        "{subjects:?}"
    );
    assert!(
        subjects[1].starts_with("This evening (Tue 12 Jan)"),
        "{subjects:?}"
    );
    let text = got[1].parsed().body_text(0).unwrap().to_string();
    let links = links(&text);
    assert_eq!(links.len(), 11, "ratings 0-10 only: {links:?}");
    // Polls and checks go on (to about 20:10; the demo's answer comes at
    // 21:00, past this test): no second reminder.
    std::thread::sleep(Duration::from_secs(4));
    drop(d);
    assert_eq!(sink.received().len(), 2, "one reminder a day");
    let s = store(&data);
    let reminders: Vec<_> = s
        .recent_messages(100)
        .unwrap()
        .into_iter()
        .filter(|m| m.kind == "reminder")
        .collect();
    assert_eq!(reminders.len(), 1);
    assert_eq!(reminders[0].key, "reminder/demo/1/2027-01-12");
}

/// A participant whose self-report stops coming: after their
/// `missing_data_days` (2 here) trial days without a rating, one email
/// says so (with where to enter missed days), one only however long the
/// gap lasts, and the overview and trial page warn. Real SMTP, the real
/// daemon on a fast clock; the trial is proposed and approved with the CLI
/// while it runs.
#[test]
fn a_trial_without_data_is_noticed_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let sink = SmtpSink::start();
    // Simulated time starts 40 days from today (the CLI checks the start
    // date against the real one) at 05:00 UTC, a day every 4.3 s.
    let start = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .checked_add(jiff::Span::new().days(40))
        .unwrap();
    let cfg = data.join("nof1d.toml");
    std::fs::write(
        &cfg,
        format!(
            "[jobs]\nsource_poll_seconds = 1\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\ncalibrate = false\n\
             [clock]\ntime_scale = 20000.0\nstart = \"{start}T05:00:00Z\"\n\
             [[participants]]\nkey = \"alice\"\nname = \"Alice\"\nemail = \"alice@example.org\"\ntime_zone = \"Europe/London\"\n\
             evening_reminder = \"off\"\nmissing_data_days = 2\n{}",
            smtp_config(sink.addr)
        ),
    )
    .unwrap();
    let d = Daemon::start(&data, &["--config", cfg.to_str().unwrap()]);
    let root = env!("CARGO_MANIFEST_DIR");
    let trial = |args: &[&str]| {
        let mut all = vec!["trial", "--data-dir", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = common::run(&all, dir.path());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    trial(&[
        "propose",
        &format!("{root}/protocols/meditation-anxiety.toml"),
        "--participant",
        "alice",
    ]);
    trial(&["approve", "1", "--start", &start.to_string()]);
    // Assignments on the 1st, 2nd and 3rd day; no rating comes, so on the
    // 3rd morning two days have none.
    let nudges = || {
        sink.received()
            .into_iter()
            .filter(|m| {
                m.parsed()
                    .subject()
                    .is_some_and(|s| s.starts_with("No anxiety evening data"))
            })
            .collect::<Vec<_>>()
    };
    wait_until("the nudge", Duration::from_secs(60), || {
        !nudges().is_empty()
    });
    let nudge = &nudges()[0];
    let text = nudge.parsed().body_text(0).unwrap().to_string();
    assert_eq!(
        nudge.parsed().subject().unwrap(),
        "No anxiety evening data for 2 days"
    );
    assert!(
        text.contains("No anxiety evening data has come for 2 trial days in a row"),
        "{text}"
    );
    assert!(text.contains("/trials/1/report"), "{text}");
    // The dashboard warns on the overview and the trial page.
    for page in ["/", "/trials/1"] {
        let html = d.get(page).1;
        assert!(
            html.contains("role=\"alert\">No anxiety evening data has come for"),
            "{page}: {html}"
        );
    }
    // The oldest missing day is filled in on the report form: the stretch
    // without data now starts a day later, but it is the same stretch, so
    // it brings no second nudge.
    let csrf = common::csrf_of(&d.get("/trials/1/report").1);
    let first_day = store(&data).schedule(1).unwrap()[0].local_date;
    let r = client()
        .post(d.url("/trials/1/report"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}&date={first_day}&rating=4"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body = r.text().unwrap();
    assert!(body.contains("recorded rating 4"), "{body}");
    // Three more days without data: still one nudge, while assignments go
    // on.
    let assignments = || {
        store(&data)
            .recent_messages(100)
            .unwrap()
            .into_iter()
            .filter(|m| m.kind == "assignment")
            .count()
    };
    let seen = assignments();
    wait_until("three more days", Duration::from_secs(60), || {
        assignments() >= seen + 3
    });
    drop(d);
    let s = store(&data);
    let stored: Vec<_> = s
        .recent_messages(100)
        .unwrap()
        .into_iter()
        .filter(|m| m.kind == "nudge")
        .collect();
    assert_eq!(stored.len(), 1, "one nudge a gap");
    assert_eq!(
        stored[0].key,
        format!("nudge/alice/1/{}", s.schedule(1).unwrap()[0].local_date)
    );
    assert_eq!(nudges().len(), 1);
}

#[test]
fn links_record_adherence_and_ratings_and_forged_or_expired_ones_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sink = SmtpSink::start();
    let cfg = config(&data, 1.0, common::PINNED_START, &smtp_config(sink.addr));
    let d = Daemon::start(&data, &["--demo", "--config", cfg.to_str().unwrap()]);
    let got = sink.wait_for(1, Duration::from_secs(30));
    let text = got[0].parsed().body_text(0).unwrap().to_string();
    let links = links(&text);
    let done = links
        .get("Done")
        .unwrap_or_else(|| panic!("no Done link in {text}"));
    let seven = links
        .get("7")
        .unwrap_or_else(|| panic!("no rating link in {text}"));
    assert_eq!(
        links.len(),
        3 + 11,
        "3 adherence links and ratings 0-10: {links:?}"
    );
    let adherence = || store(&data).adherence(1).unwrap();
    let anxiety = || {
        let s = store(&data);
        s.observations(s.participants().unwrap()[0].id, "anxiety_evening", &[])
            .unwrap()
            .len()
    };

    // GET shows a confirmation form and records nothing (mail scanners).
    let page = client().get(done).send().unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let body = page.text().unwrap();
    assert!(body.contains("<form method=\"post\""), "{body}");
    assert!(adherence().is_empty());
    // POST records it; the same click again changes nothing.
    let (code, body) = post(done);
    assert_eq!(code, 200);
    assert!(body.contains("recorded done"), "{body}");
    assert_eq!(adherence().len(), 1);
    assert_eq!(adherence()[0].1, "done");
    let (_, body) = post(done);
    assert!(body.contains("already used"), "{body}");
    assert_eq!(adherence().len(), 1);
    // "Could not do it" corrects the day's answer.
    let (_, body) = post(&links["Could not do it"]);
    assert!(body.contains("replacing done"), "{body}");
    assert_eq!(adherence()[0].1, "not_done");

    // A rating becomes an observation of the outcome stream; a second
    // rating for the day does not replace it.
    let before = anxiety();
    let (_, body) = post(seven);
    assert!(body.contains("recorded rating 7"), "{body}");
    assert_eq!(anxiety(), before + 1);
    let (_, body) = post(&links["5"]);
    assert!(body.contains("already has a rating (7)"), "{body}");
    assert_eq!(anxiety(), before + 1);

    // A forged (altered) token: a clear page, nothing changes.
    let (base, token) = links["3"].rsplit_once('/').unwrap();
    let (payload, sig) = token.split_once('.').unwrap();
    let forged = format!(
        "{base}/{payload}.{}{}",
        &sig[..sig.len() - 2],
        if sig.ends_with("AA") { "BB" } else { "AA" }
    );
    let r = client().get(&forged).send().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("forged or altered"));
    let (code, _) = post(&forged);
    assert_eq!(code, 400);
    assert_eq!(anxiety(), before + 1);
    // An expired token, signed with the daemon's own key.
    let key =
        nof1d::service::links::LinkKey::from_hex(&store(&data).meta("link_key").unwrap().unwrap())
            .unwrap();
    let claim = nof1d::service::links::LinkClaim {
        participant_id: 1,
        trial_id: 1,
        date: "2026-11-25".parse().unwrap(),
        action: nof1d::service::links::LinkAction::Done,
        // An hour before the daemon's (pinned) clock started.
        expires: common::PINNED_START.parse::<jiff::Timestamp>().unwrap()
            - jiff::SignedDuration::from_hours(1),
    };
    let expired = format!("{base}/{}", key.sign(&claim));
    let (code, body) = post(&expired);
    assert_eq!(code, 410);
    assert!(body.contains("expired"), "{body}");
    assert_eq!(adherence()[0].1, "not_done");
    drop(d);
}

#[test]
fn kill_9_mid_delivery_loses_nothing_and_repeats_only_with_the_same_message_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sink = SmtpSink::start();
    // A simulated day every 2 seconds: a stream of daily emails.
    let cfg = config(
        &data,
        43_200.0,
        common::PINNED_START,
        &smtp_config(sink.addr),
    );
    let args = ["--demo", "--config", cfg.to_str().unwrap()];
    let mut kills = 0;
    for round in 0..6 {
        let d = Daemon::start(&data, &args);
        std::thread::sleep(Duration::from_millis(700 + 450 * (round % 3)));
        d.kill9();
        kills += 1;
    }
    // A last run that is left to finish its deliveries. Simulated days go on
    // while it runs, so the next day's email can be queued between seeing an
    // empty outbox and the kill: that kill is then one more mid-delivery
    // kill, and another run finishes the delivery.
    for _ in 0..5 {
        let d = Daemon::start(&data, &args);
        wait_until("an empty outbox", Duration::from_secs(30), || {
            store(&data).outbox_backlog().unwrap() == 0
        });
        d.kill9();
        kills += 1;
        if store(&data).outbox_backlog().unwrap() == 0 {
            break;
        }
    }
    assert_eq!(
        store(&data).outbox_backlog().unwrap(),
        0,
        "outbox never emptied"
    );
    let s = store(&data);
    let messages = s.recent_messages(1000).unwrap();
    assert!(messages.len() >= 3, "{} messages", messages.len());
    let received = sink.received();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for r in &received {
        *count.entry(format!("<{}>", r.message_id())).or_default() += 1;
    }
    // Nothing lost: every message is sent and arrived, or was an assignment
    // whose day passed while the daemon was down (never sent late), or one
    // of a day of the trial after its stop (the demo's trial may stop).
    for m in &messages {
        match m.status.as_str() {
            "sent" => assert!(count.contains_key(&m.message_id), "{} never arrived", m.key),
            "failed" => {
                let why = m.last_error.as_deref().unwrap_or_default();
                assert!(
                    why.contains("has passed") || why.contains("not delivered: its trial is"),
                    "{m:?}"
                )
            }
            other => panic!("message {} left {other}", m.key),
        }
    }
    // Nothing arrived that is not in the outbox; repeats (at most one per
    // kill, the one message in flight) carry the same Message-ID.
    let known: std::collections::BTreeSet<_> =
        messages.iter().map(|m| m.message_id.clone()).collect();
    assert!(count.keys().all(|id| known.contains(id)), "{count:?}");
    let repeats: usize = count.values().map(|c| c - 1).sum();
    assert!(repeats <= kills, "{repeats} repeats after {kills} kills");
}

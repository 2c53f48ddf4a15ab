//! Push notifications through real HTTP on loopback: an ntfy server and a
//! Home Assistant notify service (fakes speaking their documented
//! protocols) each get every message once, beside the email; a server that
//! is down for a moment is retried; a channel the server refuses holds its
//! messages, which go once it is mended; a restart repeats nothing.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{Daemon, serve_fake, wait_until};
use nof1d::service::store::Store;

/// One request a fake received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: String,
    answered: u16,
}

/// What a fake received, and (ntfy) whether the refused topic is mended.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Received>>>, Arc<AtomicBool>);

impl Log {
    fn all(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

/// ntfy: `POST /<topic>` with the text as the body. The topic `down`
/// answers 503 to its first request, `refused` 403 until it is mended.
async fn ntfy(
    State(log): State<Log>,
    UrlPath(topic): UrlPath<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let mut all = log.0.lock().unwrap();
    let first = !all.iter().any(|r| r.path == topic);
    let status = match topic.as_str() {
        "down" if first => StatusCode::SERVICE_UNAVAILABLE,
        "refused" if !log.1.load(Ordering::SeqCst) => StatusCode::FORBIDDEN,
        _ => StatusCode::OK,
    };
    all.push(Received {
        path: topic,
        headers,
        body,
        answered: status.as_u16(),
    });
    (status, r#"{"id":"x","event":"message"}"#.into())
}

/// Home Assistant: `POST /api/services/notify/<service>` with JSON.
async fn home_assistant(
    State(log): State<Log>,
    UrlPath(service): UrlPath<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some("Bearer ha-long-lived-token");
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    log.0.lock().unwrap().push(Received {
        path: service,
        headers,
        body,
        answered: status.as_u16(),
    });
    (status, "[]".into())
}

#[test]
fn every_message_is_pushed_once_to_each_channel_beside_the_email() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let ntfy_log = Log::default();
    let ha_log = Log::default();
    let ntfy_url = serve_fake(
        axum::Router::new()
            .route("/{topic}", post(ntfy))
            .with_state(ntfy_log.clone()),
    );
    let ha_url = serve_fake(
        axum::Router::new()
            .route("/api/services/notify/{service}", post(home_assistant))
            .with_state(ha_log.clone()),
    );
    let ntfy_token = dir.path().join("ntfy-token");
    std::fs::write(&ntfy_token, "tk_ntfy_access_token\n").unwrap();
    let ha_token = dir.path().join("ha-token");
    std::fs::write(&ha_token, "ha-long-lived-token\n").unwrap();
    // The demo participant's 07:30 (GMT) assignment comes about two real
    // seconds in: five simulated minutes a second from 07:20.
    let config = data.join("nof1d.toml");
    let write_config = || {
        std::fs::write(
            &config,
            format!(
                "[jobs]\nsource_poll_seconds = 1\nassignment_check_seconds = 1\noutbox_seconds = 1\nrefit_seconds = 1\n\
                 [email]\npublic_url = \"https://nof1d.example.org\"\n\
                 [demo]\ntime_zone = \"Europe/London\"\n\
                 [[demo.push]]\nkind = \"ntfy\"\nurl = \"{ntfy_url}/down\"\ntoken = {{ file = {:?} }}\n\
                 [[demo.push]]\nkind = \"ntfy\"\nurl = \"{ntfy_url}/refused\"\n\
                 [[demo.push]]\nkind = \"home_assistant\"\nurl = \"{ha_url}/\"\nservice = \"notify.mobile_app_test_phone\"\ntoken = {{ file = {:?} }}\n\
                 [clock]\ntime_scale = 300.0\nstart = \"2027-03-27T07:20:00Z\"\n",
                ntfy_token.display().to_string(),
                ha_token.display().to_string(),
            ),
        )
        .unwrap();
    };
    write_config();
    let args = ["--demo", "--config", config.to_str().unwrap()];
    let d = Daemon::start(&data, &args);
    let store = || Store::open_read_only(&data.join("nof1d.sqlite")).unwrap();
    let ok = |log: &Log, path: &str| {
        log.all()
            .into_iter()
            .filter(|r| r.path == path && r.answered == 200)
            .collect::<Vec<_>>()
    };
    wait_until("the assignment pushed", &d, || {
        let messages = store().recent_messages(50).unwrap();
        let assignment = messages.iter().any(|m| m.kind == "assignment");
        assignment
            && !ok(&ntfy_log, "down").is_empty()
            && !ok(&ha_log, "mobile_app_test_phone").is_empty()
    });
    // Every queued message reaches each channel; give the jobs a few more
    // runs for whatever else the day queued.
    std::thread::sleep(Duration::from_secs(3));
    // The channel that refuses is held, and `/healthz` says so by its
    // place in the config: never its URL (an ntfy topic is a secret), nor
    // what the server answered.
    let health = d.json("/healthz");
    assert_eq!(health["status"], "degraded", "{health}");
    let job = &health["jobs"]["outbox"];
    assert_eq!(job["failing"], true, "{health}");
    assert!(
        job["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("pushes held until the channel's setting is mended (its messages wait): demo's push channel 2 (ntfy) answered 403"),
        "{health}"
    );
    let shown = health.to_string();
    assert!(
        !shown.contains("Forbidden") && !shown.contains(ntfy_url.trim_start_matches("http://")),
        "{health}"
    );
    // Meanwhile its messages wait, none failed for it; the first is tried
    // again with backoff, the channel's others waiting as long.
    let refused_rows = || {
        store()
            .pushes("ntfy:")
            .unwrap()
            .into_iter()
            .filter(|r| r.channel.ends_with("/refused"))
            .collect::<Vec<_>>()
    };
    // (A retry may be under way as they are read: "sending", its error the
    // last attempt's, none before the first.)
    for r in refused_rows() {
        assert!(matches!(r.status.as_str(), "pending" | "sending"), "{r:?}");
        let first_under_way = r.status == "sending" && r.attempts == 1;
        assert!(
            r.attempts == 0
                || first_under_way
                || r.last_error.as_deref().unwrap_or("").contains("403"),
            "{r:?}"
        );
    }
    let refusals = |log: &Log| {
        log.all()
            .iter()
            .filter(|r| r.path == "refused" && r.answered == 403)
            .count()
    };
    assert!(refusals(&ntfy_log) >= 2, "tried again");
    assert!(refused_rows().iter().any(|r| r.attempts >= 2));
    // The token is mended: what waited goes out, and the hold is lifted.
    ntfy_log.1.store(true, Ordering::SeqCst);
    wait_until("the held pushes sent", &d, || {
        refused_rows().iter().all(|r| r.status == "sent")
            && d.json("/healthz")["jobs"]["outbox"]["failing"] == false
    });
    let (status, log) = d.terminate();
    assert!(status.success(), "{log}");
    let messages = store().recent_messages(50).unwrap();
    let ntfy_ok = ok(&ntfy_log, "down");
    let ha_ok = ok(&ha_log, "mobile_app_test_phone");
    assert_eq!(
        ntfy_ok.len(),
        messages.len(),
        "one ntfy push per message: {messages:?}"
    );
    assert_eq!(
        ha_ok.len(),
        messages.len(),
        "one Home Assistant push per message"
    );

    // ntfy: the text as the body, the subject as Title, the dashboard as
    // Click, the access token as a bearer token.
    let assignment = messages.iter().find(|m| m.kind == "assignment").unwrap();
    let pushed = ntfy_ok
        .iter()
        .find(|r| {
            r.body
                .starts_with(assignment.body_text.trim().lines().next().unwrap())
        })
        .expect("the assignment's text pushed to ntfy");
    let header = |r: &Received, name: &str| {
        r.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(header(pushed, "click"), "https://nof1d.example.org");
    assert_eq!(
        header(pushed, "authorization"),
        "Bearer tk_ntfy_access_token"
    );
    assert!(header(pushed, "title").contains("Sat 27 Mar"), "{pushed:?}");
    assert!(pushed.body.contains("Today: "), "{}", pushed.body);
    // No one-click link leaves for a push server: they record answers for
    // whoever holds them. The notification opens the dashboard instead.
    assert!(
        assignment
            .body_text
            .contains("https://nof1d.example.org/l/"),
        "the email has its links"
    );
    assert!(
        ntfy_ok.iter().all(|r| !r.body.contains("/l/")),
        "{ntfy_ok:?}"
    );
    assert!(
        pushed
            .body
            .ends_with("Answer on the dashboard: tap this notification.")
    );
    // The first try met a server that was down: retried, not lost.
    let tries = ntfy_log.all().iter().filter(|r| r.path == "down").count();
    assert_eq!(tries, messages.len() + 1, "one 503, then each message once");

    // Home Assistant: title, message and where a tap goes, as JSON.
    let json: Vec<serde_json::Value> = ha_ok
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let sent = json
        .iter()
        .find(|j| j["title"] == assignment.subject.as_str())
        .expect("the assignment pushed to Home Assistant");
    assert!(sent["message"].as_str().unwrap().contains("Today: "));
    assert!(!ha_ok.iter().any(|r| r.body.contains("/l/")));
    assert_eq!(sent["data"]["clickAction"], "https://nof1d.example.org");
    assert_eq!(sent["data"]["url"], "https://nof1d.example.org");

    // The refused channel: every message once, after the refusals; each
    // request accounted for by an attempt; the email untouched by it.
    let rows = store().pushes("ntfy:").unwrap();
    assert_eq!(rows.len(), 2 * messages.len());
    assert!(rows.iter().all(|r| r.status == "sent"), "{rows:?}");
    let mended = ok(&ntfy_log, "refused");
    assert_eq!(mended.len(), messages.len(), "each held message once");
    let attempts: i64 = rows
        .iter()
        .filter(|r| r.channel.ends_with("/refused"))
        .map(|r| r.attempts)
        .sum();
    assert_eq!(
        attempts as usize,
        mended.len() + refusals(&ntfy_log),
        "every request an attempt"
    );
    assert!(messages.iter().all(|m| m.status == "sent"), "{messages:?}");

    // A restart (same simulated day, a few minutes on) repeats nothing.
    let before = (ntfy_log.all().len(), ha_log.all().len());
    let messages_before = messages.len();
    let d = Daemon::start(&data, &args);
    d.wait_jobs(3, Duration::from_secs(30));
    drop(d);
    let messages = store().recent_messages(50).unwrap();
    if messages.len() == messages_before {
        assert_eq!((ntfy_log.all().len(), ha_log.all().len()), before);
    } else {
        // Only what the restart's own minutes queued.
        let new = messages.len() - messages_before;
        assert_eq!(ok(&ntfy_log, "down").len(), ntfy_ok.len() + new);
    }
}

#[test]
fn a_push_channel_with_a_wrong_setting_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = common::write_config(
        &data,
        "[[demo.push]]\nkind = \"home_assistant\"\nurl = \"http://ha.local:8123\"\nservice = \"mobile_app_x\"\n",
    );
    let out = common::run(
        &[
            "serve",
            "--demo",
            "--data-dir",
            data.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &data,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("demo.push[0].token is needed for kind = \"home_assistant\""),
        "{err}"
    );
}

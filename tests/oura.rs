//! Oura as an OAuth2 source, end to end on the real daemon against a fake
//! Oura on loopback: the Connect button, the vendor's authorize redirect,
//! the code exchange with PKCE checked (S256) and HTTP Basic client
//! credentials, paginated `usercollection` reads shaped as Oura's OpenAPI
//! documents them, a refresh before the token expires (refresh tokens good
//! once), and a revoked grant marking the source "needs re-authorisation"
//! with one email, until the person connects again.

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use common::{Daemon, connect, count, no_redirects, wait_until};
use jiff::civil::Date;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use sha2::Digest;

#[derive(Default)]
struct Oura {
    /// The PKCE challenge of each code handed out.
    codes: HashMap<String, String>,
    /// The access token that works now, and the refresh token good once.
    access: Option<String>,
    refresh: Option<String>,
    issued: usize,
    expires_in: i64,
    refreshes: usize,
    /// Data requests by collection.
    reads: HashMap<String, usize>,
    days: Vec<Date>,
    /// Days whose night the person deleted in the app (Oura then lists
    /// the period with type "deleted").
    deleted: Vec<Date>,
    /// Refreshes are held while this is set, and how many were.
    hold_refresh: bool,
    held: usize,
    /// Bearer tokens the API refused.
    refused: Vec<String>,
}

type Shared = Arc<Mutex<Oura>>;

async fn authorize(State(o): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "nof1d-test-app");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["scope"].split(' ').any(|s| s == "daily"), "{q:?}");
    let mut o = o.lock().unwrap();
    let code = format!("code-{}", o.codes.len() + 1);
    o.codes.insert(code.clone(), q["code_challenge"].clone());
    let location = format!("{}?code={code}&state={}", q["redirect_uri"], q["state"]);
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

fn token_answer(o: &mut Oura) -> Response {
    o.issued += 1;
    let (access, refresh) = (
        format!("access-{}", o.issued),
        format!("refresh-{}", o.issued),
    );
    o.access = Some(access.clone());
    o.refresh = Some(refresh.clone());
    axum::Json(
        json!({"token_type": "bearer", "access_token": access, "refresh_token": refresh,
                      "expires_in": o.expires_in, "scope": "daily heartrate personal"}),
    )
    .into_response()
}

fn oauth_error(error: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": error, "error_description": "Invalid grant"})),
    )
        .into_response()
}

async fn token(State(o): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let basic = base64::engine::general_purpose::STANDARD.encode("nof1d-test-app:app-secret");
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Basic {basic}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let form: HashMap<String, String> = url_decode(&body);
    if form.get("grant_type").map(String::as_str) == Some("refresh_token") && held(&o).await {
        // The grant of the account the person has since left, renewed.
        return axum::Json(
            json!({"token_type": "bearer", "access_token": "old-account-token",
            "refresh_token": "old-account-refresh", "expires_in": 86_400,
            "scope": "daily heartrate personal"}),
        )
        .into_response();
    }
    let mut o = o.lock().unwrap();
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some(challenge) = o.codes.remove(&form["code"]) else {
                return oauth_error("invalid_grant");
            };
            let verifier = &form["code_verifier"];
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if computed != challenge {
                return oauth_error("invalid_grant");
            }
            token_answer(&mut o)
        }
        Some("refresh_token") => {
            if o.refresh.as_deref() != Some(form["refresh_token"].as_str()) {
                return oauth_error("invalid_grant");
            }
            o.refreshes += 1;
            token_answer(&mut o)
        }
        _ => oauth_error("unsupported_grant_type"),
    }
}

/// Holds a refresh for as long as the test says (the person connects again
/// meanwhile); whether it was held.
async fn held(o: &Shared) -> bool {
    {
        let mut o = o.lock().unwrap();
        if !o.hold_refresh {
            return false;
        }
        o.held += 1;
    }
    while o.lock().unwrap().hold_refresh {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

fn url_decode(body: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// Two documents a page, with a next_token to the rest.
fn paged(items: Vec<Value>, q: &HashMap<String, String>) -> Response {
    let from: usize = q.get("next_token").map_or(0, |t| t.parse().unwrap());
    let next = (from + 2 < items.len()).then(|| (from + 2).to_string());
    let page: Vec<Value> = items.into_iter().skip(from).take(2).collect();
    axum::Json(json!({"data": page, "next_token": next})).into_response()
}

async fn collection(
    State(o): State<Shared>,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut o = o.lock().unwrap();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer.is_none() || bearer != o.access.as_deref() {
        o.refused.push(bearer.unwrap_or_default().to_string());
        return (StatusCode::UNAUTHORIZED, "").into_response();
    }
    *o.reads.entry(name.clone()).or_default() += 1;
    let in_range = |d: &Date| {
        let start: Date = q["start_date"].parse().unwrap();
        let end: Date = q["end_date"].parse().unwrap();
        *d >= start && *d <= end
    };
    let days: Vec<Date> = if name == "heartrate" {
        vec![]
    } else {
        o.days.iter().copied().filter(in_range).collect()
    };
    let items: Vec<Value> = match name.as_str() {
        "daily_sleep" => days
            .iter()
            .map(|d| json!({"id": format!("ds-{d}"), "contributors": {"deep_sleep": 57, "efficiency": 98},
                            "day": d.to_string(), "score": 70, "timestamp": format!("{d}T00:00:00+00:00")}))
            .collect(),
        "daily_readiness" => days
            .iter()
            .map(|d| json!({"id": format!("dr-{d}"), "contributors": {}, "day": d.to_string(), "score": 80,
                            "temperature_deviation": -0.2, "temperature_trend_deviation": 0.1,
                            "timestamp": format!("{d}T00:00:00+00:00")}))
            .collect(),
        "daily_activity" => days
            .iter()
            .map(|d| json!({"id": format!("da-{d}"), "score": 82, "active_calories": 500, "steps": 9000,
                            "total_calories": 2500, "day": d.to_string(),
                            "timestamp": format!("{d}T04:00:00+01:00")}))
            .collect(),
        "sleep" => days
            .iter()
            .flat_map(|d| {
                let before = d.yesterday().unwrap();
                let kind = if o.deleted.contains(d) { "deleted" } else { "long_sleep" };
                let long = json!({"id": format!("s-{d}"), "type": kind, "day": d.to_string(),
                    "bedtime_start": format!("{before}T23:10:00+01:00"), "bedtime_end": format!("{d}T07:10:00+01:00"),
                    "total_sleep_duration": 25200, "deep_sleep_duration": 4200, "rem_sleep_duration": 5400,
                    "light_sleep_duration": 15600, "awake_time": 3600, "time_in_bed": 28800, "efficiency": 88,
                    "latency": 600, "average_heart_rate": 55.5, "lowest_heart_rate": 48, "average_hrv": 60,
                    "average_breath": 14.5, "low_battery_alert": false, "period": 0});
                let rest = json!({"id": format!("r-{d}"), "type": "rest", "day": d.to_string(),
                    "bedtime_start": format!("{d}T14:00:00+01:00"), "bedtime_end": format!("{d}T14:20:00+01:00"),
                    "total_sleep_duration": null, "time_in_bed": 1200, "low_battery_alert": false, "period": 1});
                [long, rest]
            })
            .collect(),
        "heartrate" => {
            let start: Timestamp = q["start_datetime"].parse().unwrap();
            let end: Timestamp = q["end_datetime"].parse().unwrap();
            let last = o.days.last().copied().unwrap();
            (0..6)
                .map(|k| {
                    last.at(6, 0, 0, 0)
                        .to_zoned(jiff::tz::TimeZone::UTC)
                        .unwrap()
                        .timestamp()
                        + SignedDuration::from_mins(5 * k)
                })
                .filter(|t| *t >= start && *t <= end)
                .map(|t| json!({"bpm": 50 + 1, "source": "sleep", "timestamp": t.strftime("%Y-%m-%dT%H:%M:%S+00:00").to_string(),
                                "timestamp_unix": t.as_millisecond()}))
                .collect()
        }
        _ => return (StatusCode::NOT_FOUND, "").into_response(),
    };
    paged(items, &q)
}

fn start_fake(o: Shared) -> String {
    common::serve_fake(
        axum::Router::new()
            .route("/oauth/authorize", axum::routing::get(authorize))
            .route("/oauth/token", axum::routing::post(token))
            .route("/v2/usercollection/{name}", axum::routing::get(collection))
            .with_state(o),
    )
}

#[test]
fn an_oura_ring_connects_reads_pages_refreshes_and_asks_again_when_revoked() {
    let today = Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap())
        .date();
    let days: Vec<Date> = (1..=10)
        .rev()
        .map(|k| today.checked_sub(jiff::Span::new().days(k)).unwrap())
        .collect();
    let oura: Shared = Arc::new(Mutex::new(Oura {
        expires_in: 86_400,
        days,
        ..Oura::default()
    }));
    let url = start_fake(oura.clone());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (id_file, secret_file) = (dir.path().join("id"), dir.path().join("secret"));
    std::fs::write(&id_file, "nof1d-test-app\n").unwrap();
    std::fs::write(&secret_file, "app-secret\n").unwrap();
    let config = dir.path().join("nof1d.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[jobs]
source_poll_seconds = 1

[[participants]]
key = "anna"
name = "Anna"
email = "anna@example.invalid"
time_zone = "Europe/Berlin"

[[participants.oura]]
client_id = {{ file = {id:?} }}
client_secret = {{ file = {secret:?} }}
backfill_days = 20
poll_minutes = 0
api_url = "{url}"
authorize_url = "{url}/oauth/authorize"
token_url = "{url}/oauth/token"
"#,
            id = id_file.display().to_string(),
            secret = secret_file.display().to_string(),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&data, &["--config", config.to_str().unwrap()]);
    // Not connected yet: nothing is read.
    std::thread::sleep(Duration::from_secs(2));
    assert!(oura.lock().unwrap().reads.is_empty());

    assert_eq!(connect(&daemon), 303);
    assert_eq!(
        count(
            &data,
            "SELECT COUNT(*) FROM oauth_grants WHERE status = 'connected'"
        ),
        1
    );
    // 10 days: sleep score; readiness score and temperature; steps, active
    // energy, activity score; 11 values of each long sleep (its rest period
    // skipped); 6 heart-rate samples.
    let expected = 10 * (1 + 2 + 3 + 11) + 6;
    wait_until("Oura's data stored", &daemon, || {
        count(&data, "SELECT COUNT(*) FROM observations") == expected
    });
    assert!(
        oura.lock().unwrap().reads["sleep"] >= 10,
        "two documents a page: every page read"
    );
    let asleep = count(
        &data,
        "SELECT COUNT(*) FROM observations o JOIN streams s ON s.id = o.stream_id
         WHERE s.key = 'sleep_asleep' AND o.value = 420 AND s.unit = 'min'",
    );
    assert_eq!(asleep, 10);
    // A night that began 23:10 the evening before counts to the wake-up day.
    let last_day = oura.lock().unwrap().days.last().copied().unwrap();
    let on_wake_day = count(
        &data,
        &format!(
            "SELECT COUNT(*) FROM observations o JOIN streams s ON s.id = o.stream_id
             WHERE s.key = 'hrv_rmssd' AND o.local_date = '{last_day}'"
        ),
    );
    assert_eq!(on_wake_day, 1);

    // Polls go on and store nothing twice.
    let reads = oura.lock().unwrap().reads["daily_sleep"];
    wait_until("more polls", &daemon, || {
        oura.lock().unwrap().reads["daily_sleep"] >= reads + 3
    });
    assert_eq!(count(&data, "SELECT COUNT(*) FROM observations"), expected);

    // The person deletes the last night in the app: its 11 values are
    // withdrawn (kept in the store, left out of everything else).
    oura.lock().unwrap().deleted.push(last_day);
    wait_until("the deleted night withdrawn", &daemon, || {
        count(
            &data,
            "SELECT COUNT(*) FROM observations WHERE withdrawn_at IS NOT NULL",
        ) == 11
    });
    assert_eq!(count(&data, "SELECT COUNT(*) FROM observations"), expected);
    assert_eq!(
        count(
            &data,
            &format!(
                "SELECT COUNT(*) FROM observations WHERE withdrawn_at IS NOT NULL
                 AND local_date = '{last_day}' AND source_record_id LIKE 's%'"
            ),
        ),
        11
    );
    assert!(count(&data, "SELECT COALESCE(SUM(withdrawn), 0) FROM source_runs") == 11);

    // The token is about to expire: refreshed before the next read, and the
    // new refresh token kept (the old one is good no more).
    oura.lock().unwrap().expires_in = 1;
    assert_eq!(connect(&daemon), 303);
    wait_until("a refresh", &daemon, || oura.lock().unwrap().refreshes >= 2);
    let reads = oura.lock().unwrap().reads["daily_sleep"];
    wait_until("reads with the new token", &daemon, || {
        oura.lock().unwrap().reads["daily_sleep"] > reads
    });

    // Revoked at Oura: the API refuses the token, the refresh is refused,
    // the source waits for the person, who is told once.
    {
        let mut o = oura.lock().unwrap();
        o.expires_in = 86_400;
        o.access = Some("revoked".into());
        o.refresh = Some("revoked".into());
    }
    wait_until("marked", &daemon, || {
        count(
            &data,
            "SELECT COUNT(*) FROM oauth_grants WHERE status = 'needs_reauthorisation'",
        ) == 1
    });
    wait_until("the email", &daemon, || {
        count(
            &data,
            "SELECT COUNT(*) FROM outbox WHERE key LIKE 'source-reauthorisation/anna/oura/%'",
        ) == 1
    });
    let page = no_redirects()
        .get(daemon.url("/sources"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        page.contains("needs re-authorisation: invalid_grant"),
        "{page}"
    );
    let reads = oura.lock().unwrap().reads.values().sum::<usize>();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        oura.lock().unwrap().reads.values().sum::<usize>(),
        reads,
        "not polled while it waits"
    );
    assert_eq!(
        count(
            &data,
            "SELECT COUNT(*) FROM outbox WHERE key LIKE 'source-reauthorisation/%'"
        ),
        1
    );

    // Connected again: read again, and nothing doubled.
    assert_eq!(connect(&daemon), 303);
    wait_until("reads again", &daemon, || {
        oura.lock().unwrap().reads.values().sum::<usize>() > reads
    });

    // The person connects again (to another account, say) while a refresh
    // of the old connection is under way: the new connection stands, and
    // the poll that renewed the old one reads nothing.
    {
        let mut o = oura.lock().unwrap();
        o.expires_in = 1;
        o.hold_refresh = true;
    }
    assert_eq!(connect(&daemon), 303);
    wait_until("a refresh held", &daemon, || oura.lock().unwrap().held == 1);
    oura.lock().unwrap().expires_in = 86_400;
    assert_eq!(connect(&daemon), 303);
    let new_token = oura.lock().unwrap().access.clone().unwrap();
    let reads = oura.lock().unwrap().reads.values().sum::<usize>();
    oura.lock().unwrap().hold_refresh = false;
    wait_until("the held poll's note", &daemon, || {
        count(
            &data,
            "SELECT COUNT(*) FROM source_runs WHERE problems LIKE 'connected again while%'",
        ) == 1
    });
    assert_eq!(
        count(
            &data,
            &format!(
                "SELECT COUNT(*) FROM oauth_grants
                 WHERE access_token = '{new_token}' AND status = 'connected'"
            ),
        ),
        1,
        "the new connection stands"
    );
    wait_until("reads with the new connection", &daemon, || {
        oura.lock().unwrap().reads.values().sum::<usize>() > reads
    });
    assert!(
        !oura
            .lock()
            .unwrap()
            .refused
            .contains(&"old-account-token".to_string()),
        "the old connection's renewed token was never used"
    );
    daemon.terminate();
    assert_eq!(count(&data, "SELECT COUNT(*) FROM observations"), expected);
    let log = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("daemon-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect::<String>();
    assert!(
        !log.contains("access-") && !log.contains("refresh-") && !log.contains("app-secret"),
        "no secret in the log"
    );
}

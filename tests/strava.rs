//! Strava as an OAuth2 source on the real daemon, against a fake Strava on
//! loopback shaped as its API v3 documents: client credentials in the token
//! request's body (not HTTP Basic), comma-separated scopes, activities
//! listed by `after` and `page`, and Strava's own error shape for a refused
//! refresh token, which must mark the source "needs re-authorisation".

use crate::common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::{Daemon, connect, count, wait_until};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

#[derive(Default)]
struct Strava {
    access: Option<String>,
    refresh: Option<String>,
    issued: usize,
    expires_in: i64,
    activities: Vec<Value>,
    pages: Vec<usize>,
    /// A page answered with a spent quarter-hour limit.
    limited_page: Option<usize>,
}

type Shared = Arc<Mutex<Strava>>;

async fn authorize(Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q["scope"], "read,activity:read_all");
    let location = format!(
        "{}?state={}&code=strava-code&scope=read,activity:read_all",
        q["redirect_uri"], q["state"]
    );
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

async fn token(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    assert!(
        headers.get(header::AUTHORIZATION).is_none(),
        "Strava takes the credentials in the body"
    );
    let form: HashMap<String, String> = reqwest::Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    assert_eq!(
        (form["client_id"].as_str(), form["client_secret"].as_str()),
        ("4711", "strava-secret")
    );
    let mut s = s.lock().unwrap();
    let ok = match form["grant_type"].as_str() {
        "authorization_code" => form["code"] == "strava-code",
        "refresh_token" => s.refresh.as_deref() == Some(form["refresh_token"].as_str()),
        _ => false,
    };
    if !ok {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"message": "Bad Request",
                              "errors": [{"resource": "RefreshToken", "field": "refresh_token", "code": "invalid"}]})),
        )
            .into_response();
    }
    s.issued += 1;
    let (access, refresh) = (format!("sa-{}", s.issued), format!("sr-{}", s.issued));
    s.access = Some(access.clone());
    s.refresh = Some(refresh.clone());
    let expires_at = Timestamp::now().as_second() + s.expires_in;
    axum::Json(
        json!({"token_type": "Bearer", "expires_at": expires_at, "expires_in": s.expires_in,
                      "refresh_token": refresh, "access_token": access,
                      "athlete": {"id": 134815, "username": "anna"}}),
    )
    .into_response()
}

async fn activities(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut s = s.lock().unwrap();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer != s.access.as_ref().map(|a| format!("Bearer {a}")).as_deref() {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Authorization Error",
                              "errors": [{"resource": "Athlete", "field": "access_token", "code": "invalid"}]})),
        )
            .into_response();
    }
    let after: i64 = q["after"].parse().unwrap();
    let page: usize = q["page"].parse().unwrap();
    let per_page: usize = q["per_page"].parse().unwrap();
    s.pages.push(page);
    if s.limited_page == Some(page) {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("X-RateLimit-Limit", "200,2000"),
                ("X-RateLimit-Usage", "101,240"),
                ("X-ReadRateLimit-Limit", "100,1000"),
                ("X-ReadRateLimit-Usage", "101,240"),
            ],
            axum::Json(json!({"message": "Rate Limit Exceeded",
                              "errors": [{"resource": "Application", "field": "rate limit", "code": "exceeded"}]})),
        )
            .into_response();
    }
    let list: Vec<Value> = s
        .activities
        .iter()
        .filter(|a| {
            a["start_date"]
                .as_str()
                .unwrap()
                .parse::<Timestamp>()
                .unwrap()
                .as_second()
                > after
        })
        .skip((page - 1) * per_page)
        .take(per_page)
        .cloned()
        .collect();
    axum::Json(Value::Array(list)).into_response()
}

fn start_fake(s: Shared) -> String {
    common::serve_fake(
        axum::Router::new()
            .route("/oauth/authorize", axum::routing::get(authorize))
            .route("/oauth/token", axum::routing::post(token))
            .route("/api/v3/athlete/activities", axum::routing::get(activities))
            .with_state(s),
    )
}

/// 150 runs, one every 12 hours: two pages of 100.
fn runs() -> Vec<Value> {
    let now = Timestamp::now();
    (1..=150)
        .map(|k| {
            let start = now - SignedDuration::from_hours(12 * k);
            json!({"id": 9_000_000_000u64 + k as u64, "name": "Run", "sport_type": "Run",
                   "start_date": start.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                   "utc_offset": 3600.0, "moving_time": 1800, "elapsed_time": 1900,
                   "distance": 5000.0, "average_heartrate": 150.0, "has_heartrate": true})
        })
        .collect()
}

/// A daemon whose participant `anna` has a Strava source on the fake at `url`.
fn daemon_with_strava(dir: &std::path::Path, url: &str) -> Daemon {
    let data = dir.join("data");
    std::fs::write(dir.join("id"), "4711").unwrap();
    std::fs::write(dir.join("secret"), "strava-secret").unwrap();
    let config = common::write_config(
        dir,
        &format!(
            r#"
[jobs]
source_poll_seconds = 1

[[participants]]
key = "anna"
name = "Anna"
email = "anna@example.invalid"
time_zone = "Europe/Berlin"

[[participants.strava]]
client_id = {{ file = {id:?} }}
client_secret = {{ file = {secret:?} }}
poll_minutes = 0
api_url = "{url}/api/v3"
authorize_url = "{url}/oauth/authorize"
token_url = "{url}/oauth/token"
"#,
            id = dir.join("id").display().to_string(),
            secret = dir.join("secret").display().to_string(),
        ),
    );
    Daemon::start(&data, &["--config", config.to_str().unwrap()])
}

#[test]
fn a_spent_rate_limit_keeps_what_was_read_and_waits_for_its_window() {
    let strava: Shared = Arc::new(Mutex::new(Strava {
        expires_in: 21_600,
        activities: runs(),
        limited_page: Some(2),
        ..Strava::default()
    }));
    let url = start_fake(strava.clone());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = daemon_with_strava(dir.path(), &url);
    let began = Timestamp::now();
    assert_eq!(connect(&daemon), 303);
    // The first page's 100 activities × 4 values are kept.
    wait_until("the first page stored", &daemon, || {
        count(&data, "SELECT COUNT(*) FROM observations") == 400
            && count(
                &data,
                "SELECT COUNT(*) FROM source_runs WHERE problems LIKE '%rate limit is spent%'",
            ) == 1
    });
    let asked = strava.lock().unwrap().pages.len();
    assert_eq!(asked, 2, "no retry of the limited page");
    // Polls come every second; none reaches Strava before the window
    // resets (at the next quarter hour: checked only where the test did not
    // cross one).
    std::thread::sleep(std::time::Duration::from_secs(3));
    let quarter = |t: Timestamp| t.as_second().div_euclid(900);
    if quarter(began) == quarter(Timestamp::now()) {
        assert_eq!(strava.lock().unwrap().pages.len(), asked);
    }
    daemon.terminate();
}

#[test]
fn strava_activities_arrive_page_by_page_and_a_refused_refresh_asks_for_a_new_connection() {
    let strava: Shared = Arc::new(Mutex::new(Strava {
        expires_in: 21_600,
        activities: runs(),
        ..Strava::default()
    }));
    let url = start_fake(strava.clone());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let daemon = daemon_with_strava(dir.path(), &url);
    assert_eq!(connect(&daemon), 303);
    // 150 activities × (minutes, run minutes, distance, heart rate).
    wait_until("activities stored", &daemon, || {
        count(&data, "SELECT COUNT(*) FROM observations") == 600
    });
    assert!(
        strava.lock().unwrap().pages.starts_with(&[1, 2]),
        "two pages"
    );
    assert_eq!(
        count(
            &data,
            "SELECT COUNT(*) FROM observations o JOIN streams s ON s.id = o.stream_id
             WHERE s.key = 'workout_minutes_run' AND o.value = 30 AND s.unit = 'min'"
        ),
        150
    );
    // Revoked: the API refuses, the refresh gets Strava's error shape.
    {
        let mut s = strava.lock().unwrap();
        s.access = Some("revoked".into());
        s.refresh = Some("revoked".into());
    }
    wait_until("marked", &daemon, || {
        count(
            &data,
            "SELECT COUNT(*) FROM oauth_grants WHERE status = 'needs_reauthorisation'",
        ) == 1
    });
    assert_eq!(
        count(
            &data,
            "SELECT COUNT(*) FROM outbox WHERE key LIKE 'source-reauthorisation/anna/strava/%'"
        ),
        1
    );
    daemon.terminate();
    assert_eq!(count(&data, "SELECT COUNT(*) FROM observations"), 600);
}

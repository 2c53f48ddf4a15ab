//! Withings as an OAuth2 source on the real daemon, against a fake Withings
//! on loopback shaped as its Public Health Data API documents: the token
//! endpoint's own dialect (`action=requesttoken`, HTTP 200 with
//! `{"status", "body"}`, no PKCE), `POST` services with form parameters,
//! `lastupdate` and `offset` paging (`more` 0/1 for measures, a boolean for
//! sleep), measure values as `value × 10^unit`, a weigh-in it could not
//! attribute (`attrib` 1), and status 401 for a revoked token followed by a
//! refused refresh, which must mark the source "needs re-authorisation".

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
struct Withings {
    access: Option<String>,
    refresh: Option<String>,
    issued: usize,
    groups: Vec<Value>,
    nights: Vec<Value>,
    /// The `offset` of each measure page asked for.
    offsets: Vec<i64>,
    token_forms: Vec<HashMap<String, String>>,
}

type Shared = Arc<Mutex<Withings>>;

fn form_of(body: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://x/?{body}"))
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

async fn authorize(Query(q): Query<HashMap<String, String>>) -> Response {
    assert_eq!(q["scope"], "user.metrics,user.activity");
    assert_eq!(q["response_type"], "code");
    assert!(
        !q.contains_key("code_challenge"),
        "Withings documents no PKCE"
    );
    let location = format!(
        "{}?state={}&code=withings-code",
        q["redirect_uri"], q["state"]
    );
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

async fn token(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    assert!(headers.get(header::AUTHORIZATION).is_none());
    let form = form_of(&body);
    assert_eq!(form["action"], "requesttoken");
    assert!(!form.contains_key("code_verifier"));
    assert_eq!(
        (form["client_id"].as_str(), form["client_secret"].as_str()),
        ("wi-client", "wi-secret")
    );
    let mut s = s.lock().unwrap();
    s.token_forms.push(form.clone());
    let ok = match form["grant_type"].as_str() {
        "authorization_code" => form["code"] == "withings-code",
        "refresh_token" => s.refresh.as_deref() == Some(form["refresh_token"].as_str()),
        _ => false,
    };
    // Withings answers HTTP 200 either way.
    if !ok {
        return axum::Json(
            json!({"status": 503, "body": {}, "error": "Invalid Params: invalid refresh_token"}),
        )
        .into_response();
    }
    s.issued += 1;
    let (access, refresh) = (format!("wa-{}", s.issued), format!("wr-{}", s.issued));
    s.access = Some(access.clone());
    s.refresh = Some(refresh.clone());
    axum::Json(
        json!({"status": 0, "body": {"userid": "3638", "access_token": access,
        "refresh_token": refresh, "expires_in": 10800, "scope": "user.metrics,user.activity",
        "csrf_token": "x", "token_type": "Bearer"}}),
    )
    .into_response()
}

fn authorised(s: &Withings, headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    bearer == s.access.as_ref().map(|a| format!("Bearer {a}")).as_deref()
}

fn invalid_token() -> Response {
    axum::Json(json!({"status": 401, "body": {},
        "error": "XRequestID: Not provided invalid_token: The access token provided is invalid"}))
    .into_response()
}

/// Two groups a page, as `offset` says.
async fn measure(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let mut s = s.lock().unwrap();
    if !authorised(&s, &headers) {
        return invalid_token();
    }
    let form = form_of(&body);
    assert_eq!(form["action"], "getmeas");
    assert_eq!(form["category"], "1");
    let since: i64 = form["lastupdate"].parse().unwrap();
    let offset: i64 = form.get("offset").map_or(0, |o| o.parse().unwrap());
    s.offsets.push(offset);
    let changed: Vec<Value> = s
        .groups
        .iter()
        .filter(|g| g["modified"].as_i64().unwrap() >= since)
        .cloned()
        .collect();
    let page: Vec<Value> = changed
        .iter()
        .skip(offset as usize)
        .take(2)
        .cloned()
        .collect();
    let more = (offset as usize + 2) < changed.len();
    let mut body = json!({"updatetime": Timestamp::now().as_second(), "timezone": "Europe/Berlin",
        "measuregrps": page, "more": i32::from(more)});
    if more {
        body["offset"] = json!(offset + 2);
    }
    axum::Json(json!({"status": 0, "body": body})).into_response()
}

async fn sleep(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let s = s.lock().unwrap();
    if !authorised(&s, &headers) {
        return invalid_token();
    }
    let form = form_of(&body);
    assert_eq!(form["action"], "getsummary");
    assert!(form["data_fields"].contains("total_sleep_time"));
    let since: i64 = form["lastupdate"].parse().unwrap();
    let series: Vec<Value> = s
        .nights
        .iter()
        .filter(|n| n["modified"].as_i64().unwrap() >= since)
        .cloned()
        .collect();
    axum::Json(json!({"status": 0, "body": {"series": series, "more": false, "offset": 0}}))
        .into_response()
}

fn start_fake(s: Shared) -> String {
    common::serve_fake(
        axum::Router::new()
            .route("/oauth2_user/authorize2", axum::routing::get(authorize))
            .route("/v2/oauth2", axum::routing::post(token))
            .route("/measure", axum::routing::post(measure))
            .route("/v2/sleep", axum::routing::post(sleep))
            .with_state(s),
    )
}

/// A weigh-in (weight and fat ratio) `days` ago, changed at `modified`.
fn weigh_in(grpid: i64, days: i64, grams: i64, attrib: i64, modified: i64) -> Value {
    let at = (Timestamp::now() - SignedDuration::from_hours(24 * days)).as_second();
    json!({"grpid": grpid, "attrib": attrib, "date": at, "created": at, "modified": modified,
        "category": 1, "deviceid": "892359876fd8805ac45bab078c4828692f0276b1", "model": "Body+",
        "measures": [{"value": grams, "type": 1, "unit": -3, "algo": 3, "fm": 131},
                     {"value": 1850, "type": 6, "unit": -2}]})
}

#[test]
fn withings_weigh_ins_blood_pressure_and_nights_arrive_and_a_refused_refresh_asks_for_a_new_connection()
 {
    let now = Timestamp::now().as_second();
    let mut groups: Vec<Value> = (1..=4)
        .map(|k| weigh_in(100 + k, k, 71_000 + 100 * k, 0, now - 3600))
        .collect();
    // A weigh-in Withings could not attribute (someone else on the scale).
    groups.push(weigh_in(200, 2, 88_400, 1, now - 3600));
    // A blood pressure reading with pulse.
    groups.push(
        json!({"grpid": 300, "attrib": 0, "date": now - 7200, "modified": now - 3600,
        "category": 1, "measures": [{"value": 121, "type": 10, "unit": 0},
        {"value": 79, "type": 9, "unit": 0}, {"value": 62, "type": 11, "unit": 0}]}),
    );
    let nights: Vec<Value> = (1..=2)
        .map(|k| {
            let end = now - 86_400 * k;
            json!({"id": 5000 + k, "timezone": "Europe/Berlin", "startdate": end - 27_000,
                "enddate": end, "date": "2026-06-01", "modified": now - 3600,
                "data": {"total_sleep_time": 25_200, "deepsleepduration": 5_400,
                         "sleep_efficiency": 0.93, "sleep_score": 80 + k}})
        })
        .collect();
    let withings: Shared = Arc::new(Mutex::new(Withings {
        groups,
        nights,
        ..Withings::default()
    }));
    let url = start_fake(withings.clone());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::write(dir.path().join("id"), "wi-client").unwrap();
    std::fs::write(dir.path().join("secret"), "wi-secret").unwrap();
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

[[participants.withings]]
client_id = {{ file = {id:?} }}
client_secret = {{ file = {secret:?} }}
poll_minutes = 0
api_url = "{url}"
authorize_url = "{url}/oauth2_user/authorize2"
token_url = "{url}/v2/oauth2"
"#,
            id = dir.path().join("id").display().to_string(),
            secret = dir.path().join("secret").display().to_string(),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&data, &["--config", config.to_str().unwrap()]);
    assert_eq!(connect(&daemon), 303);
    // 4 weigh-ins × (weight, fat) + 3 from the cuff + 2 nights × 4 fields;
    // the unattributed weigh-in is skipped.
    wait_until("values stored", &daemon, || {
        count(&data, "SELECT COUNT(*) FROM observations") == 19
    });
    assert!(
        withings.lock().unwrap().offsets.starts_with(&[0, 2, 4]),
        "three pages of measures: {:?}",
        withings.lock().unwrap().offsets
    );
    let stored = |stream: &str, value: f64| {
        count(
            &data,
            &format!(
                "SELECT COUNT(*) FROM observations o JOIN streams s ON s.id = o.stream_id
                 WHERE s.key = '{stream}' AND abs(o.value - {value}) < 1e-9"
            ),
        )
    };
    assert_eq!(stored("body_mass", 71.1), 1);
    assert_eq!(stored("body_mass", 88.4), 0, "not attributed: skipped");
    assert_eq!(stored("blood_pressure_systolic", 121.0), 1);
    assert_eq!(stored("sleep_asleep", 420.0), 2);
    assert_eq!(stored("sleep_efficiency", 93.0), 2);
    assert!(
        count(
            &data,
            "SELECT COUNT(*) FROM source_runs WHERE problems LIKE '%could not attribute%'"
        ) > 0
    );

    // The person corrects a weigh-in in the app: it comes again, changed,
    // and replaces the stored value.
    {
        let mut s = withings.lock().unwrap();
        s.groups[0] = weigh_in(101, 1, 70_600, 0, Timestamp::now().as_second());
    }
    wait_until("the corrected weigh-in", &daemon, || {
        stored("body_mass", 70.6) == 1
    });
    assert_eq!(stored("body_mass", 71.1), 0);
    assert_eq!(count(&data, "SELECT COUNT(*) FROM observations"), 19);

    // Revoked: the API answers status 401, the refresh is refused.
    {
        let mut s = withings.lock().unwrap();
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
            "SELECT COUNT(*) FROM outbox WHERE key LIKE 'source-reauthorisation/anna/withings/%'"
        ),
        1
    );
    assert!(
        withings
            .lock()
            .unwrap()
            .token_forms
            .iter()
            .any(|f| f["grant_type"] == "refresh_token"),
        "a refresh was tried"
    );
    daemon.terminate();
    assert_eq!(count(&data, "SELECT COUNT(*) FROM observations"), 19);
}

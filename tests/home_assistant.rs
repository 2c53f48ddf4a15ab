//! Home Assistant as a pulled source, on the real daemon against a fake Home
//! Assistant on loopback that speaks its REST history API
//! (`/api/history/period/<start>` with `filter_entity_id`, `end_time`,
//! `minimal_response`, `skip_initial_state`; a long-lived token as bearer;
//! minimal responses with attributes on the first and last state only) and
//! its WebSocket API for long-term statistics (`auth_required` → `auth` →
//! `auth_ok`, then `recorder/get_statistics_metadata` and
//! `recorder/statistics_during_period` with millisecond starts).

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use common::{Daemon, db, wait_until};
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

/// One entity's recorded states: (when it changed, state), and its
/// long-term hourly means: (hour start, mean).
struct Entity {
    id: String,
    unit: Option<String>,
    states: Vec<(Timestamp, String)>,
    stats: Vec<(Timestamp, f64)>,
}

#[derive(Default)]
struct Ha {
    token: String,
    entities: Vec<Entity>,
    /// Answer the next this many requests 429 with `Retry-After: 1`.
    throttle: usize,
    /// Every request: (entity, start, end).
    requests: Vec<(String, Timestamp, Timestamp)>,
    /// Every WebSocket command's type.
    commands: Vec<String>,
}

type Shared = Arc<Mutex<Ha>>;

async fn history(
    State(ha): State<Shared>,
    UrlPath(start): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut ha = ha.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != format!("Bearer {}", ha.token) {
        return (StatusCode::UNAUTHORIZED, "401: Unauthorized").into_response();
    }
    if ha.throttle > 0 {
        ha.throttle -= 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("Retry-After", "1")],
            "slow down",
        )
            .into_response();
    }
    for flag in ["minimal_response", "skip_initial_state"] {
        assert!(q.contains_key(flag), "{flag} missing: {q:?}");
    }
    let Ok(start) = start.parse::<Timestamp>() else {
        return (
            StatusCode::BAD_REQUEST,
            "{\"message\":\"Invalid datetime\"}",
        )
            .into_response();
    };
    let end: Timestamp = q["end_time"].parse().unwrap();
    let wanted = q["filter_entity_id"].clone();
    ha.requests.push((wanted.clone(), start, end));
    let mut out = Vec::new();
    for e in ha
        .entities
        .iter()
        .filter(|e| wanted.split(',').any(|w| w == e.id))
    {
        let states: Vec<&(Timestamp, String)> = e
            .states
            .iter()
            .filter(|(t, _)| *t > start && *t <= end)
            .collect();
        let n = states.len();
        let list: Vec<Value> = states
            .iter()
            .enumerate()
            .map(|(i, (t, s))| {
                let changed = t.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
                if i == 0 || i + 1 == n {
                    let mut attributes =
                        json!({"friendly_name": e.id, "state_class": "measurement"});
                    if let Some(u) = &e.unit {
                        attributes["unit_of_measurement"] = json!(u);
                    }
                    json!({"entity_id": e.id, "state": s, "attributes": attributes,
                           "last_changed": changed, "last_updated": changed})
                } else {
                    json!({"state": s, "last_changed": changed})
                }
            })
            .collect();
        if !list.is_empty() {
            out.push(Value::Array(list));
        }
    }
    axum::Json(Value::Array(out)).into_response()
}

async fn websocket(State(ha): State<Shared>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| serve_socket(ha, socket))
}

async fn serve_socket(ha: Shared, mut socket: WebSocket) {
    let send = |v: Value| WsMessage::Text(v.to_string().into());
    if socket
        .send(send(
            json!({"type": "auth_required", "ha_version": "2026.11.3"}),
        ))
        .await
        .is_err()
    {
        return;
    }
    let Some(Ok(WsMessage::Text(auth))) = socket.recv().await else {
        return;
    };
    let auth: Value = serde_json::from_str(auth.as_str()).unwrap();
    let token = ha.lock().unwrap().token.clone();
    if auth["type"] != "auth" || auth["access_token"] != token.as_str() {
        let _ = socket
            .send(send(
                json!({"type": "auth_invalid", "message": "Invalid access token or password"}),
            ))
            .await;
        return;
    }
    let _ = socket
        .send(send(json!({"type": "auth_ok", "ha_version": "2026.11.3"})))
        .await;
    while let Some(Ok(WsMessage::Text(text))) = socket.recv().await {
        let command: Value = serde_json::from_str(text.as_str()).unwrap();
        let answer = {
            let mut ha = ha.lock().unwrap();
            let kind = command["type"].as_str().unwrap().to_string();
            ha.commands.push(kind.clone());
            let ids: Vec<&str> = command["statistic_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let with_stats = ha
                .entities
                .iter()
                .filter(|e| ids.contains(&e.id.as_str()) && !e.stats.is_empty());
            let result = match kind.as_str() {
                "recorder/get_statistics_metadata" => Value::Array(
                    with_stats
                        .map(|e| {
                            json!({"statistic_id": e.id, "source": "recorder", "has_mean": true,
                                        "has_sum": false, "statistics_unit_of_measurement": e.unit,
                                        "name": null, "unit_class": null})
                        })
                        .collect(),
                ),
                "recorder/statistics_during_period" => {
                    assert_eq!(command["period"], "hour");
                    let start: Timestamp = command["start_time"].as_str().unwrap().parse().unwrap();
                    let end: Timestamp = command["end_time"].as_str().unwrap().parse().unwrap();
                    let mut out = serde_json::Map::new();
                    for e in with_stats {
                        let rows: Vec<Value> = e
                            .stats
                            .iter()
                            .filter(|(t, _)| *t >= start && *t < end)
                            .map(|(t, m)| json!({"start": t.as_millisecond(), "end": t.as_millisecond() + 3_600_000,
                                                 "mean": m}))
                            .collect();
                        out.insert(e.id.clone(), Value::Array(rows));
                    }
                    Value::Object(out)
                }
                other => panic!("unexpected command {other}"),
            };
            json!({"id": command["id"], "type": "result", "success": true, "result": result})
        };
        if socket.send(send(answer)).await.is_err() {
            return;
        }
    }
}

/// Starts the fake on 127.0.0.1; returns its base URL.
fn start_fake(ha: Shared) -> String {
    common::serve_fake(
        axum::Router::new()
            .route("/api/history/period/{start}", axum::routing::get(history))
            .route("/api/websocket", axum::routing::get(websocket))
            .with_state(ha),
    )
}

/// `(stream, count, unit, sum)` of the stored observations.
fn streams(data: &Path) -> Vec<(String, i64, String, f64)> {
    let conn = db(data);
    let mut stmt = conn
        .prepare(
            "SELECT s.key, COUNT(*), MAX(o.unit), SUM(o.value) FROM observations o
             JOIN streams s ON s.id = o.stream_id GROUP BY s.key ORDER BY s.key",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn home_assistant_sensors_become_streams_once_with_retries_units_and_a_refused_token_named() {
    let now = Timestamp::now();
    let at = |minutes_ago: i64| now - SignedDuration::from_mins(minutes_ago);
    // Three days of CO2 every 30 minutes (two gaps "unavailable"), a
    // temperature in °F stored in °C, a window contact.
    let mut co2 = Vec::new();
    for k in (1..=144).rev() {
        let state = if k % 50 == 0 {
            "unavailable".to_string()
        } else {
            format!("{}", 400 + k)
        };
        co2.push((at(30 * k), state));
    }
    let temperature = vec![(at(600), "68.0".to_string()), (at(300), "71.6".to_string())];
    // Long-term statistics: CO2 hourly from 20 to 11 days ago and from 9 to
    // 5 days ago (inside the REST window: not read); a day of temperature
    // 15 days ago, in °F.
    let hour = |h: i64| {
        let t = now - SignedDuration::from_hours(h);
        Timestamp::from_second(t.as_second() - t.as_second().rem_euclid(3600)).unwrap()
    };
    let co2_stats: Vec<(Timestamp, f64)> = (24 * 5..=24 * 9)
        .chain(24 * 11..24 * 20)
        .map(|h| (hour(h), 500.0))
        .collect();
    let temperature_stats: Vec<(Timestamp, f64)> =
        (24 * 15..24 * 16).map(|h| (hour(h), 68.0)).collect();
    let window = vec![
        (at(500), "on".to_string()),
        (at(400), "off".to_string()),
        (at(200), "on".to_string()),
    ];
    let ha: Shared = Arc::new(Mutex::new(Ha {
        token: "ha-long-lived-token".into(),
        entities: vec![
            Entity {
                id: "sensor.bedroom_co2".into(),
                unit: Some("ppm".into()),
                states: co2,
                stats: co2_stats,
            },
            Entity {
                id: "sensor.bedroom_temperature".into(),
                unit: Some("°F".into()),
                states: temperature,
                stats: temperature_stats,
            },
            Entity {
                id: "binary_sensor.bedroom_window".into(),
                unit: None,
                states: window,
                stats: vec![],
            },
        ],
        throttle: 1,
        requests: Vec::new(),
        commands: Vec::new(),
    }));
    let url = start_fake(ha.clone());

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token_file = dir.path().join("ha-token");
    std::fs::write(&token_file, "ha-long-lived-token\n").unwrap();
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

[[participants.home_assistant]]
name = "home"
url = "{url}"
token = {{ file = {token:?} }}
overlap_minutes = 60
[[participants.home_assistant.entities]]
entity = "sensor.bedroom_co2"
stream = "bedroom_co2"
[[participants.home_assistant.entities]]
entity = "sensor.bedroom_temperature"
stream = "bedroom_temperature"
unit = "°C"
[[participants.home_assistant.entities]]
entity = "binary_sensor.bedroom_window"
stream = "window_open"
"#,
            token = token_file.display().to_string()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let daemon = Daemon::start(&data, &["--config", cfg]);

    // 144 CO2 states less 2 unavailable and 9 days of hourly means before
    // the REST window; 2 temperatures and 24 hourly means; 3 window states.
    let all = 142 + 24 * 9 + 2 + 24 + 3;
    wait_until("all states stored", &daemon, || {
        streams(&data).iter().map(|s| s.1).sum::<i64>() == all
    });
    let got = streams(&data);
    let co2 = got.iter().find(|s| s.0 == "bedroom_co2").unwrap();
    assert_eq!((co2.1, co2.2.as_str()), (142 + 216, "ppm"));
    let temperature = got.iter().find(|s| s.0 == "bedroom_temperature").unwrap();
    assert_eq!(temperature.2, "°C");
    assert!(
        (temperature.3 - (20.0 + 22.0 + 24.0 * 20.0)).abs() < 1e-9,
        "68 °F and 71.6 °F, and 24 hours of 68 °F: {temperature:?}"
    );
    let hourly: i64 = db(&data)
        .query_row(
            "SELECT COUNT(*) FROM observations WHERE origin = 'sensor.bedroom_co2 (hourly means)'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(hourly, 216);
    let window = got.iter().find(|s| s.0 == "window_open").unwrap();
    assert_eq!((window.1, window.3), (3, 2.0));

    // Later polls read only from the cursor less the overlap, and store
    // nothing twice; a new state arrives once.
    let polls_before = ha.lock().unwrap().requests.len();
    wait_until("more polls", &daemon, || {
        ha.lock().unwrap().requests.len() >= polls_before + 6
    });
    assert_eq!(streams(&data).iter().map(|s| s.1).sum::<i64>(), all);
    // The statistics were read once per entity that has them.
    let reads = ha
        .lock()
        .unwrap()
        .commands
        .iter()
        .filter(|c| *c == "recorder/statistics_during_period")
        .count();
    assert_eq!(reads, 2);
    {
        let ha = ha.lock().unwrap();
        let first_co2 = ha
            .requests
            .iter()
            .find(|r| r.0 == "sensor.bedroom_co2")
            .unwrap();
        assert!(now.duration_since(first_co2.1) >= SignedDuration::from_hours(24 * 10 - 1));
        // A day at a time, however long the window.
        assert!(
            ha.requests
                .iter()
                .all(|r| r.2.duration_since(r.1) <= SignedDuration::from_hours(24)),
            "{:?}",
            ha.requests
        );
        let last_co2 = ha
            .requests
            .iter()
            .rev()
            .find(|r| r.0 == "sensor.bedroom_co2")
            .unwrap();
        let back = now.duration_since(last_co2.1);
        assert!(
            back <= SignedDuration::from_mins(30 + 60 + 2),
            "a later poll starts at the cursor less the overlap, not {back:?} back"
        );
    }
    ha.lock().unwrap().entities[0].states.push((
        Timestamp::now() - SignedDuration::from_secs(1),
        "455".into(),
    ));
    wait_until("the new state", &daemon, || {
        streams(&data)
            .iter()
            .find(|s| s.0 == "bedroom_co2")
            .unwrap()
            .1
            == 143 + 216
    });

    // The run log says what was skipped; the 429 was waited out, not failed.
    let conn = db(&data);
    let (problems, failures): (String, i64) = conn
        .query_row(
            "SELECT (SELECT problems FROM source_runs r JOIN sources s ON s.id = r.source_id
                     WHERE s.name = 'home' AND r.stored > 0 ORDER BY r.id LIMIT 1),
                    (SELECT COUNT(*) FROM source_runs r JOIN sources s ON s.id = r.source_id
                     WHERE s.name = 'home' AND r.error IS NOT NULL)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        problems.contains("sensor.bedroom_co2: 2 unavailable/unknown states skipped"),
        "{problems}"
    );
    assert_eq!(failures, 0);

    // A token Home Assistant no longer accepts: the poll fails saying so.
    ha.lock().unwrap().token = "rotated".into();
    wait_until("the refusal logged", &daemon, || {
        db(&data)
            .query_row(
                "SELECT COUNT(*) FROM source_runs WHERE error LIKE '%token was refused%long-lived access token%'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            > 0
    });
    daemon.terminate();
    assert_eq!(streams(&data).iter().map(|s| s.1).sum::<i64>(), all + 1);
}

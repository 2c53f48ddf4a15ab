//! Home Assistant's WebSocket API, for what its REST API does not give: the
//! long-term statistics (`recorder/statistics_during_period`), hourly means
//! the recorder keeps after it purges the states (10 days by default). Used
//! once per entity to fill the months before the REST history reaches.
//!
//! The exchange: the server says `auth_required`, we send the token, it
//! answers `auth_ok` (or `auth_invalid`); then each command carries an `id`
//! and gets a `result` with that id.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

/// One hour's statistics of an entity.
#[derive(Debug, Clone, PartialEq)]
pub struct HourStat {
    /// The hour's start.
    pub start: Timestamp,
    /// The time-weighted mean over the hour.
    pub mean: f64,
}

/// An entity's statistics: its unit and hourly means, or why there are none.
#[derive(Debug, Clone, PartialEq)]
pub enum Statistics {
    /// A measurement with means, in `unit`.
    Means {
        /// The statistics' unit (may be empty).
        unit: String,
        /// Hour by hour.
        hours: Vec<HourStat>,
        /// Rows without a readable start or mean.
        unreadable: usize,
    },
    /// The recorder keeps no long-term statistics for it (no
    /// `state_class`), or only sums (a meter), which are not backfilled.
    None(String),
}

/// A WebSocket session, authenticated.
pub struct Session {
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Session {
    /// Connects to `base` (`http(s)://host:port`), at `/api/websocket`, and
    /// authenticates with `token`. Every read and write waits at most
    /// `timeout`.
    pub fn open(base: &str, token: &str, timeout: Duration) -> Result<Session, String> {
        let url = reqwest::Url::parse(base).map_err(|e| format!("url {base:?}: {e}"))?;
        let ws_scheme = match url.scheme() {
            "https" => "wss",
            _ => "ws",
        };
        let host = url.host_str().ok_or("the url has no host")?;
        let port = url.port_or_known_default().ok_or("the url has no port")?;
        let address = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        let tcp = TcpStream::connect_timeout(&address, timeout)
            .map_err(|e| format!("WebSocket {host}:{port}: {e}"))?;
        tcp.set_read_timeout(Some(timeout))
            .and_then(|()| tcp.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        let path = format!(
            "{ws_scheme}://{}/api/websocket",
            &base[url.scheme().len() + 3..].trim_end_matches('/')
        );
        let (socket, _) = tungstenite::client_tls_with_config(path.as_str(), tcp, None, None)
            .map_err(|e| format!("WebSocket handshake with {path}: {e}"))?;
        let mut session = Session { socket, next_id: 1 };
        let hello = session.receive()?;
        if hello["type"] != "auth_required" {
            return Err(format!("expected auth_required, got {hello}"));
        }
        session.send(&json!({"type": "auth", "access_token": token}))?;
        let answer = session.receive()?;
        match answer["type"].as_str() {
            Some("auth_ok") => Ok(session),
            Some("auth_invalid") => Err(format!(
                "the token was refused: {} (make a new long-lived access token in Home Assistant: your profile → Security)",
                answer["message"].as_str().unwrap_or("auth_invalid")
            )),
            _ => Err(format!("unexpected answer to auth: {answer}")),
        }
    }

    fn send(&mut self, value: &Value) -> Result<(), String> {
        self.socket
            .send(Message::text(value.to_string()))
            .map_err(|e| format!("WebSocket send: {e}"))
    }

    /// The next JSON message (pings are answered by tungstenite).
    fn receive(&mut self) -> Result<Value, String> {
        loop {
            let message = self
                .socket
                .read()
                .map_err(|e| format!("WebSocket read: {e}"))?;
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).map_err(|e| {
                        format!("not JSON ({e}): {}", crate::limits::excerpt(text.as_str()))
                    });
                }
                Message::Close(_) => return Err("Home Assistant closed the WebSocket".into()),
                _ => continue,
            }
        }
    }

    /// Sends a command and waits for its result: `Err` when the exchange
    /// failed, `Ok(Err)` when Home Assistant answered that it failed (an
    /// older version without the command, say): trying again will not help.
    fn command(&mut self, mut command: Value) -> Result<Result<Value, String>, String> {
        let id = self.next_id;
        self.next_id += 1;
        command["id"] = json!(id);
        self.send(&command)?;
        loop {
            let answer = self.receive()?;
            if answer["id"] != json!(id) || answer["type"] != "result" {
                continue;
            }
            if answer["success"] == json!(true) {
                return Ok(Ok(answer["result"].clone()));
            }
            return Ok(Err(format!(
                "{}: {}",
                command["type"].as_str().unwrap_or("command"),
                answer["error"]["message"]
                    .as_str()
                    .unwrap_or("failed without a message")
            )));
        }
    }

    /// The hourly statistics of `entity` from `start` to `end`.
    pub fn statistics(
        &mut self,
        entity: &str,
        start: Timestamp,
        end: Timestamp,
    ) -> Result<Statistics, String> {
        let meta = match self.command(json!({
            "type": "recorder/get_statistics_metadata",
            "statistic_ids": [entity],
        }))? {
            Ok(m) => m,
            Err(why) => return Ok(Statistics::None(format!("Home Assistant answered {why}"))),
        };
        let Some(meta) = meta
            .as_array()
            .and_then(|m| m.iter().find(|x| x["statistic_id"] == entity))
        else {
            return Ok(Statistics::None(
                "the recorder keeps no long-term statistics for it (a sensor needs a state_class)"
                    .into(),
            ));
        };
        let has_mean =
            meta["has_mean"] == json!(true) || meta["mean_type"].as_u64().is_some_and(|t| t > 0);
        if !has_mean {
            return Ok(Statistics::None(
                "its statistics are sums (a meter), not backfilled".into(),
            ));
        }
        let unit = meta["statistics_unit_of_measurement"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let result = match self.command(json!({
            "type": "recorder/statistics_during_period",
            "start_time": start.to_string(),
            "end_time": end.to_string(),
            "statistic_ids": [entity],
            "period": "hour",
            "types": ["mean"],
        }))? {
            Ok(r) => r,
            Err(why) => return Ok(Statistics::None(format!("Home Assistant answered {why}"))),
        };
        let rows = result[entity].as_array().cloned().unwrap_or_default();
        let mut hours = Vec::with_capacity(rows.len());
        let mut unreadable = 0;
        for row in rows {
            // Milliseconds since 1970 (Home Assistant 2023.3 on), or an
            // ISO string (before).
            let start = match &row["start"] {
                Value::Number(n) => n
                    .as_f64()
                    .and_then(|ms| Timestamp::from_millisecond(ms as i64).ok()),
                Value::String(s) => s.parse().ok(),
                _ => None,
            };
            match (start, row["mean"].as_f64()) {
                (Some(start), Some(mean)) if mean.is_finite() => {
                    hours.push(HourStat { start, mean })
                }
                _ => unreadable += 1,
            }
        }
        Ok(Statistics::Means {
            unit,
            hours,
            unreadable,
        })
    }
}

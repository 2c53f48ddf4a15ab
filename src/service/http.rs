//! HTTP to servers nof1d does not control (the LLM endpoint, vendor APIs,
//! Home Assistant): reading `Retry-After`, waiting with jittered exponential
//! backoff, and a blocking JSON client for the pulled sources that retries
//! what retrying can mend and names what it cannot.

use std::io::Read;
use std::time::Duration;

use jiff::Timestamp;
use serde_json::Value;

/// The most of an answer's body read (a misbehaving server cannot fill
/// memory).
const MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;

/// `Retry-After`: seconds, or an HTTP date (RFC 9110 §10.2.3), as a wait
/// from `now` (a date in the past waits nothing).
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let wait = at.duration_since(now);
    Some(Duration::from_secs_f64(wait.as_secs_f64().max(0.0)))
}

/// An error with its causes, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Whether an I/O error is a timeout.
pub fn is_timeout(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::TimedOut || e.to_string().contains("timed out")
}

/// The wait before retry number `attempt` (0-based): 1 s doubling, capped
/// at `max`, times a random factor in [0.5, 1) so that many clients
/// failing together do not come back together ("equal jitter").
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let full = Duration::from_secs(1u64 << attempt.min(16)).min(max);
    let u = f64::from(getrandom::u32().unwrap_or(u32::MAX / 2)) / f64::from(u32::MAX);
    full.mul_f64(0.5 + 0.5 * u)
}

/// Why a request to an outside API failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// No connection (DNS, refused, TLS) or no answer in time.
    #[error("{url}: unreachable ({message})")]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why.
        message: String,
    },
    /// The credentials were refused: retrying will not help.
    #[error("{url}: HTTP {status}, the token was refused: {body}")]
    Refused {
        /// What was asked.
        url: String,
        /// The status.
        status: u16,
        /// The start of the answer.
        body: String,
    },
    /// Any other error status (after retries, where it was worth retrying).
    #[error("{url}: HTTP {status}: {body}")]
    Status {
        /// What was asked.
        url: String,
        /// The status.
        status: u16,
        /// The start of the answer.
        body: String,
    },
    /// A fixed-window rate limit is spent (a 429 with `X-RateLimit-Limit`
    /// and `X-RateLimit-Usage`, as Strava sends: limits and usage per
    /// window, comma-separated; and `X-ReadRateLimit-*` for reads alone).
    /// Not retried: within the window every retry is refused too, and
    /// counts.
    #[error("{url}: the rate limit is spent (limits {limit}, used {usage})")]
    WindowLimited {
        /// What was asked.
        url: String,
        /// `X-RateLimit-Limit`, e.g. `200,2000` (a quarter hour, a day).
        limit: String,
        /// `X-RateLimit-Usage`, e.g. `101,312`.
        usage: String,
        /// `X-ReadRateLimit-Limit` and `-Usage`, where sent.
        read: Option<(String, String)>,
    },
    /// The server asked to wait longer than this client waits in one go.
    #[error(
        "{url}: rate limited, the server asks to wait {wait_s} s (tried again at the next poll)"
    )]
    RateLimited {
        /// What was asked.
        url: String,
        /// The wait asked for.
        wait_s: u64,
    },
    /// The answer is not JSON.
    #[error("{url}: the answer is not JSON ({message}): {body}")]
    NotJson {
        /// What was asked.
        url: String,
        /// Why.
        message: String,
        /// The start of the answer.
        body: String,
    },
}

/// The builder of every blocking HTTP client nof1d makes: rustls with the
/// *ring* crypto provider. reqwest is built without a provider of its own
/// (its default, aws-lc, is a long C build), so this installs *ring* as the
/// process default first; a provider installed earlier is kept.
pub fn client_builder() -> reqwest::blocking::ClientBuilder {
    // Err only means a default is already in place, which serves as well.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
}

/// A blocking JSON client for one outside API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::blocking::Client,
    retries: u32,
    max_wait: Duration,
}

/// What one attempt came to.
enum Attempt {
    Done(Value),
    Retry(ApiError, Option<Duration>),
    Fail(ApiError),
}

impl ApiClient {
    /// A client whose requests time out after `timeout`, retried up to
    /// `retries` times, waiting at most `max_wait` between tries.
    pub fn new(timeout: Duration, retries: u32, max_wait: Duration) -> Result<ApiClient, ApiError> {
        let http = client_builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("nof1d/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Unreachable {
                url: String::new(),
                message: error_chain(&e),
            })?;
        Ok(ApiClient {
            http,
            retries,
            max_wait,
        })
    }

    /// GETs `url` with `query` and a bearer token; answers 2xx as JSON.
    /// Connection errors, timeouts, 408, 429 and 5xx are retried (after
    /// the server's `Retry-After` where it gives one, else a jittered
    /// backoff); 401/403 and other statuses are not.
    pub fn get_json(
        &self,
        url: &str,
        query: &[(&str, String)],
        bearer: &str,
    ) -> Result<Value, ApiError> {
        self.send_json(url, || self.http.get(url).query(query).bearer_auth(bearer))
    }

    /// POSTs `form` (URL-encoded) to `url` with a bearer token, for APIs
    /// that take their parameters in the body (Withings); answered and
    /// retried as [`Self::get_json`].
    pub fn post_form_json(
        &self,
        url: &str,
        form: &[(&str, String)],
        bearer: &str,
    ) -> Result<Value, ApiError> {
        self.send_json(url, || self.http.post(url).form(form).bearer_auth(bearer))
    }

    fn send_json(
        &self,
        url: &str,
        request: impl Fn() -> reqwest::blocking::RequestBuilder,
    ) -> Result<Value, ApiError> {
        let mut tries = 0u32;
        loop {
            match self.attempt(url, request()) {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(e, after) => {
                    if tries >= self.retries {
                        return Err(e);
                    }
                    let wait = match after {
                        Some(w) if w > self.max_wait => {
                            return Err(ApiError::RateLimited {
                                url: url.to_string(),
                                wait_s: w.as_secs(),
                            });
                        }
                        Some(w) => w,
                        None => backoff(tries, self.max_wait),
                    };
                    tracing::debug!(%url, error = %e, wait_ms = wait.as_millis() as u64, "retrying");
                    std::thread::sleep(wait);
                    tries += 1;
                }
            }
        }
    }

    fn attempt(&self, url: &str, request: reqwest::blocking::RequestBuilder) -> Attempt {
        let unreachable = |message: String| ApiError::Unreachable {
            url: url.to_string(),
            message,
        };
        let resp = match request.send() {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(unreachable(error_chain(&e)), None),
        };
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after =
            header("retry-after").and_then(|v| parse_retry_after(&v, Timestamp::now()));
        if status == 429
            && let (Some(limit), Some(usage)) =
                (header("x-ratelimit-limit"), header("x-ratelimit-usage"))
        {
            let read = header("x-readratelimit-limit").zip(header("x-readratelimit-usage"));
            return Attempt::Fail(ApiError::WindowLimited {
                url: url.to_string(),
                limit,
                usage,
                read,
            });
        }
        let mut body = Vec::new();
        if let Err(e) = resp.take(MAX_BODY_BYTES).read_to_end(&mut body) {
            return Attempt::Retry(unreachable(format!("reading the answer: {e}")), None);
        }
        let text = || crate::limits::excerpt(&String::from_utf8_lossy(&body));
        match status {
            200..=299 => match serde_json::from_slice(&body) {
                Ok(v) => Attempt::Done(v),
                Err(e) => Attempt::Fail(ApiError::NotJson {
                    url: url.to_string(),
                    message: e.to_string(),
                    body: text(),
                }),
            },
            401 | 403 => Attempt::Fail(ApiError::Refused {
                url: url.to_string(),
                status,
                body: text(),
            }),
            408 | 429 | 500..=599 => Attempt::Retry(
                ApiError::Status {
                    url: url.to_string(),
                    status,
                    body: text(),
                },
                retry_after,
            ),
            _ => Attempt::Fail(ApiError::Status {
                url: url.to_string(),
                status,
                body: text(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// reqwest is built without a crypto provider: a client made any other
    /// way than `client_builder` would panic when built.
    #[test]
    fn clients_are_made_on_the_ring_provider() {
        assert!(client_builder().build().is_ok());
        let installed = rustls::crypto::CryptoProvider::get_default().expect("a default provider");
        // The key-exchange groups tell the providers apart (aws-lc's
        // default list starts with a post-quantum hybrid, ring has none).
        let groups = |p: &rustls::crypto::CryptoProvider| {
            p.kx_groups.iter().map(|g| g.name()).collect::<Vec<_>>()
        };
        assert_eq!(
            groups(installed),
            groups(&rustls::crypto::ring::default_provider())
        );
    }

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let now: Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Fri, 04 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Fri, 04 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    /// A server on loopback answering each connection from `script`:
    /// (status, delay before answering).
    fn server(script: Vec<(u16, Duration)>) -> String {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            // A thread a connection: a slow answer holds up no other.
            for (status, delay) in script {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                        line.clear();
                    }
                    std::thread::sleep(delay);
                    let body = if status == 200 {
                        "{\"ok\":true}"
                    } else {
                        "busy"
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        url
    }

    #[test]
    fn a_500_and_a_slow_answer_are_retried_a_refusal_is_not() {
        let slow = Duration::from_millis(700);
        let url = server(vec![
            (500, Duration::ZERO),
            (200, slow),
            (200, Duration::ZERO),
        ]);
        let client =
            ApiClient::new(Duration::from_millis(300), 3, Duration::from_millis(50)).unwrap();
        assert_eq!(
            client.get_json(&url, &[], "t").unwrap(),
            serde_json::json!({"ok": true})
        );
        let url = server(vec![(200, slow), (200, slow)]);
        let client =
            ApiClient::new(Duration::from_millis(300), 1, Duration::from_millis(50)).unwrap();
        let e = client.get_json(&url, &[], "t").unwrap_err();
        assert!(matches!(e, ApiError::Unreachable { .. }), "{e}");
        let url = server(vec![(401, Duration::ZERO), (200, Duration::ZERO)]);
        let e = client.get_json(&url, &[], "t").unwrap_err();
        assert!(matches!(e, ApiError::Refused { status: 401, .. }), "{e}");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let max = Duration::from_secs(30);
        for attempt in 0..8 {
            let full = Duration::from_secs(1 << attempt).min(max);
            let w = backoff(attempt, max);
            assert!(w >= full / 2 && w <= full, "attempt {attempt}: {w:?}");
        }
    }
}

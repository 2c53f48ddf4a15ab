//! A small typed client for any OpenAI-compatible `/v1/chat/completions`
//! endpoint (Ollama, llama.cpp's server, vLLM, hosted APIs), over blocking
//! reqwest: call it off the async runtime.
//!
//! It asks for structured output (`response_format` with the answer's JSON
//! schema, else JSON mode, else the prompt alone: a server that refuses one
//! with an error naming `response_format` is asked again with the next),
//! retries time-outs, 429s, 5xx answers and broken connections with
//! exponential backoff (or the
//! server's `Retry-After`, capped), and records every HTTP request and its
//! answer verbatim as an [`Attempt`] for the audit log. The API key travels
//! only in the `Authorization` header, never in what is logged.

use std::io::Read;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::service::config::{LlmConfig, Secret, Structured};
use crate::service::http::{error_chain, is_timeout, parse_retry_after};

/// The largest answer read from the server.
const MAX_BODY_BYTES: u64 = 4 << 20;

/// One chat message.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: &'static str,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with this role.
    pub fn new(role: &'static str, content: impl Into<String>) -> Message {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// One HTTP request to the server and what came of it.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The request body, verbatim (no key).
    pub request_json: String,
    /// The status, when an answer came.
    pub http_status: Option<u16>,
    /// The answer's body, verbatim (up to 4 MiB).
    pub response_body: String,
    /// `ok`, `retry` (tried again), `fallback` (asked again in a simpler
    /// format) or `failed`.
    pub outcome: &'static str,
    /// What went wrong, if anything.
    pub problem: String,
    /// When it went out.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Timestamp,
}

/// Why no usable answer came.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The client could not be built (a bad URL, TLS set-up).
    #[error("LLM client: {0}")]
    Setup(String),
    /// No answer within the time-out.
    #[error("the LLM server at {0} did not answer within {1} s")]
    Timeout(String, u64),
    /// The connection failed.
    #[error("cannot reach the LLM server at {0}: {1}")]
    Unreachable(String, String),
    /// An HTTP error that retrying does not mend (or retries ran out).
    #[error("the LLM server answered HTTP {0}: {1}")]
    Http(u16, String),
    /// The model declined to answer.
    #[error("the model refused to answer: {0}")]
    Refused(String),
    /// A 200 that is not a chat completion with content.
    #[error("the LLM server's answer is not a chat completion with content: {0}")]
    BadResponse(String),
}

/// The client.
#[derive(Debug)]
pub struct LlmClient {
    http: reqwest::blocking::Client,
    endpoint: String,
    model: String,
    key: Option<Secret>,
    retries: u32,
    max_wait: Duration,
    timeout_s: u64,
    max_tokens: u32,
    /// The format to ask in: the configured one until the server refuses
    /// it, then the next (kept for the client's later requests).
    structured: std::sync::Mutex<Structured>,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
}

/// What one request came to.
enum Step {
    Done(String),
    Retry(LlmError, Option<Duration>),
    Fallback(String),
    Fail(LlmError),
}

impl LlmClient {
    /// A client for the configured endpoint (the key resolved now).
    pub fn new(config: &LlmConfig) -> Result<LlmClient, LlmError> {
        let key = match &config.api_key {
            Some(k) => Some(
                k.resolve("llm.api_key")
                    .map_err(|e| LlmError::Setup(e.to_string()))?,
            ),
            None => None,
        };
        let http = crate::service::http::client_builder()
            .timeout(Duration::from_secs(config.timeout_seconds))
            .connect_timeout(Duration::from_secs(config.timeout_seconds.min(10)))
            .user_agent(concat!("nof1d/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| LlmError::Setup(e.to_string()))?;
        Ok(LlmClient {
            http,
            endpoint: format!(
                "{}/chat/completions",
                config.base_url.trim().trim_end_matches('/')
            ),
            model: config.model.trim().to_string(),
            key,
            retries: config.retries,
            max_wait: Duration::from_secs(config.max_retry_wait_seconds),
            timeout_s: config.timeout_seconds,
            max_tokens: config.max_tokens,
            structured: std::sync::Mutex::new(config.structured),
        })
    }

    /// The model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Sends `messages` asking for JSON of `schema` and returns the
    /// assistant's text; every request is appended to `log`.
    pub fn chat(
        &self,
        messages: &[Message],
        schema: &serde_json::Value,
        log: &mut Vec<Attempt>,
    ) -> Result<String, LlmError> {
        let mut format = *self.structured.lock().unwrap_or_else(|p| p.into_inner());
        let mut tries = 0u32;
        loop {
            let body = request_body(&self.model, messages, format, schema, self.max_tokens);
            let request_json = body.to_string();
            let started_at = Timestamp::now();
            let (status, text, step) = self.send(&request_json);
            let mut attempt = Attempt {
                request_json,
                http_status: status,
                response_body: text,
                outcome: "ok",
                problem: String::new(),
                started_at,
                finished_at: Timestamp::now(),
            };
            match step {
                Step::Done(content) => {
                    log.push(attempt);
                    return Ok(content);
                }
                Step::Fallback(why) => {
                    format = match format {
                        Structured::JsonSchema => Structured::JsonObject,
                        _ => Structured::None,
                    };
                    *self.structured.lock().unwrap_or_else(|p| p.into_inner()) = format;
                    attempt.outcome = "fallback";
                    attempt.problem = why;
                    log.push(attempt);
                }
                Step::Retry(err, after) if tries < self.retries => {
                    let wait = after.unwrap_or(Duration::from_secs(1 << tries.min(6)));
                    attempt.outcome = "retry";
                    attempt.problem = err.to_string();
                    log.push(attempt);
                    tries += 1;
                    std::thread::sleep(wait.min(self.max_wait));
                }
                Step::Retry(err, _) | Step::Fail(err) => {
                    attempt.outcome = "failed";
                    attempt.problem = err.to_string();
                    log.push(attempt);
                    return Err(err);
                }
            }
        }
    }

    /// One POST: the status, the body, and what to do next.
    fn send(&self, body: &str) -> (Option<u16>, String, Step) {
        let mut req = self
            .http
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        if let Some(key) = &self.key {
            req = req.bearer_auth(key.expose());
        }
        let resp = match req.send() {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                let err = LlmError::Timeout(self.endpoint.clone(), self.timeout_s);
                return (None, String::new(), Step::Retry(err, None));
            }
            Err(e) => {
                let err = LlmError::Unreachable(self.endpoint.clone(), error_chain(&e));
                return (None, String::new(), Step::Retry(err, None));
            }
        };
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Timestamp::now()));
        let mut text = String::new();
        let read = resp.take(MAX_BODY_BYTES).read_to_string(&mut text);
        if let Err(e) = read {
            let err = if is_timeout(&e) {
                LlmError::Timeout(self.endpoint.clone(), self.timeout_s)
            } else {
                LlmError::BadResponse(format!("reading the answer: {e}"))
            };
            return (Some(status), text, Step::Retry(err, None));
        }
        let step = match status {
            200..=299 => read_completion(&text),
            // llama-cpp-python answers an unknown response_format with a 500.
            400..=599 if mentions_format(&text) && self.format_can_fall_back(body) => {
                Step::Fallback(format!(
                    "HTTP {status}: the server does not take this response_format: {}",
                    crate::limits::excerpt(&text)
                ))
            }
            408 | 409 | 429 | 500..=599 => Step::Retry(
                LlmError::Http(status, crate::limits::excerpt(&text)),
                retry_after,
            ),
            401 | 403 => Step::Fail(LlmError::Http(
                status,
                format!(
                    "the API key was refused (set llm.api_key): {}",
                    crate::limits::excerpt(&text)
                ),
            )),
            404 => Step::Fail(LlmError::Http(
                status,
                format!(
                    "no such endpoint or model ({} at {}): {}",
                    self.model,
                    self.endpoint,
                    crate::limits::excerpt(&text)
                ),
            )),
            _ => Step::Fail(LlmError::Http(status, crate::limits::excerpt(&text))),
        };
        (Some(status), text, step)
    }

    fn format_can_fall_back(&self, body: &str) -> bool {
        body.contains("\"response_format\"")
    }
}

/// The request body: model, messages, a low temperature, a token cap and
/// the format.
pub fn request_body(
    model: &str,
    messages: &[Message],
    format: Structured,
    schema: &serde_json::Value,
    max_tokens: u32,
) -> serde_json::Value {
    let mut body = serde_json::json!({
        "model": model,
        "messages": messages,
        "temperature": 0.2,
        "max_tokens": max_tokens,
        "stream": false,
    });
    let response_format = match format {
        Structured::JsonSchema => Some(serde_json::json!({
            "type": "json_schema",
            "json_schema": {"name": "answer", "strict": true, "schema": schema}
        })),
        // `schema` beside JSON mode: llama.cpp-based servers constrain the
        // output to it by grammar; others ignore it (or refuse, and fall back).
        Structured::JsonObject => {
            Some(serde_json::json!({"type": "json_object", "schema": schema}))
        }
        Structured::None => None,
    };
    if let (Some(f), Some(obj)) = (response_format, body.as_object_mut()) {
        obj.insert("response_format".into(), f);
    }
    body
}

/// A 2xx body as the assistant's text, a refusal, or a bad response.
fn read_completion(text: &str) -> Step {
    let c: Completion = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => {
            return Step::Fail(LlmError::BadResponse(format!(
                "{e}: {}",
                crate::limits::excerpt(text)
            )));
        }
    };
    let Some(choice) = c.choices.into_iter().next() else {
        return Step::Fail(LlmError::BadResponse("no choices".into()));
    };
    if let Some(r) = choice.message.refusal.filter(|r| !r.trim().is_empty()) {
        return Step::Fail(LlmError::Refused(r));
    }
    if choice.finish_reason.as_deref() == Some("content_filter") {
        return Step::Fail(LlmError::Refused(
            "the server's content filter stopped the answer".into(),
        ));
    }
    match choice.message.content {
        Some(content) if !content.trim().is_empty() => Step::Done(content),
        _ => Step::Fail(LlmError::BadResponse("the message has no content".into())),
    }
}

fn mentions_format(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("response_format") || t.contains("json_schema") || t.contains("json schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_are_read_and_refusals_named() {
        let ok = r#"{"choices":[{"message":{"role":"assistant","content":"{}"},"finish_reason":"stop"}]}"#;
        assert!(matches!(read_completion(ok), Step::Done(c) if c == "{}"));
        let refused =
            r#"{"choices":[{"message":{"content":null,"refusal":"I can't help with that."}}]}"#;
        assert!(matches!(
            read_completion(refused),
            Step::Fail(LlmError::Refused(_))
        ));
        assert!(matches!(
            read_completion("<html>"),
            Step::Fail(LlmError::BadResponse(_))
        ));
        let schema = serde_json::json!({"type": "object"});
        let body = request_body(
            "m",
            &[Message::new("user", "hi")],
            Structured::JsonSchema,
            &schema,
            512,
        );
        assert_eq!(body["response_format"]["type"], "json_schema");
        let body = request_body("m", &[], Structured::None, &schema, 512);
        assert_eq!(body["max_tokens"], 512);
        assert!(body.get("response_format").is_none());
    }
}

//! Push notifications beside email: every message the outbox holds for a
//! participant also goes, once, to each of their push channels: an ntfy
//! topic (<https://docs.ntfy.sh/publish/>: a POST of the text to the topic's
//! URL, the title in `Title`, the dashboard in `Click`, an access token as
//! `Authorization: Bearer`) or a Home Assistant notify service (a POST of
//! `{"title", "message", "data"}` to `/api/services/notify/<service>` with a
//! long-lived access token), which reaches the Companion app on a phone.
//!
//! Which messages a channel gets, and that it gets each once, is the
//! store's (`pushes`, one row per message and channel); this module says
//! what a channel is and sends one notification.

use std::time::Duration;

use serde::Deserialize;

use crate::service::config::{ConfigError, Secret, SecretRef};

/// The most characters of a message's text a notification carries (ntfy
/// takes 4,096 bytes; a phone shows a few lines): the rest is on the
/// dashboard the notification opens.
pub const MAX_TEXT_CHARS: usize = 1000;

/// Seconds a push may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The kinds of push channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    /// An ntfy topic (ntfy.sh or a server of one's own).
    Ntfy,
    /// A Home Assistant notify service (the Companion app, or any notifier).
    HomeAssistant,
}

impl PushKind {
    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            PushKind::Ntfy => "ntfy",
            PushKind::HomeAssistant => "Home Assistant",
        }
    }
}

/// One push channel of a participant, as written in the config:
///
/// ```toml
/// [[participants.push]]
/// kind = "ntfy"
/// url = "https://ntfy.sh/alice-nof1d-7f3k9q"   # the topic's URL
/// token = { env = "NTFY_TOKEN" }               # optional
///
/// [[participants.push]]
/// kind = "home_assistant"
/// url = "http://homeassistant.local:8123"
/// service = "mobile_app_alices_phone"          # notify.<service>
/// token = { file = "/etc/nof1d/ha-token" }
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// Which kind of channel.
    pub kind: PushKind,
    /// ntfy: the topic's URL; Home Assistant: the instance's URL.
    pub url: String,
    /// Home Assistant: the notify service, with or without `notify.`.
    pub service: Option<String>,
    /// The access token: optional for ntfy (a protected topic), required
    /// for Home Assistant.
    pub token: Option<SecretRef>,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} push to {channel}: {message}")]
pub struct PushError {
    /// The channel's kind.
    pub kind: PushKind,
    /// The channel (its key: no token in it).
    pub channel: String,
    /// What happened.
    pub message: String,
    /// A 4xx answer about the message itself (not a refusal of the channel,
    /// nor 408 or 429): the same request cannot succeed, so it is not
    /// retried.
    pub permanent: bool,
    /// 401, 403 or 404, and Home Assistant's 400: the server refuses the
    /// channel, not the message (a revoked or wrong token, a topic or a
    /// notify service that is gone; Home Assistant answers an unknown
    /// service with 400, and nof1d's request is always of one shape).
    /// Every message would fail alike until the setting is mended, so the
    /// refusal fails none: they wait as in an outage (and are given up on
    /// as there, after `PUSH_ATTEMPTS` or once their day has passed), and
    /// the job shows the channel held. The status code, where it refused.
    pub refused: Option<u16>,
}

/// The answers that refuse a channel rather than a message
/// ([`PushError::refused`]).
const REFUSING: [u16; 3] = [401, 403, 404];

impl PushConfig {
    /// Checks the settings (and reads the token, so that a missing one is
    /// said at start-up); `what` names the setting in errors.
    pub fn check(&self, what: &str) -> Result<(), ConfigError> {
        let raw = self.url.trim();
        let invalid = |why: &str| ConfigError::Invalid(format!("{what}.url {raw:?} {why}"));
        let url = reqwest::Url::parse(raw).map_err(|e| invalid(&format!("is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid("must be an http:// or https:// URL with a host"));
        }
        // Secrets belong in `token` (read from a file or the environment),
        // not in a URL that is logged and stored as the channel's name.
        if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
            return Err(invalid(
                "must not carry a user, password or query: give an access token as `token`",
            ));
        }
        match self.kind {
            PushKind::Ntfy => {
                if self.service.is_some() {
                    return Err(ConfigError::Invalid(format!(
                        "{what}.service is for kind = \"home_assistant\"; an ntfy topic is the last part of its url"
                    )));
                }
                let topic = url
                    .path_segments()
                    .and_then(|mut s| s.rfind(|p| !p.is_empty()))
                    .unwrap_or("");
                if topic.is_empty() {
                    return Err(invalid(
                        "must name the topic, e.g. https://ntfy.sh/a-topic-hard-to-guess",
                    ));
                }
            }
            PushKind::HomeAssistant => {
                if self.service().is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "{what}.service is needed for kind = \"home_assistant\" (e.g. \"mobile_app_my_phone\", from Developer tools → Actions → notify.*)"
                    )));
                }
                if self.token.is_none() {
                    return Err(ConfigError::Invalid(format!(
                        "{what}.token is needed for kind = \"home_assistant\" (a long-lived access token, Profile → Security)"
                    )));
                }
            }
        }
        if let Some(token) = &self.token {
            token.resolve(&format!("{what}.token"))?;
        }
        Ok(())
    }

    /// The notify service's name without its `notify.` domain.
    fn service(&self) -> &str {
        let s = self.service.as_deref().unwrap_or("").trim();
        s.strip_prefix("notify.").unwrap_or(s)
    }

    /// The channel's key in the store: its kind and where it goes (never
    /// the token), so that a changed URL is a new channel.
    pub fn channel(&self) -> String {
        let url = self.url.trim().trim_end_matches('/');
        match self.kind {
            PushKind::Ntfy => format!("ntfy:{url}"),
            PushKind::HomeAssistant => format!("home_assistant:{url}/notify.{}", self.service()),
        }
    }

    /// Sends one notification: `title`, `text` (as [`push_text`] makes it)
    /// and the dashboard's address to open (blocking).
    pub fn send(&self, title: &str, text: &str, open: &str) -> Result<(), PushError> {
        let fail = |message: String, permanent: bool| PushError {
            kind: self.kind,
            channel: self.channel(),
            message,
            permanent,
            refused: None,
        };
        let token: Option<Secret> = match &self.token {
            Some(t) => Some(
                t.resolve("push token")
                    .map_err(|e| fail(e.to_string(), false))?,
            ),
            None => None,
        };
        let client = crate::service::http::client_builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| fail(e.to_string(), false))?;
        let request = match self.kind {
            PushKind::Ntfy => client
                .post(self.url.trim())
                .header("Title", header_value(title))
                .header("Click", open)
                .header("Tags", "nof1d")
                .header("Content-Type", "text/plain; charset=utf-8")
                .body(text.to_string()),
            PushKind::HomeAssistant => {
                let url = format!(
                    "{}/api/services/notify/{}",
                    self.url.trim().trim_end_matches('/'),
                    self.service()
                );
                client.post(url).json(&serde_json::json!({
                    "title": title,
                    "message": text,
                    // The Companion app opens `url` (iOS) or `clickAction`
                    // (Android) when the notification is tapped.
                    "data": {"url": open, "clickAction": open, "group": "nof1d"},
                }))
            }
        };
        let request = match &token {
            Some(t) => request.bearer_auth(t.expose()),
            None => request,
        };
        let answer = request
            .send()
            .map_err(|e| fail(crate::service::http::error_chain(&e), false))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let body: String = answer
            .text()
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        let code = status.as_u16();
        let refused = (REFUSING.contains(&code)
            || (self.kind == PushKind::HomeAssistant && code == 400))
            .then_some(code);
        let permanent = status.is_client_error() && refused.is_none() && code != 408 && code != 429;
        Err(PushError {
            refused,
            ..fail(format!("answered {status}: {}", body.trim()), permanent)
        })
    }
}

/// A message's text as a notification carries it: without its one-click
/// links (`<dashboard>/l/…`: they record answers for whoever holds them,
/// and a push server keeps what it relays; the notification opens the
/// dashboard, where the day's answers are one tap away), and
/// [`shortened`].
pub fn push_text(body_text: &str, dashboard: &str) -> String {
    let links = format!("{}/l/", dashboard.trim_end_matches('/'));
    let mut out: Vec<&str> = Vec::new();
    let mut dropped = false;
    for line in body_text.lines() {
        if line.contains(&links) {
            dropped = true;
            continue;
        }
        // One blank line at most in a row.
        if line.trim().is_empty() && out.last().is_none_or(|l| l.trim().is_empty()) {
            continue;
        }
        out.push(line);
    }
    let mut text = out.join("\n");
    if dropped {
        text = format!(
            "{}\n\nAnswer on the dashboard: tap this notification.",
            text.trim_end()
        );
    }
    shortened(&text)
}

/// A message's text as a notification carries it: at most
/// [`MAX_TEXT_CHARS`] characters, cut at a line's end where one is near,
/// and then says where the rest is.
pub fn shortened(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= MAX_TEXT_CHARS {
        return text.to_string();
    }
    let cut: String = text.chars().take(MAX_TEXT_CHARS).collect();
    let at_line = cut
        .rfind('\n')
        .filter(|&i| i > MAX_TEXT_CHARS / 2)
        .unwrap_or(cut.len());
    format!(
        "{}\n… (the rest in the email and on the dashboard)",
        cut[..at_line].trim_end()
    )
}

/// An HTTP header carries ASCII safely: ntfy reads a title with other
/// characters from RFC 2047 encoding, which this spares by writing the
/// common ones plainly (a dash for a dash, no accents lost for words).
fn header_value(title: &str) -> String {
    let plain: String = title
        .chars()
        .map(|c| match c {
            '–' | '—' => '-',
            '·' => '-',
            '’' | '‘' => '\'',
            '“' | '”' => '"',
            c => c,
        })
        .collect();
    if plain.is_ascii() {
        plain
    } else {
        // RFC 2047 "encoded word", which ntfy decodes.
        format!(
            "=?UTF-8?B?{}?=",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, plain)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: PushKind, url: &str, service: Option<&str>) -> PushConfig {
        PushConfig {
            kind,
            url: url.into(),
            service: service.map(str::to_string),
            token: None,
        }
    }

    /// Sends one ntfy push to a loopback server that answers `code`.
    fn answered(code: u16) -> Result<(), PushError> {
        answered_as(PushKind::Ntfy, None, code)
    }

    /// Sends one push of `kind` to a loopback server that answers `code`.
    fn answered_as(kind: PushKind, service: Option<&str>, code: u16) -> Result<(), PushError> {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/topic", listener.local_addr().unwrap());
        let url = match kind {
            PushKind::Ntfy => url,
            PushKind::HomeAssistant => url.trim_end_matches("/topic").to_string(),
        };
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok();
            // The whole request (headers, then Content-Length bytes) before
            // the answer: closing on unread bytes would reset the connection.
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + length {
                        break;
                    }
                }
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let answer = format!(
                "HTTP/1.1 {code} Status\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
            );
            conn.write_all(answer.as_bytes()).unwrap();
        });
        let result = config(kind, &url, service).send("title", "text", "https://me.example");
        server.join().unwrap();
        result
    }

    #[test]
    fn a_refused_channel_is_told_from_a_refused_message_and_an_outage() {
        assert!(answered(200).is_ok());
        for code in [401, 403, 404] {
            let e = answered(code).unwrap_err();
            assert_eq!((e.refused, e.permanent), (Some(code), false), "{code}");
        }
        for code in [400, 413, 422] {
            let e = answered(code).unwrap_err();
            assert_eq!((e.refused, e.permanent), (None, true), "{code}");
        }
        // Home Assistant answers a notify service it does not know with 400.
        let e = answered_as(PushKind::HomeAssistant, Some("mobile_app_gone"), 400).unwrap_err();
        assert_eq!((e.refused, e.permanent), (Some(400), false));
        for code in [408, 429, 500, 503] {
            let e = answered(code).unwrap_err();
            assert_eq!((e.refused, e.permanent), (None, false), "{code}");
            assert!(e.message.contains(&code.to_string()), "{e}");
        }
    }

    #[test]
    fn settings_are_checked_with_the_setting_named() {
        let ok = config(PushKind::Ntfy, "https://ntfy.sh/alice-7f3k", None);
        assert!(ok.check("participants[alice].push[0]").is_ok());
        assert_eq!(ok.channel(), "ntfy:https://ntfy.sh/alice-7f3k");
        let no_topic = config(PushKind::Ntfy, "https://ntfy.sh/", None);
        let e = no_topic
            .check("participants[alice].push[0]")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("participants[alice].push[0].url") && e.contains("topic"),
            "{e}"
        );
        for secret in ["https://me:pw@ntfy.sh/t", "https://ntfy.sh/t?auth=abc"] {
            let e = config(PushKind::Ntfy, secret, None)
                .check("p")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("must not carry a user, password or query"),
                "{e}"
            );
        }
        let ha = config(PushKind::HomeAssistant, "http://ha.local:8123", None);
        let e = ha.check("p").unwrap_err().to_string();
        assert!(e.contains("p.service is needed"), "{e}");
        let ha = config(
            PushKind::HomeAssistant,
            "http://ha.local:8123",
            Some("notify.mobile_app_x"),
        );
        let e = ha.check("p").unwrap_err().to_string();
        assert!(e.contains("p.token is needed"), "{e}");
        assert_eq!(
            ha.channel(),
            "home_assistant:http://ha.local:8123/notify.mobile_app_x"
        );
        let e = config(PushKind::Ntfy, "ntfy.sh/x", None)
            .check("p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a URL"), "{e}");
        let e = config(PushKind::Ntfy, "ftp://ntfy.sh/x", None)
            .check("p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://"), "{e}");
    }

    #[test]
    fn a_push_carries_no_one_click_link() {
        let email = "Today: Morning meditation\n\nDid you do it?\n  Done: https://me.example/l/abc.def\n  Not done: https://me.example/l/ghi\n\n\nHow anxious?\n  0: https://me.example/l/x0\n\n-- \nSent by nof1d";
        let text = push_text(email, "https://me.example/");
        assert!(!text.contains("/l/"), "{text}");
        assert!(
            text.starts_with("Today: Morning meditation\n\nDid you do it?\n\nHow anxious?\n\n-- "),
            "{text}"
        );
        assert!(
            text.ends_with("Answer on the dashboard: tap this notification."),
            "{text}"
        );
        assert_eq!(
            push_text("Weekly summary", "https://me.example"),
            "Weekly summary"
        );
    }

    #[test]
    fn long_texts_are_cut_at_a_line_and_titles_travel_as_headers() {
        let short = "Today: meditation.\nRate tonight.";
        assert_eq!(shortened(short), short);
        let long = "line of text\n".repeat(200);
        let cut = shortened(&long);
        assert!(cut.chars().count() <= MAX_TEXT_CHARS + 60, "{}", cut.len());
        assert!(cut.ends_with("(the rest in the email and on the dashboard)"));
        assert!(cut.contains("line of text\n…"));
        assert_eq!(header_value("Sat 27 Mar – Box 1"), "Sat 27 Mar - Box 1");
        assert_eq!(header_value("Café"), "=?UTF-8?B?Q2Fmw6k=?=");
    }
}

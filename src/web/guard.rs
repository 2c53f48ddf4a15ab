//! What every request and every response passes, before and after
//! [`super::access`]: the `Host`/`Origin` allow-list and the security headers.
//!
//! - **Host**: a page on another site can make a browser send requests to
//!   the dashboard under the attacker's own name (DNS rebinding: the name
//!   resolves to 127.0.0.1 a moment later), and then read the answers and
//!   their CSRF tokens. Such a request carries the attacker's name in
//!   `Host`, so only loopback names, IP addresses (a rebinding page cannot
//!   make its origin an IP literal it does not own), the host of
//!   `email.public_url` and `web.allowed_hosts` are served.
//! - **Origin**: a form posted from another site carries that site's
//!   `Origin` (and `Sec-Fetch-Site: cross-site`); a state-changing request
//!   must come from the dashboard's own origin. Scripts that send no
//!   `Origin` are unaffected (they need a credential anyway).
//! - **Headers**: no scripts, no framing, no sniffing, no referrer (email
//!   links carry one-click tokens in their path), nothing cached.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::service::config::Config;

/// The Content-Security-Policy of every page: no script at all; styles from
/// the one stylesheet and the `style` attributes the pages use; charts are
/// inline SVG; forms post only here; never framed.
const CSP: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the guard checks against: the host names served (besides loopback
/// names and IP addresses), the public origin, the time a request may take.
#[derive(Debug, Clone)]
pub struct Guard {
    names: Arc<Vec<String>>,
    /// How long a request may take, from its headers to the end of its
    /// answer (a body that never arrives included).
    request_timeout: std::time::Duration,
    /// `scheme://host[:port]` of the public URL: a reverse proxy may pass
    /// its own `Host`, but the browser's `Origin` is this.
    public_origin: Arc<String>,
}

impl Guard {
    /// From the configuration: `web.allowed_hosts` and the host of the
    /// public URL links are sent with (`public_url`, as the daemon resolved it).
    pub fn new(config: &Config, public_url: &str) -> Guard {
        let mut names: Vec<String> = config
            .web
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if let Some(host) = url_host(public_url) {
            names.push(host);
        }
        let public_origin = public_url
            .split_once("://")
            .map(|(scheme, rest)| {
                format!(
                    "{scheme}://{}",
                    rest.split(['/', '?', '#']).next().unwrap_or(rest)
                )
            })
            .unwrap_or_default()
            .to_ascii_lowercase();
        Guard {
            names: Arc::new(names),
            request_timeout: std::time::Duration::from_secs(config.web.request_timeout_seconds),
            public_origin: Arc::new(public_origin),
        }
    }

    /// True when a request for `host` (a `Host` header: name or address,
    /// with or without a port) may be served.
    pub fn allows(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        name == "localhost"
            || name.ends_with(".localhost")
            || name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok()
            || self.names.iter().any(|n| n == name)
    }
}

/// `host[:port]` without the port (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The host of `scheme://host[:port]/...`, lower-cased, without the port.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = strip_port(authority);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// `scheme://host[:port]` of a URL (an `Origin` header is exactly that).
fn origin_authority(origin: &str) -> Option<&str> {
    let rest = origin.split_once("://")?.1;
    Some(rest.split('/').next().unwrap_or(rest))
}

fn refuse(message: String) -> Response {
    tracing::warn!(%message, "request refused by the host/origin check");
    (StatusCode::FORBIDDEN, format!("{message}\n")).into_response()
}

/// Middleware: refuses a foreign `Host`, or a state-changing request from
/// another origin; gives the request `web.request_timeout_seconds` (a
/// client that sends headers and then no body would otherwise hold a
/// connection slot for ever); adds the security headers to whatever is
/// answered.
pub async fn guard(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let host = match request.headers().get(header::HOST).map(|v| v.to_str()) {
        Some(Ok(h)) => Some(h.to_string()),
        Some(Err(_)) => return with_headers(refuse("the Host header is not text".into())),
        None => request.uri().authority().map(|a| a.to_string()),
    };
    if let Some(host) = &host
        && !guard.allows(host)
    {
        return with_headers(refuse(format!(
            "this dashboard does not answer to the host name {:?}; if you reach it under that name, add it to web.allowed_hosts",
            crate::limits::excerpt(strip_port(host))
        )));
    }
    let unsafe_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if unsafe_method
        && let Some(why) = cross_origin(request.headers(), host.as_deref(), &guard.public_origin)
    {
        return with_headers(refuse(why));
    }
    match tokio::time::timeout(guard.request_timeout, next.run(request)).await {
        Ok(response) => with_headers(response),
        Err(_) => with_headers(
            (
                StatusCode::REQUEST_TIMEOUT,
                [(header::CONNECTION, "close")],
                "the request took too long (a body that never came?)\n",
            )
                .into_response(),
        ),
    }
}

/// Why a state-changing request looks cross-site, if it does.
fn cross_origin(headers: &HeaderMap, host: Option<&str>, public_origin: &str) -> Option<String> {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Some("a form from another site cannot change anything here".into());
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null");
    let same = origin.eq_ignore_ascii_case(public_origin)
        || match (origin_authority(origin), host) {
            (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
            _ => false,
        };
    (!same).then(|| {
        format!(
            "a request from {} cannot change anything here (only this dashboard's own pages can)",
            crate::limits::excerpt(origin)
        )
    })
}

/// Adds the security headers; `Cache-Control: no-store` unless the response
/// set its own (the stylesheet is cacheable).
fn with_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(extra: &[&str], public: &str) -> Guard {
        let mut config = Config::default();
        config.web.allowed_hosts = extra.iter().map(|s| s.to_string()).collect();
        Guard::new(&config, public)
    }

    #[test]
    fn loopback_names_addresses_and_configured_names_pass_others_do_not() {
        let h = hosts(&["nof1d.home.arpa"], "https://Trials.Example.org:8443/x");
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "192.168.1.20",
            "nof1d.home.arpa:8080",
            "trials.example.org",
            "TRIALS.example.org.",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8080",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
    }

    const P: &str = "https://trials.example.org";

    #[test]
    fn only_same_origin_may_change_things() {
        let mut headers = HeaderMap::new();
        assert!(
            cross_origin(&headers, Some("127.0.0.1:8080"), P).is_none(),
            "no Origin: scripts"
        );
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(cross_origin(&headers, Some("127.0.0.1:8080"), P).is_none());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://attacker.example"),
        );
        assert!(cross_origin(&headers, Some("127.0.0.1:8080"), P).is_some());
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://trials.example.org"),
        );
        assert!(
            cross_origin(&headers, Some("127.0.0.1:8080"), P).is_none(),
            "behind a proxy that passes its own Host"
        );
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(cross_origin(&headers, Some("127.0.0.1:8080"), P).is_some());
        let mut fetch = HeaderMap::new();
        fetch.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_origin(&fetch, Some("127.0.0.1:8080"), P).is_some());
    }
}

//! Who is looking: the login, its session cookie, the login rate limit, the
//! bearer token for scripts, and the participant/investigator split.
//!
//! - No credential configured (the daemon then only listens on loopback):
//!   every page is open and shows the participant view.
//! - `web.password_hash` signs in as the participant; the optional
//!   `web.investigator_password_hash` as the investigator, who also sees
//!   the future schedule and, in blinded trials, which code is which arm.
//! - `web.token` (`Authorization: Bearer …`) is for scripts and has the
//!   investigator view.
//!
//! A session is a signed cookie (HMAC with the daemon's link key) carrying
//! the role, an expiry and a random nonce, plus a fingerprint of the role's
//! password hash, so changing a password ends its sessions. It needs no
//! table and survives restarts. The forms' CSRF token is derived from the
//! nonce. Failed logins are limited per client address and overall.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use jiff::Timestamp;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::service::app::AppState;

use super::internal;

/// How long a session lasts.
const SESSION_DAYS: i64 = 14;
/// Failed logins allowed per client address per window.
const FAILURES_PER_ADDRESS: usize = 5;
/// Failed logins allowed from all addresses together per window.
const FAILURES_OVERALL: usize = 30;
/// The rate limit's window.
const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The session cookie's name.
const COOKIE: &str = "nof1d_session";

/// What a viewer may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees today and the past only, blinded arms by code.
    Participant,
    /// Sees the whole schedule and the arms behind the codes.
    Investigator,
}

impl Role {
    fn code(self) -> &'static str {
        match self {
            Role::Participant => "p",
            Role::Investigator => "i",
        }
    }
}

/// The viewer of one request, put into the request by [`require_auth`].
#[derive(Debug, Clone)]
pub struct Viewer {
    /// Their role.
    pub role: Role,
    /// Signed in with a password (so a "sign out" button makes sense).
    pub signed_in: bool,
    /// The CSRF token their forms carry.
    pub csrf: String,
    /// Other tokens still accepted (yesterday's, for open dashboards).
    accepted: Vec<String>,
}

impl Viewer {
    /// True when `given` is this viewer's CSRF token.
    pub fn csrf_ok(&self, given: Option<&str>) -> bool {
        let Some(given) = given else { return false };
        std::iter::once(&self.csrf)
            .chain(&self.accepted)
            .any(|t| constant_time_eq(t.as_bytes(), given.as_bytes()))
    }

    /// True for the investigator view.
    pub fn is_investigator(&self) -> bool {
        self.role == Role::Investigator
    }
}

/// Failed login attempts, per client address and overall.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    per_address: HashMap<IpAddr, Vec<Instant>>,
    overall: Vec<Instant>,
}

impl LoginLimiter {
    /// `Some(wait)` when `addr` must wait before trying again.
    fn blocked(&mut self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let fresh = |v: &mut Vec<Instant>| v.retain(|t| now.duration_since(*t) < WINDOW);
        fresh(&mut self.overall);
        self.per_address.retain(|_, v| {
            fresh(v);
            !v.is_empty()
        });
        let mine = self.per_address.get(&addr).map_or(&[][..], Vec::as_slice);
        let wait = |v: &[Instant], limit: usize| {
            (v.len() >= limit).then(|| WINDOW.saturating_sub(now.duration_since(v[0])))
        };
        wait(mine, FAILURES_PER_ADDRESS).or_else(|| wait(&self.overall, FAILURES_OVERALL))
    }

    fn failed(&mut self, addr: IpAddr, now: Instant) {
        self.per_address.entry(addr).or_default().push(now);
        self.overall.push(now);
    }
}

/// The access layer's shared state.
#[derive(Clone)]
pub struct Access {
    state: AppState,
    limiter: Arc<Mutex<LoginLimiter>>,
}

impl Access {
    /// For `state`'s configured credentials.
    pub fn new(state: AppState) -> Self {
        Access {
            state,
            limiter: Arc::new(Mutex::new(LoginLimiter::default())),
        }
    }
}

/// Paths anyone may open: health checks, the login itself (and its
/// stylesheet), and email links
/// (which carry their own signed credential, see `crate::service::links`).
fn is_public(path: &str) -> bool {
    path == "/healthz" || path == "/login" || path == "/style.css" || path.starts_with("/l/")
}

/// Middleware: works out the [`Viewer`] and refuses (or sends to the login
/// page) a request that needs a credential and has none.
pub async fn require_auth(
    State(access): State<Access>,
    mut request: Request,
    next: Next,
) -> Response {
    let state = &access.state;
    let now = Timestamp::now();
    let viewer = if !state.auth.is_configured() {
        Some(open_viewer(state, now))
    } else {
        identify(state, request.headers(), now)
    };
    let path = request.uri().path().to_string();
    match viewer {
        Some(v) => {
            request.extensions_mut().insert(v);
            next.run(request).await
        }
        None if is_public(&path) => {
            request.extensions_mut().insert(open_viewer(state, now));
            next.run(request).await
        }
        None if request.method() == Method::GET
            && !path.starts_with("/api/")
            && path != "/metrics" =>
        {
            let query = request
                .uri()
                .path_and_query()
                .map_or(path.clone(), |pq| pq.as_str().to_string());
            let target = format!("/login?next={}", percent_encode(&query));
            (StatusCode::SEE_OTHER, [(header::LOCATION, target)]).into_response()
        }
        None => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"nof1d\"")],
            "authentication required: sign in at /login, or send Authorization: Bearer <web.token>\n",
        )
            .into_response(),
    }
}

/// The participant view of an open dashboard (or of a public page): the CSRF
/// token is a daily HMAC, yesterday's still accepted so that a page left open
/// over midnight works.
fn open_viewer(state: &AppState, now: Timestamp) -> Viewer {
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let yesterday = today.yesterday().unwrap_or(today);
    Viewer {
        role: Role::Participant,
        signed_in: false,
        csrf: state.link_key.tag(&format!("csrf|{today}")),
        accepted: vec![state.link_key.tag(&format!("csrf|{yesterday}"))],
    }
}

/// The viewer behind a bearer token or a session cookie, if valid.
fn identify(state: &AppState, headers: &HeaderMap, now: Timestamp) -> Option<Viewer> {
    if let (Some(token), Some(given)) = (
        &state.auth.token,
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ")),
    ) && constant_time_eq(token.expose().as_bytes(), given.trim().as_bytes())
    {
        // Scripts send no cookies, so no CSRF can ride on them.
        let csrf = state.link_key.tag("csrf|bearer");
        return Some(Viewer {
            role: Role::Investigator,
            signed_in: false,
            csrf,
            accepted: Vec::new(),
        });
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())?;
    let (role, nonce) = verify_session(state, &cookie, now)?;
    Some(Viewer {
        role,
        signed_in: true,
        csrf: state.link_key.tag(&format!("csrf|session|{nonce}")),
        accepted: Vec::new(),
    })
}

/// Fingerprint of the password hash a role signs in with: a session names
/// it, so a changed password ends the sessions opened with the old one.
fn password_fingerprint(state: &AppState, role: Role) -> Option<String> {
    let hash = match role {
        Role::Participant => state.auth.password_hash.as_ref(),
        Role::Investigator => state.auth.investigator_password_hash.as_ref(),
    }?;
    Some(hex(&Sha256::digest(hash.as_bytes())[..8]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `v1.<role>.<expires>.<nonce>.<tag>`.
fn issue_session(state: &AppState, role: Role, now: Timestamp) -> Option<String> {
    let fingerprint = password_fingerprint(state, role)?;
    let expires = now.as_second() + SESSION_DAYS * 86_400;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).ok()?;
    let nonce = hex(&nonce);
    let body = format!("v1.{}.{expires}.{nonce}", role.code());
    let tag = state.link_key.tag(&format!("session|{body}|{fingerprint}"));
    Some(format!("{body}.{tag}"))
}

fn verify_session(state: &AppState, cookie: &str, now: Timestamp) -> Option<(Role, String)> {
    let (body, tag) = cookie.rsplit_once('.')?;
    let mut parts = body.split('.');
    let (Some("v1"), Some(role), Some(expires), Some(nonce), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let role = match role {
        "p" => Role::Participant,
        "i" => Role::Investigator,
        _ => return None,
    };
    let fingerprint = password_fingerprint(state, role)?;
    let expected = state.link_key.tag(&format!("session|{body}|{fingerprint}"));
    if !constant_time_eq(expected.as_bytes(), tag.as_bytes()) {
        return None;
    }
    let expires: i64 = expires.parse().ok()?;
    (now.as_second() < expires).then(|| (role, nonce.to_string()))
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Only a local path is a place to go back to after signing in.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.into(),
        _ => "/".into(),
    }
}

#[derive(Template)]
#[template(
    ext = "html",
    source = r#"<h1>nof1d</h1>
{% if let Some(m) = message %}<p class="err" role="alert">{{ m }}</p>{% endif %}
<form method="post" action="/login" class="stacked">
<input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="next" value="{{ next }}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required autofocus>
<button type="submit" class="primary">Sign in</button>
</form>
<p>The participant's password shows today and the past; the investigator's also shows the schedule to come.</p>"#
)]
struct LoginPage<'a> {
    message: Option<&'a str>,
    csrf: String,
    next: String,
}

fn login_page(code: StatusCode, message: Option<&str>, csrf: String, next: String) -> Response {
    let page = LoginPage {
        message,
        csrf,
        next,
    };
    match super::render_page("Sign in — nof1d", "narrow", "", &page) {
        Ok(html) => (code, Html(html)).into_response(),
        Err(e) => internal(&e.to_string()),
    }
}

/// `?next=` of the login page.
#[derive(Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

/// GET `/login`.
pub async fn login_form(
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Query(q): axum::extract::Query<NextQuery>,
) -> Response {
    login_page(
        StatusCode::OK,
        None,
        viewer.csrf,
        safe_next(q.next.as_deref()),
    )
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    csrf: Option<String>,
    password: String,
    next: Option<String>,
}

/// POST `/login`: checks the password against the investigator's, then the
/// participant's hash; sets the session cookie and goes back where the
/// visitor was. Refuses while the address (or everyone) has failed too often.
pub async fn login_submit(
    State(access): State<Access>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    axum::extract::Form(form): axum::extract::Form<LoginForm>,
) -> Response {
    let state = &access.state;
    let next = safe_next(form.next.as_deref());
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("The form had expired; please try again."),
            viewer.csrf,
            next,
        );
    }
    let addr = connect.map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.0.ip());
    let blocked = access
        .limiter
        .lock()
        .map(|mut l| l.blocked(addr, Instant::now()))
        .unwrap_or(None);
    if let Some(wait) = blocked {
        let secs = wait.as_secs().max(1);
        let mut r = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many wrong passwords; try again in {} minutes.",
                secs.div_ceil(60)
            )),
            viewer.csrf,
            next,
        );
        if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    let candidates: Vec<(Role, String)> = [
        (
            Role::Investigator,
            state.auth.investigator_password_hash.clone(),
        ),
        (Role::Participant, state.auth.password_hash.clone()),
    ]
    .into_iter()
    .filter_map(|(r, h)| h.map(|h| (r, h)))
    .collect();
    let password = form.password;
    let role = tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        candidates.into_iter().find_map(|(role, hash)| {
            let parsed = argon2::PasswordHash::new(&hash).ok()?;
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
                .then_some(role)
        })
    })
    .await
    .unwrap_or(None);
    let Some(role) = role else {
        if let Ok(mut l) = access.limiter.lock() {
            l.failed(addr, Instant::now());
        }
        tracing::warn!(%addr, "failed dashboard login");
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("Wrong password."),
            viewer.csrf,
            next,
        );
    };
    let Some(session) = issue_session(state, role, Timestamp::now()) else {
        return internal("cannot draw a session nonce from the operating system");
    };
    let secure = if state.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_DAYS * 86_400
    );
    tracing::info!(%addr, role = ?role, "dashboard login");
    (
        StatusCode::SEE_OTHER,
        [(header::SET_COOKIE, cookie), (header::LOCATION, next)],
    )
        .into_response()
}

/// A form with only a CSRF token.
#[derive(Deserialize)]
pub struct CsrfForm {
    /// The token.
    pub csrf: Option<String>,
}

/// POST `/logout`: clears the session cookie.
pub async fn logout(
    axum::Extension(viewer): axum::Extension<Viewer>,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return super::csrf_refused();
    }
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
            (header::LOCATION, "/login".to_string()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_blocks_an_address_after_five_failures_and_forgets_after_the_window() {
        let mut l = LoginLimiter::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let t0 = Instant::now();
        for i in 0..FAILURES_PER_ADDRESS {
            assert!(l.blocked(a, t0).is_none(), "attempt {i}");
            l.failed(a, t0);
        }
        assert!(l.blocked(a, t0).is_some());
        assert!(l.blocked(b, t0).is_none(), "another address is not blocked");
        assert!(l.blocked(a, t0 + WINDOW + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/trials/1")), "/trials/1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(percent_encode("/trials/1?x=a b"), "/trials/1%3Fx%3Da%20b");
    }
}

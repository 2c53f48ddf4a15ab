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
//! password hash, so changing a password ends its sessions. It is also a
//! row in the store (`sessions`, keyed by the nonce's SHA-256), so signing
//! out ends it on the server and a copied cookie stops working. The forms'
//! CSRF token is derived from the nonce.
//!
//! Wrong passwords are limited per client address and overall. An attempt
//! takes its place in the limit *before* the password is checked (and gives
//! it back on success), so parallel guesses cannot slip past the count;
//! failures are also written to the store, so a restart does not clear a
//! lock-out. At most [`VERIFYING_AT_ONCE`] argon2 checks run at once, which
//! bounds their memory. Wrong bearer tokens are limited the same way but on
//! their own count, and the right token always passes: it has at least 128
//! bits, so junk tokens cannot lock out scripts or logins.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
/// Password checks (argon2, ~19 MiB each) that may run at once.
const VERIFYING_AT_ONCE: usize = 2;

/// What a viewer may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
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

    fn name(self) -> &'static str {
        match self {
            Role::Participant => "participant",
            Role::Investigator => "investigator",
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
    /// False only for a caller with no credential on a public path while
    /// sign-in is configured: `/healthz` then shows counts and flags but no
    /// error texts or job summaries, which can name servers, sources and
    /// what is being tried.
    pub credentialed: bool,
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

/// Failed (and in-flight) attempts, per client address and overall, by
/// the wall clock (so that failures read back from the store count too).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    per_address: HashMap<IpAddr, Vec<Timestamp>>,
    overall: Vec<Timestamp>,
}

/// A place taken in the limit by an attempt being checked.
#[derive(Debug, Clone, Copy)]
struct Ticket {
    addr: IpAddr,
    at: Timestamp,
}

impl LoginLimiter {
    fn forget_old(&mut self, now: Timestamp) {
        let window = jiff::SignedDuration::try_from(WINDOW).unwrap_or_default();
        let fresh = |v: &mut Vec<Timestamp>| v.retain(|t| now.duration_since(*t) < window);
        fresh(&mut self.overall);
        self.per_address.retain(|_, v| {
            fresh(v);
            !v.is_empty()
        });
    }

    /// `Some(wait)` when `addr` must wait before trying again.
    fn blocked(&mut self, addr: IpAddr, now: Timestamp) -> Option<Duration> {
        self.forget_old(now);
        let mine = self.per_address.get(&addr).map_or(&[][..], Vec::as_slice);
        let wait = |v: &[Timestamp], limit: usize| {
            (v.len() >= limit).then(|| {
                let since = now.duration_since(v[v.len() - limit]);
                WINDOW.saturating_sub(Duration::try_from(since).unwrap_or_default())
            })
        };
        wait(mine, FAILURES_PER_ADDRESS).or_else(|| wait(&self.overall, FAILURES_OVERALL))
    }

    /// Takes a place for an attempt from `addr`, counted as a failure until
    /// [`LoginLimiter::release`]d; `Err(wait)` when the limit is reached.
    fn reserve(&mut self, addr: IpAddr, now: Timestamp) -> Result<Ticket, Duration> {
        if let Some(wait) = self.blocked(addr, now) {
            return Err(wait);
        }
        self.failed(addr, now);
        Ok(Ticket { addr, at: now })
    }

    /// Gives back the place of an attempt that succeeded.
    fn release(&mut self, ticket: Ticket) {
        let remove = |v: &mut Vec<Timestamp>| {
            if let Some(i) = v.iter().position(|t| *t == ticket.at) {
                v.remove(i);
            }
        };
        remove(&mut self.overall);
        if let Some(v) = self.per_address.get_mut(&ticket.addr) {
            remove(v);
        }
    }

    fn failed(&mut self, addr: IpAddr, at: Timestamp) {
        self.per_address.entry(addr).or_default().push(at);
        self.overall.push(at);
    }
}

/// The access layer's shared state.
#[derive(Clone)]
pub struct Access {
    state: AppState,
    /// Wrong passwords.
    passwords: Arc<Mutex<LoginLimiter>>,
    /// Wrong bearer tokens.
    tokens: Arc<Mutex<LoginLimiter>>,
    /// Set once the store's recent failures are in the limiter.
    loaded: Arc<tokio::sync::OnceCell<()>>,
    verifying: Arc<tokio::sync::Semaphore>,
}

impl Access {
    /// For `state`'s configured credentials.
    pub fn new(state: AppState) -> Self {
        Access {
            state,
            passwords: Arc::new(Mutex::new(LoginLimiter::default())),
            tokens: Arc::new(Mutex::new(LoginLimiter::default())),
            loaded: Arc::new(tokio::sync::OnceCell::new()),
            verifying: Arc::new(tokio::sync::Semaphore::new(VERIFYING_AT_ONCE)),
        }
    }

    fn limiter(&self, kind: Kind) -> &Mutex<LoginLimiter> {
        match kind {
            Kind::Password => &self.passwords,
            Kind::Token => &self.tokens,
        }
    }

    /// Takes a place in `kind`'s limit for an attempt from `addr` (after
    /// reading the store's failures of the window, the first time).
    async fn reserve(&self, kind: Kind, addr: IpAddr) -> Result<Ticket, Duration> {
        self.loaded
            .get_or_init(|| async {
                let since =
                    Timestamp::now() - jiff::SignedDuration::try_from(WINDOW).unwrap_or_default();
                match self
                    .state
                    .db
                    .read(move |s| s.access_failures_since(since))
                    .await
                {
                    Ok(rows) => {
                        for (kind, address, at) in rows {
                            let kind = if kind == Kind::Token.code() {
                                Kind::Token
                            } else {
                                Kind::Password
                            };
                            if let Ok(ip) = address.parse::<IpAddr>() {
                                self.limiter(kind)
                                    .lock()
                                    .unwrap_or_else(|p| p.into_inner())
                                    .failed(ip, at);
                            }
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "cannot read earlier failed logins"),
                }
            })
            .await;
        self.limiter(kind)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reserve(addr, Timestamp::now())
    }

    fn release(&self, kind: Kind, ticket: Ticket) {
        self.limiter(kind)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(ticket);
    }

    /// Keeps the failure (its place stays taken) and writes it to the store.
    async fn record_failure(&self, ticket: Ticket, kind: Kind) {
        let kind = kind.code();
        let address = ticket.addr.to_string();
        let forget = ticket.at - jiff::SignedDuration::try_from(WINDOW).unwrap_or_default();
        let at = ticket.at;
        if let Err(e) = self
            .state
            .db
            .write(move |s| s.record_access_failure(kind, &address, at, forget))
            .await
        {
            tracing::error!(error = %e, "cannot store a failed login");
        }
    }
}

/// What an attempt was: each has its own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Password,
    Token,
}

impl Kind {
    /// As stored in `access_failures.kind`.
    fn code(self) -> &'static str {
        match self {
            Kind::Password => "password",
            Kind::Token => "token",
        }
    }
}

/// A 429 answer with `Retry-After`.
fn too_many(wait: Duration, body: Response) -> Response {
    let mut r = body;
    *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    if let Ok(v) = header::HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// Paths anyone may open: health checks, the login itself (and its
/// stylesheet), and email links
/// (which carry their own signed credential, see `crate::service::links`).
fn is_public(path: &str) -> bool {
    // The OAuth callback is proved by its one-time state, and a vendor's
    // redirect back does not carry the SameSite=Strict session cookie.
    path == "/healthz"
        || path == "/login"
        || path == "/style.css"
        || path.starts_with("/l/")
        || path == super::oauth::CALLBACK_PATH
}

/// What a request's credentials came to.
enum Identity {
    /// A valid bearer token or live session.
    Known(Viewer),
    /// No credential, or an expired or ended session.
    Anonymous,
    /// A wrong bearer token (counted against the address).
    WrongToken,
    /// The address has failed too often.
    Blocked(Duration),
}

/// Middleware: works out the [`Viewer`] and refuses (or sends to the login
/// page) a request that needs a credential and has none.
pub async fn require_auth(
    State(access): State<Access>,
    connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    mut request: Request,
    next: Next,
) -> Response {
    let state = &access.state;
    let now = Timestamp::now();
    let addr = client_address(connect);
    if request.uri().path() == super::push::PUSH_PATH {
        return push_gate(&access, request, next, addr).await;
    }
    let identity = if !state.auth.is_configured() {
        Identity::Known(open_viewer(state, now, true))
    } else {
        identify(&access, request.headers(), addr, now).await
    };
    let path = request.uri().path().to_string();
    let viewer = match identity {
        Identity::Known(v) => v,
        Identity::Blocked(wait) => {
            return too_many(
                wait,
                format!(
                    "too many wrong credentials from {addr}; try again in {} minutes\n",
                    wait.as_secs().max(1).div_ceil(60)
                )
                .into_response(),
            );
        }
        Identity::WrongToken => {
            return (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"nof1d\", error=\"invalid_token\"",
                )],
                "wrong bearer token\n",
            )
                .into_response();
        }
        Identity::Anonymous if is_public(&path) => open_viewer(state, now, false),
        Identity::Anonymous
            if request.method() == Method::GET
                && !path.starts_with("/api/")
                && path != "/metrics" =>
        {
            let query = request
                .uri()
                .path_and_query()
                .map_or(path.clone(), |pq| pq.as_str().to_string());
            let target = format!("/login?next={}", percent_encode(&query));
            return (StatusCode::SEE_OTHER, [(header::LOCATION, target)]).into_response();
        }
        Identity::Anonymous => {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"nof1d\"")],
                "authentication required: sign in at /login, or send Authorization: Bearer <web.token>\n",
            )
                .into_response();
        }
    };
    request.extensions_mut().insert(viewer);
    next.run(request).await
}

/// The push endpoint's own credential: a source's push token (not the
/// dashboard's), checked against the stored SHA-256 of each source's token;
/// wrong ones count against the address like wrong bearer tokens.
async fn push_gate(access: &Access, mut request: Request, next: Next, addr: IpAddr) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| crate::service::sources::ingest::token_sha256(t.trim()));
    let Some(sha) = given else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"nof1d push\"")],
            "send the source's push token: Authorization: Bearer <token> (nof1d source push-token)\n",
        )
            .into_response();
    };
    let found = access
        .state
        .db
        .read(move |s| s.source_by_push_token(&sha))
        .await;
    match found {
        Ok(Some(source)) => {
            request
                .extensions_mut()
                .insert(super::push::PushSource(source));
            next.run(request).await
        }
        Ok(None) => {
            let ticket = match access.reserve(Kind::Token, addr).await {
                Ok(t) => t,
                Err(wait) => {
                    return too_many(wait, "too many wrong push tokens\n".into_response());
                }
            };
            access.record_failure(ticket, Kind::Token).await;
            tracing::warn!(%addr, "wrong push token");
            (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"nof1d push\", error=\"invalid_token\"",
                )],
                "wrong push token\n",
            )
                .into_response()
        }
        Err(e) => internal(&e.to_string()),
    }
}

/// The client's address (loopback where the server gave none, as in tests
/// that call the router directly).
fn client_address(connect: Option<axum::Extension<ConnectInfo<SocketAddr>>>) -> IpAddr {
    connect.map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.0.ip())
}

/// The participant view of an open dashboard (or of a public page): the CSRF
/// token is a daily HMAC, yesterday's still accepted so that a page left open
/// over midnight works.
fn open_viewer(state: &AppState, now: Timestamp, credentialed: bool) -> Viewer {
    let today = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let yesterday = today.yesterday().unwrap_or(today);
    Viewer {
        role: Role::Participant,
        signed_in: false,
        csrf: state.link_key.tag(&format!("csrf|{today}")),
        accepted: vec![state.link_key.tag(&format!("csrf|{yesterday}"))],
        credentialed,
    }
}

/// The viewer behind a bearer token or a session cookie. The right token
/// always passes; a wrong one counts against its address, and once over the
/// limit wrong ones are answered 429.
async fn identify(access: &Access, headers: &HeaderMap, addr: IpAddr, now: Timestamp) -> Identity {
    let state = &access.state;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = bearer {
        let right = state
            .auth
            .token
            .as_ref()
            .is_some_and(|t| constant_time_eq(t.expose().as_bytes(), given.trim().as_bytes()));
        if !right {
            let ticket = match access.reserve(Kind::Token, addr).await {
                Ok(t) => t,
                Err(wait) => return Identity::Blocked(wait),
            };
            access.record_failure(ticket, Kind::Token).await;
            tracing::warn!(%addr, "wrong bearer token");
            return Identity::WrongToken;
        }
        // Scripts send no cookies, so no CSRF can ride on them.
        let csrf = state.link_key.tag("csrf|bearer");
        return Identity::Known(Viewer {
            role: Role::Investigator,
            signed_in: false,
            csrf,
            accepted: Vec::new(),
            credentialed: true,
        });
    }
    let Some(cookie) = session_cookie(headers) else {
        return Identity::Anonymous;
    };
    let Some(session) = verify_session(state, &cookie, now) else {
        return Identity::Anonymous;
    };
    let (id, fingerprint) = (session.id.clone(), session.fingerprint.clone());
    let live = state
        .db
        .read(move |s| s.session_live(&id, &fingerprint, now))
        .await;
    match live {
        Ok(true) => Identity::Known(Viewer {
            role: session.role,
            signed_in: true,
            csrf: state
                .link_key
                .tag(&format!("csrf|session|{}", session.nonce)),
            accepted: Vec::new(),
            credentialed: true,
        }),
        Ok(false) => Identity::Anonymous,
        Err(e) => {
            tracing::error!(error = %e, "cannot read sessions");
            Identity::Anonymous
        }
    }
}

/// The session cookie's value, if sent.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
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

/// A session cookie whose signature checked out.
struct SessionClaim {
    role: Role,
    nonce: String,
    /// The store's key for it: SHA-256 of the nonce.
    id: String,
    fingerprint: String,
}

/// The store's key of a session: SHA-256 of its nonce (so the table alone
/// cannot be turned back into cookies).
fn session_id(nonce: &str) -> String {
    hex(&Sha256::digest(nonce.as_bytes()))
}

/// `v1.<role>.<expires>.<nonce>.<tag>`, recorded in the store.
async fn issue_session(state: &AppState, role: Role, now: Timestamp) -> Result<String, String> {
    let fingerprint =
        password_fingerprint(state, role).ok_or("this role has no password configured")?;
    let expires = now.as_second() + SESSION_DAYS * 86_400;
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)
        .map_err(|e| format!("cannot draw a session nonce from the operating system: {e}"))?;
    let nonce = hex(&nonce);
    let body = format!("v1.{}.{expires}.{nonce}", role.code());
    let tag = state.link_key.tag(&format!("session|{body}|{fingerprint}"));
    let id = session_id(&nonce);
    let until = Timestamp::from_second(expires).map_err(|e| e.to_string())?;
    state
        .db
        .write(move |s| s.create_session(&id, role.name(), &fingerprint, until, now))
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!("{body}.{tag}"))
}

/// Checks a cookie's form, signature, password fingerprint and expiry (the
/// store is asked separately whether it is still live).
fn verify_session(state: &AppState, cookie: &str, now: Timestamp) -> Option<SessionClaim> {
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
    (now.as_second() < expires).then(|| SessionClaim {
        role,
        nonce: nonce.to_string(),
        id: session_id(nonce),
        fingerprint,
    })
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
        // Browsers drop tabs and newlines from URLs, so `/\t/host` would
        // become `//host`: only visible ASCII without a backslash passes.
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.into()
        }
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
#[derive(Deserialize, utoipa::ToSchema)]
pub struct LoginForm {
    csrf: Option<String>,
    password: String,
    next: Option<String>,
}

/// POST `/login`: checks the password against the investigator's, then the
/// participant's hash; sets the session cookie and goes back where the
/// visitor was. Refuses while the address (or everyone) has failed too
/// often; the attempt holds its place in the limit while it is checked.
#[utoipa::path(post, path = "/login", tag = "access",
    summary = "Sign in; sets the nof1d_session cookie (HttpOnly, SameSite=Strict). 5 failures per address per 15 minutes, then 429",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303), (status = 401), (status = 403), (status = 429)))]
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
    let addr = client_address(connect);
    let ticket = match access.reserve(Kind::Password, addr).await {
        Ok(t) => t,
        Err(wait) => {
            let page = login_page(
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "Too many wrong passwords; try again in {} minutes.",
                    wait.as_secs().max(1).div_ceil(60)
                )),
                viewer.csrf,
                next,
            );
            return too_many(wait, page);
        }
    };
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
    // The permit moves into the blocking task: a client that hangs up
    // cannot free it while argon2 still runs.
    let Ok(permit) = access.verifying.clone().acquire_owned().await else {
        return internal("the password check is closed (shutting down)");
    };
    let role = tokio::task::spawn_blocking(move || {
        use argon2::PasswordVerifier;
        let _permit = permit;
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
        access.record_failure(ticket, Kind::Password).await;
        tracing::warn!(%addr, "failed dashboard login");
        return login_page(
            StatusCode::UNAUTHORIZED,
            Some("Wrong password."),
            viewer.csrf,
            next,
        );
    };
    access.release(Kind::Password, ticket);
    let session = match issue_session(state, role, Timestamp::now()).await {
        Ok(s) => s,
        Err(e) => return internal(&e),
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
#[derive(Deserialize, utoipa::ToSchema)]
pub struct CsrfForm {
    /// The token.
    pub csrf: Option<String>,
}

/// POST `/logout`: ends the session in the store and clears the cookie.
#[utoipa::path(post, path = "/logout", tag = "access",
    summary = "Sign out",
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303), (status = 403)))]
pub async fn logout(
    State(access): State<Access>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    headers: HeaderMap,
    axum::extract::Form(form): axum::extract::Form<CsrfForm>,
) -> Response {
    if !viewer.csrf_ok(form.csrf.as_deref()) {
        return super::csrf_refused();
    }
    let now = Timestamp::now();
    if let Some(claim) =
        session_cookie(&headers).and_then(|c| verify_session(&access.state, &c, now))
    {
        let id = claim.id;
        if let Err(e) = access
            .state
            .db
            .write(move |s| s.end_session(&id, now))
            .await
        {
            return internal(&format!("cannot end the session: {e}"));
        }
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
        let t0 = Timestamp::now();
        for i in 0..FAILURES_PER_ADDRESS {
            assert!(l.blocked(a, t0).is_none(), "attempt {i}");
            l.failed(a, t0);
        }
        assert!(l.blocked(a, t0).is_some());
        assert!(l.blocked(b, t0).is_none(), "another address is not blocked");
        let later = t0 + jiff::SignedDuration::try_from(WINDOW + Duration::from_secs(1)).unwrap();
        assert!(l.blocked(a, later).is_none());
    }

    #[test]
    fn a_reserved_attempt_counts_until_released() {
        let mut l = LoginLimiter::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        let t0 = Timestamp::now();
        // Five attempts in flight at once fill the address's limit ...
        let tickets: Vec<_> = (0..FAILURES_PER_ADDRESS)
            .map(|_| l.reserve(a, t0).unwrap())
            .collect();
        assert!(l.reserve(a, t0).is_err(), "a sixth parallel attempt waits");
        // ... and one that succeeded gives its place back.
        l.release(tickets[0]);
        assert!(l.reserve(a, t0).is_ok());
    }

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/trials/1")), "/trials/1");
        assert_eq!(safe_next(Some("//evil.example/")), "/");
        assert_eq!(safe_next(Some("https://evil.example/")), "/");
        assert_eq!(safe_next(None), "/");
        assert_eq!(safe_next(Some("/\t/evil.example")), "/");
        assert_eq!(safe_next(Some("/\n/evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(percent_encode("/trials/1?x=a b"), "/trials/1%3Fx%3Da%20b");
    }
}

//! OAuth2 authorization code with PKCE and `state` (RFC 6749 §4.1, RFC 7636)
//! for sources behind a vendor's login (Oura, Strava, Withings): the URL a
//! Connect button sends the person to, the code exchange when they come
//! back, and refreshes before the access token expires. The `oauth2` crate
//! builds and reads the requests; they travel through the daemon's own
//! reqwest client, which also translates a vendor's own token dialect
//! ([`TokenDialect`]) into the standard one.
//!
//! Tokens never reach a log: the error texts carry the server's `error` and
//! `error_description` only.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, Scope, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

/// A vendor's OAuth2 application as this installation registered it.
#[derive(Clone)]
pub struct OAuthApp {
    /// The client id.
    pub client_id: String,
    /// The client secret.
    pub client_secret: String,
    /// Where the person signs in and agrees.
    pub authorize_url: String,
    /// Where codes and refresh tokens become access tokens.
    pub token_url: String,
    /// The scopes asked for.
    pub scopes: Vec<String>,
    /// Send the client id and secret in the token request's body (Strava)
    /// rather than as HTTP Basic (RFC 6749 §2.3.1's default).
    pub credentials_in_body: bool,
    /// Send a PKCE challenge and verifier (RFC 7636); off for a vendor that
    /// does not document them (Withings).
    pub pkce: bool,
    /// How the vendor's token endpoint speaks.
    pub dialect: TokenDialect,
    /// Seconds a token request may take.
    pub timeout: Duration,
}

/// How a vendor's token endpoint departs from RFC 6749.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDialect {
    /// As the RFC says.
    Standard,
    /// Withings: every request also carries `action=requesttoken`, and
    /// every answer is HTTP 200 with `{"status": 0, "body": {token…}}`, or
    /// another status and an `error` text.
    Withings,
}

impl std::fmt::Debug for OAuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthApp")
            .field("client_id", &self.client_id)
            .field("client_secret", &"…")
            .field("authorize_url", &self.authorize_url)
            .field("token_url", &self.token_url)
            .finish()
    }
}

/// What a vendor granted. Its `Debug` hides the tokens.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Grant {
    /// The bearer token for the API.
    pub access_token: String,
    /// The token that gets the next access token (single-use at Oura).
    pub refresh_token: Option<String>,
    /// When the access token expires, where the server said.
    pub expires_at: Option<Timestamp>,
    /// The scopes granted (may be fewer than asked).
    pub scope: String,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("access_token", &"…")
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "…"))
            .field("expires_at", &self.expires_at)
            .field("scope", &self.scope)
            .finish()
    }
}

impl Grant {
    /// Whether the access token should be refreshed before use at `now`:
    /// within 5 minutes of its expiry (or a tenth of a short lifetime).
    pub fn expiring(&self, now: Timestamp, issued_for: Option<SignedDuration>) -> bool {
        let Some(at) = self.expires_at else {
            return false;
        };
        let margin = issued_for.map_or(SignedDuration::from_mins(5), |d| {
            (d / 10).min(SignedDuration::from_mins(5))
        });
        now + margin >= at
    }
}

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OAuthError {
    /// The vendor refused the grant (revoked, expired, already used): the
    /// person must connect again.
    #[error("the authorisation was refused ({0}): connect the source again on the sources page")]
    Refused(String),
    /// Anything else (network, a 5xx, a malformed answer): try again later.
    #[error("token request failed: {0}")]
    Failed(String),
    /// The application's settings are unusable.
    #[error("OAuth settings: {0}")]
    Config(String),
}

type Client = BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

fn client(app: &OAuthApp, redirect: &str) -> Result<Client, OAuthError> {
    let bad = |what: &str, e: oauth2::url::ParseError| OAuthError::Config(format!("{what}: {e}"));
    let auth = if app.credentials_in_body {
        oauth2::AuthType::RequestBody
    } else {
        oauth2::AuthType::BasicAuth
    };
    Ok(BasicClient::new(ClientId::new(app.client_id.clone()))
        .set_auth_type(auth)
        .set_client_secret(ClientSecret::new(app.client_secret.clone()))
        .set_auth_uri(AuthUrl::new(app.authorize_url.clone()).map_err(|e| bad("authorize_url", e))?)
        .set_token_uri(TokenUrl::new(app.token_url.clone()).map_err(|e| bad("token_url", e))?)
        .set_redirect_uri(
            RedirectUrl::new(redirect.to_string()).map_err(|e| bad("redirect url", e))?,
        ))
}

/// A Connect begun: where to send the person, and what to keep until they
/// come back (the state to match, the PKCE verifier for the exchange).
#[derive(Clone)]
pub struct Begun {
    /// The vendor's authorize URL with client id, scopes, state and challenge.
    pub url: String,
    /// The random state (256 bits).
    pub state: String,
    /// The PKCE code verifier.
    pub verifier: String,
}

/// Starts an authorization: a fresh random state and PKCE pair (S256).
pub fn begin(app: &OAuthApp, redirect: &str) -> Result<Begun, OAuthError> {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let client = client(app, redirect)?;
    let mut request = client.authorize_url(|| CsrfToken::new_random_len(32));
    if app.pkce {
        request = request.set_pkce_challenge(challenge);
    }
    for s in &app.scopes {
        request = request.add_scope(Scope::new(s.clone()));
    }
    let (url, state) = request.url();
    Ok(Begun {
        url: url.to_string(),
        state: state.secret().clone(),
        verifier: if app.pkce {
            verifier.secret().clone()
        } else {
            String::new()
        },
    })
}

/// Exchanges the code the person came back with for a grant.
pub fn exchange(
    app: &OAuthApp,
    redirect: &str,
    code: &str,
    verifier: &str,
    now: Timestamp,
) -> Result<Grant, OAuthError> {
    let http = Http::new(app.timeout, app.dialect)?;
    let client = client(app, redirect)?;
    let mut request = client.exchange_code(AuthorizationCode::new(code.to_string()));
    if app.pkce {
        request = request.set_pkce_verifier(PkceCodeVerifier::new(verifier.to_string()));
    }
    if app.dialect == TokenDialect::Withings {
        request = request.add_extra_param("action", "requesttoken");
    }
    let token = request.request(&http).map_err(token_error)?;
    Ok(grant_of(&token, None, now))
}

/// Refreshes a grant; the new grant keeps the old refresh token when the
/// vendor does not send a new one.
pub fn refresh(app: &OAuthApp, grant: &Grant, now: Timestamp) -> Result<Grant, OAuthError> {
    let Some(refresh_token) = &grant.refresh_token else {
        return Err(OAuthError::Refused(
            "the access token expired and no refresh token was granted".into(),
        ));
    };
    let http = Http::new(app.timeout, app.dialect)?;
    // The redirect URL plays no part in a refresh.
    let client = client(app, "http://localhost/")?;
    let refresh_token = RefreshToken::new(refresh_token.clone());
    let mut request = client.exchange_refresh_token(&refresh_token);
    if app.dialect == TokenDialect::Withings {
        request = request.add_extra_param("action", "requesttoken");
    }
    let token = request.request(&http).map_err(token_error)?;
    Ok(grant_of(&token, grant.refresh_token.as_deref(), now))
}

fn grant_of(
    token: &oauth2::basic::BasicTokenResponse,
    old_refresh: Option<&str>,
    now: Timestamp,
) -> Grant {
    Grant {
        access_token: token.access_token().secret().clone(),
        refresh_token: token
            .refresh_token()
            .map(|t| t.secret().clone())
            .or_else(|| old_refresh.map(str::to_string)),
        expires_at: token
            .expires_in()
            .and_then(|d| SignedDuration::try_from(d).ok())
            .and_then(|d| now.checked_add(d).ok()),
        scope: token
            .scopes()
            .map(|s| s.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default(),
    }
}

fn token_error(
    e: oauth2::RequestTokenError<HttpError, oauth2::basic::BasicErrorResponse>,
) -> OAuthError {
    use oauth2::RequestTokenError as E;
    match e {
        E::ServerResponse(r) => {
            let code = r.error().as_ref().to_string();
            let text = match r.error_description() {
                Some(d) => format!("{code}: {d}"),
                None => code.clone(),
            };
            // RFC 6749 §5.2: a bad grant needs the person to connect
            // again; a refused client needs the config mended (connecting
            // again would not help); anything else may pass.
            match code.as_str() {
                "invalid_grant" | "invalid_request" => OAuthError::Refused(text),
                "invalid_client" | "unauthorized_client" => OAuthError::Config(format!(
                    "the vendor refused nof1d's application ({text}): check client_id and client_secret in the config"
                )),
                _ => OAuthError::Failed(text),
            }
        }
        E::Request(e) => OAuthError::Failed(e.to_string()),
        // Strava answers a bad grant with its own error shape,
        // {"message": "Bad Request", "errors": [{"resource": "RefreshToken",
        // "field": "refresh_token", "code": "invalid"}]}.
        E::Parse(e, body) => {
            let text = String::from_utf8_lossy(&body);
            if text.contains("\"code\":\"invalid\"") || text.contains("\"code\": \"invalid\"") {
                OAuthError::Refused(crate::limits::excerpt(&text))
            } else {
                OAuthError::Failed(format!("the token answer is not readable: {e}"))
            }
        }
        E::Other(e) => OAuthError::Failed(e),
    }
}

/// The oauth2 crate's requests, sent by our reqwest (blocking), their
/// answers translated from the vendor's dialect.
struct Http(reqwest::blocking::Client, TokenDialect);

/// A transport error, without the request (which may hold a secret).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpError(String);

impl Http {
    fn new(timeout: Duration, dialect: TokenDialect) -> Result<Http, OAuthError> {
        crate::service::http::client_builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("nof1d/", env!("CARGO_PKG_VERSION")))
            .build()
            .map(|c| Http(c, dialect))
            .map_err(|e| OAuthError::Config(e.to_string()))
    }
}

impl oauth2::SyncHttpClient for Http {
    type Error = HttpError;

    fn call(&self, request: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .map_err(|e| HttpError(crate::service::http::error_chain(&e)))?;
        let mut builder = oauth2::http::Response::builder();
        for (k, v) in response.headers() {
            builder = builder.header(k, v);
        }
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .map_err(|e| HttpError(format!("reading the answer: {e}")))?;
        let (status, body) = match self.1 {
            TokenDialect::Standard => (status, bytes.to_vec()),
            TokenDialect::Withings if status == 200 => withings_answer(&bytes),
            TokenDialect::Withings => (status, bytes.to_vec()),
        };
        builder
            .status(status)
            .body(body)
            .map_err(|e| HttpError(e.to_string()))
    }
}

/// A Withings token answer as RFC 6749 §5.1/§5.2 would give it: the
/// `body` of `{"status": 0, "body": {…}}` as a 200, any other status as a
/// 400 whose `error` code says what to do (a bad code or refresh token:
/// `invalid_grant`, connect again; a refused application or redirect:
/// `invalid_client`, mend the config; too many requests or anything else:
/// try again later).
fn withings_answer(bytes: &[u8]) -> (u16, Vec<u8>) {
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return (200, bytes.to_vec());
    };
    let status = answer.get("status").and_then(serde_json::Value::as_i64);
    if status == Some(0) {
        let body = answer.get("body").cloned().unwrap_or_default();
        return (200, body.to_string().into_bytes());
    }
    let text = answer
        .get("error")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("no reason given")
        .to_string();
    let lower = text.to_ascii_lowercase();
    let code =
        if lower.contains("client") || lower.contains("redirect") || lower.contains("signature") {
            "invalid_client"
        } else if status == Some(601) {
            "temporarily_unavailable"
        } else if lower.contains("code")
            || lower.contains("token")
            || matches!(status, Some(100..=102 | 200 | 401))
        {
            "invalid_grant"
        } else {
            "server_error"
        };
    let described = format!(
        "Withings status {}: {text}",
        status.map_or("?".to_string(), |s| s.to_string())
    );
    let error = serde_json::json!({"error": code, "error_description": described});
    (400, error.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn withings_token_answers_become_standard_ones() {
        let ok = br#"{"status":0,"body":{"userid":"363","access_token":"a1","refresh_token":"r1","expires_in":10800,"scope":"user.metrics,user.activity","token_type":"Bearer"}}"#;
        let (status, body) = withings_answer(ok);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (v["access_token"].as_str(), v["expires_in"].as_i64()),
            (Some("a1"), Some(10800))
        );
        let error = |raw: &[u8]| -> String {
            let (status, body) = withings_answer(raw);
            assert_eq!(status, 400);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            v["error"].as_str().unwrap().to_string()
        };
        assert_eq!(
            error(br#"{"status":503,"body":{},"error":"Invalid Params: invalid refresh_token"}"#),
            "invalid_grant"
        );
        assert_eq!(
            error(br#"{"status":503,"error":"Invalid Params: invalid code"}"#),
            "invalid_grant"
        );
        assert_eq!(
            error(br#"{"status":503,"error":"Invalid Params: invalid client_id"}"#),
            "invalid_client"
        );
        assert_eq!(
            error(br#"{"status":601,"error":"Too Many Requests"}"#),
            "temporarily_unavailable"
        );
        assert_eq!(
            error(br#"{"status":2555,"error":"An unknown error occurred"}"#),
            "server_error"
        );
    }

    #[test]
    fn an_authorize_url_carries_state_challenge_and_scopes() {
        let app = OAuthApp {
            client_id: "abc".into(),
            client_secret: "s3cret".into(),
            authorize_url: "https://cloud.ouraring.com/oauth/authorize".into(),
            token_url: "https://api.ouraring.com/oauth/token".into(),
            scopes: vec!["daily".into(), "heartrate".into()],
            credentials_in_body: false,
            pkce: true,
            dialect: TokenDialect::Standard,
            timeout: Duration::from_secs(5),
        };
        let a = begin(&app, "http://127.0.0.1:8080/oauth/callback").unwrap();
        let b = begin(&app, "http://127.0.0.1:8080/oauth/callback").unwrap();
        assert_ne!(a.state, b.state);
        assert!(a.state.len() >= 43, "256 random bits: {}", a.state);
        let url = reqwest::Url::parse(&a.url).unwrap();
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "abc");
        assert_eq!(q["state"], a.state);
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["scope"], "daily heartrate");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:8080/oauth/callback");
        assert!(!a.url.contains("s3cret"));
    }

    #[test]
    fn a_grant_is_refreshed_before_it_expires() {
        let now: Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        let g = |secs: i64| Grant {
            access_token: "a".into(),
            refresh_token: Some("r".into()),
            expires_at: Some(now + SignedDuration::from_secs(secs)),
            scope: String::new(),
        };
        assert!(!g(86_400).expiring(now, Some(SignedDuration::from_hours(24))));
        assert!(g(200).expiring(now, Some(SignedDuration::from_hours(24))));
        // A short-lived token: a tenth of its life.
        assert!(!g(10).expiring(now, Some(SignedDuration::from_secs(60))));
        assert!(g(5).expiring(now, Some(SignedDuration::from_secs(60))));
    }
}

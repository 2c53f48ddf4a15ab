//! Sources one connects with a login (OAuth2: Oura, Strava, Withings):
//! their settings in the config, their vendor's endpoints, and the grant
//! they poll with, renewed before it expires.

use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use jiff::{SignedDuration, Timestamp};

use crate::service::config::{Config, SecretRef};
use crate::service::oauth::{Grant, OAuthApp, OAuthError, TokenDialect};
use crate::service::sources::{SourceError, oura, strava, withings};
use crate::service::store::GrantRow;

/// A vendor's OAuth2 endpoints, API and scopes.
#[derive(Debug, Clone, Copy)]
pub struct Provider {
    /// The source kind (and the config table's name).
    pub kind: &'static str,
    /// Where the person signs in.
    pub authorize_url: &'static str,
    /// Where codes and refresh tokens become access tokens.
    pub token_url: &'static str,
    /// The API's base address.
    pub api_url: &'static str,
    /// The scopes asked for.
    pub scopes: &'static [&'static str],
    /// Client credentials in the token request's body (else HTTP Basic).
    pub credentials_in_body: bool,
    /// Whether the vendor takes PKCE.
    pub pkce: bool,
    /// How its token endpoint speaks.
    pub dialect: TokenDialect,
}

/// Every vendor one connects with a login, by source kind.
pub const PROVIDERS: &[Provider] = &[oura::PROVIDER, strava::PROVIDER, withings::PROVIDER];

/// The vendor of a login source kind.
pub fn provider(kind: &str) -> Option<&'static Provider> {
    PROVIDERS.iter().find(|p| p.kind == kind)
}

/// A login source as written in the config (`[[participants.oura]]`,
/// `[[participants.strava]]`, `[[participants.withings]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The source's name (default the vendor's: `oura`, `strava`).
    pub name: Option<String>,
    /// The client id of the API application registered with the vendor.
    pub client_id: SecretRef,
    /// Its client secret.
    pub client_secret: SecretRef,
    /// How far back a new connection reads (days).
    #[serde(default = "default_backfill_days")]
    pub backfill_days: u32,
    /// Days before the last one read that each read goes over again (vendors
    /// revise recent days; activities are uploaded late).
    #[serde(default = "default_overlap_days")]
    pub overlap_days: u32,
    /// Read at most this often (minutes; 0: at every run of the sources
    /// job): vendors limit requests a day.
    #[serde(default = "default_poll_minutes")]
    pub poll_minutes: u32,
    /// Oura only: read heart rate (a value every 5 minutes) too (default
    /// yes).
    pub heart_rate: Option<bool>,
    /// Seconds a request may take.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// The vendor's API address (tests point it elsewhere).
    pub api_url: Option<String>,
    /// The vendor's authorize address.
    pub authorize_url: Option<String>,
    /// The vendor's token address (Oura's newer developer portal may give
    /// another).
    pub token_url: Option<String>,
}

fn default_backfill_days() -> u32 {
    90
}
fn default_overlap_days() -> u32 {
    3
}
fn default_poll_minutes() -> u32 {
    30
}
fn default_timeout() -> u64 {
    30
}

impl LoginConfig {
    /// The source's name.
    pub fn source_name(&self, kind: &str) -> String {
        self.name.clone().unwrap_or_else(|| kind.to_string())
    }

    /// Checks the settings (the secrets are read when used).
    pub fn check(&self, kind: &str, participant: &str) -> Result<(), String> {
        let name = self.source_name(kind);
        let at = |what: String| format!("participant {participant}: {kind} {name:?}: {what}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(at("name: use letters, digits, '-' or '_'".into()));
        }
        for (what, s) in [
            ("client_id", &self.client_id),
            ("client_secret", &self.client_secret),
        ] {
            if s.env.is_some() == s.file.is_some() {
                return Err(at(format!("{what}: give exactly one of env or file")));
            }
        }
        if self.heart_rate.is_some() && kind != oura::KIND {
            return Err(at("heart_rate: only an oura source has it".into()));
        }
        if !(1..=3650).contains(&self.backfill_days) {
            return Err(at("backfill_days: 1 to 3650".into()));
        }
        if self.overlap_days > 30 {
            return Err(at("overlap_days: 0 to 30".into()));
        }
        if self.poll_minutes > 1440 {
            return Err(at("poll_minutes: 0 (every poll of the job) to 1440".into()));
        }
        if !(1..=600).contains(&self.timeout_seconds) {
            return Err(at("timeout_seconds: 1 to 600".into()));
        }
        for (what, url) in [
            ("api_url", &self.api_url),
            ("authorize_url", &self.authorize_url),
            ("token_url", &self.token_url),
        ] {
            if let Some(u) = url {
                let parsed =
                    reqwest::Url::parse(u).map_err(|e| at(format!("{what} {u:?}: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(at(format!("{what} {u:?}: http:// or https://")));
                }
            }
        }
        Ok(())
    }

    /// The OAuth2 application at `provider`, its secrets read now.
    pub fn app(&self, provider: &Provider) -> Result<OAuthApp, String> {
        let name = self.source_name(provider.kind);
        let read = |secret: &SecretRef, what: &str| {
            secret
                .resolve(&format!("{} {name:?} {what}", provider.kind))
                .map(|s| s.expose().to_string())
                .map_err(|e| e.to_string())
        };
        Ok(OAuthApp {
            client_id: read(&self.client_id, "client_id")?,
            client_secret: read(&self.client_secret, "client_secret")?,
            authorize_url: self
                .authorize_url
                .clone()
                .unwrap_or_else(|| provider.authorize_url.into()),
            token_url: self
                .token_url
                .clone()
                .unwrap_or_else(|| provider.token_url.into()),
            scopes: provider.scopes.iter().map(|s| s.to_string()).collect(),
            credentials_in_body: provider.credentials_in_body,
            pkce: provider.pkce,
            dialect: provider.dialect,
            timeout: Duration::from_secs(self.timeout_seconds),
        })
    }

    /// The API's base address, without a trailing slash.
    pub fn api_url(&self, provider: &Provider) -> String {
        self.api_url
            .as_deref()
            .unwrap_or(provider.api_url)
            .trim_end_matches('/')
            .to_string()
    }

    /// What is stored with the source row (no secret).
    pub fn stored_json(&self) -> String {
        serde_json::json!({
            "backfill_days": self.backfill_days,
            "overlap_days": self.overlap_days,
            "poll_minutes": self.poll_minutes,
        })
        .to_string()
    }
}

/// The settings of participant `key`'s login source `name` of `kind`.
pub fn config_of<'a>(
    config: &'a Config,
    kind: &str,
    key: &str,
    name: &str,
) -> Option<&'a LoginConfig> {
    let participant = config.participants.iter().find(|p| p.key == key)?;
    participant
        .logins()
        .find(|(k, c)| *k == kind && c.source_name(kind) == name)
        .map(|(_, c)| c)
}

/// What every login source's adapter is made of.
pub struct Login {
    /// The source's name.
    pub name: String,
    /// The vendor's API address.
    pub api: String,
    /// The grant in use, renewed before it expires.
    pub grant: Granted,
    /// The HTTP client.
    pub client: crate::service::http::ApiClient,
    /// The source's settings.
    pub settings: LoginConfig,
    /// Its participant.
    pub owner: crate::service::sources::Owner,
}

impl Login {
    /// The parts of stored source `row` of `provider`'s kind: `None` until
    /// the person has connected it, while it needs re-authorisation, or
    /// once it left the config.
    pub fn of(
        row: &crate::service::store::SourceRow,
        store: &crate::service::store::Store,
        config: &Config,
        provider: &Provider,
    ) -> Result<Option<Login>, SourceError> {
        let Some(owner) = crate::service::sources::Owner::of(row, store, config)? else {
            return Ok(None);
        };
        let Some(settings) = config_of(config, provider.kind, &owner.key, &row.name) else {
            return Ok(None);
        };
        let Some(grant) = store.grant(row.id)?.filter(|g| g.is_connected()) else {
            return Ok(None);
        };
        let app = settings
            .app(provider)
            .map_err(|message| SourceError::Config {
                source_name: row.name.clone(),
                message,
            })?;
        Ok(Some(Login {
            name: row.name.clone(),
            api: settings.api_url(provider),
            grant: Granted::new(&row.name, app, grant),
            client: crate::service::sources::api_client(row, settings.timeout_seconds)?,
            settings: settings.clone(),
            owner,
        }))
    }
}

/// A grant renewed before a poll, and the stored grant it replaces: it is
/// stored only if that one is still the stored grant
/// ([`crate::service::store::Store::save_renewed_grant`]).
#[derive(Clone)]
pub struct Renewal {
    /// The new grant.
    pub grant: Grant,
    /// When the grant it replaces was stored.
    pub replaces_stored_at: Timestamp,
    /// The access token of the grant it replaces.
    pub replaces_access_token: String,
}

// Written out so that no token reaches a log.
impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("grant", &self.grant)
            .field("replaces_stored_at", &self.replaces_stored_at)
            .field("replaces_access_token", &"…")
            .finish()
    }
}

/// A source's grant in use.
pub struct Granted {
    source_name: String,
    app: OAuthApp,
    grant: Mutex<Grant>,
    /// How long the grant in use was issued for.
    lifetime: Option<SignedDuration>,
    /// When the grant in use was stored.
    stored_at: Timestamp,
}

impl Granted {
    /// The stored grant of source `source_name`, for `app`.
    pub fn new(source_name: &str, app: OAuthApp, row: GrantRow) -> Granted {
        Granted {
            source_name: source_name.to_string(),
            app,
            lifetime: row
                .grant
                .expires_at
                .map(|at| at.duration_since(row.updated_at)),
            stored_at: row.updated_at,
            grant: Mutex::new(row.grant),
        }
    }

    /// The bearer token for the API.
    pub fn access_token(&self) -> String {
        self.grant
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .access_token
            .clone()
    }

    /// Refreshes the grant when it is about to expire: the new grant (the
    /// caller stores it at once, over the grant it renewed only), or the
    /// vendor's refusal as `NeedsReauthorisation`.
    pub fn renew(&self, now: Timestamp) -> Result<Option<Renewal>, SourceError> {
        let current = self.grant.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if !current.expiring(now, self.lifetime) {
            return Ok(None);
        }
        match crate::service::oauth::refresh(&self.app, &current, now) {
            Ok(fresh) => {
                *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
                Ok(Some(Renewal {
                    grant: fresh,
                    replaces_stored_at: self.stored_at,
                    replaces_access_token: current.access_token,
                }))
            }
            Err(OAuthError::Refused(why)) => Err(SourceError::NeedsReauthorisation {
                source_name: self.source_name.clone(),
                message: why,
                grant_stored_at: self.stored_at,
            }),
            Err(e) => Err(SourceError::Remote {
                source_name: self.source_name.clone(),
                message: e.to_string(),
            }),
        }
    }
}

/// Whether a login source whose cursor (JSON with `read_at`) says when it
/// last read is due again after `poll_minutes`: vendors limit requests a
/// day, whatever the sources job's period. A `read_at` after `now` (the
/// clock was stepped back since) is due: else the source would wait out
/// the step.
pub fn due(cursor: Option<&str>, poll_minutes: u32, now: Timestamp) -> bool {
    let read_at = cursor
        .and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
        .and_then(|v| {
            v.get("read_at")
                .and_then(|t| t.as_str())
                .map(str::to_string)
        })
        .and_then(|t| t.parse::<Timestamp>().ok());
    read_at.is_none_or(|t| {
        t > now || now.duration_since(t) >= SignedDuration::from_mins(i64::from(poll_minutes))
    })
}

/// Whether sources of `kind` are connected with a login (a Connect button).
pub fn uses_login(kind: &str) -> bool {
    provider(kind).is_some()
}

/// The OAuth2 application of participant `key`'s source `name` of `kind`:
/// `None` when it is not (or no longer) configured, an error when its
/// secrets cannot be read.
pub fn app_of(
    config: &Config,
    kind: &str,
    key: &str,
    name: &str,
) -> Option<Result<OAuthApp, String>> {
    let provider = provider(kind)?;
    config_of(config, kind, key, name).map(|c| c.app(provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_due_a_poll_period_after_its_last_read_or_when_the_clock_went_back() {
        let read: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let cursor = format!(r#"{{"read_at":"{read}"}}"#);
        let at = |mins: i64| read + SignedDuration::from_mins(mins);
        assert!(due(None, 60, read), "never read");
        assert!(due(Some("not json"), 60, read));
        assert!(!due(Some(&cursor), 60, at(59)));
        assert!(due(Some(&cursor), 60, at(60)));
        // Stepped back an hour after the read: due, not an hour's wait.
        assert!(due(Some(&cursor), 60, at(-60)));
    }
}

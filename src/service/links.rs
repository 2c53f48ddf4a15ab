//! One-click links in emails: "done", "not done", "side effect" and one
//! rating link per value, each a signed token bound to participant, trial,
//! day and action, with an expiry.
//!
//! Token: `base64url(payload) "." base64url(HMAC-SHA256(key, payload))`,
//! payload `v1|participant|trial|YYYY-MM-DD|action|expires-unix`. The key is
//! 32 bytes from the OS, generated at first start and kept in the store. A
//! GET never changes anything (mail scanners prefetch links): it shows a
//! one-button form that POSTs the same token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use jiff::Timestamp;
use jiff::civil::Date;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// What a link does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkAction {
    /// Today's assignment was followed.
    Done,
    /// It was not.
    NotDone,
    /// It was, with a side effect.
    SideEffect,
    /// Today's self-report rating.
    Rate(i32),
}

impl LinkAction {
    /// The action's token form (`done`, `not_done`, `side_effect`, `rate:N`).
    pub fn code(self) -> String {
        match self {
            LinkAction::Done => "done".into(),
            LinkAction::NotDone => "not_done".into(),
            LinkAction::SideEffect => "side_effect".into(),
            LinkAction::Rate(v) => format!("rate:{v}"),
        }
    }

    /// Parses [`LinkAction::code`].
    pub fn parse(s: &str) -> Option<LinkAction> {
        match s {
            "done" => Some(LinkAction::Done),
            "not_done" => Some(LinkAction::NotDone),
            "side_effect" => Some(LinkAction::SideEffect),
            _ => s.strip_prefix("rate:")?.parse().ok().map(LinkAction::Rate),
        }
    }

    /// In words, for the confirmation page.
    pub fn words(self) -> String {
        match self {
            LinkAction::Done => "I did today's assignment".into(),
            LinkAction::NotDone => "I could not do today's assignment".into(),
            LinkAction::SideEffect => "I did it and had a side effect".into(),
            LinkAction::Rate(v) => format!("My rating today: {v}"),
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkClaim {
    /// Participant id.
    pub participant_id: i64,
    /// Trial id.
    pub trial_id: i64,
    /// The trial day (participant's calendar).
    pub date: Date,
    /// The action.
    pub action: LinkAction,
    /// Valid until.
    pub expires: Timestamp,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a token at all (cut off by a mail client, typed by hand).
    #[error("this link is incomplete or damaged; open it again from the email")]
    Malformed,
    /// Well-formed but not signed by this nof1d: forged or altered.
    #[error("this link was not issued by this nof1d (forged or altered); nothing was recorded")]
    BadSignature,
    /// Signed, but too old.
    #[error("this link expired on {0}; nothing was recorded. Use the dashboard to enter it")]
    Expired(Timestamp),
}

/// The signing key.
#[derive(Clone)]
pub struct LinkKey([u8; 32]);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(***)")
    }
}

impl LinkKey {
    /// A fresh key from the operating system.
    pub fn generate() -> Result<LinkKey, getrandom::Error> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k)?;
        Ok(LinkKey(k))
    }

    /// The key as stored (hex).
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a stored key.
    pub fn from_hex(s: &str) -> Option<LinkKey> {
        if s.len() != 64 {
            return None;
        }
        let mut k = [0u8; 32];
        for (i, byte) in k.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(LinkKey(k))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length: this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }

    /// Signs a claim into a token.
    pub fn sign(&self, c: &LinkClaim) -> String {
        let payload = format!(
            "v1|{}|{}|{}|{}|{}",
            c.participant_id,
            c.trial_id,
            c.date,
            c.action.code(),
            c.expires.as_second()
        );
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload.as_bytes()),
            self.tag(&payload)
        )
    }

    /// `base64url(HMAC-SHA256(key, message))`: the signature of a token, and
    /// the dashboard's anti-CSRF form token over a date.
    pub fn tag(&self, message: &str) -> String {
        let mut mac = self.mac();
        mac.update(message.as_bytes());
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// Checks a token's signature (in constant time) and expiry at `now`.
    pub fn verify(&self, token: &str, now: Timestamp) -> Result<LinkClaim, LinkError> {
        let (p, s) = token.split_once('.').ok_or(LinkError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| LinkError::Malformed)?;
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| LinkError::Malformed)?;
        let mut mac = self.mac();
        mac.update(&payload);
        mac.verify_slice(&sig)
            .map_err(|_| LinkError::BadSignature)?;
        let payload = String::from_utf8(payload).map_err(|_| LinkError::Malformed)?;
        let parts: Vec<&str> = payload.split('|').collect();
        let [version, participant, trial, date, action, expires] = parts[..] else {
            return Err(LinkError::Malformed);
        };
        if version != "v1" {
            return Err(LinkError::Malformed);
        }
        let claim = LinkClaim {
            participant_id: participant.parse().map_err(|_| LinkError::Malformed)?,
            trial_id: trial.parse().map_err(|_| LinkError::Malformed)?,
            date: date.parse().map_err(|_| LinkError::Malformed)?,
            action: LinkAction::parse(action).ok_or(LinkError::Malformed)?,
            expires: expires
                .parse::<i64>()
                .ok()
                .and_then(|s| Timestamp::from_second(s).ok())
                .ok_or(LinkError::Malformed)?,
        };
        if now > claim.expires {
            return Err(LinkError::Expired(claim.expires));
        }
        Ok(claim)
    }
}

/// A token's fingerprint for the record of used links (the token itself is
/// not stored).
pub fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> LinkClaim {
        LinkClaim {
            participant_id: 3,
            trial_id: 9,
            date: "2026-03-29".parse().unwrap(),
            action: LinkAction::Rate(7),
            expires: "2026-04-05T00:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn sign_verify_and_refuse_forgeries() {
        let key = LinkKey::generate().unwrap();
        let now: Timestamp = "2026-03-30T08:00:00Z".parse().unwrap();
        let token = key.sign(&claim());
        assert_eq!(key.verify(&token, now), Ok(claim()));
        // Another key: forged.
        let other = LinkKey::generate().unwrap();
        assert_eq!(other.verify(&token, now), Err(LinkError::BadSignature));
        // Altered payload (rating 7 -> 9), signature kept.
        let (p, s) = token.split_once('.').unwrap();
        let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
        let altered = URL_SAFE_NO_PAD.encode(payload.replace("rate:7", "rate:9"));
        assert_eq!(
            key.verify(&format!("{altered}.{s}"), now),
            Err(LinkError::BadSignature)
        );
        // Damaged.
        assert_eq!(key.verify("abc", now), Err(LinkError::Malformed));
        assert_eq!(
            key.verify(&token[..token.len() - 3], now),
            Err(LinkError::BadSignature)
        );
        // Expired.
        let late: Timestamp = "2026-04-06T00:00:00Z".parse().unwrap();
        assert!(matches!(
            key.verify(&token, late),
            Err(LinkError::Expired(_))
        ));
        // The key round-trips through its stored form.
        let again = LinkKey::from_hex(&key.to_hex()).unwrap();
        assert_eq!(again.verify(&token, now), Ok(claim()));
        assert!(LinkKey::from_hex("zz").is_none());
    }

    #[test]
    fn actions_round_trip() {
        for a in [
            LinkAction::Done,
            LinkAction::NotDone,
            LinkAction::SideEffect,
            LinkAction::Rate(-2),
        ] {
            assert_eq!(LinkAction::parse(&a.code()), Some(a));
        }
        assert_eq!(LinkAction::parse("rate:x"), None);
    }
}

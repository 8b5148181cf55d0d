//! API keys: `wdn_<key id>_<secret>` tokens, stored only as digests in a
//! keys file that every service reads and re-reads.
//!
//! The key id is visible (it names the key in logs and in the file); the
//! secret is 256 random bits. The file holds `sha256:<hex>` of the secret,
//! or `hmac-sha256:<hex>` keyed by a server pepper (a secret setting), so a
//! leaked file cannot be used to sign in. Verification looks the key up by
//! id and compares digests in constant time. Several keys per principal may
//! be valid at once (rotation with overlap); a key stops working when it is
//! marked `revoked`, removed, or past `not_after`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use hmac::Mac;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::principal::{Kind, Principal};
use crate::secret::Secret;

pub const TOKEN_PREFIX: &str = "wdn_";

/// One key in the keys file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The visible key id (the token's middle part).
    pub id: String,
    /// `sha256:<hex>` or `hmac-sha256:<hex>` of the token's secret part.
    pub digest: String,
    pub principal: String,
    pub kind: Kind,
    pub roles: Vec<String>,
    /// Agent id globs an agent principal may act as (default: its own id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub agents: Vec<String>,
    /// The key stops working after this instant (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoked: bool,
    /// Free text: who asked for it, what it is for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

/// The keys file: `[[key]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyEntry>,
}

impl KeyFile {
    pub fn parse(text: &str) -> Result<KeyFile, String> {
        let file: KeyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = std::collections::HashSet::new();
        for key in &file.keys {
            if !seen.insert(key.id.as_str()) {
                return Err(format!("key id {:?} appears twice", key.id));
            }
            if !key.digest.starts_with("sha256:") && !key.digest.starts_with("hmac-sha256:") {
                return Err(format!("key {:?}: digest must start with sha256: or hmac-sha256:", key.id));
            }
            if key.principal.is_empty() {
                return Err(format!("key {:?}: principal is empty", key.id));
            }
        }
        Ok(file)
    }

    pub fn load(path: &Path) -> Result<KeyFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        KeyFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a key file serialises")
    }
}

/// A newly created key: the token to hand out once, and the entry to store.
#[derive(Debug)]
pub struct NewKey {
    pub token: Secret,
    pub entry: KeyEntry,
}

/// Creates a key for `principal`. `pepper` selects the HMAC digest.
pub fn create_key(
    principal: &str,
    kind: Kind,
    roles: Vec<String>,
    agents: Vec<String>,
    not_after: Option<chrono::DateTime<chrono::Utc>>,
    pepper: Option<&Secret>,
) -> NewKey {
    use rand::RngCore;
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let entry = KeyEntry {
        id: id.clone(),
        digest: digest(&secret, pepper),
        principal: principal.to_owned(),
        kind,
        roles,
        agents,
        not_after,
        revoked: false,
        comment: String::new(),
    };
    NewKey { token: Secret::new(format!("{TOKEN_PREFIX}{id}_{secret}")), entry }
}

/// The stored digest of a token's secret part.
pub fn digest(secret: &str, pepper: Option<&Secret>) -> String {
    match pepper {
        None => format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes()))),
        Some(pepper) => {
            let mut mac =
                hmac::Hmac::<Sha256>::new_from_slice(pepper.expose().as_bytes()).expect("HMAC takes any key length");
            mac.update(secret.as_bytes());
            format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
        }
    }
}

/// Splits `wdn_<id>_<secret>`; the secret may itself contain `_`.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

struct ActiveKey {
    digest: Vec<u8>,
    hmac: bool,
    not_after: Option<chrono::DateTime<chrono::Utc>>,
    revoked: bool,
    principal: Arc<Principal>,
}

/// Why a key was refused. The message never contains the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    #[error("malformed API key")]
    Malformed,
    #[error("unknown API key {0}")]
    Unknown(String),
    #[error("API key {0} does not match")]
    Mismatch(String),
    #[error("API key {0} is revoked")]
    Revoked(String),
    #[error("API key {0} expired")]
    Expired(String),
}

/// The keys in force, indexed by key id. Swapped whole on reload.
#[derive(Default)]
pub struct KeySet {
    keys: HashMap<String, ActiveKey>,
    pepper: Option<Secret>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet").field("keys", &self.keys.len()).finish()
    }
}

impl KeySet {
    /// Builds the set. Keys whose digest needs a pepper that is not
    /// configured are reported and left out.
    pub fn new(file: &KeyFile, pepper: Option<Secret>) -> (KeySet, Vec<String>) {
        let mut problems = Vec::new();
        let mut keys = HashMap::with_capacity(file.keys.len());
        for entry in &file.keys {
            let (hmac, hex_digest) = match entry.digest.split_once(':') {
                Some(("sha256", hex)) => (false, hex),
                Some(("hmac-sha256", hex)) => (true, hex),
                _ => {
                    problems.push(format!("key {}: unknown digest scheme", entry.id));
                    continue;
                }
            };
            if hmac && pepper.is_none() {
                problems.push(format!("key {}: hmac-sha256 digest but no key_pepper is configured", entry.id));
                continue;
            }
            let Ok(digest) = hex::decode(hex_digest) else {
                problems.push(format!("key {}: digest is not hex", entry.id));
                continue;
            };
            let principal = Principal::new(
                entry.kind,
                entry.principal.clone(),
                entry.roles.clone(),
                &entry.agents,
                format!("api_key:{}", entry.id),
            );
            keys.insert(
                entry.id.clone(),
                ActiveKey {
                    digest,
                    hmac,
                    not_after: entry.not_after,
                    revoked: entry.revoked,
                    principal: Arc::new(principal),
                },
            );
        }
        (KeySet { keys, pepper }, problems)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies a token: one map lookup, one SHA-256 (or HMAC) of 43 bytes,
    /// one constant-time comparison.
    pub fn verify(&self, token: &str, now: chrono::DateTime<chrono::Utc>) -> Result<Arc<Principal>, KeyRejection> {
        let (id, secret) = split_token(token).ok_or(KeyRejection::Malformed)?;
        let key = self.keys.get(id).ok_or_else(|| KeyRejection::Unknown(id.to_owned()))?;
        let computed: Vec<u8> = if key.hmac {
            let pepper = self.pepper.as_ref().ok_or_else(|| KeyRejection::Mismatch(id.to_owned()))?;
            let mut mac =
                hmac::Hmac::<Sha256>::new_from_slice(pepper.expose().as_bytes()).expect("HMAC takes any key length");
            mac.update(secret.as_bytes());
            mac.finalize().into_bytes().to_vec()
        } else {
            Sha256::digest(secret.as_bytes()).to_vec()
        };
        if !bool::from(computed.ct_eq(&key.digest)) {
            return Err(KeyRejection::Mismatch(id.to_owned()));
        }
        if key.revoked {
            return Err(KeyRejection::Revoked(id.to_owned()));
        }
        if key.not_after.is_some_and(|not_after| now > not_after) {
            return Err(KeyRejection::Expired(id.to_owned()));
        }
        Ok(key.principal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    #[test]
    fn created_keys_verify_and_others_do_not() {
        for pepper in [None, Some(Secret::new("pepper"))] {
            let key = create_key("support-bot", Kind::Agent, vec!["agent".into()], vec![], None, pepper.as_ref());
            let other = create_key("billing-bot", Kind::Agent, vec!["agent".into()], vec![], None, pepper.as_ref());
            let file = KeyFile { keys: vec![key.entry.clone()] };
            let file = KeyFile::parse(&file.to_toml()).unwrap();
            let (set, problems) = KeySet::new(&file, pepper.clone());
            assert!(problems.is_empty(), "{problems:?}");
            let principal = set.verify(key.token.expose(), now()).unwrap();
            assert_eq!((principal.id.as_str(), principal.kind), ("support-bot", Kind::Agent));
            assert!(matches!(set.verify(other.token.expose(), now()), Err(KeyRejection::Unknown(_))));
            // Right id, wrong secret.
            let (id, _) = split_token(key.token.expose()).unwrap();
            let forged = format!("wdn_{id}_{}", "A".repeat(43));
            assert!(matches!(set.verify(&forged, now()), Err(KeyRejection::Mismatch(_))));
            assert_eq!(set.verify("Bearer nonsense", now()).unwrap_err(), KeyRejection::Malformed);
        }
    }

    #[test]
    fn revoked_and_expired_keys_fail() {
        let mut revoked = create_key("a", Kind::Service, vec!["service".into()], vec![], None, None);
        revoked.entry.revoked = true;
        let expired = create_key(
            "b",
            Kind::Human,
            vec!["admin".into()],
            vec![],
            Some(now() - chrono::Duration::seconds(1)),
            None,
        );
        let valid =
            create_key("c", Kind::Human, vec!["admin".into()], vec![], Some(now() + chrono::Duration::hours(1)), None);
        let file = KeyFile { keys: vec![revoked.entry.clone(), expired.entry.clone(), valid.entry.clone()] };
        let (set, _) = KeySet::new(&file, None);
        assert!(matches!(set.verify(revoked.token.expose(), now()), Err(KeyRejection::Revoked(_))));
        assert!(matches!(set.verify(expired.token.expose(), now()), Err(KeyRejection::Expired(_))));
        assert!(set.verify(valid.token.expose(), now()).is_ok());
    }

    #[test]
    fn hmac_keys_need_the_pepper_and_files_are_checked() {
        let key = create_key("a", Kind::Agent, vec!["agent".into()], vec![], None, Some(&Secret::new("p")));
        let (set, problems) = KeySet::new(&KeyFile { keys: vec![key.entry.clone()] }, None);
        assert!(set.is_empty() && problems[0].contains("key_pepper"), "{problems:?}");
        let (set, _) = KeySet::new(&KeyFile { keys: vec![key.entry] }, Some(Secret::new("other pepper")));
        assert!(matches!(set.verify(key.token.expose(), now()), Err(KeyRejection::Mismatch(_))));

        let twice = "[[key]]\nid='a'\ndigest='sha256:00'\nprincipal='p'\nkind='agent'\nroles=[]\n".repeat(2);
        assert!(KeyFile::parse(&twice).unwrap_err().contains("twice"));
        let typo = "[[key]]\nid='a'\ndigest='sha256:00'\nprincipal='p'\nkind='agent'\nrole=[]\n";
        assert!(KeyFile::parse(typo).unwrap_err().contains("role"));
    }
}

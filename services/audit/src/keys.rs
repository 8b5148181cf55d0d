//! Keys: the checkpoint signing key, the master key, and per-subject data
//! keys (AES-256-GCM, wrapped by the master key).
//!
//! Keys not given in config are created on first start in the data
//! directory with owner-only permissions, so a fresh `cargo xtask dev` works
//! and restarts keep the same keys.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use warden_merkle::note::NoteSigner;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read or write key file {0}: {1}")]
    File(String, std::io::Error),
    #[error("invalid key in {0}: {1}")]
    Invalid(String, String),
    #[error("decryption failed: the key is wrong or the data was altered")]
    Decrypt,
}

fn write_secret(path: &Path, contents: &str) -> Result<(), KeyError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| KeyError::File(path.display().to_string(), e))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options.open(path).map_err(|e| KeyError::File(path.display().to_string(), e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyError::File(path.display().to_string(), e))
}

/// The checkpoint signer: from config text, else from the key file, else a
/// new key written to the key file.
pub fn load_signer(origin: &str, configured: &str, path: &Path) -> Result<(NoteSigner, bool), KeyError> {
    if !configured.is_empty() {
        return NoteSigner::from_private_key(configured)
            .map(|s| (s, false))
            .map_err(|e| KeyError::Invalid("signing_key".into(), e.to_string()));
    }
    if path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::File(path.display().to_string(), e))?;
        return NoteSigner::from_private_key(&text)
            .map(|s| (s, false))
            .map_err(|e| KeyError::Invalid(path.display().to_string(), e.to_string()));
    }
    let signer = NoteSigner::from_seed(origin, rand::random::<[u8; 32]>())
        .map_err(|e| KeyError::Invalid("origin".into(), e.to_string()))?;
    write_secret(path, &format!("{}\n", signer.private_key()))?;
    Ok((signer, true))
}

/// The key that wraps every subject's data key.
#[derive(Clone)]
pub struct MasterKey(Aes256Gcm);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)))
    }

    /// From config (64 hex digits), else the key file, else a new key
    /// written to the key file.
    pub fn load(configured: &str, path: &Path) -> Result<Self, KeyError> {
        let parse = |text: &str, source: &str| -> Result<Self, KeyError> {
            let bytes = hex::decode(text.trim()).map_err(|e| KeyError::Invalid(source.into(), e.to_string()))?;
            let bytes: [u8; 32] =
                bytes.try_into().map_err(|_| KeyError::Invalid(source.into(), "expected 32 bytes".into()))?;
            Ok(MasterKey::from_bytes(bytes))
        };
        if !configured.is_empty() {
            return parse(configured, "master_key");
        }
        if path.exists() {
            let text = std::fs::read_to_string(path).map_err(|e| KeyError::File(path.display().to_string(), e))?;
            return parse(&text, &path.display().to_string());
        }
        let bytes = rand::random::<[u8; 32]>();
        write_secret(path, &format!("{}\n", hex::encode(bytes)))?;
        Ok(MasterKey::from_bytes(bytes))
    }

    /// Wraps a data key for storage: `nonce || ciphertext`, bound to the subject.
    pub fn wrap(&self, subject: &str, data_key: &[u8; 32]) -> Vec<u8> {
        seal(&self.0, subject.as_bytes(), data_key)
    }

    pub fn unwrap(&self, subject: &str, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let bytes = open(&self.0, subject.as_bytes(), wrapped)?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Decrypt)?;
        Ok(DataKey::from_bytes(bytes))
    }
}

/// A subject's data key.
#[derive(Clone)]
pub struct DataKey(Aes256Gcm);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        DataKey(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes)))
    }

    /// Encrypts sensitive fields, bound to the event id (so ciphertext
    /// cannot be moved to another event).
    pub fn seal(&self, event_id: &str, plaintext: &[u8]) -> Vec<u8> {
        seal(&self.0, event_id.as_bytes(), plaintext)
    }

    pub fn open(&self, event_id: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        open(&self.0, event_id.as_bytes(), sealed)
    }
}

fn seal(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = rand::random::<[u8; 12]>();
    let ciphertext = cipher
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        .expect("AES-GCM encryption of in-memory data cannot fail");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ciphertext);
    out
}

fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
    if sealed.len() < 12 {
        return Err(KeyError::Decrypt);
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad }).map_err(|_| KeyError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_keys_round_trip_and_are_bound_to_their_subject_and_event() {
        let master = MasterKey::from_bytes([1; 32]);
        let wrapped = master.wrap("alice", &[9; 32]);
        let key = master.unwrap("alice", &wrapped).unwrap();
        assert!(master.unwrap("bob", &wrapped).is_err());
        assert!(MasterKey::from_bytes([2; 32]).unwrap("alice", &wrapped).is_err());
        let sealed = key.seal("event-1", b"{\"email\":\"a@example.com\"}");
        assert_eq!(key.open("event-1", &sealed).unwrap(), b"{\"email\":\"a@example.com\"}");
        assert!(key.open("event-2", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert!(key.open("event-1", &tampered).is_err());
    }

    #[test]
    fn keys_are_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/signing.key");
        let (first, created) = load_signer("warden.test/audit", "", &path).unwrap();
        assert!(created);
        let (second, created) = load_signer("warden.test/audit", "", &path).unwrap();
        assert!(!created);
        assert_eq!(first.verifier_key(), second.verifier_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let master_path = dir.path().join("master.key");
        let a = MasterKey::load("", &master_path).unwrap();
        let b = MasterKey::load("", &master_path).unwrap();
        let wrapped = a.wrap("s", &[3; 32]);
        assert!(b.unwrap("s", &wrapped).is_ok());
        assert!(MasterKey::load("nothex", &master_path).is_err());
    }
}

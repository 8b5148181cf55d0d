//! Checkpoints as C2SP signed notes (`tlog-checkpoint`, `signed-note`),
//! signed with Ed25519, so existing transparency-log tooling can check them.
//!
//! A checkpoint body is three lines: the log's origin, the tree size in
//! decimal, and the base64 root hash. The signed note appends a blank line
//! and one signature line per signer: `— <name> <base64(key hash || sig)>`.
//! A verifier key is `<name>+<key hash as 8 hex digits>+<base64(0x01 ||
//! public key)>`; the key hash is the first four bytes of
//! `SHA-256(name || "\n" || 0x01 || public key)`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Hash;

/// The algorithm byte for Ed25519 in signed notes.
const ED25519: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("invalid key name {0:?}: it must be non-empty with no spaces or '+'")]
    KeyName(String),
    #[error("malformed key: {0}")]
    Key(String),
    #[error("malformed note: {0}")]
    Malformed(String),
    #[error("no signature by {0} on the note")]
    NotSigned(String),
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(NoteError::KeyName(name.to_owned()));
    }
    Ok(())
}

fn key_hash(name: &str, public: &VerifyingKey) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update(b"\n");
    hasher.update([ED25519]);
    hasher.update(public.as_bytes());
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// Signs notes as one named key.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
    hash: [u8; 4],
}

impl std::fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("NoteSigner").field("name", &self.name).field("verifier", &self.verifier_key()).finish()
    }
}

impl NoteSigner {
    /// A signer from a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, NoteError> {
        check_name(name)?;
        let key = SigningKey::from_bytes(&seed);
        let hash = key_hash(name, &key.verifying_key());
        Ok(NoteSigner { name: name.to_owned(), key, hash })
    }

    /// Parses the standard private key form:
    /// `PRIVATE+KEY+<name>+<hash>+<base64(0x01 || seed)>`.
    pub fn from_private_key(text: &str) -> Result<Self, NoteError> {
        let text = text.trim();
        let rest =
            text.strip_prefix("PRIVATE+KEY+").ok_or_else(|| NoteError::Key("missing PRIVATE+KEY+ prefix".into()))?;
        // The name and hash hold no '+'; the base64 key may.
        let mut parts = rest.splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("expected PRIVATE+KEY+<name>+<hash>+<key>".into()));
        };
        let bytes = BASE64.decode(key).map_err(|e| NoteError::Key(e.to_string()))?;
        let [ED25519, seed @ ..] = bytes.as_slice() else {
            return Err(NoteError::Key("not an Ed25519 key".into()));
        };
        let seed: [u8; 32] = seed.try_into().map_err(|_| NoteError::Key("an Ed25519 seed is 32 bytes".into()))?;
        let signer = NoteSigner::from_seed(name, seed)?;
        if hex::encode(signer.hash) != hash {
            return Err(NoteError::Key("the key hash does not match the key".into()));
        }
        Ok(signer)
    }

    /// The standard private key form (keep it secret).
    pub fn private_key(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.as_bytes());
        format!("PRIVATE+KEY+{}+{}+{}", self.name, hex::encode(self.hash), BASE64.encode(bytes))
    }

    /// The verifier key others use to check this signer's notes.
    pub fn verifier_key(&self) -> String {
        let mut bytes = vec![ED25519];
        bytes.extend_from_slice(self.key.verifying_key().as_bytes());
        format!("{}+{}+{}", self.name, hex::encode(self.hash), BASE64.encode(bytes))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Signs `text` (which must end with a newline) into a signed note.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        if !text.ends_with('\n') || text.contains("\n\n") {
            return Err(NoteError::Malformed("note text must end with one newline and have no blank lines".into()));
        }
        let signature = self.key.sign(text.as_bytes());
        let mut blob = self.hash.to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        Ok(format!("{text}\n\u{2014} {} {}\n", self.name, BASE64.encode(blob)))
    }
}

/// A parsed verifier key.
#[derive(Debug, Clone)]
pub struct NoteVerifier {
    name: String,
    hash: [u8; 4],
    key: VerifyingKey,
}

impl NoteVerifier {
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(hash), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(NoteError::Key("expected <name>+<hash>+<key>".into()));
        };
        check_name(name)?;
        let bytes = BASE64.decode(key).map_err(|e| NoteError::Key(e.to_string()))?;
        let [ED25519, public @ ..] = bytes.as_slice() else {
            return Err(NoteError::Key("not an Ed25519 key".into()));
        };
        let public: [u8; 32] = public.try_into().map_err(|_| NoteError::Key("an Ed25519 key is 32 bytes".into()))?;
        let key = VerifyingKey::from_bytes(&public).map_err(|e| NoteError::Key(e.to_string()))?;
        let expected = key_hash(name, &key);
        if hex::encode(expected) != hash {
            return Err(NoteError::Key("the key hash does not match the key".into()));
        }
        Ok(NoteVerifier { name: name.to_owned(), hash: expected, key })
    }

    /// Checks that `note` carries a valid signature by this key and returns
    /// the signed text.
    pub fn verify<'n>(&self, note: &'n str) -> Result<&'n str, NoteError> {
        let split = note.rfind("\n\n").ok_or_else(|| NoteError::Malformed("no blank line before signatures".into()))?;
        let (text, signatures) = (&note[..split + 1], &note[split + 2..]);
        for line in signatures.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(NoteError::Malformed(format!("bad signature line {line:?}")));
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return Err(NoteError::Malformed(format!("bad signature line {line:?}")));
            };
            if name != self.name {
                continue;
            }
            let blob = BASE64.decode(blob).map_err(|e| NoteError::Malformed(e.to_string()))?;
            if blob.len() != 4 + 64 || blob[..4] != self.hash {
                continue;
            }
            let signature = ed25519_dalek::Signature::from_slice(&blob[4..])
                .map_err(|_| NoteError::BadSignature(self.name.clone()))?;
            return self
                .key
                .verify(text.as_bytes(), &signature)
                .map(|()| text)
                .map_err(|_| NoteError::BadSignature(self.name.clone()));
        }
        Err(NoteError::NotSigned(self.name.clone()))
    }
}

/// A checkpoint: the log's origin, its size and its root hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint body (the note text that is signed).
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, BASE64.encode(self.root))
    }

    /// Parses a checkpoint body (extension lines after the root are allowed
    /// and ignored).
    pub fn parse(text: &str) -> Result<Checkpoint, NoteError> {
        let mut lines = text.lines();
        let origin =
            lines.next().filter(|o| !o.is_empty()).ok_or_else(|| NoteError::Malformed("missing origin".into()))?;
        let size = lines
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| NoteError::Malformed("missing or bad tree size".into()))?;
        let root = lines
            .next()
            .and_then(|r| BASE64.decode(r).ok())
            .and_then(|r| <Hash>::try_from(r.as_slice()).ok())
            .ok_or_else(|| NoteError::Malformed("missing or bad root hash".into()))?;
        Ok(Checkpoint { origin: origin.to_owned(), size, root })
    }
}

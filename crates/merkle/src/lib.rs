//! Merkle tree math for Warden's audit log: RFC 9162 (Certificate
//! Transparency v2) hashing with leaf/node domain separation, inclusion and
//! consistency proofs (generation over stored subtree hashes, and
//! verification), and checkpoints in the C2SP `tlog-checkpoint` signed-note
//! form with Ed25519 signatures.
//!
//! Audit integrity is Warden's product, so this is our own code, checked
//! against the RFC's algorithms and published test vectors. It has no I/O:
//! the audit service supplies subtree hashes from its database, and clients
//! verify proofs with nothing but this crate.

pub mod note;
mod proof;
mod tree;

pub use proof::{ProofError, root_from_inclusion_proof, verify_consistency, verify_inclusion};
pub use tree::{NodeSource, consistency_proof, inclusion_proof, root_hash, subtree_hash};

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `MTH({})`: the hash of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `HASH(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(data);
    hasher.finalize().into()
}

/// `HASH(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The largest power of two strictly smaller than `n` (n >= 2).
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

#[cfg(test)]
mod tests;

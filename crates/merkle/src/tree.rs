//! Roots and proofs computed from complete-subtree hashes.
//!
//! A store keeps the hash of every complete subtree (`level`, `index`): the
//! subtree of `2^level` leaves starting at leaf `index * 2^level`. Any
//! range the RFC's recursion asks for then costs O(log n) lookups.

use crate::{Hash, empty_root, node_hash, split_point};

/// Where subtree hashes come from.
pub trait NodeSource {
    type Error;
    /// The hash of the complete subtree at `level` and `index`. Level 0 is
    /// the leaf hashes.
    fn node(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// `MTH(D[start:start+len])` for any range.
pub fn subtree_hash<S: NodeSource>(source: &mut S, start: u64, len: u64) -> Result<Hash, S::Error> {
    if len == 0 {
        return Ok(empty_root());
    }
    // A complete, aligned subtree is stored as one node.
    if len.is_power_of_two() && start.is_multiple_of(len) {
        return source.node(len.trailing_zeros(), start / len);
    }
    let k = split_point(len);
    let left = subtree_hash(source, start, k)?;
    let right = subtree_hash(source, start + k, len - k)?;
    Ok(node_hash(&left, &right))
}

/// The root of the first `size` leaves.
pub fn root_hash<S: NodeSource>(source: &mut S, size: u64) -> Result<Hash, S::Error> {
    subtree_hash(source, 0, size)
}

/// `PATH(m, D[0:size])`: the inclusion proof of leaf `index`, leaf to root.
pub fn inclusion_proof<S: NodeSource>(source: &mut S, index: u64, size: u64) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    path(source, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path<S: NodeSource>(source: &mut S, m: u64, start: u64, n: u64, proof: &mut Vec<Hash>) -> Result<(), S::Error> {
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(source, m, start, k, proof)?;
        proof.push(subtree_hash(source, start + k, n - k)?);
    } else {
        path(source, m - k, start + k, n - k, proof)?;
        proof.push(subtree_hash(source, start, k)?);
    }
    Ok(())
}

/// `PROOF(m, D[0:n])`: the consistency proof between sizes `old` and `new`.
pub fn consistency_proof<S: NodeSource>(source: &mut S, old: u64, new: u64) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    if old == 0 || old >= new {
        return Ok(proof);
    }
    subproof(source, old, 0, new, true, &mut proof)?;
    Ok(proof)
}

fn subproof<S: NodeSource>(
    source: &mut S,
    m: u64,
    start: u64,
    n: u64,
    complete: bool,
    proof: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    if m == n {
        if !complete {
            proof.push(subtree_hash(source, start, n)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(source, m, start, k, complete, proof)?;
        proof.push(subtree_hash(source, start + k, n - k)?);
    } else {
        subproof(source, m - k, start + k, n - k, false, proof)?;
        proof.push(subtree_hash(source, start, k)?);
    }
    Ok(())
}

/// A source over leaf hashes in memory, computing inner nodes on demand
/// (tests, and clients that hold a whole log).
impl NodeSource for &[Hash] {
    type Error = std::convert::Infallible;

    fn node(&mut self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        let width = 1u64 << level;
        let start = index * width;
        if level == 0 {
            return Ok(self[start as usize]);
        }
        let half = width / 2;
        let left = self.node(level - 1, start / half)?;
        let right = self.node(level - 1, start / half + 1)?;
        Ok(node_hash(&left, &right))
    }
}

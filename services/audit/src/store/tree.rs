//! Reading the Merkle tree: stored levels by dense runs, the nodes between
//! them hashed up on demand.

use super::*;

/// Dense runs of tree hashes, read on one connection (a transaction's, or
/// one taken from the pool).
pub(super) trait TreeRows: Send {
    /// The hashes of `level` (0: the events' leaf hashes) with index in
    /// `[from, to)`, in order. Fails if any of them is missing.
    fn hashes(
        &mut self,
        level: u32,
        from: u64,
        to: u64,
    ) -> impl std::future::Future<Output = Result<Vec<Hash>, StoreError>> + Send;
}

macro_rules! tree_rows {
    ($connection:ty, $leaves:expr, $nodes:expr) => {
        impl TreeRows for $connection {
            async fn hashes(&mut self, level: u32, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
                let rows = if level == 0 {
                    sqlx::query($leaves).bind(from as i64).bind(to as i64).fetch_all(&mut *self).await?
                } else {
                    sqlx::query($nodes)
                        .bind(level as i32)
                        .bind(from as i64)
                        .bind(to as i64)
                        .fetch_all(&mut *self)
                        .await?
                };
                if rows.len() as u64 != to - from {
                    return Err(StoreError::Other(format!(
                        "tree level {level} has {} of the {} hashes in [{from}, {to})",
                        rows.len(),
                        to - from
                    )));
                }
                rows.iter().map(|row| hash_of(row.try_get(0)?)).collect()
            }
        }
    };
}

tree_rows!(
    sqlx::PgConnection,
    "SELECT leaf_hash FROM audit_events WHERE sequence >= $1 AND sequence < $2 ORDER BY sequence",
    "SELECT hash FROM audit_tree_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx"
);
tree_rows!(
    sqlx::SqliteConnection,
    "SELECT leaf_hash FROM audit_events WHERE sequence >= ? AND sequence < ? ORDER BY sequence",
    "SELECT hash FROM audit_tree_nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx"
);

/// Tree nodes by (level, index): read from the stored level at or below
/// each, then hashed up. Every node asked for must be complete.
pub(super) async fn compute_nodes<C: TreeRows>(
    connection: &mut C,
    keys: &[(u32, u64)],
) -> Result<HashMap<(u32, u64), Hash>, StoreError> {
    // The runs of stored hashes each key covers, merged per stored level.
    let mut runs: std::collections::BTreeMap<u32, Vec<(u64, u64)>> = Default::default();
    for &(level, index) in keys {
        let base = level - level % LEVEL_STEP;
        let span = level - base;
        runs.entry(base).or_default().push((index << span, (index + 1) << span));
    }
    let mut stored: HashMap<(u32, u64), Hash> = HashMap::new();
    for (base, mut list) in runs {
        list.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (from, to) in list {
            match merged.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => merged.push((from, to)),
            }
        }
        for (from, to) in merged {
            for (offset, hash) in connection.hashes(base, from, to).await?.into_iter().enumerate() {
                stored.insert((base, from + offset as u64), hash);
            }
        }
    }
    let mut found = HashMap::with_capacity(keys.len());
    for &(level, index) in keys {
        let base = level - level % LEVEL_STEP;
        let span = level - base;
        let mut hashes: Vec<Hash> = ((index << span)..((index + 1) << span)).map(|i| stored[&(base, i)]).collect();
        while hashes.len() > 1 {
            hashes = hashes.chunks_exact(2).map(|pair| warden_merkle::node_hash(&pair[0], &pair[1])).collect();
        }
        found.insert((level, index), hashes[0]);
    }
    Ok(found)
}

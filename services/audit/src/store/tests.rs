use super::*;

#[tokio::test]
async fn sqlite_placeholders_are_positional() {
    let sqlite = Database::Sqlite(sqlx::SqlitePool::connect_lazy("sqlite::memory:").unwrap());
    assert_eq!(sql(&sqlite, "a = $1 AND b IN ($2, $10) AND c = '$'"), "a = ? AND b IN (?, ?) AND c = '$'");
}

#[test]
fn binary_copy_rows_read_back_and_truncated_data_is_refused() {
    let mut rows = CopyRows::new(3);
    rows.row();
    rows.int8(-7);
    rows.text("événement");
    rows.bytes(None);
    rows.row();
    rows.int8(i64::MAX);
    rows.text("");
    rows.bytes(Some(&[0, 1, 2]));
    let data = rows.finish();
    let mut reader = CopyReader::new(&data).unwrap();
    let mut read = Vec::new();
    while reader.row(3).unwrap() {
        read.push((reader.int8().unwrap(), reader.text().unwrap(), reader.field().unwrap().map(<[u8]>::to_vec)));
    }
    assert_eq!(read, vec![(-7, "événement".to_string(), None), (i64::MAX, String::new(), Some(vec![0, 1, 2]))]);
    // Cut anywhere inside a row, the data is refused, never misread.
    for cut in 19..data.len() - 2 {
        let mut reader = CopyReader::new(&data[..cut]).unwrap();
        let mut result = Ok(());
        while result.is_ok() {
            result = match reader.row(3) {
                Ok(true) => reader.int8().and(reader.text()).and(reader.field()).map(drop),
                Ok(false) => break,
                Err(error) => Err(error),
            };
        }
        assert!(result.is_err(), "cut at {cut}");
    }
    assert!(CopyReader::new(b"NOTCOPY").is_err());
    assert!(CopyReader::new(&data).unwrap().row(2).is_err(), "a row of another width is refused");
}

#[test]
fn every_append_lock_statement_names_the_same_key() {
    assert_eq!(i64::from_be_bytes(*b"WARDAUDT"), 6287397007893283924);
    assert!(LOCK_APPEND.ends_with(concat!("pg_advisory_lock", append_lock_key!())));
    assert!(UNLOCK_APPEND.ends_with(concat!("pg_advisory_unlock", append_lock_key!())));
    assert!(LOCK_WAITERS.contains(append_lock_key!()));
}

#[test]
fn frontier_keys_name_the_right_edge() {
    assert_eq!(frontier_keys(0), vec![]);
    assert_eq!(frontier_keys(1), vec![(0, 0)]);
    assert_eq!(frontier_keys(6), vec![(1, 2), (2, 0)]);
    assert_eq!(frontier_keys(7), vec![(0, 6), (1, 2), (2, 0)]);
    assert_eq!(frontier_keys(8), vec![(3, 0)]);
}

/// A tree in memory that holds, like the tables, only leaves and the
/// stored levels.
struct Tables(HashMap<u32, Vec<Hash>>);

impl TreeRows for Tables {
    async fn hashes(&mut self, level: u32, from: u64, to: u64) -> Result<Vec<Hash>, StoreError> {
        assert!(level == 0 || is_stored_level(level), "level {level} is not stored");
        let stored = self.0.get(&level).map(Vec::as_slice).unwrap_or_default();
        stored.get(from as usize..to as usize).map(<[Hash]>::to_vec).ok_or(StoreError::Other("missing".into()))
    }
}

#[tokio::test]
async fn nodes_are_recomputed_from_the_stored_levels() {
    // 70,000 leaves reach level 16, the second stored level.
    let mut levels = vec![(0..70_000u64).map(|i| warden_merkle::leaf_hash(&i.to_be_bytes())).collect::<Vec<_>>()];
    while levels.last().unwrap().len() > 1 {
        let next = levels.last().unwrap().chunks_exact(2).map(|p| warden_merkle::node_hash(&p[0], &p[1])).collect();
        levels.push(next);
    }
    let stored = (0..levels.len() as u32)
        .filter(|&level| level == 0 || is_stored_level(level))
        .map(|level| (level, levels[level as usize].clone()))
        .collect();
    let mut tables = Tables(stored);
    let keys: Vec<(u32, u64)> = (0..levels.len() as u32)
        .flat_map(|level| {
            let count = levels[level as usize].len() as u64;
            [0, count / 2, count - 1].map(|index| (level, index))
        })
        .collect();
    let found = compute_nodes(&mut tables, &keys).await.unwrap();
    for (level, index) in keys {
        assert_eq!(found[&(level, index)], levels[level as usize][index as usize], "node ({level}, {index})");
    }
    // An incomplete node cannot be computed.
    assert!(compute_nodes(&mut tables, &[(3, 70_000 / 8)]).await.is_err());
}

#[test]
fn the_frontier_produces_every_complete_node() {
    let leaves: Vec<Hash> = (0..11u64).map(|i| warden_merkle::leaf_hash(&i.to_be_bytes())).collect();
    let mut frontier = Frontier { size: 0, levels: Vec::new() };
    let mut nodes = HashMap::new();
    for leaf in &leaves {
        for (level, index, hash) in frontier.push(*leaf) {
            nodes.insert((level, index), hash);
        }
    }
    struct Stored(HashMap<(u32, u64), Hash>);
    impl warden_merkle::NodeSource for Stored {
        type Error = ();
        fn node(&mut self, level: u32, index: u64) -> Result<Hash, ()> {
            self.0.get(&(level, index)).copied().ok_or(())
        }
    }
    let mut stored = Stored(nodes);
    for size in 0..=11 {
        assert_eq!(
            warden_merkle::root_hash(&mut stored, size).unwrap(),
            warden_merkle::root_hash(&mut leaves.as_slice(), size).unwrap()
        );
    }
}

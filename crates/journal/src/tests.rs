use std::io::Write;

use proptest::prelude::*;

use super::*;

fn payload(i: u64) -> Vec<u8> {
    format!("record {i} {}", "x".repeat((i % 7) as usize * 10)).into_bytes()
}

async fn read_all(reader: &mut Reader) -> Vec<Record> {
    let mut records = Vec::new();
    while reader.pending() > records.len() as u64 {
        records.extend(reader.next_batch(1000).await.unwrap());
    }
    records
}

fn segment_files(dir: &Path) -> Vec<u64> {
    segments(dir).unwrap()
}

#[tokio::test]
async fn durable_appends_read_back_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, mut reader, recovery) = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovery, Recovery::default());
    for i in 0..20 {
        journal.append(payload(i), true).await.unwrap();
    }
    assert_eq!(journal.pending(), 20);
    let records = read_all(&mut reader).await;
    assert_eq!(records.iter().map(|r| r.sequence).collect::<Vec<_>>(), (0..20).collect::<Vec<_>>());
    assert_eq!(records[7].payload, payload(7));
    // Half consumed, then the process goes away.
    reader.consumed(10).unwrap();
    drop((journal, reader));

    let (journal, mut reader, recovery) = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovery.pending, 10);
    let records = read_all(&mut reader).await;
    assert_eq!(records.first().map(|r| r.sequence), Some(10));
    assert_eq!(records.len(), 10);
    journal.append(payload(20), true).await.unwrap();
    assert_eq!(reader.next_batch(10).await.unwrap(), vec![Record { sequence: 20, payload: payload(20) }]);
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_and_appends_continue_after_the_last_whole_record() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, reader, _) = Journal::open(dir.path(), Options::default()).unwrap();
    for i in 0..10 {
        journal.append(payload(i), true).await.unwrap();
    }
    drop((journal, reader));
    // A crash mid-write: the next record's header and half its payload.
    let segment = segment_path(dir.path(), 0);
    let mut torn = Vec::new();
    frame(&mut torn, 10, &payload(10));
    torn.truncate(torn.len() / 2);
    OpenOptions::new().append(true).open(&segment).unwrap().write_all(&torn).unwrap();

    let (journal, mut reader, recovery) = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovery.truncated_bytes, torn.len() as u64);
    assert_eq!(recovery.pending, 10);
    journal.append(b"after".to_vec(), true).await.unwrap();
    let records = read_all(&mut reader).await;
    assert_eq!(records.len(), 11);
    assert_eq!(records[10], Record { sequence: 10, payload: b"after".to_vec() });
}

#[tokio::test]
async fn a_record_failing_its_checksum_ends_the_log_there() {
    let dir = tempfile::tempdir().unwrap();
    let (journal, reader, _) = Journal::open(dir.path(), Options::default()).unwrap();
    for i in 0..5 {
        journal.append(payload(i), true).await.unwrap();
    }
    drop((journal, reader));
    // Flip a byte in the fourth record's payload.
    let segment = segment_path(dir.path(), 0);
    let mut bytes = std::fs::read(&segment).unwrap();
    let mut offset = 0;
    for i in 0..3 {
        offset += HEADER + payload(i).len();
    }
    bytes[offset + HEADER + 2] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();

    let (_journal, mut reader, recovery) = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovery.pending, 3);
    assert!(recovery.truncated_bytes > 0);
    let records = read_all(&mut reader).await;
    assert_eq!(records.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), (0..3).map(payload).collect::<Vec<_>>());
}

#[tokio::test]
async fn segments_roll_and_are_deleted_once_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { segment_bytes: 200, ..Options::default() };
    let (journal, mut reader, _) = Journal::open(dir.path(), options.clone()).unwrap();
    for i in 0..40 {
        journal.append(payload(i), true).await.unwrap();
    }
    assert!(segment_files(dir.path()).len() > 5, "{:?}", segment_files(dir.path()));
    let records = read_all(&mut reader).await;
    assert_eq!(records.len(), 40);
    reader.consumed(40).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 1, "only the active segment stays");
    assert_eq!(journal.pending(), 0);
    drop((journal, reader));

    // Numbering goes on after a reopen with nothing left to read.
    let (journal, mut reader, recovery) = Journal::open(dir.path(), options).unwrap();
    assert_eq!(recovery.pending, 0);
    journal.append(b"next".to_vec(), true).await.unwrap();
    assert_eq!(reader.next_batch(10).await.unwrap()[0].sequence, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_syncs_and_all_arrive_once() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { commit_delay: std::time::Duration::from_micros(100), ..Options::default() };
    let (journal, mut reader, _) = Journal::open(dir.path(), options).unwrap();
    let journal = Arc::new(journal);
    let mut tasks = Vec::new();
    for task in 0..32u64 {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                journal.append(format!("{task}-{i}").into_bytes(), i % 2 == 0).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut records = Vec::new();
    while records.len() < 1600 {
        records.extend(reader.next_batch(500).await.unwrap());
    }
    let unique: std::collections::HashSet<_> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(unique.len(), 1600);
    // Appends that queued while a group synced shared the next sync.
    assert!(journal.syncs() < 1600, "{} syncs for 1600 appends", journal.syncs());
    assert!(records.windows(2).all(|w| w[1].sequence == w[0].sequence + 1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Cut the file anywhere, as a crash may: what is recovered is exactly
    /// the records wholly before the cut.
    #[test]
    fn a_cut_anywhere_recovers_the_whole_records_before_it(count in 1u64..30, cut in 0.0f64..1.0) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let (journal, reader, _) = Journal::open(dir.path(), Options::default()).unwrap();
            for i in 0..count {
                journal.append(payload(i), true).await.unwrap();
            }
            drop((journal, reader));
            let segment = segment_path(dir.path(), 0);
            let length = std::fs::metadata(&segment).unwrap().len();
            let keep = (length as f64 * cut) as u64;
            OpenOptions::new().write(true).open(&segment).unwrap().set_len(keep).unwrap();
            let mut whole = 0;
            let mut end = 0u64;
            for i in 0..count {
                end += (HEADER + payload(i).len()) as u64;
                if end <= keep {
                    whole += 1;
                }
            }
            let (_journal, mut reader, recovery) = Journal::open(dir.path(), Options::default()).unwrap();
            assert_eq!(recovery.pending, whole);
            let records = read_all(&mut reader).await;
            assert_eq!(records.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), (0..whole).map(payload).collect::<Vec<_>>());
        });
    }
}

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

/// Where the records `range` (of [`payload`]) end in a segment that starts
/// with the first of them.
fn records_end(range: std::ops::Range<u64>) -> u64 {
    range.map(|i| (HEADER + payload(i).len()) as u64).sum()
}

/// A journal holding the durable records `0..count` (of [`payload`]),
/// closed as a stopped process leaves it: its directory and first segment.
async fn stopped_journal(count: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, reader, _) = Journal::open(dir.path(), Options::default()).unwrap();
    for i in 0..count {
        journal.append(payload(i), true).await.unwrap();
    }
    drop((journal, reader));
    let segment = segment_path(dir.path(), 0);
    (dir, segment)
}

#[tokio::test]
async fn segments_grow_in_zeroed_chunks_that_are_never_read_as_records() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options { preallocate: 4096, ..Options::default() };
    let (journal, reader, _) = Journal::open(dir.path(), options.clone()).unwrap();
    for i in 0..5 {
        journal.append(payload(i), true).await.unwrap();
    }
    let segment = segment_path(dir.path(), 0);
    // One chunk holds the five records; the rest of it is zeros.
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), 4096);
    // Enough records to need more chunks: the file grows a chunk at a time.
    for i in 5..100 {
        journal.append(payload(i), i % 10 == 0).await.unwrap();
    }
    journal.append(payload(100), true).await.unwrap();
    let end = records_end(0..101);
    let length = std::fs::metadata(&segment).unwrap().len();
    assert!(length >= end && length.is_multiple_of(4096) && length - end < 4096, "{length} bytes for {end} of records");
    drop((journal, reader));

    // A clean stop: the zeros are trimmed, nothing is reported torn.
    let (journal, mut reader, recovery) = Journal::open(dir.path(), options).unwrap();
    assert_eq!(recovery, Recovery { pending: 101, ..Recovery::default() });
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), end);
    journal.append(b"after".to_vec(), true).await.unwrap();
    let records = read_all(&mut reader).await;
    assert_eq!(records.len(), 102);
    assert_eq!(records[100].payload, payload(100));
    assert_eq!(records[101], Record { sequence: 101, payload: b"after".to_vec() });
}

#[tokio::test]
async fn appends_nobody_waits_on_are_written_at_once_and_synced_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that a stalled thread on a busy machine does not let a
    // lazy sync fall between the two appends at the end.
    let options = Options { sync_within: std::time::Duration::from_millis(250), ..Options::default() };
    let (journal, mut reader, _) = Journal::open(dir.path(), options.clone()).unwrap();
    for i in 0..200 {
        journal.append(payload(i), false).await.unwrap();
    }
    // Readable as soon as written, before any sync.
    let mut records = Vec::new();
    while records.len() < 200 {
        records.extend(reader.next_batch(500).await.unwrap());
    }
    assert_eq!(records.len(), 200);
    // Synced alone once the bound has passed, with nothing else coming.
    let waited = std::time::Instant::now();
    while journal.stats().syncs == 0 {
        assert!(waited.elapsed() < std::time::Duration::from_secs(10), "never synced");
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    assert!(journal.stats().syncs < 20, "{} syncs for 200 appends nobody waited on", journal.stats().syncs);
    // An append that waits syncs at once, and takes earlier ones with it.
    let before = journal.stats().syncs;
    journal.append(payload(200), false).await.unwrap();
    journal.append(payload(201), true).await.unwrap();
    assert_eq!(journal.stats().syncs, before + 1);
    drop((journal, reader));
    let (_journal, mut reader, recovery) = Journal::open(dir.path(), options).unwrap();
    assert_eq!(recovery.pending, 202);
    assert_eq!(read_all(&mut reader).await.last().map(|r| r.payload.clone()), Some(payload(201)));
}

#[tokio::test]
async fn a_group_that_reached_the_disk_in_part_is_dropped_whole() {
    let (dir, segment) = stopped_journal(3).await;
    // A crash mid-group: the group's second record reached the disk, its
    // first did not (zeros where it belongs). Neither was acknowledged.
    let mut group = Vec::new();
    frame(&mut group, 3, &payload(3));
    let first = group.len() as u64;
    group.clear();
    frame(&mut group, 4, &payload(4));
    let end = records_end(0..3);
    OpenOptions::new().write(true).open(&segment).unwrap().write_all_at(&group, end + first).unwrap();

    let (journal, reader, recovery) = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovery.pending, 3);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), end);
    // The sequence goes on from the last whole record; the stray record 4
    // is gone and cannot reappear behind the new ones.
    journal.append(b"a".to_vec(), true).await.unwrap();
    journal.append(b"b".to_vec(), true).await.unwrap();
    drop((journal, reader));
    let (_journal, mut reader, recovery) = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovery.pending, 5);
    let records = read_all(&mut reader).await;
    let payloads: Vec<Vec<u8>> = records.iter().map(|r| r.payload.clone()).collect();
    assert_eq!(payloads, vec![payload(0), payload(1), payload(2), b"a".to_vec(), b"b".to_vec()]);
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
    let (dir, segment) = stopped_journal(10).await;
    // A crash mid-write: the next record's header and half its payload,
    // after the last whole record (in the preallocated zeros).
    let mut torn = Vec::new();
    frame(&mut torn, 10, &payload(10));
    torn.truncate(torn.len() / 2);
    let end = records_end(0..10);
    OpenOptions::new().write(true).open(&segment).unwrap().write_all_at(&torn, end).unwrap();
    let length = std::fs::metadata(&segment).unwrap().len();

    let (journal, mut reader, recovery) = Journal::open(dir.path(), Options::default()).unwrap();
    assert_eq!(recovery.truncated_bytes, length - end);
    assert_eq!(recovery.pending, 10);
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), end, "cut at the last whole record");
    journal.append(b"after".to_vec(), true).await.unwrap();
    let records = read_all(&mut reader).await;
    assert_eq!(records.len(), 11);
    assert_eq!(records[10], Record { sequence: 10, payload: b"after".to_vec() });
}

#[tokio::test]
async fn a_record_failing_its_checksum_ends_the_log_there() {
    let (dir, segment) = stopped_journal(5).await;
    // Flip a byte in the fourth record's payload.
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
    assert!(journal.stats().syncs < 1600, "{} syncs for 1600 appends", journal.stats().syncs);
    assert!(records.windows(2).all(|w| w[1].sequence == w[0].sequence + 1));
}

/// A commit delay serves load: a lone caller's appends are synced at once,
/// however long the delay.
#[tokio::test]
async fn a_lone_caller_never_waits_for_the_commit_delay() {
    let dir = tempfile::tempdir().unwrap();
    let hour = std::time::Duration::from_secs(3600);
    let options = Options { commit_delay: hour, commit_siblings: 2, ..Options::default() };
    let (journal, mut reader, _) = Journal::open(dir.path(), options).unwrap();
    for i in 0..20 {
        // Held for the delay, the first append would not return for an hour.
        let appended = tokio::time::timeout(std::time::Duration::from_secs(60), journal.append(payload(i), true));
        appended.await.expect("synced without the commit delay").unwrap();
    }
    assert_eq!(journal.stats().syncs, 20);
    assert_eq!(read_all(&mut reader).await.len(), 20);
}

/// Under load the delay is taken: the writer rests for the delay after
/// each sync, and an append waits for the ones that arrive during the rest.
/// `commit_siblings: 1` counts every caller as load: with 2, whether 32
/// appends at once share syncs depends on how fast the disk syncs (on a
/// fast one, the writer keeps up with them one or two at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_load_an_append_waits_for_the_ones_that_follow() {
    let dir = tempfile::tempdir().unwrap();
    let delay = std::time::Duration::from_secs(1);
    let options = Options { commit_delay: delay, commit_siblings: 1, ..Options::default() };
    let (journal, mut reader, _) = Journal::open(dir.path(), options).unwrap();
    let journal = Arc::new(journal);
    let append_all = |appends: Vec<u64>, apart: std::time::Duration| {
        let journal = journal.clone();
        async move {
            let mut tasks = Vec::new();
            for i in appends {
                let journal = journal.clone();
                tasks.push(tokio::spawn(async move { journal.append(payload(i), true).await.unwrap() }));
                if !apart.is_zero() {
                    tokio::time::sleep(apart).await;
                }
            }
            for task in tasks {
                task.await.unwrap();
            }
        }
    };
    // Load: 32 callers at once share syncs.
    append_all((0..32).collect(), std::time::Duration::ZERO).await;
    let before = journal.stats().syncs;
    assert!(before <= 2, "{before} syncs for 32 appends at once");
    // The writer rests from the last sync on: an append half-way through
    // the rest waits for the rest of it, not for a delay of its own.
    tokio::time::sleep(delay / 2).await;
    let started = std::time::Instant::now();
    journal.append(payload(99), true).await.unwrap();
    let waited = started.elapsed();
    assert!(waited < delay * 9 / 10, "waited {waited:?}: a delay of its own is {delay:?}");
    let before = journal.stats().syncs;
    // Then 16 appends a millisecond apart: each would sync alone; the
    // first waits the delay instead, and the others join its sync.
    append_all((100..116).collect(), std::time::Duration::from_millis(1)).await;
    let staggered = journal.stats().syncs - before;
    assert!(staggered <= 3, "{staggered} syncs for 16 appends a millisecond apart");
    assert_eq!(read_all(&mut reader).await.len(), 49);
}

/// With `busy`, the rest after a sync lasts while more appenders are at
/// work than wait, up to `max_commit_delay`: appends spread over that time
/// share one sync. When nobody else is at work, the rest is the commit
/// delay and they sync apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_waits_for_appenders_still_at_work_up_to_the_longest_delay() {
    let syncs_for_spread_appends = |at_work: usize| async move {
        let dir = tempfile::tempdir().unwrap();
        let busy = Arc::new(std::sync::atomic::AtomicUsize::new(at_work));
        let options = Options {
            commit_delay: std::time::Duration::from_millis(5),
            commit_siblings: 1,
            busy: Some(busy),
            max_commit_delay: std::time::Duration::from_millis(400),
            ..Options::default()
        };
        let (journal, _reader, _) = Journal::open(dir.path(), options).unwrap();
        let journal = Arc::new(journal);
        // Under load from the first group on.
        journal.append(payload(0), true).await.unwrap();
        let before = journal.stats().syncs;
        let mut tasks = Vec::new();
        for i in 1..=10 {
            let journal = journal.clone();
            tasks.push(tokio::spawn(async move { journal.append(payload(i), true).await.unwrap() }));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        for task in tasks {
            task.await.unwrap();
        }
        journal.stats().syncs - before
    };
    let shared = syncs_for_spread_appends(1000).await;
    assert!(shared <= 2, "{shared} syncs for 10 appends while 1,000 were at work");
    let apart = syncs_for_spread_appends(0).await;
    assert!(apart >= 4, "{apart} syncs for 10 appends 10 ms apart with nobody else at work");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Cut the file anywhere, as a crash may: what is recovered is exactly
    /// the records wholly before the cut.
    #[test]
    fn a_cut_anywhere_recovers_the_whole_records_before_it(count in 1u64..30, cut in 0.0f64..1.0) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (dir, segment) = stopped_journal(count).await;
            let length = records_end(0..count);
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

/// With a write window, appends that do not wait queue while the writer
/// rests after a group nobody waited on, and go to disk as one group; one
/// that waits comes back once the rest is over.
#[tokio::test]
async fn appends_that_do_not_wait_are_written_in_groups_after_the_write_window() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough for the 50 appends below to queue during the rest even
    // when this thread stalls on a busy machine.
    let window = std::time::Duration::from_secs(1);
    let options = Options { write_window: window, ..Options::default() };
    let (journal, mut reader, _) = Journal::open(dir.path(), options).unwrap();
    journal.append(payload(0), false).await.unwrap();
    // The first group is written; the writer now rests for the window.
    while journal.stats().groups < 1 {
        tokio::task::yield_now().await;
    }
    for i in 1..50 {
        journal.append(payload(i), false).await.unwrap();
    }
    tokio::time::timeout(std::time::Duration::from_secs(60), journal.append(payload(50), true))
        .await
        .expect("the waiting append is written after the window")
        .unwrap();
    assert_eq!(journal.stats().groups, 2, "the 50 appends queued during the rest are one group");
    assert_eq!(read_all(&mut reader).await.len(), 51);
}

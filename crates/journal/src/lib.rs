//! A durable append-only journal of opaque records: the policy engine's
//! decision log keeps decisions here until the audit service has them.
//!
//! - Records go to segment files (`{first sequence:020}.seg`) in one
//!   directory, each record framed as `length u32 | crc32 u32 | sequence u64
//!   | payload`, little-endian, the checksum covering sequence and payload.
//! - One writer thread owns the active segment. It takes every append
//!   waiting, writes them with one `write`, and makes them durable with one
//!   `fdatasync` (group commit); appends that arrive meanwhile form the next
//!   group. [`Journal::append`] with `durable` returns only after that sync.
//!   A group of appends that do not wait for durability is written without
//!   a sync: it reaches the disk with the next group that syncs, or alone
//!   once [`Options::sync_within`] has passed (a sync per group cost a core
//!   in syncs alone under load, for appends nobody waits on).
//! - A segment grows in zero-filled chunks ([`Options::preallocate`])
//!   written in the same `write` as the group that needs them, so most
//!   syncs overwrite blocks the file already has: the file system has no
//!   size or allocation change to journal, and an `fdatasync` costs a data
//!   flush alone (on ext4 here, appending groups at the end of the file
//!   averaged 0.6 to 3 ms per sync, overwriting preallocated blocks 0.14
//!   ms). A header of zeros ends a segment's records.
//! - On open, every segment is checked record by record; a torn tail (a
//!   record cut short or failing its checksum, as a crash mid-write leaves)
//!   and whatever follows the last whole record in the last segment
//!   (preallocated zeros, or parts of an unacknowledged group) are
//!   truncated away, so appends continue after the last whole record.
//! - One [`Reader`] consumes records in order. [`Reader::consumed`] moves
//!   its cursor (kept in the file `cursor`) and deletes the segments wholly
//!   before it. The cursor file is written without a sync: after a crash
//!   the reader may see a few records again, never miss one, so consumers
//!   must be idempotent (the audit service deduplicates by event id).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot, watch};

const HEADER: usize = 16;
/// Larger lengths are corruption, not records.
const MAX_RECORD: u32 = 64 << 20;
const SUFFIX: &str = ".seg";

/// How a journal is laid out and queued.
#[derive(Debug, Clone)]
pub struct Options {
    /// A segment is closed and a new one started once it holds this many
    /// bytes.
    pub segment_bytes: u64,
    /// Appends queued for the writer before [`Journal::append`] waits.
    pub queue: usize,
    /// How long the writer waits for more appends to join a group before
    /// it syncs (as PostgreSQL's `commit_delay`): fewer, larger syncs, for
    /// that much latency. Zero syncs at once. Under load the writer rests
    /// this long right after each group it synced, then takes everything
    /// queued meanwhile: the next group's first append neither wakes it
    /// nor starts a delay of its own (`bench policy --decision-log sync`:
    /// each decision waited 0.4 ms for its sync instead of 0.8 to 1.0 ms,
    /// 0.65 to 0.67 of off instead of 0.55 to 0.62).
    pub commit_delay: std::time::Duration,
    /// The writer waits [`Options::commit_delay`] only while recent groups
    /// held at least this many appends waiting for their sync, on average
    /// (as PostgreSQL's `commit_siblings`): under load, when more are
    /// surely coming. A lone caller's append is then synced at once. One
    /// or less: always.
    pub commit_siblings: usize,
    /// The segment file grows by this many bytes of zeros at a time, ahead
    /// of the records. Zero grows it with each group.
    pub preallocate: u64,
    /// Appends that do not wait for durability are on disk within this
    /// long (a process crash loses none of them once written; a power
    /// loss, at most this much). Zero syncs every group.
    pub sync_within: std::time::Duration,
    /// After writing a group that nobody waits on, the writer rests this
    /// long before it takes the next: appends that do not wait then queue
    /// without waking it one by one (each wake is a context switch on the
    /// appending core and on the writer's; under load they cost a fifth of
    /// the CPU), and are written in groups. A process crash may lose what
    /// is queued meanwhile, and an append that waits may wait this much
    /// longer if it comes during the rest. Zero: no rest.
    pub write_window: std::time::Duration,
    /// How many operations the appending process has under way that will
    /// append (its requests in flight). With it, the writer's rest under
    /// load lasts while more of them are still at work than wait for the
    /// sync, up to [`Options::max_commit_delay`]: at saturation a group
    /// then holds everything that arrived meanwhile, and the cost of a
    /// sync (on a virtual machine, an exit to the hypervisor and a
    /// completion interrupt) is shared by more appends, while the waiting
    /// ones cost no throughput because the cores have the others' work.
    /// Without it (or when few are under way) the rest is the commit delay.
    pub busy: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// The longest rest under load (see [`Options::busy`]).
    pub max_commit_delay: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            segment_bytes: 64 << 20,
            queue: 65_536,
            commit_delay: std::time::Duration::ZERO,
            commit_siblings: 1,
            preallocate: 256 << 10,
            sync_within: std::time::Duration::from_millis(50),
            write_window: std::time::Duration::ZERO,
            busy: None,
            max_commit_delay: std::time::Duration::from_millis(2),
        }
    }
}

/// What opening found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Whole records not yet consumed.
    pub pending: u64,
    /// Bytes cut from the end of the last segment (a torn write).
    pub truncated_bytes: u64,
    /// Records lost inside older segments (corruption, not a crash).
    pub corrupt_segments: Vec<PathBuf>,
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// Groups' waiters and their result, for the notifier task.
type Notice = (Vec<Waiter>, Result<(), String>);

struct Job {
    payload: Vec<u8>,
    done: Option<Waiter>,
}

struct Shared {
    /// The reader's cursor: records before it are consumed.
    consumed: AtomicU64,
    /// Groups written and synced.
    syncs: AtomicU64,
    /// Groups written, synced or not.
    groups: AtomicU64,
    /// Records written since the journal opened.
    records: AtomicU64,
    /// Time in `fdatasync`, and in handing results to the appends that
    /// waited for them, in nanoseconds.
    sync_nanos: AtomicU64,
    notify_nanos: AtomicU64,
}

/// The writer's work since the journal opened: what group commit shares
/// and what it costs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records written.
    pub records: u64,
    /// Groups written (one `write` each).
    pub groups: u64,
    /// `fdatasync` calls (records per sync is what group commit saves).
    pub syncs: u64,
    /// Time spent in `fdatasync`.
    pub sync_time: std::time::Duration,
    /// Time spent waking the appends that waited for their sync.
    pub notify_time: std::time::Duration,
}

/// The writing side; cheap to share behind an `Arc`.
pub struct Journal {
    jobs: mpsc::Sender<Job>,
    written: watch::Receiver<u64>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("pending", &self.pending()).finish()
    }
}

/// The consuming side: records in order, from the cursor on.
pub struct Reader {
    dir: PathBuf,
    written: watch::Receiver<u64>,
    shared: Arc<Shared>,
    /// The next record to hand out.
    next: u64,
    /// The segment being read: its first sequence, file and read offset.
    segment: Option<(u64, File, u64)>,
    /// Segments read to their end: (first sequence, first sequence of the
    /// segment after it).
    finished: VecDeque<(u64, u64)>,
}

/// One record handed to the reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub sequence: u64,
    pub payload: Vec<u8>,
}

fn segment_path(dir: &Path, start: u64) -> PathBuf {
    dir.join(format!("{start:020}{SUFFIX}"))
}

/// The segments in `dir`, by first sequence.
fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if let Some(start) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)).and_then(|n| n.parse::<u64>().ok()) {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn frame(buf: &mut Vec<u8>, sequence: u64, payload: &[u8]) {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&sequence.to_le_bytes());
    crc.update(payload);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc.finalize().to_le_bytes());
    buf.extend_from_slice(&sequence.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Reads the record at `offset`: `Ok(None)` at a clean end (the end of the
/// file, or a header of zeros: preallocated space; no record's header is
/// all zeros, as its checksum covers its sequence), `Err` for a record cut
/// short or failing its checksum.
fn read_record(file: &File, offset: u64, expected: u64) -> Result<Option<(Record, u64)>, String> {
    let mut header = [0u8; HEADER];
    match read_full(file, &mut header, offset) {
        Ok(0) => return Ok(None),
        Ok(HEADER) if header == [0u8; HEADER] => return Ok(None),
        Ok(HEADER) => {}
        Ok(n) => return Err(format!("a record header cut short at {n} of {HEADER} bytes")),
        Err(error) => return Err(error.to_string()),
    }
    let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    let sequence = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    if length > MAX_RECORD {
        return Err(format!("a record length of {length} bytes"));
    }
    let mut payload = vec![0u8; length as usize];
    match read_full(file, &mut payload, offset + HEADER as u64) {
        Ok(n) if n == payload.len() => {}
        Ok(n) => return Err(format!("a record cut short at {n} of {length} bytes")),
        Err(error) => return Err(error.to_string()),
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&sequence.to_le_bytes());
    hasher.update(&payload);
    if hasher.finalize() != crc {
        return Err("a record failing its checksum".into());
    }
    if sequence != expected {
        return Err(format!("record {sequence} where {expected} was due"));
    }
    Ok(Some((Record { sequence, payload }, offset + HEADER as u64 + u64::from(length))))
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn read_cursor(dir: &Path) -> io::Result<Option<u64>> {
    match std::fs::read_to_string(dir.join("cursor")) {
        Ok(text) => Ok(text.trim().parse().ok()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, repairs a torn tail, and
    /// starts the writer thread.
    pub fn open(dir: &Path, options: Options) -> io::Result<(Journal, Reader, Recovery)> {
        std::fs::create_dir_all(dir)?;
        let mut recovery = Recovery::default();
        let mut starts = segments(dir)?;
        let mut cursor = read_cursor(dir)?.unwrap_or(0);
        // Segments wholly consumed whose deletion a crash interrupted.
        while starts.len() > 1 && starts[1] <= cursor {
            std::fs::remove_file(segment_path(dir, starts.remove(0)))?;
        }
        if let Some(&first) = starts.first() {
            cursor = cursor.max(first);
        }
        // Check every segment; the end of the last whole record is where
        // appends continue.
        let mut next = cursor;
        let mut active: Option<(u64, File, u64)> = None;
        for (i, &start) in starts.iter().enumerate() {
            let path = segment_path(dir, start);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let length = file.metadata()?.len();
            let mut offset = 0u64;
            let mut expected = start;
            let failure = loop {
                match read_record(&file, offset, expected) {
                    Ok(Some((_, end))) => {
                        offset = end;
                        expected += 1;
                    }
                    Ok(None) => break None,
                    Err(reason) => break Some(reason),
                }
            };
            let last = i + 1 == starts.len();
            if let Some(reason) = &failure {
                if last {
                    tracing::warn!(segment = %path.display(), offset, bytes = length - offset, %reason, "truncating a torn journal tail");
                    recovery.truncated_bytes = length - offset;
                } else {
                    tracing::error!(segment = %path.display(), offset, %reason, "journal segment corrupt; records after the offset are lost");
                    recovery.corrupt_segments.push(path.clone());
                }
            }
            // The last segment ends at its last whole record: preallocated
            // zeros go too, and with them anything of a group that was
            // being written when the process stopped (never acknowledged).
            if failure.is_some() || (last && length > offset) {
                file.set_len(offset)?;
                file.sync_all()?;
            }
            next = next.max(expected);
            if last {
                active = Some((start, file, offset));
            }
        }
        let active = match active {
            Some(active) => active,
            None => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(segment_path(dir, next))?;
                sync_dir(dir)?;
                (next, file, 0)
            }
        };
        recovery.pending = next.saturating_sub(cursor);
        let shared = Arc::new(Shared {
            consumed: AtomicU64::new(cursor),
            syncs: AtomicU64::new(0),
            groups: AtomicU64::new(0),
            records: AtomicU64::new(0),
            sync_nanos: AtomicU64::new(0),
            notify_nanos: AtomicU64::new(0),
        });
        let (written_tx, written) = watch::channel(next);
        let (jobs, queue) = mpsc::channel(options.queue.max(1));
        let writer = Writer {
            dir: dir.to_owned(),
            options,
            allocated: active.2,
            active,
            next,
            written: written_tx,
            buf: Vec::new(),
            shared: shared.clone(),
            unsynced_since: None,
            waiting_per_group: 0.0,
            notifier: tokio::runtime::Handle::try_current().ok().map(|runtime| {
                let (notices, mut received) = mpsc::unbounded_channel::<Notice>();
                runtime.spawn(async move {
                    while let Some((waiters, result)) = received.recv().await {
                        for done in waiters {
                            let _ = done.send(result.clone());
                        }
                    }
                });
                notices
            }),
        };
        std::thread::Builder::new().name("warden-journal".into()).spawn(move || writer.run(queue))?;
        let reader = Reader {
            dir: dir.to_owned(),
            written: written.clone(),
            shared: shared.clone(),
            next: cursor,
            segment: None,
            finished: VecDeque::new(),
        };
        Ok((Journal { jobs, written, shared }, reader, recovery))
    }

    /// Appends one record. With `durable`, returns once it is on disk
    /// (`fdatasync`ed, shared with every append waiting at the time);
    /// without, once it is queued (written within the next group).
    pub async fn append(&self, payload: Vec<u8>, durable: bool) -> io::Result<()> {
        if !durable {
            return self.jobs.send(Job { payload, done: None }).await.map_err(|_| stopped());
        }
        let (done, synced) = oneshot::channel();
        self.jobs.send(Job { payload, done: Some(done) }).await.map_err(|_| stopped())?;
        match synced.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(io::Error::other(error)),
            Err(_) => Err(stopped()),
        }
    }

    /// Queues one record without waiting; `false` when the queue is full or
    /// the writer has stopped.
    pub fn try_append(&self, payload: Vec<u8>) -> bool {
        self.jobs.try_send(Job { payload, done: None }).is_ok()
    }

    /// Records written and not yet consumed.
    pub fn pending(&self) -> u64 {
        self.written.borrow().saturating_sub(self.shared.consumed.load(Ordering::Acquire))
    }

    /// The writer's counters since the journal opened.
    pub fn stats(&self) -> Stats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            records: load(&self.shared.records),
            groups: load(&self.shared.groups),
            syncs: load(&self.shared.syncs),
            sync_time: std::time::Duration::from_nanos(load(&self.shared.sync_nanos)),
            notify_time: std::time::Duration::from_nanos(load(&self.shared.notify_nanos)),
        }
    }

    /// Appends queued for the writer and not yet written.
    pub fn queued(&self) -> u64 {
        (self.jobs.max_capacity() - self.jobs.capacity()) as u64
    }
}

/// Moves queued appends into `group`, up to 8 MiB.
fn drain(queue: &mut mpsc::Receiver<Job>, group: &mut Vec<Job>, bytes: &mut usize) {
    while *bytes < 8 << 20 {
        match queue.try_recv() {
            Ok(job) => {
                *bytes += job.payload.len();
                group.push(job);
            }
            Err(_) => break,
        }
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the journal writer has stopped")
}

struct Writer {
    dir: PathBuf,
    options: Options,
    /// First sequence, file, and length of the active segment's records.
    active: (u64, File, u64),
    /// The active segment file's length: its records and the zeros after
    /// them.
    allocated: u64,
    /// The sequence the next record gets.
    next: u64,
    written: watch::Sender<u64>,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    /// Since when the active segment holds records written and not synced.
    unsynced_since: Option<std::time::Instant>,
    /// Appends waiting for their sync per group, smoothed over recent
    /// groups (see [`Options::commit_siblings`]).
    waiting_per_group: f64,
    /// The notifier task on the runtime that opened the journal.
    notifier: Option<mpsc::UnboundedSender<Notice>>,
}

impl Writer {
    fn run(self, queue: mpsc::Receiver<Job>) {
        // A runtime of this thread's own, for the one timed wait (a lazy
        // sync once no group comes); every file operation stays blocking.
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start the journal writer");
                return;
            }
        };
        runtime.block_on(self.write(queue));
    }

    async fn write(mut self, mut queue: mpsc::Receiver<Job>) {
        let mut group = Vec::new();
        // Under load: rest for the commit delay before taking the next
        // group, rather than be woken by its first append and rest then.
        let mut rest_first = false;
        loop {
            let rested = if rest_first {
                self.rest(&queue);
                queue.try_recv().ok()
            } else {
                None
            };
            let after_rest = rested.is_some();
            let next = match (rested, self.unsynced_since) {
                (Some(job), _) => Some(job),
                (None, None) => queue.recv().await,
                (None, Some(since)) => {
                    let due = tokio::time::Instant::from_std(since + self.options.sync_within);
                    match tokio::time::timeout_at(due, queue.recv()).await {
                        Ok(next) => next,
                        Err(_) => {
                            self.sync_lazily();
                            continue;
                        }
                    }
                }
            };
            let Some(first) = next else { break };
            group.push(first);
            // Everything that queued while the last group synced, and with
            // a commit delay (under load), what arrives during it.
            let mut bytes = group[0].payload.len();
            drain(&mut queue, &mut group, &mut bytes);
            let waiting = group.iter().filter(|job| job.done.is_some()).count();
            if waiting > 0 {
                // Smoothed over recent groups: right after a large group's
                // sync its callers are still on their way back, and the one
                // small group that forms meanwhile must not end the delays.
                self.waiting_per_group = 0.75 * self.waiting_per_group + 0.25 * waiting as f64;
            }
            let loaded =
                self.options.commit_siblings <= 1 || self.waiting_per_group >= self.options.commit_siblings as f64;
            let delay = !self.options.commit_delay.is_zero() && waiting > 0 && loaded;
            if delay && !after_rest && bytes < 8 << 20 {
                std::thread::sleep(self.options.commit_delay);
                drain(&mut queue, &mut group, &mut bytes);
            }
            rest_first = delay;
            let sync = self.options.sync_within.is_zero()
                || group.iter().any(|job| job.done.is_some())
                || self.unsynced_since.is_some_and(|since| since.elapsed() >= self.options.sync_within);
            let result = self.commit(&group, sync).map_err(|error| {
                tracing::error!(%error, records = group.len(), "cannot write the journal");
                error.to_string()
            });
            let notifying = std::time::Instant::now();
            let waiters: Vec<Waiter> = group.drain(..).filter_map(|job| job.done).collect();
            if !waiters.is_empty() {
                self.notify(waiters, result);
            }
            if waiting > 0 {
                self.shared.notify_nanos.fetch_add(notifying.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            if waiting == 0 && !self.options.write_window.is_zero() {
                std::thread::sleep(self.options.write_window);
            }
        }
        // Every sender is gone: what was written goes to disk.
        self.sync_lazily();
    }

    /// The rest after a group synced under load: the commit delay, and
    /// while more appenders are at work than wait (see [`Options::busy`]),
    /// more of it, up to the longest.
    fn rest(&self, queue: &mpsc::Receiver<Job>) {
        let started = std::time::Instant::now();
        let step = self.options.commit_delay;
        loop {
            std::thread::sleep(step);
            let Some(busy) = &self.options.busy else { return };
            let waiting = queue.len();
            let working = busy.load(Ordering::Relaxed).saturating_sub(waiting);
            if working <= waiting || started.elapsed() + step > self.options.max_commit_delay {
                return;
            }
        }
    }

    /// Hands a group's result to the appends that waited for it: through
    /// the notifier task on the appenders' runtime when there is one (one
    /// wake-up from this thread per group; the task then wakes each append
    /// from a worker thread, onto its own run queue), else directly.
    fn notify(&self, waiters: Vec<Waiter>, result: Result<(), String>) {
        let waiters = match &self.notifier {
            Some(notifier) => match notifier.send((waiters, result.clone())) {
                Ok(()) => return,
                // The runtime is gone (shutting down): wake them from here.
                Err(mpsc::error::SendError((waiters, _))) => waiters,
            },
            None => waiters,
        };
        for done in waiters {
            let _ = done.send(result.clone());
        }
    }

    /// Syncs records written without a sync, if any.
    fn sync_lazily(&mut self) {
        if self.unsynced_since.take().is_some() {
            self.shared.syncs.fetch_add(1, Ordering::Relaxed);
            if let Err(error) = self.active.1.sync_data() {
                tracing::error!(%error, "cannot sync the journal");
            }
        }
    }

    /// Writes a group, and syncs it (with whatever was written unsynced
    /// before it) when `sync`.
    fn commit(&mut self, group: &[Job], sync: bool) -> io::Result<()> {
        if sync {
            self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        }
        if self.active.2 >= self.options.segment_bytes {
            self.roll()?;
        }
        self.buf.clear();
        for (i, job) in group.iter().enumerate() {
            frame(&mut self.buf, self.next + i as u64, &job.payload);
        }
        let records = self.buf.len() as u64;
        let (_, file, length) = &mut self.active;
        let end = *length + records;
        // Past the zeros already in the file: the next chunk of them goes
        // in this same write (one size change per chunk, not per group).
        let preallocate = self.options.preallocate;
        if preallocate > 0 && end > self.allocated {
            let allocated = end.div_ceil(preallocate) * preallocate;
            self.buf.resize(self.buf.len() + (allocated - end) as usize, 0);
        }
        let shared = &self.shared;
        let written = file.write_all_at(&self.buf, *length).and_then(|()| {
            if !sync {
                return Ok(());
            }
            let syncing = std::time::Instant::now();
            let synced = file.sync_data();
            shared.sync_nanos.fetch_add(syncing.elapsed().as_nanos() as u64, Ordering::Relaxed);
            synced
        });
        if let Err(error) = written {
            // Whatever reached the file is not acknowledged: cut it off so
            // the next group starts at a record boundary.
            let _ = file.set_len(*length);
            self.allocated = *length;
            return Err(error);
        }
        self.allocated = self.allocated.max(*length + self.buf.len() as u64);
        *length = end;
        if sync {
            self.unsynced_since = None;
        } else if self.unsynced_since.is_none() {
            self.unsynced_since = Some(std::time::Instant::now());
        }
        self.next += group.len() as u64;
        self.shared.groups.fetch_add(1, Ordering::Relaxed);
        self.shared.records.fetch_add(group.len() as u64, Ordering::Relaxed);
        self.written.send_replace(self.next);
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        // The segment being closed keeps no unsynced records behind.
        if self.unsynced_since.is_some() {
            self.active.1.sync_data()?;
            self.unsynced_since = None;
        }
        let path = segment_path(&self.dir, self.next);
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        sync_dir(&self.dir)?;
        self.active = (self.next, file, 0);
        self.allocated = 0;
        Ok(())
    }
}

impl Reader {
    /// Waits until at least one record past the cursor exists, then returns
    /// up to `max` of them, in order. Call [`Reader::consumed`] once they
    /// are handled; until then the next call returns records after these.
    pub async fn next_batch(&mut self, max: usize) -> io::Result<Vec<Record>> {
        loop {
            let written = *self.written.borrow_and_update();
            if self.next < written {
                return self.read(written, max.max(1));
            }
            if self.written.changed().await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    fn read(&mut self, written: u64, max: usize) -> io::Result<Vec<Record>> {
        let mut records = Vec::new();
        while self.next < written && records.len() < max {
            let (start, file, offset) = match &mut self.segment {
                Some(segment) => segment,
                None => {
                    let segment = self.open_segment()?;
                    self.segment.insert(segment)
                }
            };
            match read_record(file, *offset, self.next) {
                Ok(Some((record, end))) => {
                    *offset = end;
                    self.next += 1;
                    records.push(record);
                }
                Ok(None) => {
                    // This segment is done; the next one starts here.
                    let start = *start;
                    self.segment = None;
                    self.finished.push_back((start, self.next));
                    let following = segments(&self.dir)?.into_iter().find(|&s| s >= self.next);
                    match following {
                        Some(following) if following > self.next => {
                            tracing::error!(from = self.next, to = following, "journal records lost to corruption");
                            self.next = following;
                        }
                        Some(_) => {}
                        None => {
                            return Err(io::Error::other(format!("journal segment for record {} missing", self.next)));
                        }
                    }
                }
                Err(reason) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("journal segment {start:020}: {reason} at offset {offset}"),
                    ));
                }
            }
        }
        Ok(records)
    }

    /// The segment holding `self.next`, positioned at that record.
    fn open_segment(&mut self) -> io::Result<(u64, File, u64)> {
        let starts = segments(&self.dir)?;
        let Some(&start) = starts.iter().rev().find(|&&s| s <= self.next).or(starts.first()) else {
            return Err(io::Error::other("the journal has no segments"));
        };
        if start > self.next {
            tracing::error!(from = self.next, to = start, "journal records lost to corruption");
            self.next = start;
        }
        let file = File::open(segment_path(&self.dir, start))?;
        let (mut offset, mut sequence) = (0, start);
        while sequence < self.next {
            match read_record(&file, offset, sequence) {
                Ok(Some((_, end))) => {
                    offset = end;
                    sequence += 1;
                }
                _ => break,
            }
        }
        self.next = sequence;
        Ok((start, file, offset))
    }

    /// Marks every record before `sequence` consumed: the cursor moves there
    /// and segments wholly before it are deleted.
    pub fn consumed(&mut self, sequence: u64) -> io::Result<()> {
        self.shared.consumed.fetch_max(sequence, Ordering::AcqRel);
        let temporary = self.dir.join("cursor.tmp");
        {
            let mut file = File::create(&temporary)?;
            file.write_all(sequence.to_string().as_bytes())?;
        }
        std::fs::rename(&temporary, self.dir.join("cursor"))?;
        while let Some(&(start, end)) = self.finished.front() {
            if end > sequence {
                break;
            }
            self.finished.pop_front();
            match std::fs::remove_file(segment_path(&self.dir, start)) {
                Ok(()) => tracing::debug!(segment = start, "journal segment consumed and deleted"),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Records written and not yet consumed.
    pub fn pending(&self) -> u64 {
        self.written.borrow().saturating_sub(self.shared.consumed.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests;

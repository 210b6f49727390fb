//! The single writer: group commit, pipelined with the sync.
//!
//! The writer thread takes every append waiting in the queue (up to the group limits),
//! checks each in arrival order against the stored state plus what the earlier appends
//! of the same group will write, writes the group's chunks to the journal and its
//! hands the group to the syncer thread as soon as the journal has it, then writes its
//! entries to sled. The syncer takes every group handed to it, fdatasyncs the journal
//! once, waits until sled holds those groups too (readers must find every event up to
//! the head they see), publishes the new durable head and answers them all. The sync
//! overlaps the writer's sled inserts of the same group and its checks of the next one,
//! so the disk's sync latency overlaps the CPU work instead of adding to it.
//!
//! A rejected append changes nothing. Every answer — accepted, idempotent re-send or
//! rejected — is given only after a sync that covers the state it was checked against:
//! a rejection can depend on unsynced events too (the actual revision it reports, the
//! event an id conflicts with), and those may vanish in a crash. Reads never go past
//! the durable head, so nothing written but not yet synced is ever visible. The writer
//! checks against written-but-unsynced state, which is right: syncs complete in order,
//! so that state is durable before any later acknowledgement.

use std::fs::File;
use std::sync::{Arc, Condvar, Mutex};

use sled::IVec;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use super::error::{AppendError, LogError};
use super::key_filter::{Indexed, KeyFilter};
use super::record::{ChunkBuilder, Hash, StoredEvent};
use super::store::{Head, ParsedChunk, Store};
use super::stream_index::FLUSH_STREAMS_PER_GROUP;
use super::{AppendOutcome, FastMap, FastSet, Job, ProposedEvent, StreamAppend};
use crate::clock::Clock;
use crate::limits;

type Reply = oneshot::Sender<Result<Vec<AppendOutcome>, AppendError>>;

/// What the current group will write, on top of the store.
#[derive(Default)]
struct Overlay {
    /// Records to write, positions `base..base+len`.
    records: Vec<StoredEvent>,
    /// Stream → last revision and position after the overlay.
    heads: FastMap<String, (u64, u64)>,
    /// Event id → position of records in the overlay.
    ids: FastMap<[u8; 16], u64>,
    /// Stream index runs: (stream, first revision, first position, count).
    runs: Vec<(String, u64, u64, u32)>,
}

impl Overlay {
    /// Moves `other`'s entries into this overlay, leaving `other` empty with its capacity.
    fn merge(&mut self, other: &mut Overlay) {
        self.records.append(&mut other.records);
        self.heads.extend(other.heads.drain());
        self.ids.extend(other.ids.drain());
        self.runs.append(&mut other.runs);
    }

    /// Empties the overlay, keeping its capacity.
    fn clear(&mut self) {
        self.records.clear();
        self.heads.clear();
        self.ids.clear();
        self.runs.clear();
    }
}

/// A written group on its way to the syncer: the head it reaches and who to answer
/// with what (rejections included).
struct Written {
    head: Head,
    replies: Vec<(Reply, Result<Vec<AppendOutcome>, AppendError>)>,
}

/// Set after a storage fault by either thread; from then on every append is refused
/// until a restart (which replays the journal and repairs the indices).
type Failure = Arc<Mutex<Option<String>>>;

/// The last position whose group sled holds (chunks and indices), and the condition the
/// syncer waits on for it. The writer moves it after each group's sled inserts, and
/// notifies it after a failure too, so the syncer never waits on a writer that stopped.
type Applied = Arc<(Mutex<u64>, Condvar)>;

/// What the journal phase of a group leaves for the sled phase: its chunks and the
/// position of its last event.
struct Journaled {
    /// The group's chunks as stored, with the layouts readers will use.
    chunks: Vec<ParsedChunk>,
    last_position: u64,
}

pub(super) struct Writer {
    store: Arc<Store>,
    /// Head of what is written (journal and sled), possibly not yet synced.
    head: Head,
    last_recorded_us: i64,
    clock: Arc<dyn Clock>,
    /// Groups written and waiting for the syncer; bounded, so a slow disk holds the
    /// writer back instead of piling up answers.
    to_sync: std::sync::mpsc::SyncSender<Written>,
    syncer: Option<std::thread::JoinHandle<()>>,
    failure: Failure,
    applied: Applied,
    /// Heads of recently written streams (bounded by `STREAM_HEAD_CACHE_ENTRIES`).
    head_cache: FastMap<String, (u64, u64)>,
    /// Which ids are certainly not in the id index (saves the lookup).
    id_filter: KeyFilter,
    /// Which streams certainly do not exist yet (saves reading their last run).
    stream_filter: KeyFilter,
    /// Stream index runs in memory that make a checkpoint due (see `LogConfig`).
    checkpoint_runs: usize,
    /// Counters for the periodic debug line (groups, events, time spent).
    stats: WriterStats,
    /// The id index's merging thread, told after each seal.
    compactor: Option<Compactor>,
    /// The last group's and draft's overlays, emptied, kept for their capacity: a fresh
    /// group's records (~250 bytes each, up to a group's 8 192) grew by reallocation into
    /// new pages that the kernel zeroed, about a fifth of the writer's time in batches.
    spare: (Overlay, Overlay),
}

/// The thread that merges the id index's runs in the background (see `id_index`), and
/// how to wake and stop it.
struct Compactor {
    signal: Arc<(Mutex<CompactorState>, Condvar)>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Default)]
struct CompactorState {
    /// A seal happened since the thread last looked.
    sealed: bool,
    stopping: bool,
}

impl Compactor {
    fn start(store: Arc<Store>) -> std::io::Result<Self> {
        let signal: Arc<(Mutex<CompactorState>, Condvar)> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (thread_signal, thread_stop) = (signal.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("rapport-id-compact".into())
            .spawn(move || compact_loop(&store, &thread_signal, &thread_stop))?;
        Ok(Self {
            signal,
            stop,
            thread,
        })
    }

    fn sealed(&self) {
        let (state, condvar) = &*self.signal;
        state.lock().unwrap_or_else(|e| e.into_inner()).sealed = true;
        condvar.notify_one();
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (state, condvar) = &*self.signal;
        state.lock().unwrap_or_else(|e| e.into_inner()).stopping = true;
        condvar.notify_one();
        let _ = self.thread.join();
    }
}

/// Merges runs while a level is full, then sleeps until the next seal (or a second, to
/// retry deleting blocks a scan kept). After a merge fails the thread stops merging until
/// a restart: the runs stay as they were, so lookups stay right (only slower as runs
/// accumulate) and verify reports what is wrong.
fn compact_loop(
    store: &Store,
    signal: &(Mutex<CompactorState>, Condvar),
    stop: &std::sync::atomic::AtomicBool,
) {
    let (state, condvar) = signal;
    loop {
        loop {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return;
            }
            match store.ids.compact_once(stop) {
                Ok(true) => {}
                Ok(false) => break,
                Err(error) => {
                    tracing::error!(%error, "merging id index runs failed; no more merges until a restart");
                    return;
                }
            }
        }
        if let Err(error) = store.ids.collect_garbage() {
            tracing::warn!(%error, "deleting merged id index runs failed");
        }
        let mut guard = state.lock().unwrap_or_else(|e| e.into_inner());
        if !guard.sealed && !guard.stopping {
            guard = condvar
                .wait_timeout(guard, std::time::Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if guard.stopping {
            return;
        }
        guard.sealed = false;
    }
}

impl Writer {
    pub(super) fn new(
        store: Arc<Store>,
        head: Head,
        last_recorded_us: i64,
        clock: Arc<dyn Clock>,
        head_tx: watch::Sender<Head>,
        checkpoint_runs: usize,
    ) -> Result<Self, LogError> {
        let failure: Failure = Arc::default();
        let journal = store
            .wal
            .lock()
            .expect("journal lock poisoned")
            .sync_handle()?;
        let (to_sync, written) = std::sync::mpsc::sync_channel(limits::UNSYNCED_GROUPS_MAX);
        let syncer_failure = failure.clone();
        let synced = head.position;
        let applied: Applied = Arc::new((Mutex::new(head.position), Condvar::new()));
        let syncer_applied = applied.clone();
        let syncer = std::thread::Builder::new()
            .name("rapport-log-sync".into())
            .spawn(move || {
                sync_loop(
                    journal,
                    head_tx,
                    syncer_failure,
                    syncer_applied,
                    written,
                    synced,
                )
            })?;
        // Sized for twice the ids there are, and for as many streams as there are events
        // (an upper bound); both grow when full.
        let id_filter = KeyFilter::start(
            store.clone(),
            Indexed::EventIds,
            head.position.saturating_mul(2),
        );
        let stream_filter = KeyFilter::start(store.clone(), Indexed::Streams, head.position);
        let compactor = Compactor::start(store.clone())?;
        Ok(Self {
            compactor: Some(compactor),
            store,
            id_filter,
            stream_filter,
            checkpoint_runs,
            head,
            last_recorded_us,
            clock,
            to_sync,
            syncer: Some(syncer),
            failure,
            applied,
            head_cache: FastMap::default(),
            stats: WriterStats::default(),
            spare: Default::default(),
        })
    }

    fn failed(&self) -> Option<String> {
        self.failure.lock().expect("failure lock poisoned").clone()
    }

    fn fail(&self, reason: String) {
        self.failure
            .lock()
            .expect("failure lock poisoned")
            .get_or_insert(reason);
        // Wake a syncer waiting for this writer's sled inserts: they will not come.
        let (lock, condvar) = &*self.applied;
        let _guard = lock.lock().expect("applied lock poisoned");
        condvar.notify_all();
    }

    /// Records that sled holds everything through `position`.
    fn mark_applied(&self, position: u64) {
        let (lock, condvar) = &*self.applied;
        *lock.lock().expect("applied lock poisoned") = position;
        condvar.notify_all();
    }

    /// Runs until the queue closes; returns whether it stopped without a failure (and
    /// made its final checkpoint).
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Job>) -> bool {
        while let Some(first) = queue.blocking_recv() {
            let mut events = first.appends.iter().map(|a| a.events.len()).sum::<usize>();
            let mut jobs = vec![first];
            while jobs.len() < limits::GROUP_COMMIT_APPENDS_MAX
                && events < limits::GROUP_COMMIT_EVENTS_MAX
            {
                match queue.try_recv() {
                    Ok(job) => {
                        events += job.appends.iter().map(|a| a.events.len()).sum::<usize>();
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
            let started = std::time::Instant::now();
            let appends = jobs.len();
            self.commit_group(jobs);
            self.stats.record(appends, events, started.elapsed());
        }
        // Let the syncer answer what is pending, then make sled durable and empty the journal.
        let Self {
            store,
            to_sync,
            syncer,
            failure,
            mut id_filter,
            mut stream_filter,
            compactor,
            ..
        } = self;
        id_filter.stop();
        stream_filter.stop();
        if let Some(compactor) = compactor {
            compactor.stop();
        }
        drop(to_sync);
        if let Some(syncer) = syncer {
            let _ = syncer.join();
        }
        let mut clean = failure.lock().expect("failure lock poisoned").is_none();
        if clean {
            match store.checkpoint() {
                Err(error) => {
                    tracing::error!(
                        %error,
                        "checkpoint at shutdown failed; the journal will be replayed"
                    );
                    clean = false;
                }
                // sled holds everything now: the journal's records are dead weight.
                Ok(()) => {
                    if let Err(error) = store.wal.lock().expect("journal lock poisoned").truncate()
                    {
                        tracing::warn!(%error, "emptying the journal at shutdown failed");
                    }
                }
            }
        }
        tracing::debug!("log writer stopped: queue closed");
        clean
    }

    fn commit_group(&mut self, jobs: Vec<Job>) {
        if let Some(reason) = &self.failed() {
            for job in jobs {
                let _ = job
                    .reply
                    .send(Err(LogError::Unavailable(reason.clone()).into()));
            }
            return;
        }
        let now_us = self.clock.now_us().max(self.last_recorded_us);
        let (mut group, mut draft) = std::mem::take(&mut self.spare);
        let mut answers: Vec<(Reply, Result<Vec<AppendOutcome>, AppendError>)> =
            Vec::with_capacity(jobs.len());
        for job in jobs {
            draft.clear();
            let base = self.head.position + 1 + group.records.len() as u64;
            let result: Result<Vec<AppendOutcome>, AppendError> = job
                .appends
                .into_iter()
                .map(|append| self.check(append, &group, &mut draft, base, now_us))
                .collect();
            if result.is_ok() {
                group.merge(&mut draft);
            }
            answers.push((job.reply, result));
        }
        let journaled = if group.records.is_empty() {
            None
        } else {
            match self.journal(&group, now_us) {
                Ok(journaled) => Some(journaled),
                Err(error) => {
                    tracing::error!(%error, "group commit failed; the writer stops accepting appends");
                    let reason = format!("a write failed ({error}); restart the server to recover");
                    self.fail(reason.clone());
                    for (reply, _) in answers {
                        let _ = reply.send(Err(LogError::Unavailable(reason.clone()).into()));
                    }
                    return;
                }
            }
        };
        // The group goes to the syncer as soon as the journal has it: its fdatasync runs
        // while this thread writes the group to sled below. Accepted appends, idempotent
        // re-sends and rejections alike wait for a sync that covers what they were
        // checked against (tests/integration/log_model.rs,
        // a_rejection_is_answered_only_once_what_it_saw_is_durable).
        if let Err(std::sync::mpsc::SendError(written)) = self.to_sync.send(Written {
            head: self.head,
            replies: answers,
        }) {
            for (reply, _) in written.replies {
                let _ = reply.send(Err(
                    LogError::Unavailable("the syncer stopped".into()).into()
                ));
            }
        }
        if let Some(journaled) = journaled {
            match self.apply(&group, journaled) {
                Ok(last_position) => self.mark_applied(last_position),
                Err(error) => {
                    // The group is in the journal (a restart replays it) but not in sled:
                    // the syncer answers it with this failure and publishes no head.
                    tracing::error!(%error, "group commit failed; the writer stops accepting appends");
                    self.fail(format!(
                        "a write failed ({error}); restart the server to recover"
                    ));
                }
            }
        }
        group.clear();
        draft.clear();
        self.spare = (group, draft);
    }

    /// Looks up an existing event by id: in the group, in this job's draft, then on disk.
    fn find_by_id(
        &mut self,
        id: &[u8; 16],
        group: &Overlay,
        draft: &Overlay,
    ) -> Result<Option<StoredEvent>, LogError> {
        let base = self.head.position + 1;
        let in_overlay = |overlay: &Overlay, offset: u64| {
            overlay
                .ids
                .get(id)
                .map(|p| overlay.records[(p - offset) as usize].clone())
        };
        if let Some(event) = in_overlay(draft, base + group.records.len() as u64) {
            return Ok(Some(event));
        }
        if let Some(event) = in_overlay(group, base) {
            return Ok(Some(event));
        }
        if !self.id_filter.may_contain(id) {
            return Ok(None);
        }
        Ok(self
            .store
            .id_position(id, self.head.position)?
            .map(|logged| logged.event))
    }

    fn current_head(
        &mut self,
        stream: &str,
        group: &Overlay,
        draft: &Overlay,
    ) -> Result<Option<(u64, u64)>, LogError> {
        if let Some(head) = draft
            .heads
            .get(stream)
            .or_else(|| group.heads.get(stream))
            .or_else(|| self.head_cache.get(stream))
        {
            return Ok(Some(*head));
        }
        if !self.stream_filter.may_contain(stream.as_bytes()) {
            return Ok(None);
        }
        Ok(self
            .store
            .stream_head(stream)?
            .filter(|h| h.position <= self.head.position)
            .map(|h| (h.revision, h.position)))
    }

    fn check(
        &mut self,
        append: StreamAppend,
        group: &Overlay,
        draft: &mut Overlay,
        base: u64,
        now_us: i64,
    ) -> Result<AppendOutcome, AppendError> {
        let stream = append.stream.as_str();
        if append.events.is_empty() {
            return Err(AppendError::Empty);
        }
        // 1. Idempotency comes first, whatever the expectation says.
        let mut seen = FastSet::with_capacity_and_hasher(append.events.len(), Default::default());
        let mut existing = Vec::new();
        let mut new_ids = 0usize;
        for proposed in &append.events {
            if let Some(id) = proposed.event_id {
                if !seen.insert(id) {
                    return Err(AppendError::DuplicateIdInBatch(id));
                }
                match self.find_by_id(id.as_bytes(), group, draft)? {
                    Some(event) => existing.push((proposed, event)),
                    None => new_ids += 1,
                }
            } else {
                new_ids += 1;
            }
        }
        if !existing.is_empty() {
            let conflicting: Vec<Uuid> = existing
                .iter()
                .map(|(p, _)| p.event_id.expect("only ids are found"))
                .collect();
            if new_ids > 0 {
                return Err(AppendError::EventIdConflict { ids: conflicting });
            }
            let in_order = existing
                .windows(2)
                .all(|w| w[0].1.position < w[1].1.position);
            let differing: Vec<Uuid> = existing
                .iter()
                .filter(|(p, e)| !same_content(stream, p, e))
                .map(|(p, _)| p.event_id.expect("only ids are found"))
                .collect();
            if !differing.is_empty() {
                return Err(AppendError::EventIdConflict { ids: differing });
            }
            if !in_order {
                return Err(AppendError::EventIdConflict { ids: conflicting });
            }
            let first = &existing[0].1;
            let last = &existing[existing.len() - 1].1;
            return Ok(AppendOutcome {
                first_position: first.position,
                last_position: last.position,
                last_revision: last.revision,
            });
        }

        // 2. The expectation.
        let current = self.current_head(stream, group, draft)?;
        let actual = current.map(|(revision, _)| revision);
        if !append.expected.admits(actual) {
            return Err(AppendError::WrongExpectedRevision {
                stream: stream.to_owned(),
                expected: append.expected,
                actual,
            });
        }

        // 3. Assign positions and revisions.
        let first_position = base + draft.records.len() as u64;
        let first_revision = actual.map_or(0, |r| r + 1);
        let count = append.events.len();
        for (index, proposed) in append.events.into_iter().enumerate() {
            let position = first_position + index as u64;
            let id = proposed.event_id.unwrap_or_else(Uuid::now_v7);
            let mut metadata = proposed.metadata;
            metadata.sort();
            draft.ids.insert(*id.as_bytes(), position);
            draft.records.push(StoredEvent {
                position,
                stream: stream.to_owned(),
                revision: first_revision + index as u64,
                event_id: *id.as_bytes(),
                event_type: proposed.event_type,
                schema_version: proposed.schema_version,
                recorded_at_us: now_us,
                occurred_at_us: proposed.occurred_at_us.unwrap_or(now_us),
                correlation_id: proposed.correlation_id,
                causation_id: proposed.causation_id,
                actor: proposed.actor,
                source_channel: proposed.source_channel,
                metadata,
                payload: proposed.payload,
            });
        }
        let last_position = first_position + count as u64 - 1;
        let last_revision = first_revision + count as u64 - 1;
        draft
            .heads
            .insert(stream.to_owned(), (last_revision, last_position));
        draft.runs.push((
            stream.to_owned(),
            first_revision,
            first_position,
            u32::try_from(count).expect("appends are bounded"),
        ));
        Ok(AppendOutcome {
            first_position,
            last_position,
            last_revision,
        })
    }

    /// The journal phase of a group: chains and packs its events into chunks, writes
    /// them to the journal (made durable by the syncer's fdatasync, the acknowledgement
    /// point) and moves the writer's head past them.
    fn journal(&mut self, group: &Overlay, now_us: i64) -> Result<Journaled, LogError> {
        let mut chunks: Vec<ParsedChunk> = Vec::new();
        let packed = |first: u64, full: ChunkBuilder| {
            let (value, layout) = full.finish_parsed(first);
            ParsedChunk {
                first,
                value: IVec::from(value),
                layout,
            }
        };
        let mut previous: Hash = self.head.hash;
        let mut chunk_first = self.head.position + 1;
        let mut chunk = ChunkBuilder::new(previous);
        for record in &group.records {
            previous = chunk.push_event(record, &previous);
            if chunk.len_bytes() >= limits::CHUNK_BYTES_TARGET {
                let full = std::mem::replace(&mut chunk, ChunkBuilder::new(previous));
                chunks.push(packed(chunk_first, full));
                chunk_first = record.position + 1;
            }
        }
        if chunk.count() > 0 {
            chunks.push(packed(chunk_first, chunk));
        }
        let last_position = self.head.position + group.records.len() as u64;
        let entries: Vec<(u64, &[u8])> = chunks.iter().map(|c| (c.first, &c.value[..])).collect();
        self.store
            .wal
            .lock()
            .expect("journal lock poisoned")
            .write_record(&entries)?;
        self.head = Head {
            position: last_position,
            hash: previous,
        };
        self.last_recorded_us = now_us;
        if self.head_cache.len() + group.heads.len() > limits::STREAM_HEAD_CACHE_ENTRIES {
            self.head_cache.clear();
        }
        self.head_cache
            .extend(group.heads.iter().map(|(s, h)| (s.clone(), *h)));
        Ok(Journaled {
            chunks,
            last_position,
        })
    }

    /// The sled phase of a group: its chunks and stream runs, its ids into the id
    /// index's tail (sealed into a run when full), then a checkpoint if the journal is
    /// full. sled itself is made durable at checkpoints; if
    /// a crash comes first, opening the log replays the journal and re-derives the
    /// indices. Returns the group's last position.
    fn apply(&mut self, group: &Overlay, journaled: Journaled) -> Result<u64, LogError> {
        let Journaled {
            chunks,
            last_position,
        } = journaled;
        // Plain inserts, not sled batches: a sled batch seals sled's I/O buffer and hands
        // a write to its thread pool every time (~2/3 of a single-event group's cost,
        // measured), and its atomicity buys nothing here. The journal already holds the
        // group; sled recovers a prefix of its operations after a crash, so what it lacks
        // is a suffix: journal replay restores missing chunks, and the index repair starts
        // from `indexed_through`, which only checkpoints move.
        self.store.insert_chunks(chunks)?;
        for (stream, first_revision, _, _) in &group.runs {
            // A stream enters the index with its revision-0 run; later runs add nothing
            // new to the filter (and would only make it look full sooner).
            if *first_revision == 0 {
                self.stream_filter.insert(stream.as_bytes());
            }
        }
        // Into the index's in-memory tail; the next checkpoint packs it into sled.
        self.store.streams.push(
            group
                .runs
                .iter()
                .map(|(stream, revision, position, count)| {
                    (stream.as_str(), *revision, *position, *count)
                }),
        );
        for record in &group.records {
            self.id_filter.insert(&record.event_id);
        }
        self.store.ids.insert(
            group
                .records
                .iter()
                .map(|record| (record.event_id, record.position)),
        );
        // The group's chunks are in sled, so a sealed run never names positions sled
        // could lose while keeping the run (sled recovers a prefix of its writes).
        if self.store.ids.tail_full() {
            self.store.ids.seal()?;
            if let Some(compactor) = &self.compactor {
                compactor.sealed();
            }
        }
        self.id_filter.grow_if_full();
        self.stream_filter.grow_if_full();
        let journal_bytes = self
            .store
            .wal
            .lock()
            .expect("journal lock poisoned")
            .len_bytes();
        let checkpoint_due = journal_bytes >= limits::JOURNAL_CHECKPOINT_BYTES
            || self.store.streams.tail_runs() >= self.checkpoint_runs;
        let result = if checkpoint_due {
            self.store.checkpoint_incremental()
        } else {
            // The stream index runs the last checkpoint froze, a few streams a group.
            self.store
                .streams
                .flush_some(FLUSH_STREAMS_PER_GROUP)
                .map(|_| ())
        };
        if let Err(error) = result {
            // This group is in the journal: it is answered OK, or unavailable if the
            // syncer sees this failure first (a retry with the same ids then finds it).
            // The writer stops taking new appends because sled's state is now in doubt.
            tracing::error!(%error, "checkpoint failed; the writer stops accepting appends");
            self.fail(format!(
                "a checkpoint failed ({error}); restart the server to recover"
            ));
        }
        Ok(last_position)
    }
}

/// The syncer: takes every written group waiting, makes them durable with one
/// fdatasync of the journal, publishes the durable head and answers them.
fn sync_loop(
    journal: File,
    head_tx: watch::Sender<Head>,
    failure: Failure,
    applied: Applied,
    written: std::sync::mpsc::Receiver<Written>,
    mut synced: u64,
) {
    while let Ok(first) = written.recv() {
        let mut groups = vec![first];
        while let Ok(more) = written.try_recv() {
            groups.push(more);
        }
        let head = groups.last().expect("at least one").head;
        let mut outcome = failure.lock().expect("failure lock poisoned").clone();
        if outcome.is_none() && head.position > synced {
            if let Err(error) = journal.sync_data() {
                tracing::error!(%error, "journal sync failed; the writer stops accepting appends");
                let reason = format!("a sync failed ({error}); restart the server to recover");
                failure
                    .lock()
                    .expect("failure lock poisoned")
                    .get_or_insert(reason.clone());
                outcome = Some(reason);
            } else if let Some(reason) = wait_applied(&applied, &failure, head.position) {
                // Durable in the journal, but sled lacks it: not readable, so not
                // published; a restart replays it.
                outcome = Some(reason);
            } else {
                synced = head.position;
                head_tx.send_replace(head);
            }
        }
        for group in groups {
            for (reply, result) in group.replies {
                let answer = match &outcome {
                    None => result,
                    Some(reason) => Err(LogError::Unavailable(reason.clone()).into()),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

/// Waits until sled holds everything through `position` (the writer's inserts of the
/// groups just synced). Returns the writer's failure instead if it failed before it got
/// there.
fn wait_applied(applied: &Applied, failure: &Failure, position: u64) -> Option<String> {
    let (lock, condvar) = &**applied;
    let mut through = lock.lock().expect("applied lock poisoned");
    loop {
        if *through >= position {
            return None;
        }
        // The writer sets a failure before it notifies, under this lock: no lost wake-up.
        if let Some(reason) = failure.lock().expect("failure lock poisoned").clone() {
            return Some(reason);
        }
        through = condvar.wait(through).expect("applied lock poisoned");
    }
}

/// What the writer did since its last debug line (`RUST_LOG=rapport=debug`).
#[derive(Default)]
struct WriterStats {
    since: Option<std::time::Instant>,
    groups: u64,
    appends: u64,
    events: u64,
    busy_us: u64,
}

impl WriterStats {
    /// Seconds between debug lines.
    const INTERVAL_SECONDS: u64 = 5;

    fn record(&mut self, appends: usize, events: usize, busy: std::time::Duration) {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        self.groups += 1;
        self.appends += appends as u64;
        self.events += events as u64;
        self.busy_us += busy.as_micros() as u64;
        if since.elapsed().as_secs() >= Self::INTERVAL_SECONDS {
            let groups = self.groups.max(1);
            tracing::debug!(
                groups = self.groups,
                appends_per_group = self.appends / groups,
                events_per_group = self.events / groups,
                busy_us_per_group = self.busy_us / groups,
                busy_percent = self.busy_us / 10_000 / Self::INTERVAL_SECONDS,
                "group commit"
            );
            *self = Self::default();
        }
    }
}

/// True when a re-sent event has the content of the stored one: stream, body,
/// metadata, occurred_at, correlation and causation ids (DESIGN §5 fine print).
fn same_content(stream: &str, proposed: &ProposedEvent, stored: &StoredEvent) -> bool {
    stored.payload == proposed.payload && same_envelope(stream, proposed, stored)
}

/// The content an idempotent re-send must repeat, but for the payload: the stream, event
/// type and schema, metadata (in any order), occurred_at (unset: the recorded time),
/// correlation and causation ids.
pub fn same_envelope(stream: &str, proposed: &ProposedEvent, stored: &StoredEvent) -> bool {
    let mut metadata = proposed.metadata.clone();
    metadata.sort();
    let occurred_matches = match proposed.occurred_at_us {
        Some(at) => at == stored.occurred_at_us,
        None => stored.occurred_at_us == stored.recorded_at_us,
    };
    stored.stream == stream
        && stored.event_type == proposed.event_type
        && stored.schema_version == proposed.schema_version
        && stored.metadata == metadata
        && occurred_matches
        && stored.correlation_id == proposed.correlation_id
        && stored.causation_id == proposed.causation_id
}

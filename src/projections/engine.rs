//! The storage side of the engine: the meta record of each projection, its generation
//! trees, one batch step (read → apply → commit state and checkpoint together), the
//! switch from an old generation to a rebuilt one, and the offline rebuild.
//!
//! Meta record (`projections` tree, key = projection name), 32 bytes, big-endian:
//! `active generation u64 | active version u32 | shadow generation u64 | shadow version
//! u32 | next generation u64`; generation 0 means "none".

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use super::{ApplyError, CHECKPOINT_KEY, Projection, ProjectionError, StateBatch, valid_name};
use crate::limits;
use crate::log::{Log, LogError, LoggedEvent, ReadFilter};

/// Name of the meta tree.
pub const META_TREE: &str = "projections";

/// One generation of a projection and the code version that builds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation {
    /// Generation number (from 1), part of the tree name.
    pub generation: u64,
    /// [`Projection::version`] of the code that builds it.
    pub version: u32,
}

/// What the meta tree records about one projection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaRecord {
    /// The generation serving reads.
    pub active: Option<Generation>,
    /// The generation being rebuilt in the background, if any.
    pub shadow: Option<Generation>,
    /// The next unused generation number.
    pub next_generation: u64,
}

impl MetaRecord {
    fn encode(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let (ag, av) = self.active.map_or((0, 0), |g| (g.generation, g.version));
        let (sg, sv) = self.shadow.map_or((0, 0), |g| (g.generation, g.version));
        out[..8].copy_from_slice(&ag.to_be_bytes());
        out[8..12].copy_from_slice(&av.to_be_bytes());
        out[12..20].copy_from_slice(&sg.to_be_bytes());
        out[20..24].copy_from_slice(&sv.to_be_bytes());
        out[24..].copy_from_slice(&self.next_generation.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self, ProjectionError> {
        if bytes.len() != 32 {
            return Err(ProjectionError::Corrupt(format!(
                "meta record of {} bytes, expected 32",
                bytes.len()
            )));
        }
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let u32_at = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let generation = |generation: u64, version: u32| {
            (generation != 0).then_some(Generation {
                generation,
                version,
            })
        };
        Ok(Self {
            active: generation(u64_at(0), u32_at(8)),
            shadow: generation(u64_at(12), u32_at(20)),
            next_generation: u64_at(24),
        })
    }
}

/// The tree name of one generation: `proj/<name>/<generation>`.
pub fn tree_name(name: &str, generation: u64) -> String {
    format!("proj/{name}/{generation}")
}

/// The meta tree and the database the generation trees live in.
#[derive(Clone)]
pub struct Catalog {
    db: sled::Db,
    meta: sled::Tree,
}

impl Catalog {
    /// Opens (or creates) the meta tree in `db`.
    pub fn open(db: &sled::Db) -> Result<Self, ProjectionError> {
        Ok(Self {
            db: db.clone(),
            meta: db.open_tree(META_TREE)?,
        })
    }

    /// The record of `name` (default when it never ran).
    pub fn load(&self, name: &str) -> Result<MetaRecord, ProjectionError> {
        match self.meta.get(name)? {
            Some(bytes) => MetaRecord::decode(&bytes),
            None => Ok(MetaRecord::default()),
        }
    }

    /// Stores the record of `name` (one insert: atomic).
    pub fn save(&self, name: &str, record: &MetaRecord) -> Result<(), ProjectionError> {
        self.meta.insert(name, &record.encode())?;
        Ok(())
    }

    /// Opens the tree of one generation.
    pub fn open_generation(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<sled::Tree, ProjectionError> {
        Ok(self.db.open_tree(tree_name(name, generation))?)
    }

    /// Drops the tree of one generation.
    pub fn drop_generation(&self, name: &str, generation: u64) -> Result<(), ProjectionError> {
        self.db.drop_tree(tree_name(name, generation))?;
        Ok(())
    }

    /// Allocates a new, empty generation at `version` and records it in `record` and on
    /// disk as `slot` (active or shadow, chosen by the caller through `as_shadow`).
    pub fn new_generation(
        &self,
        name: &str,
        version: u32,
        record: &mut MetaRecord,
        as_shadow: bool,
    ) -> Result<(Generation, sled::Tree), ProjectionError> {
        let generation = Generation {
            generation: record.next_generation.max(1),
            version,
        };
        // A crash between creating a tree and recording it can leave one behind under
        // this number: start from empty, never from its leftovers.
        self.drop_generation(name, generation.generation)?;
        record.next_generation = generation.generation + 1;
        if as_shadow {
            record.shadow = Some(generation);
        } else {
            record.active = Some(generation);
        }
        let tree = self.open_generation(name, generation.generation)?;
        self.save(name, record)?;
        Ok((generation, tree))
    }

    /// Drops trees of `name` that the record no longer names (left by a crash between a
    /// switch and the drop of the old generation).
    pub fn drop_orphans(&self, name: &str, record: &MetaRecord) -> Result<(), ProjectionError> {
        let prefix = format!("proj/{name}/");
        let keep: Vec<String> = [record.active, record.shadow]
            .into_iter()
            .flatten()
            .map(|g| tree_name(name, g.generation))
            .collect();
        for tree in self.db.tree_names() {
            let Ok(tree) = std::str::from_utf8(&tree) else {
                continue;
            };
            if tree.starts_with(&prefix) && !keep.iter().any(|k| k == tree) {
                self.db.drop_tree(tree)?;
            }
        }
        Ok(())
    }

    /// Makes the shadow the active generation (one meta insert: atomic). Returns the old
    /// generation; the caller drops its tree once nobody reads it.
    pub fn switch(
        &self,
        name: &str,
        record: &mut MetaRecord,
    ) -> Result<Option<Generation>, ProjectionError> {
        let Some(shadow) = record.shadow.take() else {
            return Ok(None);
        };
        let old = record.active.replace(shadow);
        self.save(name, record)?;
        Ok(old)
    }

    /// The database the trees live in.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

/// The last position applied to a generation tree (0 when it has applied nothing).
pub fn checkpoint(tree: &sled::Tree) -> Result<u64, ProjectionError> {
    match tree.get(CHECKPOINT_KEY)? {
        None => Ok(0),
        Some(bytes) => bytes
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .map_err(|_| ProjectionError::Corrupt("checkpoint is not 8 bytes".into())),
    }
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    /// The checkpoint after the step.
    pub checkpoint: u64,
    /// Events handed to the projection.
    pub events: usize,
}

/// Why a step stopped.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The projection could not apply an event; the events before it are committed.
    #[error(transparent)]
    Apply(ApplyError),
    /// The engine itself failed (log or sled); nothing of the batch is committed.
    #[error(transparent)]
    Engine(#[from] ProjectionError),
}

fn event_bytes(event: &LoggedEvent) -> usize {
    let e = &event.event;
    e.payload.len()
        + e.stream.len()
        + e.event_type.len()
        + e.metadata
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + 128
}

fn apply_guarded(
    projection: &dyn Projection,
    batch: &mut StateBatch<'_>,
    events: &[LoggedEvent],
) -> Result<(), ApplyError> {
    // A panicking fold must stop its projection, not kill the runner thread; it is
    // reported at the batch's first event, so nothing of the batch is kept or skipped.
    match catch_unwind(AssertUnwindSafe(|| projection.apply(batch, events))) {
        Ok(result) => result,
        Err(panic) => Err(ApplyError::new(
            events.first().map_or(0, |e| e.event.position),
            format!("the fold panicked: {}", panic_text(panic.as_ref())),
        )),
    }
}

/// The message of a caught panic (`panic!` with a literal or a formatted string).
pub(super) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The events of one batch as read from the log: the wanted events in positions
/// `from..=reached` (every other position in that span is not wanted).
pub struct ReadBatch {
    /// First position examined.
    pub from: u64,
    /// Last position examined (`from - 1` when nothing was there yet).
    pub reached: u64,
    /// The wanted events, ascending.
    pub events: Vec<LoggedEvent>,
}

/// Reads one batch from `from` on: at most [`limits::PROJECTION_BATCH_EVENTS_MAX`] wanted
/// events, about [`limits::PROJECTION_BATCH_BYTES_MAX`] bytes, and a span of
/// [`limits::PROJECTION_BATCH_SCAN_MAX`] positions. Never past the log's durable head.
/// With `envelopes_only`, the events come without payload and metadata (see
/// [`Projection::envelopes_only`]).
pub fn read_batch(
    log: &Log,
    filter: &ReadFilter,
    envelopes_only: bool,
    from: u64,
) -> Result<ReadBatch, ProjectionError> {
    read_batch_into(log, filter, envelopes_only, from, Vec::new())
}

/// [`read_batch`] into `events` (emptied first), whose capacity is kept: a runner
/// following a busy log reads thousands of events per batch, and growing a fresh vector
/// to that size each time (reallocations, and fresh pages the kernel zeroes) was about
/// half of the `log_stats` runner's time under batched appends.
pub fn read_batch_into(
    log: &Log,
    filter: &ReadFilter,
    envelopes_only: bool,
    from: u64,
    mut events: Vec<LoggedEvent>,
) -> Result<ReadBatch, ProjectionError> {
    events.clear();
    let mut bytes = 0usize;
    let mut cursor = from;
    loop {
        let first = events.len();
        let (end_reached, next_cursor) = if envelopes_only {
            read_envelopes(log, cursor, filter, &mut events)
        } else {
            log.read_all(cursor, false, limits::PROJECTION_READ_PAGE_EVENTS, filter)
                .map(|page| {
                    events.extend(page.events);
                    (page.end_reached, page.next_cursor)
                })
        }
        .map_err(ProjectionError::from)?;
        bytes += events[first..].iter().map(event_bytes).sum::<usize>();
        cursor = next_cursor.max(cursor);
        if end_reached
            || events.len() >= limits::PROJECTION_BATCH_EVENTS_MAX
            || bytes >= limits::PROJECTION_BATCH_BYTES_MAX
            || cursor - from >= limits::PROJECTION_BATCH_SCAN_MAX
        {
            break;
        }
    }
    // Every position below `cursor` has been examined: the wanted ones are in `events`,
    // the others are past for this projection.
    Ok(ReadBatch {
        from,
        reached: cursor - 1,
        events,
    })
}

/// One forward page of the whole log from `cursor`, each event decoded without its
/// payload and metadata: borrowed from its chunk, only the envelope is copied out, onto
/// the end of `events`. Returns the page's `(end_reached, next_cursor)`.
fn read_envelopes(
    log: &Log,
    cursor: u64,
    filter: &ReadFilter,
    events: &mut Vec<LoggedEvent>,
) -> Result<(bool, u64), LogError> {
    let page = log.read_all_in_chunks(
        cursor,
        false,
        limits::PROJECTION_READ_PAGE_EVENTS,
        usize::MAX,
        filter,
    )?;
    events.reserve(page.events.len());
    for (chunk, index) in &page.events {
        events.push(LoggedEvent {
            event: chunk.layout.view(&chunk.value, *index)?.to_owned_envelope(),
            hash: chunk.layout.hashes[*index],
        });
    }
    Ok((page.end_reached, page.next_cursor))
}

/// Reads batches ahead on a thread of its own while the caller applies the previous
/// one: on a catch-up or a rebuild, reading (chunk decompression, re-hashing the chain,
/// decoding envelopes) and folding then use both cores. Reads at most
/// [`PREFETCH_BATCHES`] batches ahead, up to `until` (inclusive); dropping it stops it.
pub struct Prefetcher {
    batches: Option<std::sync::mpsc::Receiver<Result<ReadBatch, ProjectionError>>>,
    /// Applied batches going back to the reader thread, which allocated them, to be
    /// freed there and read into again: freeing on the allocating thread is mimalloc's
    /// fast path, and a rebuild's folding thread spent ~10% of its time freeing the
    /// reader's events.
    spent: Option<std::sync::mpsc::SyncSender<Vec<LoggedEvent>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Batches a [`Prefetcher`] reads ahead: enough to overlap, bounded in memory.
pub const PREFETCH_BATCHES: usize = 2;

impl Prefetcher {
    /// Starts reading at `from`, through `until`.
    pub fn start(
        log: Log,
        filter: ReadFilter,
        envelopes_only: bool,
        from: u64,
        until: u64,
    ) -> Self {
        let (sender, batches) = std::sync::mpsc::sync_channel(PREFETCH_BATCHES);
        let (spent, returned) = std::sync::mpsc::sync_channel::<Vec<LoggedEvent>>(PREFETCH_BATCHES);
        let thread = std::thread::Builder::new()
            .name("rapport-prefetch".into())
            .spawn(move || {
                let mut from = from;
                while from <= until {
                    // The newest returned batch is read into (its events freed here, its
                    // capacity kept: [`read_batch_into`]); any others are freed.
                    let mut spare = Vec::new();
                    while let Ok(events) = returned.try_recv() {
                        spare = events;
                    }
                    let read = read_batch_into(&log, &filter, envelopes_only, from, spare);
                    let next = read.as_ref().map(|b| b.reached + 1).ok();
                    // The receiver is gone: the consumer stopped.
                    if sender.send(read).is_err() {
                        return;
                    }
                    match next {
                        Some(next) if next > from => from = next,
                        _ => return,
                    }
                }
            })
            .ok();
        Self {
            batches: Some(batches),
            spent: Some(spent),
            thread,
        }
    }

    /// Hands applied events back to the reader thread to be freed and reused there; frees
    /// them here when it is gone or has not caught up with the returns.
    pub fn recycle(&mut self, events: Vec<LoggedEvent>) {
        if let Some(spent) = &self.spent {
            let _ = spent.try_send(events);
        }
    }

    /// The next batch if it starts at `from`; `None` when the reader is done or was
    /// started elsewhere (the caller then reads for itself).
    pub fn next(&mut self, from: u64) -> Option<Result<ReadBatch, ProjectionError>> {
        let batch = self.batches.as_ref()?.recv().ok()?;
        match &batch {
            Ok(read) if read.from != from => None,
            _ => Some(batch),
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the channel makes a blocked or next send fail, which ends the thread.
        self.batches.take();
        self.spent.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One batch: reads the events after the tree's checkpoint ([`read_batch`]), applies
/// them, and commits the state writes with the new checkpoint in one `apply_batch`, so a
/// crash never applies an event twice or skips one.
pub fn step(
    log: &Log,
    projection: &dyn Projection,
    filter: &ReadFilter,
    tree: &sled::Tree,
) -> Result<StepOutcome, StepError> {
    step_with(log, projection, filter, tree, &mut Vec::new())
}

/// [`step`], reading into `spare` and leaving it there afterwards, emptied with its
/// capacity kept ([`read_batch_into`]): what a runner passes on every step.
pub fn step_with(
    log: &Log,
    projection: &dyn Projection,
    filter: &ReadFilter,
    tree: &sled::Tree,
    spare: &mut Vec<LoggedEvent>,
) -> Result<StepOutcome, StepError> {
    step_prefetched(log, projection, filter, tree, None, spare)
}

/// [`step_with`], taking the batch from `prefetcher` when it has the right one (its
/// events then go back to the prefetcher's thread, not into `spare`).
pub fn step_prefetched(
    log: &Log,
    projection: &dyn Projection,
    filter: &ReadFilter,
    tree: &sled::Tree,
    prefetcher: Option<&mut Prefetcher>,
    spare: &mut Vec<LoggedEvent>,
) -> Result<StepOutcome, StepError> {
    let mut prefetcher = prefetcher;
    let from = checkpoint(tree)? + 1;
    let (read, prefetched) = match prefetcher.as_deref_mut().and_then(|p| p.next(from)) {
        Some(read) => (read?, true),
        None => {
            let events = std::mem::take(spare);
            let read = read_batch_into(log, filter, projection.envelopes_only(), from, events)?;
            (read, false)
        }
    };
    let ReadBatch {
        from,
        reached,
        events,
    } = read;
    if reached < from {
        return Ok(StepOutcome {
            checkpoint: reached,
            events: 0,
        });
    }
    let mut batch = StateBatch::new(tree);
    match apply_guarded(projection, &mut batch, &events) {
        Ok(()) => {
            batch.commit(reached).map_err(ProjectionError::from)?;
            let count = events.len();
            match prefetcher {
                Some(prefetcher) if prefetched => prefetcher.recycle(events),
                _ => {
                    *spare = events;
                    spare.clear();
                }
            }
            Ok(StepOutcome {
                checkpoint: reached,
                events: count,
            })
        }
        Err(error) => {
            // The failing position must be one of this batch's positions; anything else
            // is read as the batch's first event, so nothing is ever skipped.
            let first = events.first().map_or(from, |e| e.event.position);
            let position = if (first..=reached).contains(&error.position) {
                error.position
            } else {
                first
            };
            let error = ApplyError::new(position, error.message);
            drop(batch);
            let prefix_len = events.partition_point(|e| e.event.position < position);
            let mut batch = StateBatch::new(tree);
            // The fold is not deterministic if it fails earlier this time: keep nothing
            // of the batch and report the earlier failure.
            if prefix_len > 0
                && let Err(again) = apply_guarded(projection, &mut batch, &events[..prefix_len])
            {
                return Err(StepError::Apply(again));
            }
            batch.commit(position - 1).map_err(ProjectionError::from)?;
            Err(StepError::Apply(error))
        }
    }
}

/// How far a rebuild has come.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Last position applied by the generation being built.
    pub position: u64,
    /// The log's head when measured.
    pub head: u64,
    /// Positions applied per second since the rebuild (re)started.
    pub events_per_second: f64,
    /// Seconds left at that rate (0 when done, infinite before any progress).
    pub eta_seconds: f64,
}

/// Measures a rebuild's rate. The only clock the engine reads, and only for this metric:
/// folds never see it.
#[derive(Clone, Copy, Debug)]
pub struct Meter {
    started: Instant,
    start_position: u64,
}

impl Meter {
    /// Starts measuring at `position`.
    pub fn new(position: u64) -> Self {
        Self {
            started: Instant::now(),
            start_position: position,
        }
    }

    /// Progress at `position` towards `head`.
    pub fn progress(&self, position: u64, head: u64) -> Progress {
        let seconds = self.started.elapsed().as_secs_f64();
        let done = position.saturating_sub(self.start_position) as f64;
        let events_per_second = if seconds > 0.0 { done / seconds } else { 0.0 };
        let left = head.saturating_sub(position) as f64;
        let eta_seconds = if left == 0.0 {
            0.0
        } else if events_per_second > 0.0 {
            left / events_per_second
        } else {
            f64::INFINITY
        };
        Progress {
            position,
            head,
            events_per_second,
            eta_seconds,
        }
    }
}

/// Offline rebuild for the CLI: builds a fresh generation of `projection` from position 1
/// over an opened log (resuming an interrupted rebuild of the same code version), reports
/// progress through the callback after every batch, then switches to it and drops the
/// old generation. Nothing else may use the projection meanwhile (the data directory's
/// lock guarantees that for a separate process).
pub fn rebuild_offline(
    log: &Log,
    projection: Arc<dyn Projection>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(), ProjectionError> {
    let name = projection.name();
    if !valid_name(name) {
        return Err(ProjectionError::Invalid(format!(
            "projection name {name:?} is not [a-z0-9_]+"
        )));
    }
    let catalog = Catalog::open(log.db())?;
    let mut record = catalog.load(name)?;
    let tree = match record.shadow {
        Some(shadow) if shadow.version == projection.version() => {
            catalog.open_generation(name, shadow.generation)?
        }
        other => {
            if let Some(stale) = other {
                catalog.drop_generation(name, stale.generation)?;
                record.shadow = None;
            }
            catalog
                .new_generation(name, projection.version(), &mut record, true)?
                .1
        }
    };
    let filter = projection.filter();
    let head = log.head().position;
    let meter = Meter::new(checkpoint(&tree)?);
    let mut prefetcher = Prefetcher::start(
        log.clone(),
        filter.clone(),
        projection.envelopes_only(),
        checkpoint(&tree)? + 1,
        head,
    );
    loop {
        let outcome = match step_prefetched(
            log,
            projection.as_ref(),
            &filter,
            &tree,
            Some(&mut prefetcher),
            &mut Vec::new(),
        ) {
            Ok(outcome) => outcome,
            Err(StepError::Apply(error)) => {
                return Err(ProjectionError::Failed {
                    name: name.to_owned(),
                    position: error.position,
                    error: error.message,
                });
            }
            Err(StepError::Engine(error)) => return Err(error),
        };
        progress(&meter.progress(outcome.checkpoint, head));
        if outcome.checkpoint >= head {
            break;
        }
    }
    // Offline, nobody reads the old generation: drop it at once.
    if let Some(old) = catalog.switch(name, &mut record)? {
        catalog.drop_generation(name, old.generation)?;
    }
    catalog.drop_orphans(name, &record)?;
    log.db().flush()?;
    Ok(())
}

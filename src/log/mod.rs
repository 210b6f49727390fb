//! The event log: an embedded, hash-chained, append-only log on sled.
//!
//! One writer thread owns all writes ([`writer`]): it drains every waiting append,
//! checks idempotency and expected revisions in order, writes the group's chunks to the
//! journal ([`wal`]) and its entries to sled, and a syncer thread fdatasyncs the journal
//! once and answers them all (group commit). Reads go to sled ([`store`]) and to the
//! newest index entries the writer holds in memory until a checkpoint writes them
//! ([`stream_index`], [`id_index`]), and never see past the durable head. The log knows
//! nothing of the CRM: an event is a type name, a schema version and payload bytes.

pub mod error;
pub mod id_index;
mod key_filter;
pub mod record;
pub mod store;
pub mod stream_index;
pub mod stream_name;
pub mod verify;
pub mod wal;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::clock::{Clock, SystemClock};
use crate::limits;

pub use error::{AppendError, LogError, ReadError};
pub use record::{Hash, LoggedEvent, StoredEvent, StoredEventView, ZERO_HASH};
pub use store::{ChunkPage, Head, Page, ParsedChunk, ReadFilter, StreamHead};
pub use stream_name::{StreamName, StreamNameError};
pub use writer::same_envelope;

/// The hash maps on the append path (the writer's group overlay and stream heads, the id
/// index's tail, the stream index's tail), keyed by event ids and stream names: foldhash
/// instead of SipHash, whose hashing was ~2 % of the server's samples under batched
/// appends. Seeded per map from a per-process random seed, so a client choosing its event
/// ids cannot aim collisions at a map without knowing the seed.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The set that goes with [`FastMap`].
pub type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// What the client expects of the stream before its append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ExpectedRevision {
    /// No expectation.
    #[default]
    Any,
    /// The stream must not exist.
    NoStream,
    /// The stream must exist.
    StreamExists,
    /// The stream's last revision must be this one.
    Exact(u64),
}

impl ExpectedRevision {
    /// True when a stream whose last revision is `actual` (`None`: no stream) meets this
    /// expectation.
    pub fn admits(self, actual: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual.is_none(),
            Self::StreamExists => actual.is_some(),
            Self::Exact(revision) => actual == Some(revision),
        }
    }
}

impl fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any revision"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("an existing stream"),
            Self::Exact(revision) => write!(f, "revision {revision}"),
        }
    }
}

/// One event offered for appending.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ProposedEvent {
    /// Client-given id (idempotency key); `None` makes the log assign a UUIDv7.
    pub event_id: Option<Uuid>,
    /// Event type name.
    pub event_type: String,
    /// Schema version of `payload`.
    pub schema_version: u16,
    /// Encoded body.
    pub payload: Vec<u8>,
    /// Business time in UTC microseconds; `None` means the append's recorded time.
    pub occurred_at_us: Option<i64>,
    /// Metadata; the log sorts it by key.
    pub metadata: Vec<(String, String)>,
    /// Correlation id, empty when none.
    pub correlation_id: String,
    /// Causation id, empty when none.
    pub causation_id: String,
    /// Who caused it.
    pub actor: String,
    /// Where it came from.
    pub source_channel: String,
}

/// An append to one stream.
#[derive(Clone, Debug)]
pub struct StreamAppend {
    /// Target stream.
    pub stream: StreamName,
    /// Expected revision.
    pub expected: ExpectedRevision,
    /// 1..N events, written all or nothing.
    pub events: Vec<ProposedEvent>,
}

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    /// Position of the first event.
    pub first_position: u64,
    /// Position of the last event.
    pub last_position: u64,
    /// Stream revision of the last event.
    pub last_revision: u64,
}

/// How the log is opened.
#[derive(Clone)]
pub struct LogConfig {
    /// Data directory (sled's files live in it).
    pub dir: PathBuf,
    /// Source of `recorded_at`.
    pub clock: Arc<dyn Clock>,
    /// Appends that may wait for the writer (default [`limits::APPEND_QUEUE_DEPTH_MAX`]).
    pub queue_depth: usize,
    /// How long an append waits for room in a full queue before `Overloaded`
    /// (default [`limits::APPEND_QUEUE_WAIT_MS_MAX`]).
    pub queue_wait: Duration,
    /// How the event id index packs ids (default: the bounds of [`limits`]). Tests make
    /// it small so that seals and merges happen within a few events.
    pub id_index: id_index::IdIndexShape,
    /// Stream index runs taken in memory after which the writer checkpoints even if the
    /// journal is not full (default and upper bound [`limits::STREAM_TAIL_RUNS_MAX`], which
    /// bounds the memory; at least 1). Tests make it small so that checkpoints, and the
    /// moves of the runs they freeze, happen within a few appends.
    pub checkpoint_runs: usize,
}

impl LogConfig {
    /// Defaults: the system clock and the queue bounds of [`limits`].
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            clock: Arc::new(SystemClock),
            queue_depth: limits::APPEND_QUEUE_DEPTH_MAX,
            queue_wait: Duration::from_millis(limits::APPEND_QUEUE_WAIT_MS_MAX),
            id_index: id_index::IdIndexShape::default(),
            checkpoint_runs: limits::STREAM_TAIL_RUNS_MAX,
        }
    }
}

struct Job {
    appends: Vec<StreamAppend>,
    reply: oneshot::Sender<Result<Vec<AppendOutcome>, AppendError>>,
}

struct Inner {
    store: Arc<store::Store>,
    queue_wait: Duration,
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    head: watch::Receiver<Head>,
    /// The writer thread; it returns whether it stopped without a failure (and so made
    /// its final checkpoint).
    writer: Mutex<Option<std::thread::JoinHandle<bool>>>,
}

/// A handle to an open log; cheap to clone, shared by all services.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl Log {
    /// Opens the log, repairs indices a crash left behind, and starts the writer thread.
    pub fn open(config: LogConfig) -> Result<Self, LogError> {
        let store = Arc::new(store::Store::open_with(&config.dir, config.id_index)?);
        let head = store.head()?;
        let last_recorded_us = match store.event_at(head.position)? {
            Some(event) => event.event.recorded_at_us,
            None => i64::MIN,
        };
        let (head_tx, head_rx) = watch::channel(head);
        let (queue_tx, queue_rx) = mpsc::channel(config.queue_depth.max(1));
        let writer = writer::Writer::new(
            store.clone(),
            head,
            last_recorded_us,
            config.clock.clone(),
            head_tx,
            config
                .checkpoint_runs
                .clamp(1, limits::STREAM_TAIL_RUNS_MAX),
        )?;
        let handle = std::thread::Builder::new()
            .name("rapport-log-writer".into())
            .spawn(move || writer.run(queue_rx))?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                queue_wait: config.queue_wait,
                queue: Mutex::new(Some(queue_tx)),
                head: head_rx,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    /// Appends to one stream; returns once the events are durable.
    pub async fn append(&self, append: StreamAppend) -> Result<AppendOutcome, AppendError> {
        let mut outcomes = self.append_multi(vec![append]).await?;
        Ok(outcomes.pop().expect("one outcome per append"))
    }

    /// Appends to several streams atomically, each with its own expectation: either all
    /// are written, in order, or none is.
    pub async fn append_multi(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Result<Vec<AppendOutcome>, AppendError> {
        if appends.is_empty() || appends.iter().any(|a| a.events.is_empty()) {
            return Err(AppendError::Empty);
        }
        let sender = self
            .inner
            .queue
            .lock()
            .expect("queue lock poisoned")
            .clone()
            .ok_or_else(|| LogError::Unavailable("the log is shutting down".into()))?;
        let (reply, answer) = oneshot::channel();
        let job = Job { appends, reply };
        match sender.send_timeout(job, self.inner.queue_wait).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => return Err(AppendError::Overloaded),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                return Err(LogError::Unavailable("the log is shutting down".into()).into());
            }
        }
        answer
            .await
            .map_err(|_| LogError::Unavailable("the writer stopped".into()))?
    }

    /// The durable head.
    pub fn head(&self) -> Head {
        *self.inner.head.borrow()
    }

    /// A receiver that changes whenever the durable head moves.
    pub fn watch_head(&self) -> watch::Receiver<Head> {
        self.inner.head.clone()
    }

    /// Reads one stream (blocking; call from a blocking context in async code).
    pub fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        backwards: bool,
        max_count: usize,
    ) -> Result<Page, ReadError> {
        self.read_stream_within(stream, from_revision, backwards, max_count, usize::MAX)
    }

    /// Reads one stream like [`Log::read_stream`], also stopping before the stored bytes
    /// of the events pass `max_bytes` (a page holds at least one event; `next_cursor`
    /// continues after the cut).
    pub fn read_stream_within(
        &self,
        stream: &StreamName,
        from_revision: u64,
        backwards: bool,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Page, ReadError> {
        Ok(self
            .read_stream_in_chunks(stream, from_revision, backwards, max_count, max_bytes)?
            .into_page()?)
    }

    /// [`Log::read_stream_within`] leaving the events in their parsed chunks (checked
    /// against the chain and to belong to the stream, not decoded), for a reader that
    /// re-encodes them borrowed ([`record::ChunkLayout::view`]).
    pub fn read_stream_in_chunks(
        &self,
        stream: &StreamName,
        from_revision: u64,
        backwards: bool,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<ChunkPage, ReadError> {
        let head = self.head().position;
        self.inner.store.read_stream_in_chunks(
            stream.as_str(),
            from_revision,
            backwards,
            max_count,
            max_bytes,
            head,
        )
    }

    /// [`Log::read_stream_in_chunks`] when its work is bounded by the page (the stream's
    /// newest entry is durable, the usual case): `None` when the read must first look
    /// for the last durable revision among the stream's runs, which can take as long as
    /// the stream is. A caller on an async worker reads a short page this way.
    pub fn read_stream_in_chunks_quick(
        &self,
        stream: &StreamName,
        from_revision: u64,
        backwards: bool,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Option<ChunkPage>, ReadError> {
        let head = self.head().position;
        self.inner.store.read_stream_quick(
            stream.as_str(),
            from_revision,
            backwards,
            (max_count, max_bytes),
            head,
        )
    }

    /// Reads the whole log (blocking).
    pub fn read_all(
        &self,
        from_position: u64,
        backwards: bool,
        max_count: usize,
        filter: &ReadFilter,
    ) -> Result<Page, LogError> {
        self.read_all_within(from_position, backwards, max_count, usize::MAX, filter)
    }

    /// Reads the whole log like [`Log::read_all`], also stopping before the stored bytes
    /// of the events passed `max_bytes` (a page holds at least one event): a reader that
    /// buffers pages, or sends one as a message, bounds it by bytes whatever the events'
    /// sizes.
    pub fn read_all_within(
        &self,
        from_position: u64,
        backwards: bool,
        max_count: usize,
        max_bytes: usize,
        filter: &ReadFilter,
    ) -> Result<Page, LogError> {
        self.read_all_in_chunks(from_position, backwards, max_count, max_bytes, filter)?
            .into_page()
    }

    /// [`Log::read_all_within`] leaving the events in their parsed chunks (checked
    /// against the chain, not decoded), for a reader that re-encodes them borrowed
    /// ([`record::ChunkLayout::view`]).
    pub fn read_all_in_chunks(
        &self,
        from_position: u64,
        backwards: bool,
        max_count: usize,
        max_bytes: usize,
        filter: &ReadFilter,
    ) -> Result<ChunkPage, LogError> {
        let head = self.head().position;
        let store = &self.inner.store;
        if backwards {
            store.read_all_backward_in_chunks(from_position, max_count, max_bytes, filter, head)
        } else {
            store.read_all_forward_in_chunks(from_position, max_count, max_bytes, filter, head)
        }
    }

    /// The events matching `filter` at positions `from..=through` (no further than the
    /// durable head), stopping before their stored bytes pass `max_bytes` (one event at
    /// least): `next_cursor` is `through + 1` once the window is read, else the first
    /// position left out. A reader that knows its windows ahead can read several at
    /// once. The events stay in their parsed chunks, checked against the chain but not
    /// decoded ([`ChunkPage::decode`] decodes them): a reader that re-encodes them
    /// borrows them ([`record::ChunkLayout::view`]).
    pub fn read_window_in_chunks(
        &self,
        from: u64,
        through: u64,
        max_bytes: usize,
        filter: &ReadFilter,
    ) -> Result<ChunkPage, LogError> {
        let head = self.head().position.min(through);
        self.inner
            .store
            .read_all_forward_in_chunks(from, usize::MAX, max_bytes, filter, head)
    }

    /// The durable event with `id`, if any (blocking). Services use it to answer a
    /// re-sent command idempotently before re-deciding it on changed state.
    pub fn event_by_id(&self, id: Uuid) -> Result<Option<LoggedEvent>, LogError> {
        let head = self.head().position;
        self.inner.store.id_position(id.as_bytes(), head)
    }

    /// The durable event at `position`, if any (blocking).
    pub fn event_at(&self, position: u64) -> Result<Option<LoggedEvent>, LogError> {
        if position == 0 || position > self.head().position {
            return Ok(None);
        }
        self.inner.store.event_at(position)
    }

    /// The head of one stream as far as it is durable (blocking).
    pub fn stream_head(&self, stream: &StreamName) -> Result<Option<StreamHead>, LogError> {
        let head = self.head().position;
        Ok(self
            .inner
            .store
            .stream_head(stream.as_str())?
            .filter(|h| h.position <= head))
    }

    /// The sled database the log lives in. Projections open their own trees in it (never
    /// the log's trees: `events`, `streams`, `id_runs`, `meta`, nor `event_ids`, which
    /// format 2 used), so one process-wide
    /// lock and one cache serve both.
    pub fn db(&self) -> &sled::Db {
        &self.inner.store.db
    }

    /// How many handles to this log exist (clones held by services and tasks).
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Stops accepting appends, lets the writer finish what is queued, flushes, and
    /// waits for it. Idempotent.
    pub fn shutdown(&self) {
        self.inner.queue.lock().expect("queue lock poisoned").take();
        let Some(handle) = self
            .inner
            .writer
            .lock()
            .expect("writer lock poisoned")
            .take()
        else {
            return;
        };
        if handle.join().unwrap_or(false) {
            // The writer checkpointed; this one also covers what else shares the
            // database since (the projections' trees).
            if let Err(error) = self.inner.store.checkpoint() {
                tracing::error!(%error, "final checkpoint failed");
            }
        } else {
            // After a storage failure sled may hold events whose index entries were never
            // made: a checkpoint would move the index watermark over them, and the next
            // open would not re-derive them. Flush only; the next open replays the
            // journal and repairs the indices from the last good watermark.
            tracing::warn!("the log writer stopped after a failure: no final checkpoint");
            if let Err(error) = self.inner.store.db.flush() {
                tracing::error!(%error, "final flush failed");
            }
        }
    }
}

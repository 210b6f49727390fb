//! Model-based property test of the log (sled's way): random operations — appends
//! under every expectation kind, re-sent batches (same content, altered content,
//! reordered, mixed with new ids), multi-stream appends, concurrent appends that share
//! a group commit, clock steps, and *restarts* (clean ones, and crashes at rest in
//! which sled loses everything since its last checkpoint and only the journal keeps
//! the acknowledged groups) — run against the real [`Log`] and against an in-memory
//! model that states the contract (DESIGN §2 and the §5 fine print). Every outcome is
//! predicted: positions, revisions, `WrongExpectedRevision` with the actual revision,
//! `EventIdConflict` naming the ids, and the original positions of an idempotent
//! re-send; and nothing an answer tells may lie beyond the durable head when it is
//! heard. After every restart and at the end, every read (forward and backward pages,
//! filters, each stream) equals the model, the head hash equals the chain recomputed
//! from the model, and `verify_dir` reports a sound log.
//!
//! Deterministic: a fixed proptest seed (override with `RAPPORT_MODEL_SEED`, cases with
//! `PROPTEST_CASES`) and a [`ManualClock`]. Failures found by this test are frozen
//! below as named regression tests, each with a short post-mortem.

use crate::common::retry_while_locked;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use rapport::clock::{Clock, ManualClock};
use rapport::log::id_index::IdIndexShape;
use rapport::log::record::chain_hash;
use rapport::log::store::Store;
use rapport::log::stream_index::{decode_stream_entry, stream_key};
use rapport::log::verify::{VerifyReport, verify_exact, verify_store, verify_streaming};
use rapport::log::{
    AppendError, AppendOutcome, ExpectedRevision, Hash, Head, Log, LogConfig, LoggedEvent,
    ProposedEvent, ReadError, ReadFilter, StoredEvent, StreamAppend, StreamHead, StreamName,
    ZERO_HASH,
};
use uuid::Uuid;

/// Streams the operations touch. `customer-a` is a byte prefix of `customer-a-b`, so
/// the stream index separator is exercised.
const STREAMS: [&str; 4] = ["customer-a", "customer-a-b", "deal-1", "loyalty-x:y.z"];

/// Event types the operations use; the log treats them as opaque names.
const EVENT_TYPES: [&str; 3] = ["test.happened", "CustomerRegistered", "review.written"];

/// Where the manual clock starts: 2023-11-14T22:13:20Z.
const CLOCK_START_US: i64 = 1_700_000_000_000_000;

/// Business times the operations use are this plus whole seconds.
const OCCURRED_BASE_US: i64 = 1_600_000_000_000_000;

// ---------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------

/// One event as generated; becomes a [`ProposedEvent`] once an id is drawn.
#[derive(Clone, Debug)]
struct EventSpec {
    server_assigned_id: bool,
    event_type: usize,
    payload: Vec<u8>,
    occurred_s: Option<i64>,
    metadata: BTreeMap<u8, u8>,
    correlated: bool,
    actor: u8,
}

#[derive(Clone, Copy, Debug)]
enum ExpectSpec {
    Any,
    NoStream,
    StreamExists,
    /// The stream's actual last revision (0 when the stream does not exist, so wrong).
    ExactRight,
    /// The actual revision plus this (or this minus one when the stream does not exist).
    ExactWrong(u64),
}

/// What a re-sent batch looks like next to the original.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Whole,
    /// Without its first event (a subset, still in order).
    DropFirst,
    /// Reversed (out of order when it has two or more events).
    Reversed,
    /// Its first event once more at the end (a duplicate id inside the batch).
    DuplicateFirst,
}

/// What a re-send changes in one of its events (or in the batch's stream).
#[derive(Clone, Copy, Debug)]
enum Alter {
    Nothing,
    /// Not part of the content the contract compares: still idempotent.
    Actor,
    /// Metadata in another order: the log sorts it, still idempotent.
    MetadataOrder,
    Payload,
    Metadata,
    OccurredAt,
    Correlation,
    Causation,
    EventType,
    SchemaVersion,
    /// The whole batch goes to another stream.
    Stream,
}

#[derive(Clone, Debug)]
enum BodySpec {
    Fresh(Vec<EventSpec>),
    Resend {
        batch: Index,
        shape: Shape,
        alter: Alter,
        event: Index,
    },
    /// An earlier batch plus one new event.
    Mixed {
        batch: Index,
        fresh: EventSpec,
    },
}

#[derive(Clone, Debug)]
struct AppendSpec {
    stream: usize,
    expect: ExpectSpec,
    body: BodySpec,
}

#[derive(Clone, Debug)]
enum Op {
    /// One append, after moving the clock by `clock_step_us` (may be negative).
    Append {
        spec: AppendSpec,
        clock_step_us: i64,
    },
    /// Several streams in one atomic `append_multi`.
    Multi(Vec<AppendSpec>),
    /// Several appends queued at once (they may share one group commit).
    Concurrent(Vec<AppendSpec>),
    /// Shutdown, offline verify, reopen.
    Restart,
    /// A crash at rest: every acknowledged group is in the journal, but sled lost all
    /// it wrote since the session started (its last checkpoint). Reopening must replay
    /// the journal and re-derive the indices.
    CrashRestart,
}

fn event_spec() -> impl Strategy<Value = EventSpec> {
    (
        prop::bool::weighted(0.2),
        0..EVENT_TYPES.len(),
        // Mostly tiny payloads; sometimes kilobytes, so a group spans several chunks.
        prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..6),
            1 => (any::<u8>(), 3_000..5_000usize).prop_map(|(byte, len)| vec![byte; len]),
        ],
        prop::option::weighted(0.5, 0..1_000i64),
        prop::collection::btree_map(0..4u8, any::<u8>(), 0..3),
        prop::bool::weighted(0.3),
        0..2u8,
    )
        .prop_map(
            |(server_assigned_id, event_type, payload, occurred_s, metadata, correlated, actor)| {
                EventSpec {
                    server_assigned_id,
                    event_type,
                    payload,
                    occurred_s,
                    metadata,
                    correlated,
                    actor,
                }
            },
        )
}

fn expect_spec() -> impl Strategy<Value = ExpectSpec> {
    prop_oneof![
        3 => Just(ExpectSpec::Any),
        1 => Just(ExpectSpec::NoStream),
        1 => Just(ExpectSpec::StreamExists),
        3 => Just(ExpectSpec::ExactRight),
        1 => (1..3u64).prop_map(ExpectSpec::ExactWrong),
    ]
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        6 => Just(Shape::Whole),
        1 => Just(Shape::DropFirst),
        1 => Just(Shape::Reversed),
        1 => Just(Shape::DuplicateFirst),
    ]
}

fn alter() -> impl Strategy<Value = Alter> {
    prop_oneof![
        8 => Just(Alter::Nothing),
        1 => Just(Alter::Actor),
        1 => Just(Alter::MetadataOrder),
        1 => Just(Alter::Payload),
        1 => Just(Alter::Metadata),
        1 => Just(Alter::OccurredAt),
        1 => Just(Alter::Correlation),
        1 => Just(Alter::Causation),
        1 => Just(Alter::EventType),
        1 => Just(Alter::SchemaVersion),
        1 => Just(Alter::Stream),
    ]
}

fn body_spec() -> impl Strategy<Value = BodySpec> {
    prop_oneof![
        6 => prop::collection::vec(event_spec(), 1..5).prop_map(BodySpec::Fresh),
        4 => (any::<Index>(), shape(), alter(), any::<Index>()).prop_map(
            |(batch, shape, alter, event)| BodySpec::Resend { batch, shape, alter, event }
        ),
        1 => (any::<Index>(), event_spec()).prop_map(|(batch, fresh)| BodySpec::Mixed { batch, fresh }),
    ]
}

fn append_spec() -> impl Strategy<Value = AppendSpec> {
    (0..STREAMS.len(), expect_spec(), body_spec()).prop_map(|(stream, expect, body)| AppendSpec {
        stream,
        expect,
        body,
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        14 => (
            append_spec(),
            prop_oneof![9 => 1..5_000i64, 1 => -5_000..0i64],
        )
            .prop_map(|(spec, clock_step_us)| Op::Append { spec, clock_step_us }),
        2 => prop::collection::vec(append_spec(), 2..4).prop_map(Op::Multi),
        2 => prop::collection::vec(append_spec(), 2..5).prop_map(Op::Concurrent),
        1 => Just(Op::Restart),
        1 => Just(Op::CrashRestart),
    ]
}

// ---------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------

/// Why an append was refused, as the model predicts it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Rejection {
    WrongExpectedRevision {
        stream: String,
        expected: ExpectedRevision,
        actual: Option<u64>,
    },
    EventIdConflict(Vec<Uuid>),
    DuplicateIdInBatch(Uuid),
}

fn observed(error: AppendError) -> Rejection {
    match error {
        AppendError::WrongExpectedRevision {
            stream,
            expected,
            actual,
        } => Rejection::WrongExpectedRevision {
            stream,
            expected,
            actual,
        },
        AppendError::EventIdConflict { ids } => Rejection::EventIdConflict(ids),
        AppendError::DuplicateIdInBatch(id) => Rejection::DuplicateIdInBatch(id),
        other => panic!("the model never expects {other:?}"),
    }
}

fn observed_result<T>(result: Result<T, AppendError>) -> Result<T, Rejection> {
    result.map_err(observed)
}

/// The log as a list: every stored envelope in position order, per-stream positions
/// and the event-id index.
#[derive(Clone, Default)]
struct Model {
    events: Vec<StoredEvent>,
    streams: BTreeMap<String, Vec<u64>>,
    ids: HashMap<Uuid, u64>,
    /// Positions whose id the server assigned and the model has not learned yet.
    unlearned: Vec<u64>,
    /// Placeholder ids for server-assigned ids, until learned.
    placeholders: u128,
}

/// The content the contract compares on a re-send: stream, body (type, version,
/// payload), metadata, occurred_at, correlation and causation ids. Not actor or channel.
fn same_content(stream: &str, proposed: &ProposedEvent, stored: &StoredEvent) -> bool {
    let mut metadata = proposed.metadata.clone();
    metadata.sort();
    let occurred = proposed.occurred_at_us.unwrap_or(stored.recorded_at_us);
    stored.stream == stream
        && stored.event_type == proposed.event_type
        && stored.schema_version == proposed.schema_version
        && stored.payload == proposed.payload
        && stored.metadata == metadata
        && stored.occurred_at_us == occurred
        && stored.correlation_id == proposed.correlation_id
        && stored.causation_id == proposed.causation_id
}

impl Model {
    fn head_position(&self) -> u64 {
        self.events.len() as u64
    }

    fn actual_revision(&self, stream: &str) -> Option<u64> {
        self.streams.get(stream).map(|p| p.len() as u64 - 1)
    }

    fn last_recorded_us(&self) -> i64 {
        self.events.last().map_or(i64::MIN, |e| e.recorded_at_us)
    }

    fn expected(&self, stream: &str, spec: ExpectSpec) -> ExpectedRevision {
        let actual = self.actual_revision(stream);
        match spec {
            ExpectSpec::Any => ExpectedRevision::Any,
            ExpectSpec::NoStream => ExpectedRevision::NoStream,
            ExpectSpec::StreamExists => ExpectedRevision::StreamExists,
            ExpectSpec::ExactRight => ExpectedRevision::Exact(actual.unwrap_or(0)),
            ExpectSpec::ExactWrong(delta) => {
                ExpectedRevision::Exact(actual.map_or(delta - 1, |r| r + delta))
            }
        }
    }

    /// Applies one append as the contract says; `now_us` is the clock at commit.
    fn apply(&mut self, append: &StreamAppend, now_us: i64) -> Result<AppendOutcome, Rejection> {
        let stream = append.stream.as_str();
        let mut seen = HashSet::new();
        for id in append.events.iter().filter_map(|e| e.event_id) {
            if !seen.insert(id) {
                return Err(Rejection::DuplicateIdInBatch(id));
            }
        }
        // Idempotency comes first, whatever the expectation says.
        let present: Vec<(&ProposedEvent, u64)> = append
            .events
            .iter()
            .filter_map(|e| e.event_id.and_then(|id| self.ids.get(&id)).map(|p| (e, *p)))
            .collect();
        if !present.is_empty() {
            let present_ids: Vec<Uuid> = present.iter().filter_map(|(e, _)| e.event_id).collect();
            if present.len() < append.events.len() {
                return Err(Rejection::EventIdConflict(present_ids));
            }
            let differing: Vec<Uuid> = present
                .iter()
                .filter(|(e, p)| !same_content(stream, e, &self.events[*p as usize - 1]))
                .filter_map(|(e, _)| e.event_id)
                .collect();
            if !differing.is_empty() {
                return Err(Rejection::EventIdConflict(differing));
            }
            if present.windows(2).any(|w| w[0].1 >= w[1].1) {
                return Err(Rejection::EventIdConflict(present_ids));
            }
            let first = present[0].1;
            let last = present[present.len() - 1].1;
            return Ok(AppendOutcome {
                first_position: first,
                last_position: last,
                last_revision: self.events[last as usize - 1].revision,
            });
        }
        // Then the expectation.
        let actual = self.actual_revision(stream);
        let ok = match append.expected {
            ExpectedRevision::Any => true,
            ExpectedRevision::NoStream => actual.is_none(),
            ExpectedRevision::StreamExists => actual.is_some(),
            ExpectedRevision::Exact(r) => actual == Some(r),
        };
        if !ok {
            return Err(Rejection::WrongExpectedRevision {
                stream: stream.to_owned(),
                expected: append.expected,
                actual,
            });
        }
        let recorded_at_us = now_us.max(self.last_recorded_us());
        let first_position = self.head_position() + 1;
        let first_revision = actual.map_or(0, |r| r + 1);
        for (index, proposed) in append.events.iter().enumerate() {
            let position = first_position + index as u64;
            let id = match proposed.event_id {
                Some(id) => {
                    self.ids.insert(id, position);
                    id
                }
                None => {
                    self.placeholders += 1;
                    self.unlearned.push(position);
                    Uuid::from_u128(u128::MAX - self.placeholders)
                }
            };
            let mut metadata = proposed.metadata.clone();
            metadata.sort();
            self.events.push(StoredEvent {
                position,
                stream: stream.to_owned(),
                revision: first_revision + index as u64,
                event_id: *id.as_bytes(),
                event_type: proposed.event_type.clone(),
                schema_version: proposed.schema_version,
                recorded_at_us,
                occurred_at_us: proposed.occurred_at_us.unwrap_or(recorded_at_us),
                correlation_id: proposed.correlation_id.clone(),
                causation_id: proposed.causation_id.clone(),
                actor: proposed.actor.clone(),
                source_channel: proposed.source_channel.clone(),
                metadata,
                payload: proposed.payload.clone(),
            });
            self.streams
                .entry(stream.to_owned())
                .or_default()
                .push(position);
        }
        let count = append.events.len() as u64;
        Ok(AppendOutcome {
            first_position,
            last_position: first_position + count - 1,
            last_revision: first_revision + count - 1,
        })
    }

    /// Applies appends all or nothing, as `append_multi` does.
    fn apply_multi(
        &mut self,
        appends: &[StreamAppend],
        now_us: i64,
    ) -> Result<Vec<AppendOutcome>, Rejection> {
        let mut draft = self.clone();
        let outcomes = appends
            .iter()
            .map(|a| draft.apply(a, now_us))
            .collect::<Result<Vec<_>, _>>()?;
        *self = draft;
        Ok(outcomes)
    }

    /// Nothing an answer tells is beyond the durable head at the moment it is heard: an
    /// acknowledged append is durable, and so is the revision a rejection reports and the
    /// event an id conflicts with (a crash cannot take back what a client was told).
    fn check_durable_when_heard(&self, answer: &Result<AppendOutcome, Rejection>, head: Head) {
        let told: Vec<u64> = match answer {
            Ok(outcome) => vec![outcome.last_position],
            Err(Rejection::WrongExpectedRevision {
                stream,
                actual: Some(revision),
                ..
            }) => vec![self.streams[stream.as_str()][*revision as usize]],
            Err(Rejection::EventIdConflict(ids)) => ids
                .iter()
                .filter_map(|id| self.ids.get(id).copied())
                .collect(),
            Err(_) => Vec::new(),
        };
        for position in told {
            assert!(
                position <= head.position,
                "{answer:?} was heard while the durable head was {}, before position {position}",
                head.position
            );
        }
    }

    /// Learns the ids the server assigned, from the log itself: each must be a fresh
    /// UUIDv7 that no other event carries.
    fn learn_server_ids(&mut self, log: &Log) {
        for position in std::mem::take(&mut self.unlearned) {
            let page = log
                .read_all(position, false, 1, &ReadFilter::default())
                .expect("read one event");
            let logged = page.events.first().expect("the appended event is readable");
            let id = logged.event.id();
            assert_eq!(
                id.get_version(),
                Some(uuid::Version::SortRand),
                "server-assigned ids are UUIDv7"
            );
            assert!(
                self.ids.insert(id, position).is_none(),
                "server-assigned id {id} is not unique"
            );
            self.events[position as usize - 1].event_id = *id.as_bytes();
        }
    }

    /// The chain hash after each event, recomputed from the model's envelopes.
    fn chain(&self) -> Vec<Hash> {
        let mut previous = ZERO_HASH;
        self.events
            .iter()
            .map(|event| {
                previous = chain_hash(&previous, event.position, &event.encode());
                previous
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------
// The harness: a log in a temp dir, a manual clock, a current-thread runtime
// ---------------------------------------------------------------------------------

struct Harness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    log: Option<Log>,
    runtime: tokio::runtime::Runtime,
    /// The data directory without its journal as the current session found it at open
    /// (after the last checkpoint): what sled holds durably if the process dies now.
    session_start: tempfile::TempDir,
}

/// The journal's file name inside the data directory (`rapport::log::wal`). Everything
/// else in the directory is sled's, made durable only at checkpoints.
const JOURNAL_FILE: &str = "wal";

/// Copies `from` into `to` recursively, leaving out the journal file at the top.
fn copy_except_journal(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        if entry.file_name() == JOURNAL_FILE {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Opens sled, retrying briefly while the previous handle's background threads let go
/// of the file lock.
fn open_log(dir: &Path, clock: &ManualClock) -> Log {
    let config = LogConfig {
        clock: Arc::new(clock.clone()),
        // A tiny id index, so that the model's few events seal runs and merge them.
        id_index: IdIndexShape {
            tail_entries: 3,
            fanout: 2,
            block_entries: 2,
        },
        ..LogConfig::new(dir)
    };
    retry_while_locked(|| Log::open(config.clone()))
        .unwrap_or_else(|error| panic!("reopening the log failed: {error}"))
}

/// Opens the store of a closed directory, retrying briefly while the previous handle's
/// background threads (sled's I/O pool) let go of the file lock.
fn open_store_closed(dir: &Path) -> Store {
    retry_while_locked(|| Store::open(dir))
        .unwrap_or_else(|error| panic!("opening the store failed: {error}"))
}

/// Verifies a closed directory with both passes, which must agree; returns the exact one.
fn verify_closed(dir: &Path) -> VerifyReport {
    let store = open_store_closed(dir);
    let streaming = verify_streaming(&store).expect("streaming pass runs");
    let exact = verify_exact(&store).expect("exact pass runs");
    assert_eq!(
        streaming.is_ok(),
        exact.is_ok(),
        "the passes disagree: {:?} / {:?}",
        streaming.faults,
        exact.faults
    );
    let summary = |r: &VerifyReport| (r.events, r.chunks, r.streams, r.head_position, r.head_hash);
    assert_eq!(summary(&streaming), summary(&exact));
    exact
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = ManualClock::new(CLOCK_START_US);
        // The first session starts from nothing.
        let session_start = tempfile::tempdir().expect("temp dir");
        let log = open_log(dir.path(), &clock);
        // Current-thread: tasks spawned in order send to the writer queue in that order,
        // so concurrent appends are checked in a known order (whatever the grouping).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Self {
            dir,
            clock,
            log: Some(log),
            runtime,
            session_start,
        }
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("the log is open")
    }

    fn append(&self, append: StreamAppend) -> Result<AppendOutcome, AppendError> {
        self.runtime.block_on(self.log().append(append))
    }

    fn append_multi(&self, appends: Vec<StreamAppend>) -> Result<Vec<AppendOutcome>, AppendError> {
        self.runtime.block_on(self.log().append_multi(appends))
    }

    /// Queues every append before any is answered; answers in queue order, each with
    /// the durable head read the moment the answer arrived.
    fn append_concurrently(
        &self,
        appends: Vec<StreamAppend>,
    ) -> Vec<(Result<AppendOutcome, AppendError>, Head)> {
        let log = self.log().clone();
        self.runtime.block_on(async move {
            let tasks: Vec<_> = appends
                .into_iter()
                .map(|append| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let result = log.append(append).await;
                        (result, log.head())
                    })
                })
                .collect();
            let mut results = Vec::with_capacity(tasks.len());
            for task in tasks {
                results.push(task.await.expect("append task"));
            }
            results
        })
    }

    /// Shuts the log down and verifies the closed directory offline.
    fn close(&mut self) -> VerifyReport {
        let log = self.log.take().expect("the log is open");
        log.shutdown();
        drop(log);
        verify_closed(self.dir.path())
    }

    fn reopen(&mut self) {
        assert!(self.log.is_none());
        self.log = Some(open_log(self.dir.path(), &self.clock));
    }

    /// Clean restart: shutdown, offline verify, and a new session.
    fn restart(&mut self) -> VerifyReport {
        let report = self.close();
        self.session_start = tempfile::tempdir().expect("temp dir");
        copy_except_journal(self.dir.path(), self.session_start.path());
        self.reopen();
        report
    }

    /// Dies at rest and restarts: the journal as it is now (every acknowledged group is
    /// synced in it, and nothing is being written), sled as the session found it.
    fn crash_restart(&mut self) {
        let journal = std::fs::read(self.dir.path().join(JOURNAL_FILE)).expect("read journal");
        let log = self.log.take().expect("the log is open");
        log.shutdown();
        drop(log);
        for entry in std::fs::read_dir(self.dir.path()).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove dir");
            } else {
                std::fs::remove_file(&path).expect("remove file");
            }
        }
        copy_except_journal(self.session_start.path(), self.dir.path());
        std::fs::write(self.dir.path().join(JOURNAL_FILE), journal).expect("write journal");
        self.reopen();
    }
}

/// Checks a verify report against the model.
fn check_report(report: &VerifyReport, model: &Model) {
    assert!(report.is_ok(), "verify found faults: {:#?}", report.faults);
    assert_eq!(report.events, model.head_position());
    assert_eq!(report.head_position, model.head_position());
    assert_eq!(
        report.head_hash,
        model.chain().last().copied().unwrap_or(ZERO_HASH)
    );
    assert_eq!(report.streams, model.streams.len() as u64);
}

/// Pages through `read_all` following `next_cursor` until `end_reached`.
fn read_all_pages(
    log: &Log,
    backwards: bool,
    page: usize,
    filter: &ReadFilter,
) -> Vec<LoggedEvent> {
    let mut out = Vec::new();
    let mut cursor = 0;
    for _ in 0..10_000 {
        let result = log
            .read_all(cursor, backwards, page, filter)
            .expect("read_all");
        assert!(result.events.len() <= page);
        out.extend(result.events);
        if result.end_reached {
            return out;
        }
        assert_ne!(
            result.next_cursor, cursor,
            "a page that is not the end moves the cursor"
        );
        cursor = result.next_cursor;
    }
    panic!("read_all did not reach the end")
}

fn read_stream_pages(
    log: &Log,
    stream: &StreamName,
    backwards: bool,
    page: usize,
) -> Vec<LoggedEvent> {
    let mut out = Vec::new();
    let mut cursor = 0;
    for _ in 0..10_000 {
        let result = log
            .read_stream(stream, cursor, backwards, page)
            .expect("read_stream");
        assert!(result.events.len() <= page);
        out.extend(result.events);
        if result.end_reached {
            return out;
        }
        cursor = result.next_cursor;
    }
    panic!("read_stream did not reach the end")
}

/// Every read equals the model: the head and its hash, the whole log forward and
/// backward in pages, a filtered read, and each stream forward and backward.
fn check_reads(log: &Log, model: &Model) {
    let chain = model.chain();
    let head = log.head();
    assert_eq!(head.position, model.head_position(), "head position");
    assert_eq!(
        head.hash,
        chain.last().copied().unwrap_or(ZERO_HASH),
        "head hash equals the chain recomputed from the model"
    );
    let expected: Vec<LoggedEvent> = model
        .events
        .iter()
        .zip(&chain)
        .map(|(event, hash)| LoggedEvent {
            event: event.clone(),
            hash: *hash,
        })
        .collect();

    let everything = ReadFilter::default();
    let forward = read_all_pages(log, false, 7, &everything);
    assert_eq!(forward.len(), expected.len());
    for (got, want) in forward.iter().zip(&expected) {
        assert_eq!(
            got, want,
            "read_all forward at position {}",
            want.event.position
        );
    }
    let backward = read_all_pages(log, true, 5, &everything);
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(backward, reversed, "read_all backward");

    let filter = ReadFilter {
        stream_prefixes: vec!["customer-".into(), "loyalty-".into()],
        event_types: vec![EVENT_TYPES[0].into(), EVENT_TYPES[2].into()],
    };
    let filtered: Vec<LoggedEvent> = expected
        .iter()
        .filter(|e| filter.matches(&e.event.stream, &e.event.event_type))
        .cloned()
        .collect();
    assert_eq!(
        read_all_pages(log, false, 4, &filter),
        filtered,
        "filtered read"
    );

    for name in STREAMS {
        let stream = StreamName::parse(name).expect("valid stream name");
        let Some(positions) = model.streams.get(name) else {
            assert!(
                matches!(
                    log.read_stream(&stream, 0, false, 10),
                    Err(ReadError::StreamNotFound(_))
                ),
                "{name} does not exist"
            );
            assert_eq!(log.stream_head(&stream).expect("stream head"), None);
            continue;
        };
        let want: Vec<LoggedEvent> = positions
            .iter()
            .map(|p| expected[*p as usize - 1].clone())
            .collect();
        for (revision, event) in want.iter().enumerate() {
            assert_eq!(event.event.revision, revision as u64);
        }
        assert_eq!(
            read_stream_pages(log, &stream, false, 3),
            want,
            "{name} forward"
        );
        let mut want_backward = want.clone();
        want_backward.reverse();
        assert_eq!(
            read_stream_pages(log, &stream, true, 2),
            want_backward,
            "{name} backward"
        );
        assert_eq!(
            log.stream_head(&stream).expect("stream head"),
            Some(StreamHead {
                revision: positions.len() as u64 - 1,
                position: *positions.last().expect("non-empty"),
            })
        );
    }
}

// ---------------------------------------------------------------------------------
// Running a case
// ---------------------------------------------------------------------------------

/// What the generated operations exercised, over all cases: the property test fails if
/// a kind of outcome never happened, so a change to the generators cannot silently
/// stop testing something.
struct Coverage {
    appended: AtomicU64,
    idempotent: AtomicU64,
    wrong_expectation: AtomicU64,
    id_conflict: AtomicU64,
    duplicate_in_batch: AtomicU64,
    multi_accepted: AtomicU64,
    multi_rejected: AtomicU64,
    concurrent: AtomicU64,
    restarts: AtomicU64,
    crash_restarts: AtomicU64,
    spanning_chunks: AtomicU64,
}

static COVERAGE: Coverage = Coverage {
    appended: AtomicU64::new(0),
    idempotent: AtomicU64::new(0),
    wrong_expectation: AtomicU64::new(0),
    id_conflict: AtomicU64::new(0),
    duplicate_in_batch: AtomicU64::new(0),
    multi_accepted: AtomicU64::new(0),
    multi_rejected: AtomicU64::new(0),
    concurrent: AtomicU64::new(0),
    restarts: AtomicU64::new(0),
    crash_restarts: AtomicU64::new(0),
    spanning_chunks: AtomicU64::new(0),
};

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Coverage {
    fn record(
        &self,
        append: &StreamAppend,
        head_before: u64,
        outcome: &Result<AppendOutcome, Rejection>,
    ) {
        match outcome {
            Ok(o) if o.first_position <= head_before => count(&self.idempotent),
            Ok(_) => {
                count(&self.appended);
                let bytes: usize = append.events.iter().map(|e| e.payload.len()).sum();
                if bytes > rapport::limits::CHUNK_BYTES_TARGET {
                    count(&self.spanning_chunks);
                }
            }
            Err(Rejection::WrongExpectedRevision { .. }) => count(&self.wrong_expectation),
            Err(Rejection::EventIdConflict(_)) => count(&self.id_conflict),
            Err(Rejection::DuplicateIdInBatch(_)) => count(&self.duplicate_in_batch),
        }
    }

    fn report(&self) -> Vec<(&'static str, u64)> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("appended", load(&self.appended)),
            ("idempotent re-sends", load(&self.idempotent)),
            ("wrong expectations", load(&self.wrong_expectation)),
            ("id conflicts", load(&self.id_conflict)),
            ("duplicate ids in a batch", load(&self.duplicate_in_batch)),
            ("multi-stream appends accepted", load(&self.multi_accepted)),
            ("multi-stream appends rejected", load(&self.multi_rejected)),
            ("concurrent groups", load(&self.concurrent)),
            ("restarts", load(&self.restarts)),
            ("crash restarts", load(&self.crash_restarts)),
            ("appends spanning chunks", load(&self.spanning_chunks)),
        ]
    }
}

/// Turns specs into concrete appends, remembering every batch sent (accepted or not)
/// so later operations can re-send it.
struct Driver {
    harness: Harness,
    model: Model,
    history: Vec<StreamAppend>,
    next_id: u128,
}

impl Driver {
    fn new() -> Self {
        Self {
            harness: Harness::new(),
            model: Model::default(),
            history: Vec::new(),
            next_id: 0,
        }
    }

    fn fresh_event(&mut self, spec: &EventSpec) -> ProposedEvent {
        let event_id = if spec.server_assigned_id {
            None
        } else {
            self.next_id += 1;
            Some(Uuid::from_u128(
                0x0190_0000_0000_7000_8000_0000_0000_0000 + self.next_id,
            ))
        };
        ProposedEvent {
            event_id,
            event_type: EVENT_TYPES[spec.event_type].to_owned(),
            schema_version: 1,
            payload: spec.payload.clone(),
            occurred_at_us: spec.occurred_s.map(|s| OCCURRED_BASE_US + s * 1_000_000),
            // Reverse key order: the log must sort it.
            metadata: spec
                .metadata
                .iter()
                .rev()
                .map(|(k, v)| (format!("key{k}"), format!("value{v}")))
                .collect(),
            correlation_id: if spec.correlated {
                "corr-1".into()
            } else {
                String::new()
            },
            causation_id: String::new(),
            actor: format!("actor-{}", spec.actor),
            source_channel: "pos".into(),
        }
    }

    /// Resolves a spec against the model as it is now (the model state just before
    /// this append is checked).
    fn resolve(&mut self, spec: &AppendSpec, model: &Model) -> StreamAppend {
        let (stream, events) = match &spec.body {
            BodySpec::Fresh(events) => (
                STREAMS[spec.stream].to_owned(),
                events.iter().map(|e| self.fresh_event(e)).collect(),
            ),
            BodySpec::Resend { .. } | BodySpec::Mixed { .. } if self.history.is_empty() => {
                let fallback = EventSpec {
                    server_assigned_id: false,
                    event_type: 0,
                    payload: vec![1],
                    occurred_s: None,
                    metadata: BTreeMap::new(),
                    correlated: false,
                    actor: 0,
                };
                (
                    STREAMS[spec.stream].to_owned(),
                    vec![self.fresh_event(&fallback)],
                )
            }
            BodySpec::Resend {
                batch,
                shape,
                alter,
                event,
            } => {
                let original = batch.get(&self.history).clone();
                let mut stream = original.stream.as_str().to_owned();
                let mut events = original.events;
                match shape {
                    Shape::Whole => {}
                    Shape::DropFirst if events.len() > 1 => {
                        events.remove(0);
                    }
                    Shape::DropFirst => {}
                    Shape::Reversed => events.reverse(),
                    Shape::DuplicateFirst => events.push(events[0].clone()),
                }
                let target = event.index(events.len());
                let altered = &mut events[target];
                match alter {
                    Alter::Nothing => {}
                    Alter::Actor => altered.actor.push_str("-again"),
                    Alter::MetadataOrder => altered.metadata.reverse(),
                    Alter::Payload => altered.payload.push(0xAA),
                    Alter::Metadata => altered.metadata.push(("altered".into(), "yes".into())),
                    Alter::OccurredAt => {
                        altered.occurred_at_us = match altered.occurred_at_us {
                            Some(_) => None,
                            None => Some(OCCURRED_BASE_US - 1),
                        }
                    }
                    Alter::Correlation => altered.correlation_id.push('!'),
                    Alter::Causation => altered.causation_id = "cause-altered".into(),
                    Alter::EventType => altered.event_type = "altered.type".into(),
                    Alter::SchemaVersion => altered.schema_version += 1,
                    Alter::Stream => {
                        let index = STREAMS.iter().position(|s| *s == stream).unwrap_or(0);
                        stream = STREAMS[(index + 1) % STREAMS.len()].to_owned();
                    }
                }
                (stream, events)
            }
            BodySpec::Mixed { batch, fresh } => {
                let original = batch.get(&self.history).clone();
                let mut events = original.events;
                events.push(self.fresh_event(fresh));
                (original.stream.as_str().to_owned(), events)
            }
        };
        let expected = model.expected(&stream, spec.expect);
        let append = StreamAppend {
            stream: StreamName::parse(&stream).expect("valid stream name"),
            expected,
            events,
        };
        self.history.push(append.clone());
        append
    }

    fn now_us(&self) -> i64 {
        self.harness.clock.now_us()
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Append {
                spec,
                clock_step_us,
            } => {
                self.harness.clock.advance(*clock_step_us);
                let model = self.model.clone();
                let append = self.resolve(spec, &model);
                let head_before = self.model.head_position();
                let predicted = self.model.apply(&append, self.now_us());
                COVERAGE.record(&append, head_before, &predicted);
                let got = observed_result(self.harness.append(append.clone()));
                assert_eq!(got, predicted, "append {append:#?}");
            }
            Op::Multi(specs) => {
                self.harness.clock.advance(1_000);
                // Each expectation is resolved against the state its append will see:
                // the model after the earlier appends of the same batch.
                let mut draft = self.model.clone();
                let mut appends = Vec::new();
                for spec in specs {
                    let append = self.resolve(spec, &draft);
                    let _ = draft.apply(&append, self.now_us());
                    appends.push(append);
                }
                let predicted = self.model.apply_multi(&appends, self.now_us());
                count(if predicted.is_ok() {
                    &COVERAGE.multi_accepted
                } else {
                    &COVERAGE.multi_rejected
                });
                let got = observed_result(self.harness.append_multi(appends.clone()));
                assert_eq!(got, predicted, "append_multi {appends:#?}");
            }
            Op::Concurrent(specs) => {
                self.harness.clock.advance(1_000);
                let mut appends = Vec::new();
                let mut predicted = Vec::new();
                for spec in specs {
                    let model = self.model.clone();
                    let append = self.resolve(spec, &model);
                    let outcome = self.model.apply(&append, self.now_us());
                    COVERAGE.record(&append, model.head_position(), &outcome);
                    predicted.push(outcome);
                    appends.push(append);
                }
                let (got, heads): (Vec<_>, Vec<Head>) = self
                    .harness
                    .append_concurrently(appends.clone())
                    .into_iter()
                    .map(|(result, head)| (observed_result(result), head))
                    .unzip();
                assert_eq!(got, predicted, "concurrent appends {appends:#?}");
                for (answer, head) in got.iter().zip(heads) {
                    self.model.check_durable_when_heard(answer, head);
                }
                count(&COVERAGE.concurrent);
            }
            Op::Restart => {
                count(&COVERAGE.restarts);
                self.model.learn_server_ids(self.harness.log());
                let report = self.harness.restart();
                check_report(&report, &self.model);
                check_reads(self.harness.log(), &self.model);
            }
            Op::CrashRestart => {
                count(&COVERAGE.crash_restarts);
                self.model.learn_server_ids(self.harness.log());
                self.harness.crash_restart();
                check_reads(self.harness.log(), &self.model);
                // A clean restart after it: verify the recovered directory offline,
                // and start the next session from it.
                let report = self.harness.restart();
                check_report(&report, &self.model);
            }
        }
        self.model.learn_server_ids(self.harness.log());
        assert_eq!(
            self.harness.log().head().position,
            self.model.head_position()
        );
    }

    fn finish(mut self) {
        check_reads(self.harness.log(), &self.model);
        let report = self.harness.close();
        check_report(&report, &self.model);
    }
}

fn run_case(ops: &[Op]) {
    let mut driver = Driver::new();
    for op in ops {
        driver.run(op);
    }
    driver.finish();
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn the_log_behaves_like_the_model_across_restarts() {
    let config = Config {
        cases: env_u64("PROPTEST_CASES").map_or(64, |n| n as u32),
        rng_seed: RngSeed::Fixed(env_u64("RAPPORT_MODEL_SEED").unwrap_or(0x5EED_F00D_1065)),
        failure_persistence: None,
        max_shrink_iters: 512,
        ..Config::default()
    };
    let cases = config.cases;
    let mut runner = TestRunner::new(config);
    let ops = prop::collection::vec(op(), 1..40);
    if let Err(error) = runner.run(&ops, |ops| {
        run_case(&ops);
        Ok(())
    }) {
        panic!("{error}\nfreeze the minimal case above as a named regression test");
    }
    let coverage = COVERAGE.report();
    eprintln!("{cases} cases exercised: {coverage:?}");
    if cases >= 32 {
        for (what, n) in coverage {
            assert!(n > 0, "the generated operations never produced {what}");
        }
    }
}

// ---------------------------------------------------------------------------------
// Named regression tests: tricky cases, and failures the model test found
// ---------------------------------------------------------------------------------

fn proposed(id: u128, payload: &[u8]) -> ProposedEvent {
    ProposedEvent {
        event_id: Some(Uuid::from_u128(id)),
        event_type: "test.happened".into(),
        schema_version: 1,
        payload: payload.to_vec(),
        ..ProposedEvent::default()
    }
}

fn stream(name: &str) -> StreamName {
    StreamName::parse(name).expect("valid stream name")
}

fn to(name: &str, expected: ExpectedRevision, events: Vec<ProposedEvent>) -> StreamAppend {
    StreamAppend {
        stream: stream(name),
        expected,
        events,
    }
}

/// The writer's id lookups must reach the disk after a restart, not only its memory:
/// a re-send after restart returns the original positions and writes nothing.
#[test]
fn idempotent_resend_after_restart() {
    let mut h = Harness::new();
    let batch = to(
        "customer-1",
        ExpectedRevision::NoStream,
        vec![proposed(1, b"a"), proposed(2, b"b")],
    );
    let first = h.append(batch.clone()).expect("first append");
    h.append(to(
        "customer-2",
        ExpectedRevision::Any,
        vec![proposed(3, b"c")],
    ))
    .expect("another stream");
    let head = h.log().head();
    assert!(h.restart().is_ok());
    h.clock.advance(60_000_000);

    // NoStream is now wrong, but idempotency comes first.
    assert_eq!(h.append(batch.clone()).expect("re-send"), first);
    assert_eq!(
        h.append(to(
            "customer-1",
            ExpectedRevision::Any,
            vec![proposed(1, b"a"), proposed(2, b"b")]
        ))
        .expect("re-send under any"),
        first
    );
    assert_eq!(h.log().head(), head, "a re-send writes nothing");

    // The same ids with other content are refused, naming the altered one.
    let altered = to(
        "customer-1",
        ExpectedRevision::Any,
        vec![proposed(1, b"a"), proposed(2, b"B")],
    );
    match h.append(altered) {
        Err(AppendError::EventIdConflict { ids }) => assert_eq!(ids, vec![Uuid::from_u128(2)]),
        other => panic!("expected an id conflict, got {other:?}"),
    }
    assert!(h.close().is_ok());
}

/// An exact expectation that was right for the original append is wrong for its
/// re-send (the stream moved on); the re-send still gets the original positions and
/// revision, not ABORTED (DESIGN §5 fine print, "Idempotency comes first").
#[test]
fn resend_with_an_exact_expectation_now_wrong_returns_the_original_positions() {
    let mut h = Harness::new();
    h.append(to(
        "deal-7",
        ExpectedRevision::NoStream,
        vec![proposed(10, b"0")],
    ))
    .expect("revision 0");
    let original = h
        .append(to(
            "deal-7",
            ExpectedRevision::Exact(0),
            vec![proposed(11, b"1"), proposed(12, b"2")],
        ))
        .expect("revisions 1 and 2");
    assert_eq!(
        original,
        AppendOutcome {
            first_position: 2,
            last_position: 3,
            last_revision: 2
        }
    );
    h.append(to(
        "deal-7",
        ExpectedRevision::Exact(2),
        vec![proposed(13, b"3")],
    ))
    .expect("revision 3");

    let resend = to(
        "deal-7",
        ExpectedRevision::Exact(0),
        vec![proposed(11, b"1"), proposed(12, b"2")],
    );
    assert_eq!(h.append(resend.clone()).expect("re-send"), original);
    // The same inside a multi-stream append, next to a new append whose expectation holds.
    let outcomes = h
        .append_multi(vec![
            resend,
            to(
                "deal-8",
                ExpectedRevision::NoStream,
                vec![proposed(14, b"x")],
            ),
        ])
        .expect("multi with a re-send");
    assert_eq!(
        outcomes,
        vec![
            original,
            AppendOutcome {
                first_position: 5,
                last_position: 5,
                last_revision: 0
            }
        ]
    );
    // A genuinely new append with that stale expectation is refused with the actual.
    match h.append(to(
        "deal-7",
        ExpectedRevision::Exact(0),
        vec![proposed(15, b"4")],
    )) {
        Err(AppendError::WrongExpectedRevision {
            expected, actual, ..
        }) => {
            assert_eq!(expected, ExpectedRevision::Exact(0));
            assert_eq!(actual, Some(3));
        }
        other => panic!("expected a wrong expectation, got {other:?}"),
    }
    assert!(h.close().is_ok());
}

/// A crash between the events and the index inserts leaves the `streams` entries of the
/// last group missing and `indexed_through` behind (the group's ids live in the id
/// index's tail, which every open reads back from the events). Opening re-derives them
/// from the events tree; lookups by id and by stream work again.
#[test]
fn repair_indices_rederives_what_a_crash_left_behind() {
    let mut h = Harness::new();
    h.append(to(
        "customer-9",
        ExpectedRevision::NoStream,
        vec![proposed(20, b"a"), proposed(21, b"b")],
    ))
    .expect("first group");
    h.append(to(
        "deal-9",
        ExpectedRevision::NoStream,
        vec![proposed(22, b"c")],
    ))
    .expect("second group");
    let lost = h
        .append(to(
            "customer-9",
            ExpectedRevision::Exact(1),
            vec![proposed(23, b"d"), proposed(24, b"e"), proposed(25, b"f")],
        ))
        .expect("the group whose indices the crash loses");
    assert_eq!(lost.first_position, 4);
    let log = h.log.take().expect("open");
    log.shutdown();
    drop(log);

    // Simulate the crash: the events are there, their index entries are not.
    {
        let store = open_store_closed(h.dir.path());
        // customer-9's runs are packed in one entry: keep only its first run.
        store
            .streams
            .tree
            .insert(
                stream_key("customer-9", 0),
                &rapport::log::stream_index::stream_value(1, 2),
            )
            .expect("drop the second run");
        store.set_indexed_through(3).expect("lower the watermark");
        store.sync().expect("sync");
        let damaged = verify_store(&store).expect("verify runs");
        assert!(
            damaged.faults.len() >= 2,
            "the simulated crash is visible to verify: {:?}",
            damaged.faults
        );
        assert_eq!(store.indexed_through().expect("watermark"), 3);
    }

    // Opening repairs.
    h.reopen();
    let customer = stream("customer-9");
    assert_eq!(
        h.log().stream_head(&customer).expect("stream head"),
        Some(StreamHead {
            revision: 4,
            position: 6
        })
    );
    let page = h
        .log()
        .read_stream(&customer, 0, false, 100)
        .expect("read stream");
    let revisions: Vec<(u64, u64)> = page
        .events
        .iter()
        .map(|e| (e.event.revision, e.event.position))
        .collect();
    assert_eq!(revisions, vec![(0, 1), (1, 2), (2, 4), (3, 5), (4, 6)]);
    // The id index works again: the lost group's re-send is idempotent.
    assert_eq!(
        h.append(to(
            "customer-9",
            ExpectedRevision::Exact(1),
            vec![proposed(23, b"d"), proposed(24, b"e"), proposed(25, b"f")],
        ))
        .expect("re-send of the repaired group"),
        lost
    );
    // And the stream continues from the right revision.
    assert_eq!(
        h.append(to(
            "customer-9",
            ExpectedRevision::Exact(4),
            vec![proposed(26, b"g")]
        ))
        .expect("next revision"),
        AppendOutcome {
            first_position: 7,
            last_position: 7,
            last_revision: 5
        }
    );
    let report = h.close();
    assert!(report.is_ok(), "{:?}", report.faults);
    assert_eq!(report.head_position, 7);
}

/// Appends `count` single-event groups over three streams (ids from `first_id`) and
/// returns each outcome with its append, for re-sending.
fn append_singles(h: &Harness, first_id: u128, count: u128) -> Vec<(StreamAppend, AppendOutcome)> {
    (0..count)
        .map(|n| {
            let append = to(
                &format!("customer-{}", n % 3),
                ExpectedRevision::Any,
                vec![proposed(first_id + n, format!("event {n}").as_bytes())],
            );
            let outcome = h.append(append.clone()).expect("append");
            (append, outcome)
        })
        .collect()
}

/// The id index's manifest as it is stored: 25 bytes per run (run id BE, level, first
/// and last position BE), oldest first.
fn manifest_bytes(runs: &[rapport::log::id_index::Run]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for run in runs {
        bytes.extend_from_slice(&run.id.to_be_bytes());
        bytes.push(run.level);
        bytes.extend_from_slice(&run.first.to_be_bytes());
        bytes.extend_from_slice(&run.last.to_be_bytes());
    }
    bytes
}

/// A crash can keep a run's blocks but lose the manifest write that named it (a seal or
/// a merge cut short). Opening deletes the unnamed blocks and reads those positions' ids
/// back from the events: every re-send still finds its original positions.
#[test]
fn ids_of_a_run_the_manifest_lost_are_read_back_from_the_events() {
    let mut h = Harness::new();
    let sent = append_singles(&h, 500, 40);
    let log = h.log.take().expect("open");
    log.shutdown();
    drop(log);
    let dropped = {
        let store = open_store_closed(h.dir.path());
        let runs = store.ids.runs();
        assert!(runs.len() >= 2, "the tiny shape seals and merges: {runs:?}");
        let kept = &runs[..runs.len() - 1];
        store
            .meta
            .insert(rapport::log::id_index::MANIFEST_KEY, manifest_bytes(kept))
            .expect("an older manifest");
        store.sync().expect("sync");
        runs[runs.len() - 1]
    };
    h.reopen();
    let head = {
        for (append, outcome) in &sent {
            assert_eq!(&h.append(append.clone()).expect("re-send"), outcome);
        }
        h.log().head()
    };
    assert_eq!(head.position, 40, "re-sends write nothing");
    let report = h.close();
    assert!(report.is_ok(), "{:?}", report.faults);
    let store = open_store_closed(h.dir.path());
    let tree = store.db.open_tree("id_runs").expect("id runs");
    assert!(
        tree.scan_prefix(dropped.id.to_be_bytes()).next().is_none(),
        "the unnamed run's blocks are gone"
    );
}

/// After a converted directory reopened: re-sends stay idempotent, `more` new appends
/// land, and the closed directory verifies with its head at `head` and is of this
/// build's format. Returns its store, opened.
fn resend_append_and_close(
    h: &mut Harness,
    sent: &[(StreamAppend, AppendOutcome)],
    more: u128,
    head: u64,
) -> Store {
    for (append, outcome) in sent {
        assert_eq!(&h.append(append.clone()).expect("re-send"), outcome);
    }
    append_singles(h, 900, more);
    let report = h.close();
    assert!(report.is_ok(), "{:?}", report.faults);
    assert_eq!(report.head_position, head);
    let store = open_store_closed(h.dir.path());
    assert_current_format(&store);
    store
}

/// Every entry of the `streams` tree, in key order.
fn stream_index_entries(store: &Store) -> Vec<(sled::IVec, sled::IVec)> {
    store
        .streams
        .tree
        .iter()
        .map(|entry| entry.expect("entry"))
        .collect()
}

/// Writes `version` as the directory's `format_version`, durably.
fn set_format(store: &Store, version: u32) {
    store
        .meta
        .insert("format_version", &version.to_be_bytes())
        .expect("format version");
    store.sync().expect("sync");
}

/// The directory's `format_version` is this build's.
fn assert_current_format(store: &Store) {
    assert_eq!(
        store
            .meta
            .get("format_version")
            .expect("read")
            .expect("set")
            .as_ref(),
        rapport::log::store::FORMAT_VERSION.to_be_bytes()
    );
}

/// A version-2 directory (one `event_ids` entry per event) opens: its index is packed
/// into a run, the format moves to 3 and the old tree is dropped; ids are found.
#[test]
fn a_format_2_directory_is_converted_when_it_opens() {
    let mut h = Harness::new();
    let sent = append_singles(&h, 700, 25);
    let log = h.log.take().expect("open");
    log.shutdown();
    drop(log);
    {
        // Turn the directory back into format 2.
        let store = open_store_closed(h.dir.path());
        let old = store.db.open_tree("event_ids").expect("event_ids");
        for position in 1..=25u64 {
            let event = store.event_at(position).expect("read").expect("event");
            old.insert(event.event.event_id, &position.to_be_bytes())
                .expect("insert");
        }
        store
            .db
            .open_tree("id_runs")
            .expect("id runs")
            .clear()
            .expect("clear");
        store
            .meta
            .remove(rapport::log::id_index::MANIFEST_KEY)
            .expect("remove manifest");
        set_format(&store, 2);
    }
    h.reopen();
    let store = resend_append_and_close(&mut h, &sent, 5, 30);
    assert!(
        !store
            .db
            .tree_names()
            .iter()
            .any(|name| name.as_ref() == b"event_ids"),
        "the old tree is dropped"
    );
}

/// A version-3 directory (one stream index entry per append) opens as it is: its
/// entries are one-run entries of format 4. Reads, re-sends and new appends work, the
/// new runs are packed after the old entries, and the format moves to 4.
#[test]
fn a_format_3_directory_opens_as_it_is() {
    let mut h = Harness::new();
    // Interleaved singles: 3 streams, 15 runs each that no merge joins.
    let sent = append_singles(&h, 700, 45);
    let everything = ReadFilter::default();
    let before = read_all_pages(h.log(), false, 7, &everything);
    let streams_before: Vec<Vec<LoggedEvent>> = (0..3)
        .map(|n| read_stream_pages(h.log(), &stream(&format!("customer-{n}")), false, 4))
        .collect();
    let log = h.log.take().expect("open");
    log.shutdown();
    drop(log);
    {
        // Unpack every entry into one entry per run, as format 3 stored them.
        let store = open_store_closed(h.dir.path());
        let entries = stream_index_entries(&store);
        assert_eq!(entries.len(), 3, "packed: one entry per stream");
        store.streams.tree.clear().expect("clear");
        for (key, value) in entries {
            let (name, runs) = decode_stream_entry(&key, &value).expect("decodes");
            assert_eq!(runs.len(), 15);
            for run in runs {
                store
                    .streams
                    .tree
                    .insert(
                        stream_key(&name, run.first_revision),
                        &rapport::log::stream_index::stream_value(run.first_position, run.count),
                    )
                    .expect("insert");
            }
        }
        set_format(&store, 3);
    }
    h.reopen();
    assert_eq!(read_all_pages(h.log(), false, 7, &everything), before);
    for (n, expected) in streams_before.iter().enumerate() {
        let name = stream(&format!("customer-{n}"));
        assert_eq!(&read_stream_pages(h.log(), &name, false, 4), expected);
        let mut backward = read_stream_pages(h.log(), &name, true, 4);
        backward.reverse();
        assert_eq!(&backward, expected);
    }
    let store = resend_append_and_close(&mut h, &sent, 6, 51);
    // The new runs extended each stream's last old entry.
    let entries = stream_index_entries(&store);
    assert_eq!(entries.len(), 45);
    let (_, last_runs) = decode_stream_entry(&entries[14].0, &entries[14].1).expect("decodes");
    assert_eq!(
        last_runs.len(),
        3,
        "customer-0's last entry took two new runs"
    );
}

/// With a checkpoint every few stream index runs, each checkpoint freezes the runs taken
/// since the last one and the writer moves them into sled over the following groups:
/// every stream reads the same, forward and backward, at every step in between, the
/// heads follow, and after a restart the directory verifies and re-sends stay
/// idempotent.
#[test]
fn stream_reads_hold_while_checkpoints_move_the_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = LogConfig {
        checkpoint_runs: 3,
        ..LogConfig::new(dir.path())
    };
    let log = Log::open(config).expect("open");
    let mut positions: HashMap<String, Vec<u64>> = HashMap::new();
    let mut sent = Vec::new();
    for n in 0..120u128 {
        let name = format!("customer-{}", n % 7);
        let events = (0..1 + n % 3)
            .map(|k| proposed(5_000 + n * 10 + k, format!("event {n}.{k}").as_bytes()))
            .collect();
        let append = to(&name, ExpectedRevision::Any, events);
        let outcome = runtime
            .block_on(log.append(append.clone()))
            .expect("append");
        positions
            .entry(name.clone())
            .or_default()
            .extend(outcome.first_position..=outcome.last_position);
        sent.push((append, outcome));
        let expected = &positions[&name];
        let stream = stream(&name);
        let forward: Vec<u64> = read_stream_pages(&log, &stream, false, 4)
            .iter()
            .map(|e| e.event.position)
            .collect();
        assert_eq!(&forward, expected, "append {n}: {name} forward");
        let mut backward: Vec<u64> = read_stream_pages(&log, &stream, true, 5)
            .iter()
            .map(|e| e.event.position)
            .collect();
        backward.reverse();
        assert_eq!(&backward, expected, "append {n}: {name} backward");
        assert_eq!(
            log.stream_head(&stream).expect("stream head"),
            Some(StreamHead {
                revision: expected.len() as u64 - 1,
                position: *expected.last().expect("an event"),
            })
        );
    }
    log.shutdown();
    drop(log);
    let report = verify_closed(dir.path());
    assert!(report.is_ok(), "{:?}", report.faults);
    assert_eq!(report.streams, 7);
    let log = retry_while_locked(|| Log::open(LogConfig::new(dir.path()))).expect("reopen");
    for (name, expected) in &positions {
        let read: Vec<u64> = read_stream_pages(&log, &stream(name), false, 1_000)
            .iter()
            .map(|e| e.event.position)
            .collect();
        assert_eq!(&read, expected, "{name} after the restart");
    }
    for (append, outcome) in &sent {
        assert_eq!(
            &runtime
                .block_on(log.append(append.clone()))
                .expect("re-send"),
            outcome
        );
    }
    log.shutdown();
}

/// Verify opens a directory as a server start does, finishing a crash's recovery first,
/// and says what that recovery did: after a crash at rest (sled as the session found it,
/// the journal holding every acknowledged group) it wrote the session's events from the
/// journal to sled and re-derived their index entries; after a clean stop, nothing.
#[test]
fn verify_reports_what_opening_recovered() {
    let mut h = Harness::new();
    append_singles(&h, 500, 10);
    let report = h.restart();
    assert!(report.is_ok(), "{:?}", report.faults);
    assert!(report.recovered.is_empty(), "{:?}", report.recovered);
    append_singles(&h, 600, 12);
    let journal = std::fs::read(h.dir.path().join(JOURNAL_FILE)).expect("read journal");
    h.log.take().expect("open").shutdown();
    // The directory as a crash at rest leaves it.
    let crashed = tempfile::tempdir().expect("temp dir");
    copy_except_journal(h.session_start.path(), crashed.path());
    std::fs::write(crashed.path().join(JOURNAL_FILE), journal).expect("write journal");
    let report = retry_while_locked(|| rapport::log::verify::verify_dir(crashed.path()))
        .expect("verify runs");
    assert!(report.is_ok(), "{:?}", report.faults);
    assert_eq!(report.head_position, 22);
    assert_eq!(
        report.recovered.journal_events, 12,
        "{:?}",
        report.recovered
    );
    assert_eq!(
        report.recovered.reindexed_events, 12,
        "{:?}",
        report.recovered
    );
    assert!(
        (1..=12).contains(&report.recovered.index_entries_repaired),
        "{:?}",
        report.recovered
    );
    // Recovered once: the next open finds nothing to do.
    let again = retry_while_locked(|| rapport::log::verify::verify_dir(crashed.path()))
        .expect("verify runs");
    assert!(
        again.is_ok() && again.recovered.is_empty(),
        "{:?}",
        again.recovered
    );
}

/// A clean shutdown empties the journal (sled holds everything after the last
/// checkpoint), and the next session grows it again and reads every event back.
#[test]
fn a_clean_shutdown_leaves_an_empty_journal() {
    let mut h = Harness::new();
    let sent = append_singles(&h, 700, 20);
    let everything = ReadFilter::default();
    let before = read_all_pages(h.log(), false, 7, &everything);
    let journal = h.dir.path().join("wal");
    assert!(std::fs::metadata(&journal).expect("journal").len() > 0);
    let report = h.close();
    assert!(report.is_ok(), "{:?}", report.faults);
    assert_eq!(std::fs::metadata(&journal).expect("journal").len(), 0);
    h.reopen();
    assert_eq!(read_all_pages(h.log(), false, 7, &everything), before);
    for (append, outcome) in &sent {
        assert_eq!(&h.append(append.clone()).expect("re-send"), outcome);
    }
    append_singles(&h, 900, 5);
    assert!(std::fs::metadata(&journal).expect("journal").len() > 0);
    let report = h.close();
    assert!(report.is_ok(), "{:?}", report.faults);
    assert_eq!(report.head_position, 25);
}

/// Post-mortem: with the journal sync pipelined (a syncer thread acknowledges a group
/// while the writer checks the next one), a rejected append was answered at once —
/// although the state it was checked against (another append's event, written but not
/// yet synced) could still vanish in a crash. A client could be told "the stream is at
/// revision 0" about an event that never became durable. Found by racing two appends
/// for one new stream and reading the durable head when the loser hears back; fixed by
/// answering rejections through the syncer too, after a sync that covers what they saw.
#[test]
fn a_rejection_is_answered_only_once_what_it_saw_is_durable() {
    let h = Harness::new();
    for round in 0..20u128 {
        let name = format!("deal-race{round}");
        let winner = to(
            &name,
            ExpectedRevision::NoStream,
            vec![proposed(1_000 + round, b"winner")],
        );
        let loser = to(
            &name,
            ExpectedRevision::NoStream,
            vec![proposed(2_000 + round, b"loser")],
        );
        let log = h.log().clone();
        let (won, (lost, durable_when_lost)) = h.runtime.block_on(async move {
            let first = {
                let log = log.clone();
                tokio::spawn(async move { log.append(winner).await })
            };
            let second = tokio::spawn(async move {
                let result = log.append(loser).await;
                (result, log.head())
            });
            (
                first.await.expect("winner task"),
                second.await.expect("loser task"),
            )
        });
        let won = won.expect("the first append creates the stream");
        match lost {
            Err(AppendError::WrongExpectedRevision { actual, .. }) => {
                assert_eq!(actual, Some(0));
            }
            other => panic!("the second append must lose, got {other:?}"),
        }
        assert!(
            durable_when_lost.position >= won.last_position,
            "round {round}: the loser heard of revision 0 (position {}) while the durable \
             head was {}",
            won.last_position,
            durable_when_lost.position
        );
    }
}

/// Seals the id index's tail of an open store into a run, then rewrites the runs'
/// entries through `edit`: each entry goes back to the run whose positions cover it, and
/// each run becomes one sorted block. Damage done below the index's API.
fn rewrite_id_run(store: &Store, edit: impl FnOnce(&mut Vec<([u8; 16], u64)>)) {
    store.ids.seal().expect("seal the tail");
    let runs = store.ids.runs();
    let tree = store.db.open_tree("id_runs").expect("id runs");
    let mut entries = Vec::new();
    for block in tree.iter() {
        let (key, value) = block.expect("read block");
        for entry in value.chunks_exact(24) {
            let id: [u8; 16] = entry[..16].try_into().expect("16 bytes");
            entries.push((id, u64::from_be_bytes(entry[16..].try_into().expect("8"))));
        }
        tree.remove(key).expect("remove block");
    }
    edit(&mut entries);
    entries.sort_unstable();
    for run in runs {
        let mut value = Vec::new();
        let mut last = None;
        for (id, position) in entries
            .iter()
            .filter(|(_, p)| (run.first..=run.last).contains(p))
        {
            value.extend_from_slice(id);
            value.extend_from_slice(&position.to_be_bytes());
            last = Some(*id);
        }
        if let Some(last) = last {
            tree.insert(rapport::log::id_index::block_key(run.id, &last), value)
                .expect("write block");
        }
    }
}

/// Each kind of damage to an index is caught by the streaming pass, and the report
/// (from the exact pass) names the entry.
#[test]
fn verify_catches_every_kind_of_index_damage() {
    type Damage = fn(&Store);
    let damages: [(&str, Damage, &str); 7] = [
        (
            "an id moved to another position",
            |store| {
                rewrite_id_run(store, |entries| {
                    for entry in entries.iter_mut() {
                        if entry.0 == *Uuid::from_u128(31).as_bytes() {
                            entry.1 = 3;
                        }
                    }
                });
            },
            "event id index maps",
        ),
        (
            "an id no event carries",
            |store| {
                rewrite_id_run(store, |entries| {
                    entries.push((*Uuid::from_u128(99).as_bytes(), 1));
                });
            },
            "which no event carries",
        ),
        (
            "an id missing",
            |store| {
                rewrite_id_run(store, |entries| {
                    entries.retain(|e| e.0 != *Uuid::from_u128(32).as_bytes());
                });
            },
            "event id index lacks",
        ),
        (
            "an id held twice",
            |store| {
                // The id of position 1 also given for position 4 (whose own is gone).
                rewrite_id_run(store, |entries| {
                    let twice = entries[0].0;
                    for entry in entries.iter_mut() {
                        if entry.1 == 4 {
                            entry.0 = twice;
                        }
                    }
                });
            },
            "twice",
        ),
        (
            "a run pointing at other positions",
            |store| {
                store
                    .streams
                    .tree
                    .insert(
                        stream_key("deal-4", 0),
                        &rapport::log::stream_index::stream_value(2, 1),
                    )
                    .expect("insert");
            },
            "stream index maps deal-4@0",
        ),
        (
            "an overlapping run",
            |store| {
                store
                    .streams
                    .tree
                    .insert(
                        stream_key("customer-4", 1),
                        &rapport::log::stream_index::stream_value(2, 1),
                    )
                    .expect("insert");
            },
            "stream index",
        ),
        (
            "a run missing",
            |store| {
                // customer-4's runs are packed in one entry: keep only its first run.
                store
                    .streams
                    .tree
                    .insert(
                        stream_key("customer-4", 0),
                        &rapport::log::stream_index::stream_value(1, 2),
                    )
                    .expect("drop the second run");
            },
            "customer-4@2",
        ),
    ];
    for (what, damage, named) in damages {
        let mut h = Harness::new();
        h.append(to(
            "customer-4",
            ExpectedRevision::NoStream,
            vec![proposed(30, b"a"), proposed(31, b"b")],
        ))
        .expect("first");
        h.append(to(
            "deal-4",
            ExpectedRevision::NoStream,
            vec![proposed(32, b"c")],
        ))
        .expect("second");
        h.append(to(
            "customer-4",
            ExpectedRevision::Exact(1),
            vec![proposed(33, b"d")],
        ))
        .expect("third");
        assert!(h.close().is_ok(), "{what}: sound before the damage");
        let store = open_store_closed(h.dir.path());
        damage(&store);
        assert!(
            !verify_streaming(&store).expect("runs").is_ok(),
            "{what}: the streaming pass misses it"
        );
        let report = verify_store(&store).expect("runs");
        assert!(
            report.faults.iter().any(|f| f.contains(named)),
            "{what}: no fault names it: {:?}",
            report.faults
        );
    }
}

/// A stored event whose stream name no append could have written (its reads would fail)
/// is a fault, even with an intact chain: verify checks every stored name.
#[test]
fn verify_finds_a_stored_stream_name_no_append_could_write() {
    use rapport::log::record::ChunkBuilder;
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(dir.path()).expect("open");
    let event = rapport::log::StoredEvent {
        position: 1,
        stream: "no separator".into(),
        revision: 0,
        event_id: [7; 16],
        event_type: "test.happened".into(),
        schema_version: 1,
        recorded_at_us: 1,
        occurred_at_us: 1,
        correlation_id: String::new(),
        causation_id: String::new(),
        actor: String::new(),
        source_channel: String::new(),
        metadata: Vec::new(),
        payload: Vec::new(),
    };
    let mut chunk = ChunkBuilder::new(ZERO_HASH);
    chunk.push_event(&event, &ZERO_HASH);
    let (value, _) = chunk.finish_parsed(1);
    store
        .events
        .insert(1u64.to_be_bytes(), value)
        .expect("insert");
    for report in [
        verify_streaming(&store).expect("streaming pass"),
        verify_exact(&store).expect("exact pass"),
    ] {
        assert!(
            report
                .faults
                .iter()
                .any(|f| f.contains("position 1: stream name \"no separator\"")),
            "{:?}",
            report.faults
        );
    }
}

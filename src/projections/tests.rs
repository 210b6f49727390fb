//! Engine tests with a toy projection: catch-up, live follow, atomic checkpoints,
//! failures, versioned and requested rebuilds, read-your-writes waits, and a property
//! test that incremental folding with restarts equals a rebuild from scratch.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use proptest::prelude::*;

use super::engine::{self, Catalog};
use super::*;
use crate::limits;
use crate::log::{ExpectedRevision, Log, LogConfig, ProposedEvent, StreamAppend, StreamName};

/// Counts events per stream and chains their positions (`h` = BLAKE3 of the previous `h`
/// and the position), so an event applied twice, skipped or out of order changes the tree.
struct Toy {
    name: &'static str,
    version: u32,
    /// Fails on the event at this position (0 = never).
    fail_at: AtomicU64,
    /// Which events it wants.
    filter: ReadFilter,
    /// When set, a batch that starts at position 1 (a generation built from scratch)
    /// waits until the gate is open; a generation that only follows the log does not.
    gate: Option<Arc<(Mutex<bool>, Condvar)>>,
    /// When set, the next call of `name` on a runner thread panics (once): a panic in
    /// the engine outside a fold.
    panic_on_runner: AtomicBool,
}

impl Toy {
    fn new(name: &'static str, version: u32) -> Self {
        Self {
            name,
            version,
            fail_at: AtomicU64::new(0),
            filter: ReadFilter::default(),
            gate: None,
            panic_on_runner: AtomicBool::new(false),
        }
    }
}

impl Projection for Toy {
    fn name(&self) -> &'static str {
        let engine_thread = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("rapport-proj-"));
        if engine_thread && self.panic_on_runner.swap(false, Ordering::SeqCst) {
            panic!("toy panics outside its fold");
        }
        self.name
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn filter(&self) -> ReadFilter {
        self.filter.clone()
    }

    fn apply(&self, state: &mut StateBatch<'_>, events: &[LoggedEvent]) -> Result<(), ApplyError> {
        let from_scratch = events.first().is_some_and(|e| e.event.position == 1);
        if let Some(gate) = self.gate.as_ref().filter(|_| from_scratch) {
            let (open, changed) = &**gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = changed.wait(open).unwrap();
            }
        }
        for logged in events {
            let event = &logged.event;
            if event.position == self.fail_at.load(Ordering::SeqCst) {
                return Err(ApplyError::new(event.position, "toy refuses this event"));
            }
            let key = format!("s/{}", event.stream);
            let count = state
                .get(key.as_bytes())
                .unwrap()
                .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
            state.insert(key.as_bytes(), (count + 1).to_be_bytes().to_vec());
            let previous = state.get(b"h").unwrap().unwrap_or_default();
            let mut hasher = blake3::Hasher::new();
            hasher.update(&previous);
            hasher.update(&event.position.to_be_bytes());
            hasher.update(&event.payload);
            state.insert(b"h", hasher.finalize().as_bytes().to_vec());
        }
        Ok(())
    }
}

fn open_log(dir: &std::path::Path) -> Log {
    Log::open(LogConfig::new(dir)).expect("log opens")
}

fn event(n: u64) -> ProposedEvent {
    ProposedEvent {
        event_type: format!("toy.kind{}", n % 3),
        schema_version: 1,
        payload: n.to_be_bytes().to_vec(),
        occurred_at_us: Some(1_000_000 * n as i64),
        ..Default::default()
    }
}

async fn append(log: &Log, stream: &str, from: u64, count: u64) {
    log.append(StreamAppend {
        stream: StreamName::parse(stream).unwrap(),
        expected: ExpectedRevision::Any,
        events: (from..from + count).map(event).collect(),
    })
    .await
    .expect("append");
}

#[tokio::test]
async fn a_reader_of_envelopes_gets_every_envelope_without_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    append(&log, "toy-a", 1, 40).await;
    append(&log, "other-b", 41, 30).await;
    append(&log, "toy-c", 71, 5).await;
    for filter in [
        ReadFilter::default(),
        ReadFilter {
            stream_prefixes: vec!["toy-".into()],
            event_types: vec![],
        },
    ] {
        let mut from = 1;
        // A runner's reused buffer, starting with stale events in it: each batch read into
        // it is the batch read afresh.
        let mut spare = engine::read_batch(&log, &ReadFilter::default(), false, 1)
            .unwrap()
            .events;
        loop {
            let whole = engine::read_batch(&log, &filter, false, from).unwrap();
            let envelopes = engine::read_batch(&log, &filter, true, from).unwrap();
            let reused = engine::read_batch_into(&log, &filter, true, from, spare).unwrap();
            assert_eq!(
                (reused.from, reused.reached, &reused.events),
                (envelopes.from, envelopes.reached, &envelopes.events)
            );
            spare = reused.events;
            assert_eq!(
                (envelopes.from, envelopes.reached),
                (whole.from, whole.reached)
            );
            assert_eq!(envelopes.events.len(), whole.events.len());
            for (envelope, logged) in envelopes.events.iter().zip(&whole.events) {
                let mut expected = logged.clone();
                expected.event.payload.clear();
                expected.event.metadata.clear();
                assert_eq!(envelope, &expected);
            }
            if whole.reached < whole.from || whole.reached == log.head().position {
                break;
            }
            from = whole.reached + 1;
        }
    }
    log.shutdown();
}

/// BLAKE3 over every key and value of a tree, in key order.
fn digest(tree: &sled::Tree) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for entry in tree.iter() {
        let (key, value) = entry.unwrap();
        hasher.update(&(key.len() as u64).to_be_bytes());
        hasher.update(&key);
        hasher.update(&(value.len() as u64).to_be_bytes());
        hasher.update(&value);
    }
    *hasher.finalize().as_bytes()
}

fn toy_count(tree: &sled::Tree, stream: &str) -> u64 {
    tree.get(format!("s/{stream}"))
        .unwrap()
        .map_or(0, |v| u64::from_be_bytes(v.as_ref().try_into().unwrap()))
}

async fn wait_state(
    projections: &Projections,
    name: &str,
    done: impl Fn(&ProjectionStatus) -> bool,
) -> ProjectionStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = projections.status_of(name).unwrap();
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; last status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A fresh rebuild of `toy` over `log`, returning the digest of its tree.
fn rebuilt_digest(log: &Log, name: &'static str) -> [u8; 32] {
    let toy: Arc<dyn Projection> = Arc::new(Toy::new(name, 1));
    engine::rebuild_offline(log, toy, &mut |_| {}).unwrap();
    let catalog = Catalog::open(log.db()).unwrap();
    let active = catalog.load(name).unwrap().active.unwrap();
    digest(&catalog.open_generation(name, active.generation).unwrap())
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn catches_up_then_follows_live() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    append(&log, "toy-a", 0, 300).await;
    append(&log, "toy-b", 300, 200).await;
    let projections = Projections::start(log.clone(), vec![Arc::new(Toy::new("toy", 1))]).unwrap();
    let view = projections.wait_for("toy", 500, WAIT).await.unwrap();
    assert_eq!(view.applied, 500);
    assert_eq!(toy_count(&view.tree, "toy-a"), 300);
    assert_eq!(toy_count(&view.tree, "toy-b"), 200);

    append(&log, "toy-a", 500, 7).await;
    let view = projections.wait_for("toy", 507, WAIT).await.unwrap();
    assert_eq!(toy_count(&view.tree, "toy-a"), 307);
    let status = wait_state(&projections, "toy", |s| s.state == ProjectionState::Live).await;
    assert_eq!((status.checkpoint, status.head, status.lag), (507, 507, 0));
    assert_eq!(status.version, 1);
    projections.shutdown();
    log.shutdown();
}

#[tokio::test]
async fn state_after_restarts_equals_a_fresh_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3u64 {
        let log = open_log(dir.path());
        append(&log, "toy-a", round * 100, 60).await;
        append(&log, "toy-b", round * 100 + 60, 40).await;
        let projections =
            Projections::start(log.clone(), vec![Arc::new(Toy::new("toy", 1))]).unwrap();
        projections
            .wait_for("toy", (round + 1) * 100, WAIT)
            .await
            .unwrap();
        projections.shutdown();
        drop(projections);
        log.shutdown();
        drop(log);
        // sled lets go of its lock a moment after the last handle is gone.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = open_log(dir.path());
    let catalog = Catalog::open(log.db()).unwrap();
    let active = catalog.load("toy").unwrap().active.unwrap();
    let incremental = digest(&catalog.open_generation("toy", active.generation).unwrap());
    assert_eq!(incremental, rebuilt_digest(&log, "toy_fresh"));
    log.shutdown();
}

#[tokio::test]
async fn a_failure_stops_at_the_event_and_keeps_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    append(&log, "toy-a", 0, 100).await;
    let toy = Arc::new(Toy::new("toy", 1));
    toy.fail_at.store(37, Ordering::SeqCst);
    let projections = Projections::start(log.clone(), vec![toy.clone()]).unwrap();
    let status = wait_state(&projections, "toy", |s| {
        matches!(s.state, ProjectionState::Failed { .. })
    })
    .await;
    assert_eq!(
        status.state,
        ProjectionState::Failed {
            position: 37,
            error: "toy refuses this event".into()
        }
    );
    assert_eq!(status.checkpoint, 36);
    let view = projections.reader("toy").unwrap();
    assert_eq!(view.applied, 36);
    assert_eq!(toy_count(&view.tree, "toy-a"), 36);
    assert_eq!(engine::checkpoint(&view.tree).unwrap(), 36);
    // The prefix is exactly what a clean fold of positions 1..=36 gives.
    let expected = {
        let other = tempfile::tempdir().unwrap();
        let log2 = open_log(other.path());
        append(&log2, "toy-a", 0, 36).await;
        let d = rebuilt_digest(&log2, "toy");
        log2.shutdown();
        d
    };
    assert_eq!(digest(&view.tree), expected);
    // Waiting for a position past the failure fails fast instead of timing out.
    match projections.wait_for("toy", 50, WAIT).await {
        Err(ProjectionError::Failed { position: 37, .. }) => {}
        other => panic!("expected Failed, got {other:?}"),
    }
    // Fixed and retried: a rebuild brings it live.
    toy.fail_at.store(0, Ordering::SeqCst);
    projections.rebuild("toy").unwrap();
    let status = wait_state(&projections, "toy", |s| s.state == ProjectionState::Live).await;
    assert_eq!(status.checkpoint, 100);
    let view = projections.wait_for("toy", 100, WAIT).await.unwrap();
    assert_eq!(toy_count(&view.tree, "toy-a"), 100);
    projections.shutdown();
    log.shutdown();
}

#[tokio::test]
async fn a_panic_on_the_runner_thread_fails_the_projection_and_a_rebuild_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    append(&log, "toy-a", 0, 10).await;
    let toy = Arc::new(Toy::new("toy", 1));
    let projections = Projections::start(log.clone(), vec![toy.clone()]).unwrap();
    projections.wait_for("toy", 10, WAIT).await.unwrap();
    toy.panic_on_runner.store(true, Ordering::SeqCst);
    append(&log, "toy-a", 10, 5).await;
    let status = wait_state(&projections, "toy", |s| {
        matches!(s.state, ProjectionState::Failed { .. })
    })
    .await;
    // It says so (before, the thread died and the projection looked alive, frozen).
    assert_eq!(
        status.state,
        ProjectionState::Failed {
            position: 11,
            error: "the runner thread panicked: toy panics outside its fold".into()
        }
    );
    assert_eq!(status.checkpoint, 10);
    match projections.wait_for("toy", 15, WAIT).await {
        Err(ProjectionError::Failed { position: 11, .. }) => {}
        other => panic!("expected Failed, got {other:?}"),
    }
    // The runner is still there: it hears the rebuild request and brings it live.
    projections.rebuild("toy").unwrap();
    let status = wait_state(&projections, "toy", |s| s.state == ProjectionState::Live).await;
    assert_eq!(status.checkpoint, 15);
    let view = projections.wait_for("toy", 15, WAIT).await.unwrap();
    assert_eq!(toy_count(&view.tree, "toy-a"), 15);
    projections.shutdown();
    log.shutdown();
}

#[tokio::test]
async fn a_version_change_rebuilds_in_a_shadow_and_switches_after_catching_up() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    append(&log, "toy-a", 0, 50).await;
    let projections = Projections::start(log.clone(), vec![Arc::new(Toy::new("toy", 1))]).unwrap();
    projections.wait_for("toy", 50, WAIT).await.unwrap();
    projections.shutdown();
    drop(projections);

    append(&log, "toy-a", 50, 10).await;
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let mut v2 = Toy::new("toy", 2);
    v2.gate = Some(gate.clone());
    let projections = Projections::start(log.clone(), vec![Arc::new(v2)]).unwrap();
    let old_tree = engine::tree_name("toy", 1);
    // While the shadow is held at the gate, reads see the old generation, frozen.
    let status = projections.status_of("toy").unwrap();
    assert!(
        matches!(
            status.state,
            ProjectionState::Rebuilding {
                target_version: 2,
                position: 0,
                head: 60,
                ..
            }
        ),
        "{status:?}"
    );
    assert_eq!((status.version, status.checkpoint, status.lag), (1, 50, 10));
    let view = projections.reader("toy").unwrap();
    assert_eq!((view.applied, toy_count(&view.tree, "toy-a")), (50, 50));
    assert!(matches!(
        projections
            .wait_for("toy", 60, Duration::from_millis(50))
            .await,
        Err(ProjectionError::NotYet {
            applied: 50,
            wanted: 60,
            ..
        })
    ));
    assert!(
        log.db()
            .tree_names()
            .iter()
            .any(|n| n == old_tree.as_bytes())
    );

    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    let new_view = projections.wait_for("toy", 60, WAIT).await.unwrap();
    assert_eq!(toy_count(&new_view.tree, "toy-a"), 60);
    let status = wait_state(&projections, "toy", |s| s.state == ProjectionState::Live).await;
    assert_eq!((status.version, status.checkpoint), (2, 60));
    // A view taken before the switch still reads its whole generation ...
    assert_eq!((view.applied, toy_count(&view.tree, "toy-a")), (50, 50));
    assert!(
        log.db()
            .tree_names()
            .iter()
            .any(|n| n == old_tree.as_bytes())
    );
    // ... and the old tree goes with the last view of it.
    drop(view);
    assert!(
        !log.db()
            .tree_names()
            .iter()
            .any(|n| n == old_tree.as_bytes())
    );
    let record = Catalog::open(log.db()).unwrap().load("toy").unwrap();
    assert_eq!(
        record.active.map(|g| (g.generation, g.version)),
        Some((2, 2))
    );
    assert_eq!(record.shadow, None);
    projections.shutdown();
    log.shutdown();
}

#[tokio::test]
async fn a_restart_resumes_a_rebuild_from_the_shadow_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    append(&log, "toy-a", 0, 50).await;
    let projections = Projections::start(log.clone(), vec![Arc::new(Toy::new("toy", 1))]).unwrap();
    projections.wait_for("toy", 50, WAIT).await.unwrap();
    projections.shutdown();
    drop(projections);

    // Version 2 stops its shadow at position 30: positions 1..=29 are kept in generation 2.
    let v2 = Arc::new(Toy::new("toy", 2));
    v2.fail_at.store(30, Ordering::SeqCst);
    let projections = Projections::start(log.clone(), vec![v2.clone()]).unwrap();
    let status = wait_state(&projections, "toy", |s| {
        matches!(s.state, ProjectionState::Failed { .. })
    })
    .await;
    assert!(matches!(
        status.state,
        ProjectionState::Failed { position: 30, .. }
    ));
    // The old generation still serves.
    assert_eq!((status.version, status.checkpoint), (1, 50));
    projections.shutdown();
    drop(projections);
    let catalog = Catalog::open(log.db()).unwrap();
    let record = catalog.load("toy").unwrap();
    let shadow = record.shadow.unwrap();
    assert_eq!((shadow.generation, shadow.version), (2, 2));
    assert_eq!(
        engine::checkpoint(&catalog.open_generation("toy", 2).unwrap()).unwrap(),
        29
    );

    // Fixed and restarted: the same shadow generation continues and switches in.
    v2.fail_at.store(0, Ordering::SeqCst);
    let projections = Projections::start(log.clone(), vec![v2]).unwrap();
    let status = wait_state(&projections, "toy", |s| s.state == ProjectionState::Live).await;
    assert_eq!((status.version, status.checkpoint), (2, 50));
    let record = catalog.load("toy").unwrap();
    assert_eq!(record.active.map(|g| g.generation), Some(2));
    assert_eq!(record.next_generation, 3);
    let view = projections.reader("toy").unwrap();
    assert_eq!(digest(&view.tree), rebuilt_digest(&log, "toy_fresh"));
    drop(view);
    projections.shutdown();
    log.shutdown();
}

#[tokio::test]
async fn a_requested_rebuild_keeps_the_old_generation_live_until_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    // More than one batch, so a builder thread takes the new generation.
    const N: u64 = limits::PROJECTION_BATCH_EVENTS_MAX as u64 * 2;
    for n in (0..N).step_by(1000) {
        append(&log, "toy-a", n, 1000.min(N - n)).await;
    }
    let gate = Arc::new((Mutex::new(true), Condvar::new()));
    let mut toy = Toy::new("toy", 1);
    toy.gate = Some(gate.clone());
    let projections = Projections::start(log.clone(), vec![Arc::new(toy)]).unwrap();
    projections.wait_for("toy", N, WAIT).await.unwrap();
    let before = digest(&projections.reader("toy").unwrap().tree);

    // Hold the new generation at the gate, ask for a rebuild: asking twice changes nothing.
    *gate.0.lock().unwrap() = false;
    projections.rebuild("toy").unwrap();
    projections.rebuild("toy").unwrap();
    assert!(matches!(
        projections.status_of("toy").unwrap().state,
        ProjectionState::Rebuilding {
            target_version: 1,
            ..
        }
    ));
    assert_eq!(digest(&projections.reader("toy").unwrap().tree), before);
    // Meanwhile the old generation keeps following the log and serving it.
    append(&log, "toy-b", N, 5).await;
    let view = projections.wait_for("toy", N + 5, WAIT).await.unwrap();
    assert_eq!(toy_count(&view.tree, "toy-b"), 5);
    drop(view);
    let status = projections.status_of("toy").unwrap();
    assert!(
        matches!(
            status.state,
            ProjectionState::Rebuilding { position: 0, .. }
        ),
        "{status:?}"
    );
    assert_eq!((status.checkpoint, status.lag), (N + 5, 0));
    let record = Catalog::open(log.db()).unwrap().load("toy").unwrap();
    assert_eq!(record.active.map(|g| g.generation), Some(1));

    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    let status = wait_state(&projections, "toy", |s| s.state == ProjectionState::Live).await;
    assert_eq!(status.checkpoint, N + 5);
    let record = Catalog::open(log.db()).unwrap().load("toy").unwrap();
    assert_eq!(record.active.map(|g| g.generation), Some(2));
    assert_eq!(
        digest(&projections.reader("toy").unwrap().tree),
        rebuilt_digest(&log, "toy_fresh")
    );
    projections.shutdown();
    log.shutdown();
}

#[tokio::test]
async fn wait_for_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    append(&log, "toy-a", 0, 3).await;
    let projections = Projections::start(log.clone(), vec![Arc::new(Toy::new("toy", 1))]).unwrap();
    assert!(matches!(
        projections.wait_for("nope", 0, WAIT).await,
        Err(ProjectionError::NotFound(_))
    ));
    assert!(matches!(
        projections.reader("nope"),
        Err(ProjectionError::NotFound(_))
    ));
    // 0 asks for no position: never an error, even with no time to catch up.
    projections
        .wait_for("toy", 0, Duration::ZERO)
        .await
        .unwrap();
    // Beyond the head: waits, bounded.
    assert!(matches!(
        projections
            .wait_for("toy", 10, Duration::from_millis(30))
            .await,
        Err(ProjectionError::NotYet { wanted: 10, .. })
    ));
    // ... and is answered as soon as the position is appended and applied.
    let waiter = {
        let projections = projections.clone();
        tokio::spawn(async move { projections.wait_for("toy", 10, WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    append(&log, "toy-b", 3, 7).await;
    let view = waiter.await.unwrap().unwrap();
    assert!(view.applied >= 10);
    assert_eq!(toy_count(&view.tree, "toy-b"), 7);
    projections.shutdown();
    assert!(matches!(
        projections.wait_for("toy", 11, WAIT).await,
        Err(ProjectionError::ShuttingDown)
    ));
    log.shutdown();
}

/// A read without a position sees every event durable when it asked, though the runner
/// gathers appends for a while before reading them; a projection far behind (here: a
/// backlog past the implicit lag bound) answers at once with what it has.
#[tokio::test]
async fn a_read_without_a_position_sees_what_was_durable_when_it_asked() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    let projections = Projections::start(log.clone(), vec![Arc::new(Toy::new("toy", 1))]).unwrap();
    projections.wait_for("toy", 0, WAIT).await.unwrap();
    for round in 0..20u64 {
        append(&log, "toy-a", round, 1).await;
        let head = log.head().position;
        let view = projections.wait_for("toy", 0, WAIT).await.unwrap();
        assert!(
            view.applied >= head,
            "round {round}: {} < {head}",
            view.applied
        );
        assert_eq!(toy_count(&view.tree, "toy-a"), round + 1);
    }
    projections.shutdown();
    log.shutdown();

    // A runner stuck in its first batch (a closed gate): behind by more than the implicit
    // lag bound, a read answers at once with what the projection has; behind by less, it
    // waits at most PROJECTION_IMPLICIT_WAIT_MS and then does the same. Never an error.
    for backlog in [limits::PROJECTION_IMPLICIT_LAG_MAX + 1, 5] {
        let dir = tempfile::tempdir().unwrap();
        let log = open_log(dir.path());
        let mut written = 0;
        while written < backlog {
            let count = (backlog - written).min(limits::EVENTS_PER_APPEND_MAX as u64);
            append(&log, "toy-b", written, count).await;
            written += count;
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let mut toy = Toy::new("toy", 1);
        toy.gate = Some(gate.clone());
        let projections = Projections::start(log.clone(), vec![Arc::new(toy)]).unwrap();
        let view = projections.wait_for("toy", 0, WAIT).await.unwrap();
        assert_eq!(view.applied, 0, "backlog {backlog}");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(view);
        projections.wait_for("toy", backlog, WAIT).await.unwrap();
        projections.shutdown();
        log.shutdown();
    }
}

#[tokio::test]
async fn a_filtered_projection_sees_only_its_events_and_checkpoints_past_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    append(&log, "toy-a", 0, 10).await;
    append(&log, "other-a", 10, 10).await;
    append(&log, "toy-b", 20, 3).await;
    append(&log, "other-b", 23, 4).await;
    let mut toy = Toy::new("toy", 1);
    toy.filter = ReadFilter {
        stream_prefixes: vec!["toy-".into()],
        event_types: vec![],
    };
    let projections = Projections::start(log.clone(), vec![Arc::new(toy)]).unwrap();
    let view = projections.wait_for("toy", 27, WAIT).await.unwrap();
    assert_eq!(view.applied, 27);
    assert_eq!(toy_count(&view.tree, "toy-a"), 10);
    assert_eq!(toy_count(&view.tree, "toy-b"), 3);
    assert_eq!(toy_count(&view.tree, "other-a"), 0);
    let status = wait_state(&projections, "toy", |s| s.state == ProjectionState::Live).await;
    assert_eq!((status.checkpoint, status.lag), (27, 0));
    projections.shutdown();
    log.shutdown();
}

#[tokio::test]
async fn an_empty_log_is_live_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    let projections = Projections::start(log.clone(), vec![Arc::new(Toy::new("toy", 1))]).unwrap();
    let status = wait_state(&projections, "toy", |s| s.state == ProjectionState::Live).await;
    assert_eq!((status.checkpoint, status.head, status.lag), (0, 0, 0));
    append(&log, "toy-a", 0, 1).await;
    let view = projections.wait_for("toy", 1, WAIT).await.unwrap();
    assert_eq!(toy_count(&view.tree, "toy-a"), 1);
    projections.shutdown();
    log.shutdown();
}

#[tokio::test]
async fn names_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    for bad in [
        vec![Arc::new(Toy::new("Bad-Name", 1)) as Arc<dyn Projection>],
        vec![
            Arc::new(Toy::new("twice", 1)),
            Arc::new(Toy::new("twice", 1)),
        ],
    ] {
        assert!(matches!(
            Projections::start(log.clone(), bad),
            Err(ProjectionError::Invalid(_))
        ));
    }
    log.shutdown();
}

#[test]
fn state_batch_reads_its_own_writes_and_merges_scans() {
    let db = sled::Config::new().temporary(true).open().unwrap();
    let tree = db.open_tree("t").unwrap();
    tree.insert("a/1", "tree").unwrap();
    tree.insert("a/2", "tree").unwrap();
    tree.insert("b/1", "tree").unwrap();
    let mut batch = StateBatch::new(&tree);
    batch.insert(b"a/3", b"pending".to_vec());
    batch.remove(b"a/1");
    batch.insert(b"a/2", b"pending".to_vec());
    assert_eq!(batch.get(b"a/1").unwrap(), None);
    assert_eq!(batch.get(b"a/2").unwrap(), Some(b"pending".to_vec()));
    assert_eq!(batch.get(b"b/1").unwrap(), Some(b"tree".to_vec()));
    let scanned = batch.scan_prefix(b"a/").unwrap();
    assert_eq!(
        scanned,
        vec![
            (b"a/2".to_vec(), b"pending".to_vec()),
            (b"a/3".to_vec(), b"pending".to_vec())
        ]
    );
    // Nothing reached the tree.
    assert_eq!(tree.get("a/1").unwrap().as_deref(), Some(&b"tree"[..]));
}

#[tokio::test]
async fn log_stats_counts_per_type_and_category() {
    let dir = tempfile::tempdir().unwrap();
    let log = open_log(dir.path());
    append(&log, "toy-a", 0, 4).await; // kinds 0,1,2,0 at positions 1..=4
    append(&log, "deal-1", 4, 2).await; // kinds 1,2 at positions 5,6
    let projections = Projections::start(log.clone(), builtin()).unwrap();
    let view = projections
        .wait_for(log_stats::NAME, 6, WAIT)
        .await
        .unwrap();
    let stats = log_stats::read(&view.tree, 100).unwrap();
    let rows = |table: &[log_stats::Stat]| {
        table
            .iter()
            .map(|s| (s.key.clone(), s.count, s.first_position, s.last_position))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rows(&stats.by_category),
        vec![("deal".into(), 2, 5, 6), ("toy".into(), 4, 1, 4)]
    );
    assert_eq!(
        rows(&stats.by_event_type),
        vec![
            ("toy.kind0".into(), 2, 1, 4),
            ("toy.kind1".into(), 2, 2, 5),
            ("toy.kind2".into(), 2, 3, 6)
        ]
    );
    assert_eq!(stats.by_category[1].min_occurred_at_us, 0);
    assert_eq!(stats.by_category[1].max_occurred_at_us, 3_000_000);
    projections.shutdown();
    log.shutdown();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Folding in random batch splits, with restarts (log and tree reopened) between
    /// some of them, gives the same tree as one rebuild from scratch.
    #[test]
    fn incremental_with_restarts_equals_a_rebuild(
        chunks in proptest::collection::vec((0u8..4, 1u64..40, any::<bool>()), 1..12)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let toy = Toy::new("toy", 1);
        let filter = toy.filter();
        let mut log = open_log(dir.path());
        let mut serial = 0;
        for (stream, count, restart) in chunks {
            runtime.block_on(append(&log, &format!("toy-{stream}"), serial, count));
            serial += count;
            if restart {
                log.shutdown();
                drop(log);
                std::thread::sleep(Duration::from_millis(20));
                log = open_log(dir.path());
            }
            let catalog = Catalog::open(log.db()).unwrap();
            let mut record = catalog.load("toy").unwrap();
            let tree = match record.active {
                Some(g) => catalog.open_generation("toy", g.generation).unwrap(),
                None => catalog.new_generation("toy", 1, &mut record, false).unwrap().1,
            };
            loop {
                match engine::step(&log, &toy, &filter, &tree) {
                    Ok(outcome) if outcome.checkpoint >= log.head().position => break,
                    Ok(_) => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        let catalog = Catalog::open(log.db()).unwrap();
        let active = catalog.load("toy").unwrap().active.unwrap();
        let incremental = digest(&catalog.open_generation("toy", active.generation).unwrap());
        prop_assert_eq!(incremental, rebuilt_digest(&log, "toy_fresh"));
        log.shutdown();
    }
}

//! The live side of the engine: [`Projections`] runs one thread per projection. Each
//! catches up from its checkpoint in bounded batches, then sleeps until the log's durable
//! head moves (no polling), builds a shadow generation when its code version changed or a
//! rebuild was asked for, and switches to it once it has caught up.
//!
//! While a shadow is far behind, a builder thread of its own builds it, so the active
//! generation (when it follows the log) keeps applying new events at full speed. Once the
//! shadow is within one batch of the head, the runner finishes it between its own
//! batches and switches; only the runner switches, and each tree has one writer at a
//! time.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::engine::{self, Catalog, Generation, MetaRecord, Meter, StepError};
use super::{Projection, ProjectionError, valid_name};
use crate::limits;
use crate::log::{Head, Log, LoggedEvent, ReadFilter};

/// The tree serving reads for a projection and the position it has applied. While a
/// view exists its generation's tree is kept, even when a rebuilt generation switches in
/// meanwhile: a query reads one consistent generation. Hold it for one query (a clone of
/// `tree` kept past the view is not covered).
#[derive(Clone, Debug)]
pub struct ProjectionView {
    /// The active generation's tree (read it; only the engine writes it).
    pub tree: sled::Tree,
    /// Last position applied to it.
    pub applied: u64,
    _lease: Arc<Lease>,
}

/// Keeps a generation's tree while anyone reads it: a switch marks the old generation
/// retired, and its tree is dropped when the last holder (the runner or a view) lets go.
/// A crash before that leaves an orphan tree, which the next start drops.
struct Lease {
    db: sled::Db,
    tree_name: String,
    retired: AtomicBool,
}

impl Lease {
    fn new(db: &sled::Db, name: &str, generation: u64) -> Arc<Self> {
        Arc::new(Self {
            db: db.clone(),
            tree_name: engine::tree_name(name, generation),
            retired: AtomicBool::new(false),
        })
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("tree", &self.tree_name)
            .field("retired", &self.retired.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.retired.load(Ordering::Acquire)
            && let Err(error) = self.db.drop_tree(&self.tree_name)
        {
            tracing::warn!(tree = %self.tree_name, %error, "cannot drop a retired generation");
        }
    }
}

/// What a projection is doing.
#[derive(Clone, Debug, PartialEq)]
pub enum ProjectionState {
    /// Caught up and following the log.
    Live,
    /// A generation is being built (the first one, or a shadow replacing the active one).
    Rebuilding {
        /// Code version of the generation being built.
        target_version: u32,
        /// Last position it has applied.
        position: u64,
        /// The log's head.
        head: u64,
        /// Build rate since it (re)started.
        events_per_second: f64,
        /// Seconds left at that rate (infinite before any progress).
        eta_seconds: f64,
    },
    /// Stopped at an event it could not apply; the events before it are applied.
    Failed {
        /// Position of the event that failed.
        position: u64,
        /// The projection's message.
        error: String,
    },
}

/// One projection as [`Projections::status`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProjectionStatus {
    /// Projection name.
    pub name: String,
    /// Code version of the generation serving reads.
    pub version: u32,
    /// Last position applied by the generation serving reads.
    pub checkpoint: u64,
    /// The log's durable head.
    pub head: u64,
    /// `head - checkpoint`.
    pub lag: u64,
    /// What it is doing.
    pub state: ProjectionState,
}

struct SlotInner {
    record: MetaRecord,
    active: (Generation, sled::Tree, Arc<Lease>),
    shadow: Option<(Generation, sled::Tree)>,
    /// False while the active generation is frozen: built by older code (its shadow
    /// replaces it), or failed and being rebuilt.
    active_follows: bool,
    /// A fresh projection's first generation is still catching up.
    first_build: bool,
    active_checkpoint: u64,
    shadow_checkpoint: u64,
    meter: Meter,
    failed: Option<(u64, String)>,
}

struct Slot {
    projection: Arc<dyn Projection>,
    filter: ReadFilter,
    inner: Mutex<SlotInner>,
    /// The position applied by the active generation (read your writes).
    applied: watch::Sender<u64>,
    /// Wakes the runner: a rebuild request, a builder done, or shutdown.
    wake: Notify,
    /// The thread building the shadow while it is far behind (see [`build`]).
    builder: Mutex<Option<JoinHandle<()>>>,
    /// True from a builder's start until it is done (set before it wakes the runner, so
    /// the runner never takes a finishing builder for a busy one and sleeps on).
    building: AtomicBool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotInner> {
        // A thread that panicked holding the lock (caught, see [`run`]) marks the
        // projection failed right after; the state stays readable for status and rebuild.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next position the runner would apply (of the shadow while there is one).
    fn next_position(&self) -> u64 {
        let inner = self.lock();
        if inner.shadow.is_some() {
            inner.shadow_checkpoint + 1
        } else {
            inner.active_checkpoint + 1
        }
    }

    fn publish(&self, position: u64) {
        self.applied.send_if_modified(|applied| {
            if position > *applied {
                *applied = position;
                true
            } else {
                false
            }
        });
    }

    fn fail(&self, position: u64, error: String) {
        tracing::error!(projection = self.projection.name(), position, %error, "projection failed");
        self.lock().failed = Some((position, error));
        // Waiters re-check the state on any notification.
        self.applied.send_modify(|_| {});
    }
}

struct Shared {
    catalog: Catalog,
    head: watch::Receiver<Head>,
    slots: BTreeMap<&'static str, Arc<Slot>>,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The running projections of one log. Cheap to clone. The runner threads stop only on
/// [`Projections::shutdown`]: call it before letting go of the last handle (the server
/// does, before it shuts the log down).
#[derive(Clone)]
pub struct Projections {
    shared: Arc<Shared>,
}

fn open_slot(catalog: &Catalog, projection: Arc<dyn Projection>) -> Result<Slot, ProjectionError> {
    let name = projection.name();
    let version = projection.version();
    let mut record = catalog.load(name)?;
    let mut first_build = false;
    let active = match record.active {
        Some(active) => (active, catalog.open_generation(name, active.generation)?),
        None => {
            first_build = true;
            catalog.new_generation(name, version, &mut record, false)?
        }
    };
    let active = (
        active.0,
        active.1,
        Lease::new(catalog.db(), name, active.0.generation),
    );
    let mut shadow = match record.shadow {
        Some(shadow) if shadow.version == version => {
            Some((shadow, catalog.open_generation(name, shadow.generation)?))
        }
        Some(stale) => {
            // A rebuild by other code was under way: start over with this code.
            catalog.drop_generation(name, stale.generation)?;
            record.shadow = None;
            catalog.save(name, &record)?;
            None
        }
        None => None,
    };
    if shadow.is_none() && active.0.version != version {
        shadow = Some(catalog.new_generation(name, version, &mut record, true)?);
        tracing::info!(
            projection = name,
            from = active.0.version,
            to = version,
            "projection code version changed; rebuilding in the background"
        );
    }
    catalog.drop_orphans(name, &record)?;
    let active_checkpoint = engine::checkpoint(&active.1)?;
    let shadow_checkpoint = match &shadow {
        Some((_, tree)) => engine::checkpoint(tree)?,
        None => 0,
    };
    let meter = Meter::new(if shadow.is_some() {
        shadow_checkpoint
    } else {
        active_checkpoint
    });
    let (applied, _) = watch::channel(active_checkpoint);
    Ok(Slot {
        filter: projection.filter(),
        inner: Mutex::new(SlotInner {
            record,
            active_follows: active.0.version == version,
            active,
            shadow,
            first_build,
            active_checkpoint,
            shadow_checkpoint,
            meter,
            failed: None,
        }),
        projection,
        applied,
        wake: Notify::new(),
        builder: Mutex::new(None),
        building: AtomicBool::new(false),
    })
}

/// How far behind the head (in positions) a shadow is handed to a builder thread of its
/// own; closer than this, the runner finishes it between batches of the active generation.
const HANDOVER_POSITIONS: u64 = limits::PROJECTION_BATCH_EVENTS_MAX as u64;

/// Builds a shadow generation on its own thread while it is far behind, so the active
/// generation keeps following the log at full speed meanwhile. Stops once the shadow is
/// within [`HANDOVER_POSITIONS`] of the head (the runner finishes it and switches: only the
/// runner ever switches), on a failure, on shutdown, or when its shadow was replaced.
fn build(log: Log, shared: Arc<Shared>, slot: Arc<Slot>, generation: Generation, tree: sled::Tree) {
    let current = |inner: &SlotInner| {
        inner.failed.is_none() && inner.shadow.as_ref().map(|s| s.0) == Some(generation)
    };
    // Reading ahead on a second thread keeps both cores busy on a long rebuild.
    let start = engine::checkpoint(&tree).unwrap_or(0) + 1;
    let mut prefetcher = engine::Prefetcher::start(
        log.clone(),
        slot.filter.clone(),
        slot.projection.envelopes_only(),
        start,
        log.head().position,
    );
    while !shared.stop.load(Ordering::Acquire) && current(&slot.lock()) {
        let step = catch_unwind(AssertUnwindSafe(|| {
            engine::step_prefetched(
                &log,
                slot.projection.as_ref(),
                &slot.filter,
                &tree,
                Some(&mut prefetcher),
                &mut Vec::new(),
            )
        }));
        let Ok(step) = step.map_err(|panic| {
            let position = slot.lock().shadow_checkpoint + 1;
            slot.fail(position, panicked("builder", panic.as_ref()));
        }) else {
            break;
        };
        match step {
            Ok(outcome) => {
                let mut inner = slot.lock();
                if !current(&inner) {
                    break;
                }
                inner.shadow_checkpoint = outcome.checkpoint;
                drop(inner);
                if outcome.checkpoint.saturating_add(HANDOVER_POSITIONS) >= log.head().position {
                    break;
                }
            }
            Err(StepError::Apply(error)) => {
                if let Ok(kept) = engine::checkpoint(&tree) {
                    slot.lock().shadow_checkpoint = kept;
                }
                slot.fail(error.position, error.message);
                break;
            }
            Err(StepError::Engine(error)) => {
                if !shared.stop.load(Ordering::Acquire) {
                    let position = slot.lock().shadow_checkpoint + 1;
                    slot.fail(position, error.to_string());
                }
                break;
            }
        }
    }
    slot.building.store(false, Ordering::Release);
    slot.wake.notify_one();
}

/// True while a builder thread owns the shadow; starts one when the shadow is far behind.
fn shadow_with_builder(
    log: &Log,
    shared: &Arc<Shared>,
    slot: &Arc<Slot>,
    shadow: &(Generation, sled::Tree),
    shadow_checkpoint: u64,
    head: u64,
) -> bool {
    let mut builder = slot.builder.lock().expect("builder lock poisoned");
    if slot.building.load(Ordering::Acquire) {
        return true;
    }
    if let Some(done) = builder.take() {
        // It is past its last write: joining waits only for its return.
        let _ = done.join();
    }
    if shadow_checkpoint.saturating_add(HANDOVER_POSITIONS) >= head
        || shared.stop.load(Ordering::Acquire)
    {
        return false;
    }
    slot.building.store(true, Ordering::Release);
    let (log, shared, slot_ref) = (log.clone(), shared.clone(), slot.clone());
    let (generation, tree) = shadow.clone();
    match std::thread::Builder::new()
        .name(format!("rapport-build-{}", slot.projection.name()))
        .spawn(move || build(log, shared, slot_ref, generation, tree))
    {
        Ok(handle) => {
            *builder = Some(handle);
            true
        }
        // No thread to spare: the runner builds it itself, between its own batches.
        Err(_) => {
            slot.building.store(false, Ordering::Release);
            false
        }
    }
}

/// One unit of work: a batch of the shadow (and the switch once it caught up) unless a
/// builder thread owns it, then a batch of the active generation. Returns whether
/// anything moved. `spare` is the runner's batch buffer, reused from step to step
/// ([`engine::step_with`]).
fn work_once(
    log: &Log,
    shared: &Arc<Shared>,
    slot: &Arc<Slot>,
    spare: &mut Vec<LoggedEvent>,
) -> Result<bool, ProjectionError> {
    let catalog = &shared.catalog;
    let name = slot.projection.name();
    let (active_tree, shadow, follows, active_checkpoint, shadow_checkpoint) = {
        let inner = slot.lock();
        if inner.failed.is_some() {
            return Ok(false);
        }
        (
            inner.active.1.clone(),
            inner.shadow.clone(),
            inner.active_follows,
            inner.active_checkpoint,
            inner.shadow_checkpoint,
        )
    };
    let head = log.head().position;
    let mut moved = false;
    let shadow = shadow
        .filter(|shadow| !shadow_with_builder(log, shared, slot, shadow, shadow_checkpoint, head));
    if let Some((generation, tree)) = shadow {
        let mut checkpoint = shadow_checkpoint;
        if checkpoint < head {
            match engine::step_with(log, slot.projection.as_ref(), &slot.filter, &tree, spare) {
                Ok(outcome) => {
                    checkpoint = outcome.checkpoint;
                    slot.lock().shadow_checkpoint = checkpoint;
                    moved = true;
                }
                Err(StepError::Apply(error)) => {
                    // What the step kept (the events before the failure, or nothing when
                    // the fold failed differently the second time) is in the tree.
                    slot.lock().shadow_checkpoint = engine::checkpoint(&tree)?;
                    slot.fail(error.position, error.message);
                    return Ok(false);
                }
                Err(StepError::Engine(error)) => return Err(error),
            }
        }
        if checkpoint >= log.head().position {
            let mut inner = slot.lock();
            if inner.shadow.as_ref().map(|s| s.0) == Some(generation) {
                catalog.switch(name, &mut inner.record)?;
                let (generation, tree) = inner.shadow.take().expect("checked above");
                let lease = Lease::new(catalog.db(), name, generation.generation);
                let old = std::mem::replace(&mut inner.active, (generation, tree, lease));
                // Dropped now, or when the last view of it is done.
                old.2.retired.store(true, Ordering::Release);
                drop(old);
                inner.active_checkpoint = checkpoint;
                inner.active_follows = true;
                inner.first_build = false;
                drop(inner);
                slot.publish(checkpoint);
                tracing::info!(
                    projection = name,
                    generation = generation.generation,
                    version = generation.version,
                    position = checkpoint,
                    "rebuilt projection is live"
                );
                return Ok(true);
            }
        }
    }
    if follows && active_checkpoint < head {
        match engine::step_with(
            log,
            slot.projection.as_ref(),
            &slot.filter,
            &active_tree,
            spare,
        ) {
            Ok(outcome) => {
                let mut inner = slot.lock();
                inner.active_checkpoint = outcome.checkpoint;
                // Before publishing: whoever sees the position also sees the build over.
                if inner.first_build && outcome.checkpoint >= head {
                    inner.first_build = false;
                }
                drop(inner);
                slot.publish(outcome.checkpoint);
                moved = true;
            }
            Err(StepError::Apply(error)) => {
                let kept = engine::checkpoint(&active_tree)?;
                slot.lock().active_checkpoint = kept;
                slot.publish(kept);
                slot.fail(error.position, error.message);
                return Ok(false);
            }
            Err(StepError::Engine(error)) => return Err(error),
        }
    }
    // A first build is over once it has reached the head (at once for an empty log).
    let mut inner = slot.lock();
    if inner.first_build && inner.active_checkpoint >= head {
        inner.first_build = false;
    }
    Ok(moved)
}

fn run(log: Log, shared: Arc<Shared>, slot: Arc<Slot>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            slot.fail(0, format!("cannot start the runner: {error}"));
            return;
        }
    };
    let mut head = log.watch_head();
    let mut head_open = true;
    // Keeps the capacity of the largest batch read (at most PROJECTION_BATCH_EVENTS_MAX
    // events and one page, their strings freed after each step): see
    // [`engine::read_batch_into`].
    let mut spare = Vec::new();
    while !shared.stop.load(Ordering::Acquire) {
        // Marks the current head as seen before looking at it: a move after this point
        // wakes the wait below, so no append is ever missed.
        head.borrow_and_update();
        // A panic outside a fold (those are caught per batch) must not end the thread
        // silently with the projection looking alive: it fails like any other error,
        // and a rebuild request is still heard.
        let moved = match catch_unwind(AssertUnwindSafe(|| {
            work_once(&log, &shared, &slot, &mut spare)
        })) {
            Ok(Ok(moved)) => moved,
            Ok(Err(error)) => {
                if shared.stop.load(Ordering::Acquire) {
                    break;
                }
                slot.fail(slot.next_position(), error.to_string());
                false
            }
            Err(panic) => {
                slot.fail(slot.next_position(), panicked("runner", panic.as_ref()));
                false
            }
        };
        if moved || shared.stop.load(Ordering::Acquire) {
            continue;
        }
        let woken_by_head = runtime.block_on(async {
            tokio::select! {
                changed = head.changed(), if head_open => {
                    head_open = changed.is_ok();
                    head_open
                }
                () = slot.wake.notified() => false,
            }
        });
        // Following a busy log, let appends gather before reading: every runner reads
        // what it follows and commits a batch, and one step over several events costs the
        // writer's cores far less than one step per event. A read-your-writes wait
        // ([`Projections::wait_for`]) or a stop wakes the runner at once.
        if woken_by_head {
            runtime.block_on(async {
                let gather = Duration::from_millis(limits::PROJECTION_FOLLOW_GATHER_MS);
                let _ = tokio::time::timeout(gather, slot.wake.notified()).await;
            });
        }
    }
}

/// What a caught panic says, for the failure it becomes.
fn panicked(thread: &str, panic: &(dyn std::any::Any + Send)) -> String {
    format!(
        "the {thread} thread panicked: {}",
        engine::panic_text(panic)
    )
}

impl Projections {
    /// Opens every projection's generations in the log's database (building a first
    /// generation for a new one and a shadow for one whose code version changed) and
    /// starts one runner thread each.
    pub fn start(log: Log, projections: Vec<Arc<dyn Projection>>) -> Result<Self, ProjectionError> {
        let catalog = Catalog::open(log.db())?;
        let mut slots = BTreeMap::new();
        for projection in projections {
            let name = projection.name();
            if !valid_name(name) {
                return Err(ProjectionError::Invalid(format!(
                    "projection name {name:?} is not [a-z0-9_]+ (at most 64 bytes)"
                )));
            }
            if slots.contains_key(name) {
                return Err(ProjectionError::Invalid(format!(
                    "two projections are named {name:?}"
                )));
            }
            slots.insert(name, Arc::new(open_slot(&catalog, projection)?));
        }
        let shared = Arc::new(Shared {
            catalog,
            head: log.watch_head(),
            slots,
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        let mut threads = Vec::new();
        for (name, slot) in &shared.slots {
            let (log, shared_ref, slot) = (log.clone(), shared.clone(), slot.clone());
            let thread = std::thread::Builder::new()
                .name(format!("rapport-proj-{name}"))
                .spawn(move || run(log, shared_ref, slot))
                .map_err(|e| ProjectionError::Log(e.into()))?;
            threads.push(thread);
        }
        *shared.threads.lock().expect("threads lock poisoned") = threads;
        Ok(Self { shared })
    }

    fn slot(&self, name: &str) -> Result<&Arc<Slot>, ProjectionError> {
        self.shared
            .slots
            .get(name)
            .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))
    }

    /// Names of the projections, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.shared.slots.keys().copied().collect()
    }

    /// The tree currently serving reads for `name` plus the position it has applied.
    pub fn reader(&self, name: &str) -> Result<ProjectionView, ProjectionError> {
        let inner = self.slot(name)?.lock();
        Ok(ProjectionView {
            tree: inner.active.1.clone(),
            applied: inner.active_checkpoint,
            _lease: inner.active.2.clone(),
        })
    }

    /// Read your writes: waits until `name` has applied `min_position`, at most `timeout`
    /// (capped at [`limits::PROJECTION_WAIT_MS_MAX`]). A position beyond the log's head
    /// waits too (it may be appended meanwhile). `NotYet` when the time is up, `Failed`
    /// when the projection stopped before reaching it.
    ///
    /// `min_position` 0 asks for no position: the view then holds every event durable
    /// when the call was made, as long as the projection follows the log closely (behind
    /// only by its gather, at most [`limits::PROJECTION_IMPLICIT_LAG_MAX`] positions), so a
    /// read right after a write never answers from before it (a NOT_FOUND for what was
    /// just created). A projection further behind (catching up after a restart, or frozen
    /// for a rebuild) answers at once with what it has, as does one that does not get
    /// there within [`limits::PROJECTION_IMPLICIT_WAIT_MS`].
    pub async fn wait_for(
        &self,
        name: &str,
        min_position: u64,
        timeout: Duration,
    ) -> Result<ProjectionView, ProjectionError> {
        if min_position > 0 {
            return self.wait_until(name, min_position, timeout).await;
        }
        let slot = self.slot(name)?;
        let head = self.shared.head.borrow().position;
        let applied = *slot.applied.borrow();
        let following = {
            let inner = slot.lock();
            inner.active_follows && inner.failed.is_none()
        };
        if !following || head <= applied || head - applied > limits::PROJECTION_IMPLICIT_LAG_MAX {
            return self.reader(name);
        }
        let timeout = timeout.min(Duration::from_millis(limits::PROJECTION_IMPLICIT_WAIT_MS));
        match self.wait_until(name, head, timeout).await {
            Err(ProjectionError::NotYet { .. }) => self.reader(name),
            other => other,
        }
    }

    /// [`Self::wait_for`] a position given.
    async fn wait_until(
        &self,
        name: &str,
        min_position: u64,
        timeout: Duration,
    ) -> Result<ProjectionView, ProjectionError> {
        let slot = self.slot(name)?;
        let timeout = timeout.min(Duration::from_millis(limits::PROJECTION_WAIT_MS_MAX));
        let deadline = tokio::time::Instant::now() + timeout;
        let mut applied = slot.applied.subscribe();
        loop {
            let reached = *applied.borrow_and_update();
            if reached >= min_position {
                return self.reader(name);
            }
            if let Some((position, error)) = slot.lock().failed.clone() {
                return Err(ProjectionError::Failed {
                    name: name.to_owned(),
                    position,
                    error,
                });
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return Err(ProjectionError::ShuttingDown);
            }
            // Someone waits: the runner reads now rather than at the end of its gather.
            slot.wake.notify_one();
            match tokio::time::timeout_at(deadline, applied.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(ProjectionError::ShuttingDown),
                Err(_) => {
                    return Err(ProjectionError::NotYet {
                        name: name.to_owned(),
                        applied: reached,
                        wanted: min_position,
                    });
                }
            }
        }
    }

    /// Every projection's status, sorted by name.
    pub fn status(&self) -> Vec<ProjectionStatus> {
        let head = self.shared.head.borrow().position;
        self.shared
            .slots
            .iter()
            .map(|(name, slot)| {
                let inner = slot.lock();
                let state = if let Some((position, error)) = &inner.failed {
                    ProjectionState::Failed {
                        position: *position,
                        error: error.clone(),
                    }
                } else if let Some((generation, _)) = &inner.shadow {
                    rebuilding(
                        &inner.meter,
                        generation.version,
                        inner.shadow_checkpoint,
                        head,
                    )
                } else if inner.first_build {
                    rebuilding(
                        &inner.meter,
                        inner.active.0.version,
                        inner.active_checkpoint,
                        head,
                    )
                } else {
                    ProjectionState::Live
                };
                ProjectionStatus {
                    name: (*name).to_owned(),
                    version: inner.active.0.version,
                    checkpoint: inner.active_checkpoint,
                    head,
                    lag: head.saturating_sub(inner.active_checkpoint),
                    state,
                }
            })
            .collect()
    }

    /// The status of one projection.
    pub fn status_of(&self, name: &str) -> Result<ProjectionStatus, ProjectionError> {
        self.slot(name)?;
        Ok(self
            .status()
            .into_iter()
            .find(|s| s.name == name)
            .expect("the slot exists"))
    }

    /// Starts a rebuild of `name`: a new generation built from position 1 while the
    /// current one keeps serving (and following the log). A rebuild already running (a
    /// shadow, or a first build) is not restarted: the call succeeds and changes nothing,
    /// so retrying is safe. A failed projection is always rebuilt: its failed generation
    /// keeps serving what it applied, frozen, until the new one switches in.
    pub fn rebuild(&self, name: &str) -> Result<(), ProjectionError> {
        let slot = self.slot(name)?;
        if self.shared.stop.load(Ordering::Acquire) {
            return Err(ProjectionError::ShuttingDown);
        }
        let catalog = &self.shared.catalog;
        let mut inner = slot.lock();
        if inner.failed.is_none() && (inner.shadow.is_some() || inner.first_build) {
            return Ok(());
        }
        if let Some((stale, _)) = inner.shadow.take() {
            inner.record.shadow = None;
            catalog.drop_generation(name, stale.generation)?;
        }
        if inner.failed.is_some() {
            inner.active_follows = false;
        }
        let version = slot.projection.version();
        let mut record = inner.record;
        let shadow = catalog.new_generation(name, version, &mut record, true)?;
        inner.record = record;
        inner.shadow = Some(shadow);
        inner.shadow_checkpoint = 0;
        inner.first_build = false;
        inner.meter = Meter::new(0);
        inner.failed = None;
        drop(inner);
        tracing::info!(projection = name, version, "projection rebuild requested");
        slot.wake.notify_one();
        Ok(())
    }

    /// Stops the runners and builders (each finishes its current batch) and waits for
    /// them, at most
    /// [`limits::PROJECTION_SHUTDOWN_MS_MAX`]. Idempotent. Waiters get `ShuttingDown`.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        for slot in self.shared.slots.values() {
            slot.wake.notify_one();
            slot.applied.send_modify(|_| {});
        }
        let threads =
            std::mem::take(&mut *self.shared.threads.lock().expect("threads lock poisoned"));
        let deadline =
            std::time::Instant::now() + Duration::from_millis(limits::PROJECTION_SHUTDOWN_MS_MAX);
        let builders = self
            .shared
            .slots
            .values()
            .filter_map(|slot| slot.builder.lock().expect("builder lock poisoned").take());
        for thread in threads.into_iter().chain(builders.collect::<Vec<_>>()) {
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                tracing::warn!("a projection runner did not stop in time");
            }
        }
    }
}

fn rebuilding(meter: &Meter, target_version: u32, position: u64, head: u64) -> ProjectionState {
    let progress = meter.progress(position, head);
    ProjectionState::Rebuilding {
        target_version,
        position,
        head,
        events_per_second: progress.events_per_second,
        eta_seconds: progress.eta_seconds,
    }
}

//! Projections: deterministic folds of the log into read models (DESIGN §4).
//!
//! A [`Projection`] says which events it wants and how one batch of them changes its
//! state; the engine does everything else: reading the log in bounded batches, the
//! write-back [`StateBatch`], committing state and checkpoint in one atomic sled batch,
//! following the log live, stopping on a failure, and rebuilding a new generation
//! without downtime. The engine knows nothing of the CRM.
//!
//! # Trees and keys
//! - `proj/<name>/<generation>` (generation in decimal, from 1): one tree per generation
//!   of a projection. The projection's own keys live here, plus the reserved key
//!   [`CHECKPOINT_KEY`] (`\0checkpoint` → last applied position, u64 big-endian),
//!   written in the same `apply_batch` as the state it checkpoints. A projection's keys
//!   must therefore never start with `\0` (every key starting with `\0` is the engine's).
//! - `projections` (the meta tree): `<name>` → the active generation and the code
//!   version that built it, the shadow generation being rebuilt (0 = none) and its
//!   version, and the next free generation number (see [`engine`]). One insert, so a
//!   switch from the old generation to the new one is atomic, and a restart resumes a
//!   rebuild from the shadow's own checkpoint.
//!
//! # Modules
//! - [`engine`]: the storage side: meta records, generations, one batch step, the switch,
//!   and the offline rebuild behind `rapport rebuild --data-dir`.
//! - [`runner`]: [`Projections`], the live side: one thread per projection, catch-up,
//!   live follow woken by the log's head, read-your-writes waits, status and rebuilds.
//! - [`log_stats`]: a small built-in projection (counts per event type and per stream
//!   category) that proves the engine and backs the admin `GetLogStats` call.

pub mod customers;
pub mod engine;
pub mod log_stats;
pub mod loyalty;
pub mod pipeline;
pub mod pipeline_queries;
pub mod runner;
pub mod segments;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::log::{LogError, LoggedEvent, ReadFilter};

pub use engine::{Progress, rebuild_offline};
pub use runner::{ProjectionState, ProjectionStatus, ProjectionView, Projections};

/// The reserved key of the checkpoint (last applied position, u64 big-endian) inside every
/// projection tree. Keys starting with `\0` belong to the engine.
pub const CHECKPOINT_KEY: &[u8] = b"\0checkpoint";

/// A deterministic fold of the log into its own sled tree. No clock, no randomness, no
/// iteration over unordered maps in output: the same events give the same tree, byte for
/// byte, whatever the batch boundaries and restarts.
pub trait Projection: Send + Sync + 'static {
    /// Stable name used by the admin RPC, the CLI and the tree names: `[a-z0-9_]+`.
    fn name(&self) -> &'static str;
    /// Version of the fold code. A change makes the next start build a new generation
    /// in the background (the old one keeps serving until the new one has caught up).
    fn version(&self) -> u32;
    /// The events it wants. The runner still advances the checkpoint past the others.
    fn filter(&self) -> ReadFilter {
        ReadFilter::default()
    }
    /// True when [`Projection::apply`] reads only the envelope of each event (position,
    /// stream, revision, ids, type, times, hash): the engine then hands it events whose
    /// `payload` and `metadata` are left empty, sparing their decoding and copying. A fold
    /// of every event that counts or dates them (`log_stats`) spent most of its time
    /// there.
    fn envelopes_only(&self) -> bool {
        false
    }
    /// Applies `events` (ascending positions) to the state. Reads through `state` see this
    /// batch's own pending writes. On an event it cannot apply, returns `Err` with that
    /// event's position: the engine then keeps exactly the events before it (by applying
    /// them again into a fresh batch) and stops the projection as failed there.
    fn apply(&self, state: &mut StateBatch<'_>, events: &[LoggedEvent]) -> Result<(), ApplyError>;
}

/// A projection could not apply the event at `position`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot apply the event at position {position}: {message}")]
pub struct ApplyError {
    /// Position of the event that could not be applied.
    pub position: u64,
    /// Why.
    pub message: String,
}

impl ApplyError {
    /// The event at `position` cannot be applied, for `message`.
    pub fn new(position: u64, message: impl Into<String>) -> Self {
        Self {
            position,
            message: message.into(),
        }
    }
}

/// Why a projection call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// No projection has this name.
    #[error("no projection named {0:?}")]
    NotFound(String),
    /// The projection has not applied the wanted position within the wait.
    #[error("projection {name} has applied position {applied}, not yet {wanted}")]
    NotYet {
        /// Projection name.
        name: String,
        /// Position it has applied.
        applied: u64,
        /// Position the caller wanted.
        wanted: u64,
    },
    /// The projection stopped on an event it could not apply.
    #[error("projection {name} failed at position {position}: {error}")]
    Failed {
        /// Projection name.
        name: String,
        /// Position of the event it could not apply.
        position: u64,
        /// The projection's message.
        error: String,
    },
    /// Two projections share a name, or a name is not `[a-z0-9_]+`.
    #[error("invalid projection set: {0}")]
    Invalid(String),
    /// The engine is shutting down.
    #[error("the projections are shutting down")]
    ShuttingDown,
    /// A projection tree or the meta tree holds bytes the engine did not write.
    #[error("corrupt projection data: {0}")]
    Corrupt(String),
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
}

/// Key/value pairs in key order, as [`StateBatch::scan_prefix`] returns them.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Write-back view of one projection tree during a batch: reads see the batch's pending
/// inserts and removes first, then the tree. Nothing reaches the tree until the engine
/// commits the batch together with its checkpoint.
pub struct StateBatch<'a> {
    tree: &'a sled::Tree,
    /// `None` = removed. A `BTreeMap` so prefix scans can merge it in key order.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pending_bytes: usize,
}

impl<'a> StateBatch<'a> {
    /// An empty batch over `tree`.
    pub fn new(tree: &'a sled::Tree) -> Self {
        Self {
            tree,
            pending: BTreeMap::new(),
            pending_bytes: 0,
        }
    }

    fn check_key(key: &[u8]) {
        // A projection key starting with \0 could overwrite the checkpoint: that is a bug
        // in the projection, never a data condition, so it is loud.
        assert!(
            key.first() != Some(&0),
            "projection keys must not start with \\0 (reserved for the engine)"
        );
    }

    /// The current value of `key`: this batch's pending write if any, else the tree's.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, sled::Error> {
        match self.pending.get(key) {
            Some(value) => Ok(value.clone()),
            None => Ok(self.tree.get(key)?.map(|v| v.to_vec())),
        }
    }

    /// Sets `key` to `value`. Panics when `key` starts with `\0` (reserved).
    pub fn insert(&mut self, key: &[u8], value: Vec<u8>) {
        Self::check_key(key);
        self.pending_bytes += key.len() + value.len();
        self.pending.insert(key.to_vec(), Some(value));
    }

    /// Removes `key`. Panics when `key` starts with `\0` (reserved).
    pub fn remove(&mut self, key: &[u8]) {
        Self::check_key(key);
        self.pending_bytes += key.len();
        self.pending.insert(key.to_vec(), None);
    }

    /// Every key starting with `prefix` and its current value, in key order, pending
    /// writes merged over the tree. Reserved keys are never returned.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, sled::Error> {
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for entry in self.tree.scan_prefix(prefix) {
            let (key, value) = entry?;
            if key.first() != Some(&0) {
                merged.insert(key.to_vec(), Some(value.to_vec()));
            }
        }
        let range = self
            .pending
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix));
        for (key, value) in range {
            merged.insert(key.clone(), value.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key, v)))
            .collect())
    }

    /// Bytes of keys and values written so far in this batch, overwrites included (an
    /// upper bound on what the commit will write). The engine bounds a batch by its
    /// events; this tells a projection how much it wrote for them.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Commits the pending writes with the checkpoint, atomically.
    ///
    /// A batch that wrote nothing (the events matched no key, or none matched the
    /// filter) moves only the checkpoint: one plain insert of one key, which sled applies
    /// atomically on its own. A sled batch would do the same, but every `apply_batch`
    /// seals sled's I/O buffer and hands a write to its thread pool; the runners commit a
    /// checkpoint-only batch on almost every round while appends arrive, and those writes
    /// were ~130 µs of server CPU per append with one client (BENCHMARKS.md).
    fn commit(self, checkpoint: u64) -> Result<(), sled::Error> {
        if self.pending.is_empty() {
            self.tree
                .insert(CHECKPOINT_KEY, &checkpoint.to_be_bytes())?;
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (key, value) in self.pending {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        batch.insert(CHECKPOINT_KEY, &checkpoint.to_be_bytes());
        self.tree.apply_batch(batch)
    }
}

/// True when `name` is a valid projection name: `[a-z0-9_]+`, at most 64 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The built-in projections the server runs.
pub fn builtin() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(customers::CustomersProjection),
        Arc::new(log_stats::LogStatsProjection),
        Arc::new(segments::SegmentsProjection),
        // Loyalty (issue 5).
        Arc::new(loyalty::LoyaltyProjection),
        Arc::new(pipeline::PipelineProjection),
    ]
}

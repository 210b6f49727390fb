//! The event id index (id → position), packed so that an event costs no sled insert of
//! its own.
//!
//! sled's insert costs ~8 µs of CPU whatever it holds, and a random 16-byte key per event
//! was the largest per-event cost of a group commit. Here an id is written to sled only
//! inside sorted blocks of many ids, like an LSM tree:
//!
//! - **the tail**: the ids of the newest events (at most [`IdIndexShape::tail_entries`],
//!   plus one group), in a hash map in memory. They need no disk of their own: the events
//!   hold them, and opening the log reads them back from the events past the runs.
//! - **runs**: sorted (id, position) entries of a contiguous range of positions, in
//!   blocks of up to [`IdIndexShape::block_entries`] entries under the key
//!   `run id (u64 BE) ‖ last id of the block`, so a lookup in a run is one range read.
//!   When the tail is full the writer seals it into a level-0 run. When `fanout` runs share
//!   a level, a background thread merges them into one run of the next level (size-tiered
//!   compaction): an id is rewritten once per level, in bulk.
//! - **the manifest** (`meta` key `id_runs`): the runs in force, oldest first, each as
//!   run id, level and its first and last position. The runs partition positions
//!   `1..=through` without gaps; the tail holds `through+1..=head`.
//!
//! Crash safety rests on sled recovering a prefix of its operations: a run's blocks are
//! written before the manifest names it, and the blocks of merged runs are deleted only
//! after the manifest stops naming them. Blocks of a run the manifest does not name (a
//! merge or a seal cut short) are deleted when the index opens.
//!
//! Lookups hold a read lock across the tail and every run, and a merge swaps its runs
//! under the write lock, so a lookup never reads a run that is being deleted. A scan of
//! every id (the writer's Bloom filter, verify) pins the index: while pinned, merged runs'
//! blocks are left in place and deleted later.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};

use sled::{IVec, Tree};

use super::FastMap;
use super::error::LogError;
use crate::limits;

/// An (event id, position) entry of the index.
type Entry = ([u8; 16], u64);

/// Bytes of one entry: id (16) ‖ position (u64 BE).
pub const ENTRY_BYTES: usize = 24;
/// Bytes of a block key: run id (u64 BE) ‖ last id of the block.
pub const BLOCK_KEY_BYTES: usize = 24;
/// `meta` key of the manifest.
pub const MANIFEST_KEY: &[u8] = b"id_runs";
/// Bytes of one manifest record: run id (8) ‖ level (1) ‖ first (8) ‖ last (8).
const RUN_RECORD_BYTES: usize = 25;
/// Blocks a merge writes between looks at its stop flag.
const STOP_CHECK_EVERY_BLOCKS: u64 = 64;

/// How the index packs ids. Only the writing side depends on it: runs of any shape are
/// read alike, so a directory written with one shape opens with another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdIndexShape {
    /// Ids the in-memory tail holds before it is sealed into a run.
    pub tail_entries: usize,
    /// Runs of one level merged into one run of the next.
    pub fanout: usize,
    /// Entries per block of a run.
    pub block_entries: usize,
}

impl Default for IdIndexShape {
    fn default() -> Self {
        Self {
            tail_entries: limits::ID_TAIL_ENTRIES,
            fanout: limits::ID_RUN_FANOUT,
            block_entries: limits::ID_BLOCK_ENTRIES,
        }
    }
}

impl std::str::FromStr for IdIndexShape {
    type Err = String;

    /// `TAIL,FANOUT,BLOCK`, e.g. `32768,8,128` (the default).
    fn from_str(text: &str) -> Result<Self, String> {
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        let [tail, fanout, block] = fields.as_slice() else {
            return Err(format!("expected TAIL,FANOUT,BLOCK, got {text:?}"));
        };
        let number = |name: &str, field: &str| {
            field
                .parse::<usize>()
                .map_err(|e| format!("{name} {field:?}: {e}"))
        };
        let shape = Self {
            tail_entries: number("tail", tail)?,
            fanout: number("fanout", fanout)?,
            block_entries: number("block", block)?,
        };
        if shape.tail_entries == 0
            || shape.fanout < 2
            || shape.block_entries == 0
            || shape.block_entries > limits::ID_BLOCK_ENTRIES_MAX
        {
            return Err(format!(
                "tail ≥ 1, fanout ≥ 2 and 1 ≤ block ≤ {} are needed, got {text:?}",
                limits::ID_BLOCK_ENTRIES_MAX
            ));
        }
        Ok(shape)
    }
}

impl IdIndexShape {
    /// The shape with every field at least its smallest workable value.
    fn sane(self) -> Self {
        Self {
            tail_entries: self.tail_entries.max(1),
            fanout: self.fanout.max(2),
            block_entries: self.block_entries.clamp(1, limits::ID_BLOCK_ENTRIES_MAX),
        }
    }
}

/// One run of the index: the ids of positions `first..=last`, one entry each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// Its key prefix in the `id_runs` tree.
    pub id: u64,
    /// 0 for a sealed tail; a merge of `fanout` runs of level L is of level L + 1.
    pub level: u8,
    /// First position covered.
    pub first: u64,
    /// Last position covered.
    pub last: u64,
}

impl Run {
    /// Entries the run holds.
    pub fn entries(&self) -> u64 {
        self.last - self.first + 1
    }
}

#[derive(Default)]
struct State {
    tail: FastMap<[u8; 16], u64>,
    /// Oldest first.
    runs: Vec<Run>,
}

impl State {
    fn through(&self) -> u64 {
        self.runs.last().map_or(0, |r| r.last)
    }
}

/// The packed event id index (see the module documentation).
pub struct IdIndex {
    tree: Tree,
    meta: Tree,
    shape: IdIndexShape,
    state: RwLock<State>,
    /// Scans of every id in progress; while any runs, merged runs are not deleted.
    pins: AtomicUsize,
    next_run: AtomicU64,
    /// Runs merged away whose blocks are still to delete.
    garbage: Mutex<Vec<u64>>,
}

/// Key of a block of `run` whose last id is `id`.
pub fn block_key(run: u64, id: &[u8; 16]) -> [u8; BLOCK_KEY_BYTES] {
    let mut key = [0u8; BLOCK_KEY_BYTES];
    key[..8].copy_from_slice(&run.to_be_bytes());
    key[8..].copy_from_slice(id);
    key
}

/// The (id, position) entry at `index` of a block (its length checked by the caller).
fn entry_at(block: &[u8], index: usize) -> ([u8; 16], u64) {
    let bytes = &block[index * ENTRY_BYTES..(index + 1) * ENTRY_BYTES];
    let id: [u8; 16] = bytes[..16].try_into().expect("16 bytes");
    let position = u64::from_be_bytes(bytes[16..].try_into().expect("8 bytes"));
    (id, position)
}

fn encode_manifest(runs: &[Run]) -> Vec<u8> {
    let mut out = Vec::with_capacity(runs.len() * RUN_RECORD_BYTES);
    for run in runs {
        out.extend_from_slice(&run.id.to_be_bytes());
        out.push(run.level);
        out.extend_from_slice(&run.first.to_be_bytes());
        out.extend_from_slice(&run.last.to_be_bytes());
    }
    out
}

fn decode_manifest(bytes: &[u8]) -> Result<Vec<Run>, LogError> {
    if !bytes.len().is_multiple_of(RUN_RECORD_BYTES) {
        return Err(LogError::Corrupt("malformed id index manifest".into()));
    }
    let u64_at = |record: &[u8], at: usize| {
        u64::from_be_bytes(record[at..at + 8].try_into().expect("8 bytes"))
    };
    let runs: Vec<Run> = bytes
        .chunks_exact(RUN_RECORD_BYTES)
        .map(|record| Run {
            id: u64_at(record, 0),
            level: record[8],
            first: u64_at(record, 9),
            last: u64_at(record, 17),
        })
        .collect();
    let mut expected_first = 1;
    for run in &runs {
        if run.first != expected_first || run.last < run.first {
            return Err(LogError::Corrupt(format!(
                "id index manifest: run {} covers {}..={}, expected to start at {expected_first}",
                run.id, run.first, run.last
            )));
        }
        expected_first = run.last + 1;
    }
    Ok(runs)
}

/// Reads one run's entries in id order, checking its shape as it goes: block keys that
/// name their last id, ids strictly rising, positions within the run, one entry per
/// position. What it finds wrong goes to `faults`; a malformed block is skipped.
struct RunReader<'a> {
    run: Run,
    blocks: sled::Iter,
    block: Option<IVec>,
    index: usize,
    previous: Option<[u8; 16]>,
    read: u64,
    faults: &'a Mutex<Vec<String>>,
    done: bool,
}

impl<'a> RunReader<'a> {
    fn new(tree: &Tree, run: Run, faults: &'a Mutex<Vec<String>>) -> Self {
        Self {
            run,
            blocks: tree.scan_prefix(run.id.to_be_bytes()),
            block: None,
            index: 0,
            previous: None,
            read: 0,
            faults,
            done: false,
        }
    }

    fn fault(&self, what: String) {
        self.faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("id index run {}: {what}", self.run.id));
    }

    fn next_entry(&mut self) -> Result<Option<([u8; 16], u64)>, LogError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if let Some(block) = &self.block
                && self.index < block.len() / ENTRY_BYTES
            {
                let (id, position) = entry_at(block, self.index);
                self.index += 1;
                self.read += 1;
                if self.previous.is_some_and(|p| p >= id) {
                    self.fault(format!(
                        "ids out of order at {}",
                        uuid::Uuid::from_bytes(id)
                    ));
                }
                if position < self.run.first || position > self.run.last {
                    self.fault(format!(
                        "maps {} to {position}, outside its positions {}..={}",
                        uuid::Uuid::from_bytes(id),
                        self.run.first,
                        self.run.last
                    ));
                }
                self.previous = Some(id);
                return Ok(Some((id, position)));
            }
            match self.blocks.next() {
                None => {
                    self.done = true;
                    if self.read != self.run.entries() {
                        self.fault(format!(
                            "holds {} entries for the {} positions {}..={}",
                            self.read,
                            self.run.entries(),
                            self.run.first,
                            self.run.last
                        ));
                    }
                    return Ok(None);
                }
                Some(entry) => {
                    let (key, value) = entry?;
                    let count = value.len() / ENTRY_BYTES;
                    if key.len() != BLOCK_KEY_BYTES
                        || value.is_empty()
                        || value.len() % ENTRY_BYTES != 0
                        || key[8..] != entry_at(&value, count - 1).0
                    {
                        self.fault("a malformed block".into());
                        self.block = None;
                        continue;
                    }
                    self.block = Some(value);
                    self.index = 0;
                }
            }
        }
    }
}

/// Decrements the pin count when a scan ends, however it ends.
struct Pin<'a>(&'a AtomicUsize);

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl IdIndex {
    /// Opens the index in `db` (tree `id_runs`, manifest in `meta`) with an empty tail:
    /// the caller adds the ids of positions past [`IdIndex::through`] from the events.
    /// Deletes blocks of runs the manifest does not name.
    pub fn open(db: &sled::Db, meta: Tree, shape: IdIndexShape) -> Result<Self, LogError> {
        let tree = db.open_tree("id_runs")?;
        let runs = match meta.get(MANIFEST_KEY)? {
            Some(bytes) => decode_manifest(&bytes)?,
            None => Vec::new(),
        };
        let index = Self {
            tree,
            meta,
            shape: shape.sane(),
            state: RwLock::new(State {
                tail: FastMap::default(),
                runs,
            }),
            pins: AtomicUsize::new(0),
            next_run: AtomicU64::new(1),
            garbage: Mutex::new(Vec::new()),
        };
        index.delete_orphans()?;
        Ok(index)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Deletes the blocks of every run id present in the tree but not in the manifest,
    /// and sets the next run id past every id seen. Seeks from one run id to the next,
    /// so it reads one key per run plus the orphans' blocks.
    fn delete_orphans(&self) -> Result<(), LogError> {
        let named: Vec<u64> = self.read().runs.iter().map(|r| r.id).collect();
        let mut highest = named.iter().copied().max().unwrap_or(0);
        let mut from = 0u64;
        loop {
            let Some(entry) = self.tree.range(from.to_be_bytes()..).next() else {
                break;
            };
            let (key, _) = entry?;
            if key.len() < 8 {
                // Not a block key; verify reports the run it would belong to.
                return Err(LogError::Corrupt("malformed id index block key".into()));
            }
            let run = u64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
            highest = highest.max(run);
            if !named.contains(&run) {
                let removed = self.delete_run(run)?;
                tracing::info!(run, removed, "deleted the blocks of an unfinished id run");
            }
            let Some(next) = run.checked_add(1) else {
                break;
            };
            from = next;
        }
        self.next_run.store(highest + 1, Ordering::SeqCst);
        Ok(())
    }

    fn delete_run(&self, run: u64) -> Result<u64, LogError> {
        let mut removed = 0;
        for key in self.tree.scan_prefix(run.to_be_bytes()).keys() {
            self.tree.remove(key?)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The last position the runs cover; the tail holds the ids after it.
    pub fn through(&self) -> u64 {
        self.read().through()
    }

    /// The runs in force, oldest first.
    pub fn runs(&self) -> Vec<Run> {
        self.read().runs.clone()
    }

    /// Ids in the tail.
    pub fn tail_len(&self) -> usize {
        self.read().tail.len()
    }

    /// Whether the tail is full enough to seal.
    pub fn tail_full(&self) -> bool {
        self.tail_len() >= self.shape.tail_entries
    }

    /// Adds ids of new events (positions past every id already held) to the tail.
    pub fn insert(&self, entries: impl IntoIterator<Item = ([u8; 16], u64)>) {
        self.write().tail.extend(entries);
    }

    /// The position recorded for `id`: the tail first, then the runs newest first.
    pub fn get(&self, id: &[u8; 16]) -> Result<Option<u64>, LogError> {
        let state = self.read();
        if let Some(position) = state.tail.get(id) {
            return Ok(Some(*position));
        }
        for run in state.runs.iter().rev() {
            if let Some(position) = self.get_in_run(run, id)? {
                return Ok(Some(position));
            }
        }
        Ok(None)
    }

    fn get_in_run(&self, run: &Run, id: &[u8; 16]) -> Result<Option<u64>, LogError> {
        let from = block_key(run.id, id);
        let to = block_key(run.id, &[0xff; 16]);
        let Some(entry) = self.tree.range(from..=to).next() else {
            return Ok(None);
        };
        let (_, block) = entry?;
        if block.len() % ENTRY_BYTES != 0 {
            return Err(LogError::Corrupt(format!(
                "id index run {}: a block of {} bytes",
                run.id,
                block.len()
            )));
        }
        let (mut low, mut high) = (0, block.len() / ENTRY_BYTES);
        while low < high {
            let middle = (low + high) / 2;
            let (found, position) = entry_at(&block, middle);
            match found.cmp(id) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(Some(position)),
            }
        }
        Ok(None)
    }

    /// Writes `entries` (sorted by id) as the blocks of run `run`; returns how many it
    /// wrote, or `None` if `stop` was set first (the blocks written are then orphans).
    fn write_blocks(
        &self,
        run: u64,
        entries: impl Iterator<Item = Result<([u8; 16], u64), LogError>>,
        stop: Option<&AtomicBool>,
    ) -> Result<Option<u64>, LogError> {
        let block_entries = self.shape.block_entries;
        let mut block = Vec::with_capacity(block_entries * ENTRY_BYTES);
        let mut last = [0u8; 16];
        let mut written = 0u64;
        let mut blocks = 0u64;
        for entry in entries {
            let (id, position) = entry?;
            block.extend_from_slice(&id);
            block.extend_from_slice(&position.to_be_bytes());
            last = id;
            written += 1;
            if block.len() == block_entries * ENTRY_BYTES {
                self.tree.insert(block_key(run, &last), block.as_slice())?;
                block.clear();
                blocks += 1;
                if blocks.is_multiple_of(STOP_CHECK_EVERY_BLOCKS)
                    && stop.is_some_and(|s| s.load(Ordering::Relaxed))
                {
                    return Ok(None);
                }
            }
        }
        if !block.is_empty() {
            self.tree.insert(block_key(run, &last), block.as_slice())?;
        }
        Ok(Some(written))
    }

    /// Seals the tail into a level-0 run (the writer calls it when the tail is full,
    /// after the tail's events are in sled). Returns the run, or `None` for an empty tail.
    pub fn seal(&self) -> Result<Option<Run>, LogError> {
        let (mut entries, through) = {
            let state = self.read();
            let entries: Vec<([u8; 16], u64)> =
                state.tail.iter().map(|(id, p)| (*id, *p)).collect();
            (entries, state.through())
        };
        if entries.is_empty() {
            return Ok(None);
        }
        let last = through + entries.len() as u64;
        if entries.iter().any(|(_, p)| *p <= through || *p > last) {
            return Err(LogError::Corrupt(format!(
                "the id tail does not hold exactly positions {}..={last}",
                through + 1
            )));
        }
        entries.sort_unstable();
        let run = Run {
            id: self.next_run.fetch_add(1, Ordering::SeqCst),
            level: 0,
            first: through + 1,
            last,
        };
        self.write_blocks(run.id, entries.iter().map(|e| Ok(*e)), None)?;
        let mut state = self.write();
        let mut runs = state.runs.clone();
        runs.push(run);
        self.meta.insert(MANIFEST_KEY, encode_manifest(&runs))?;
        state.runs = runs;
        if state.tail.len() == entries.len() {
            // Only the writer adds to the tail, and it is the caller: nothing came since.
            state.tail.clear();
        } else {
            for (id, _) in &entries {
                state.tail.remove(id);
            }
        }
        Ok(Some(run))
    }

    /// Merges the oldest `fanout` runs of the lowest level that has that many into one
    /// run of the next level. Returns whether it merged; `false` also when `stop` was
    /// set before the merge was done (nothing changes then).
    pub fn compact_once(&self, stop: &AtomicBool) -> Result<bool, LogError> {
        let fanout = self.shape.fanout;
        let runs = self.runs();
        let Some(level) =
            (0..=u8::MAX).find(|l| runs.iter().filter(|r| r.level == *l).count() >= fanout)
        else {
            return Ok(false);
        };
        // Levels fall from the oldest run to the newest, so a level's runs are adjacent.
        let start = runs
            .iter()
            .position(|r| r.level == level)
            .expect("the level has runs");
        let sources: Vec<Run> = runs[start..start + fanout].to_vec();
        if sources.iter().any(|r| r.level != level) {
            return Err(LogError::Corrupt(
                "id index runs of one level are not adjacent".into(),
            ));
        }
        let merged = Run {
            id: self.next_run.fetch_add(1, Ordering::SeqCst),
            level: level.saturating_add(1),
            first: sources[0].first,
            last: sources[fanout - 1].last,
        };
        let faults = Mutex::new(Vec::new());
        let readers: Vec<RunReader<'_>> = sources
            .iter()
            .map(|r| RunReader::new(&self.tree, *r, &faults))
            .collect();
        let mut merge = Merge::new(readers, Vec::new())?;
        let mut previous: Option<[u8; 16]> = None;
        let entries = std::iter::from_fn(|| {
            let next = merge.next_entry().transpose()?;
            Some(next.and_then(|(id, position)| {
                if previous == Some(id) {
                    return Err(LogError::Corrupt(format!(
                        "event id {} is indexed twice",
                        uuid::Uuid::from_bytes(id)
                    )));
                }
                previous = Some(id);
                Ok((id, position))
            }))
        });
        let written = self.write_blocks(merged.id, entries, Some(stop))?;
        if let Some(fault) = faults
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .first()
        {
            return Err(LogError::Corrupt(fault.clone()));
        }
        let Some(written) = written else {
            return Ok(false);
        };
        if written != merged.entries() {
            return Err(LogError::Corrupt(format!(
                "id runs {}..={} hold {written} entries for {} positions",
                merged.first,
                merged.last,
                merged.entries()
            )));
        }
        {
            let mut state = self.write();
            let mut runs = state.runs.clone();
            let at = runs.iter().position(|r| *r == sources[0]);
            let Some(at) = at.filter(|at| runs[*at..].starts_with(&sources)) else {
                return Err(LogError::Corrupt(
                    "id index runs changed under a merge".into(),
                ));
            };
            runs.splice(at..at + fanout, [merged]);
            self.meta.insert(MANIFEST_KEY, encode_manifest(&runs))?;
            state.runs = runs;
        }
        self.garbage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(sources.iter().map(|r| r.id));
        self.collect_garbage()?;
        Ok(true)
    }

    /// Deletes the blocks of merged-away runs unless a scan has the index pinned.
    pub fn collect_garbage(&self) -> Result<(), LogError> {
        if self.pins.load(Ordering::SeqCst) > 0 {
            return Ok(());
        }
        let runs: Vec<u64> =
            std::mem::take(&mut *self.garbage.lock().unwrap_or_else(|e| e.into_inner()));
        for run in runs {
            self.delete_run(run)?;
        }
        Ok(())
    }

    fn pin(&self) -> (Pin<'_>, Vec<Entry>, Vec<Run>) {
        let state = self.read();
        self.pins.fetch_add(1, Ordering::SeqCst);
        let tail = state.tail.iter().map(|(id, p)| (*id, *p)).collect();
        (Pin(&self.pins), tail, state.runs.clone())
    }

    /// Calls `each` with every id the index holds (tail and runs), in no useful order,
    /// as of the call; checks `stop` now and then. Returns how many ids it passed.
    pub fn for_each_id(
        &self,
        stop: &AtomicBool,
        mut each: impl FnMut(&[u8; 16]),
    ) -> Result<u64, LogError> {
        let (_pin, tail, runs) = self.pin();
        let mut passed = 0u64;
        for (id, _) in &tail {
            each(id);
            passed += 1;
        }
        for run in runs {
            for (index, block) in self
                .tree
                .scan_prefix(run.id.to_be_bytes())
                .values()
                .enumerate()
            {
                if index % 256 == 0 && stop.load(Ordering::Relaxed) {
                    return Err(LogError::Unavailable("the log is closing".into()));
                }
                let block = block?;
                if block.len() % ENTRY_BYTES != 0 {
                    return Err(LogError::Corrupt(format!(
                        "id index run {}: a block of {} bytes",
                        run.id,
                        block.len()
                    )));
                }
                for entry in block.chunks_exact(ENTRY_BYTES) {
                    each(entry[..16].try_into().expect("16 bytes"));
                    passed += 1;
                }
            }
        }
        Ok(passed)
    }

    /// Passes every entry (tail and runs) to `each` in id order, an id held twice twice
    /// in a row, and returns the faults of the runs' shape (see verify).
    pub fn check_all(&self, mut each: impl FnMut(&[u8; 16], u64)) -> Result<Vec<String>, LogError> {
        let (_pin, mut tail, runs) = self.pin();
        tail.sort_unstable();
        let faults = Mutex::new(Vec::new());
        let readers: Vec<RunReader<'_>> = runs
            .iter()
            .map(|r| RunReader::new(&self.tree, *r, &faults))
            .collect();
        let mut merge = Merge::new(readers, tail)?;
        while let Some((id, position)) = merge.next_entry()? {
            each(&id, position);
        }
        drop(merge);
        Ok(faults.into_inner().unwrap_or_else(|e| e.into_inner()))
    }

    /// Converts a format-2 `event_ids` tree (id → position BE, one entry per event) into
    /// one run covering positions `1..=through`; entries past `through` are left to the
    /// tail, which the caller reads from the events. Does nothing if runs exist already
    /// (a conversion that was cut short after its manifest was written).
    pub fn convert_tree(&self, old: &Tree, through: u64) -> Result<(), LogError> {
        if !self.read().runs.is_empty() || through == 0 {
            return Ok(());
        }
        let mut level = 0u8;
        let mut capacity = self.shape.tail_entries as u64;
        while capacity < through && level < u8::MAX {
            capacity = capacity.saturating_mul(self.shape.fanout as u64);
            level += 1;
        }
        let run = Run {
            id: self.next_run.fetch_add(1, Ordering::SeqCst),
            level,
            first: 1,
            last: through,
        };
        let entries = old.iter().filter_map(|entry| match entry {
            Err(error) => Some(Err(LogError::from(error))),
            Ok((key, value)) => {
                let (Ok(id), Ok(position)) = (
                    <[u8; 16]>::try_from(key.as_ref()),
                    <[u8; 8]>::try_from(value.as_ref()).map(u64::from_be_bytes),
                ) else {
                    return Some(Err(LogError::Corrupt(
                        "malformed event id index entry".into(),
                    )));
                };
                (position <= through).then_some(Ok((id, position)))
            }
        });
        self.write_blocks(run.id, entries, None)?;
        let mut state = self.write();
        self.meta.insert(MANIFEST_KEY, encode_manifest(&[run]))?;
        state.runs = vec![run];
        Ok(())
    }
}

/// A k-way merge of sorted sources: runs and a sorted tail.
struct Merge<'a> {
    readers: Vec<RunReader<'a>>,
    tail: std::vec::IntoIter<([u8; 16], u64)>,
    /// (id, position, source); the tail is source `readers.len()`.
    heap: BinaryHeap<Reverse<([u8; 16], u64, usize)>>,
}

impl<'a> Merge<'a> {
    fn new(mut readers: Vec<RunReader<'a>>, tail: Vec<([u8; 16], u64)>) -> Result<Self, LogError> {
        let mut heap = BinaryHeap::with_capacity(readers.len() + 1);
        for (source, reader) in readers.iter_mut().enumerate() {
            if let Some((id, position)) = reader.next_entry()? {
                heap.push(Reverse((id, position, source)));
            }
        }
        let mut tail = tail.into_iter();
        if let Some((id, position)) = tail.next() {
            heap.push(Reverse((id, position, readers.len())));
        }
        Ok(Self {
            readers,
            tail,
            heap,
        })
    }

    fn next_entry(&mut self) -> Result<Option<([u8; 16], u64)>, LogError> {
        let Some(Reverse((id, position, source))) = self.heap.pop() else {
            return Ok(None);
        };
        let refill = if source == self.readers.len() {
            self.tail.next()
        } else {
            self.readers[source].next_entry()?
        };
        if let Some((next_id, next_position)) = refill {
            self.heap.push(Reverse((next_id, next_position, source)));
        }
        Ok(Some((id, position)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> [u8; 16] {
        // Scrambled so that id order is not position order.
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        id[8..].copy_from_slice(&n.to_be_bytes());
        id
    }

    fn open(dir: &std::path::Path, shape: IdIndexShape) -> (sled::Db, IdIndex) {
        // A reopen can find the file lock still held for a moment: sled's background
        // flusher keeps the previous `Db`'s files until its thread has ended.
        let mut tries = 0;
        let db = loop {
            match sled::Config::new().path(dir).open() {
                Err(sled::Error::Io(e)) if e.to_string().contains("lock") && tries < 500 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => break other.expect("sled"),
            }
        };
        let meta = db.open_tree("meta").expect("meta");
        let index = IdIndex::open(&db, meta, shape).expect("index");
        (db, index)
    }

    const SMALL: IdIndexShape = IdIndexShape {
        tail_entries: 10,
        fanout: 3,
        block_entries: 4,
    };

    /// Appends positions `from..=to`, sealing and compacting as the writer would.
    fn fill(index: &IdIndex, from: u64, to: u64) {
        let stop = AtomicBool::new(false);
        for position in from..=to {
            index.insert([(id(position), position)]);
            if index.tail_full() {
                index.seal().expect("seal");
                while index.compact_once(&stop).expect("compact") {}
            }
        }
    }

    fn check(index: &IdIndex, through: u64) {
        for position in 1..=through {
            assert_eq!(index.get(&id(position)).expect("get"), Some(position));
        }
        assert_eq!(index.get(&id(through + 1)).expect("get"), None);
        let mut seen = Vec::new();
        let faults = index.check_all(|id, p| seen.push((*id, p))).expect("check");
        assert!(faults.is_empty(), "{faults:?}");
        let mut expected: Vec<_> = (1..=through).map(|p| (id(p), p)).collect();
        expected.sort_unstable();
        assert_eq!(seen, expected);
    }

    #[test]
    fn finds_every_id_through_seals_and_merges() {
        let dir = tempfile::tempdir().expect("dir");
        let (_db, index) = open(dir.path(), SMALL);
        fill(&index, 1, 1_000);
        check(&index, 1_000);
        let runs = index.runs();
        // Levels fall from the oldest run to the newest and no level holds `fanout`.
        assert!(
            runs.windows(2).all(|w| w[0].level >= w[1].level),
            "{runs:?}"
        );
        for level in 0..=u8::MAX {
            assert!(runs.iter().filter(|r| r.level == level).count() < SMALL.fanout);
        }
        assert!(runs.iter().any(|r| r.level >= 3), "{runs:?}");
        assert_eq!(index.through() + index.tail_len() as u64, 1_000);
        // Merged runs' blocks are gone: only the runs in force are in the tree.
        let blocks = index.tree.len() as u64;
        let expected: u64 = runs.iter().map(|r| r.entries().div_ceil(4)).sum();
        assert_eq!(blocks, expected);
    }

    #[test]
    fn reopens_with_the_same_runs_and_deletes_unfinished_ones() {
        let dir = tempfile::tempdir().expect("dir");
        let runs = {
            let (db, index) = open(dir.path(), SMALL);
            fill(&index, 1, 95);
            // A merge cut short: blocks of a run the manifest never names.
            index
                .write_blocks(999, (1..=5).map(|p| Ok((id(p), p))), None)
                .expect("orphan");
            db.flush().expect("flush");
            index.runs()
        };
        let (_db, index) = open(dir.path(), SMALL);
        assert_eq!(index.runs(), runs);
        assert!(
            index
                .tree
                .scan_prefix(999u64.to_be_bytes())
                .next()
                .is_none()
        );
        // The tail is the caller's to refill.
        index.insert((index.through() + 1..=95).map(|p| (id(p), p)));
        check(&index, 95);
        fill(&index, 96, 300);
        check(&index, 300);
        assert!(index.runs().iter().all(|r| r.id != 999));
    }

    #[test]
    fn a_pinned_scan_keeps_merged_blocks_until_it_ends() {
        let dir = tempfile::tempdir().expect("dir");
        let (_db, index) = open(dir.path(), SMALL);
        fill(&index, 1, 29);
        let stop = AtomicBool::new(false);
        let (pin, _, runs) = index.pin();
        assert_eq!(runs.len(), 2);
        fill(&index, 30, 30);
        assert_eq!(index.runs().len(), 1, "three runs merged into one");
        for run in &runs {
            assert!(
                index
                    .tree
                    .scan_prefix(run.id.to_be_bytes())
                    .next()
                    .is_some(),
                "a pinned run's blocks stay"
            );
        }
        drop(pin);
        index.collect_garbage().expect("collect");
        for run in &runs {
            assert!(
                index
                    .tree
                    .scan_prefix(run.id.to_be_bytes())
                    .next()
                    .is_none()
            );
        }
        let mut count = 0;
        index.for_each_id(&stop, |_| count += 1).expect("scan");
        assert_eq!(count, 30);
    }

    #[test]
    fn check_all_reports_damage() {
        let dir = tempfile::tempdir().expect("dir");
        let (_db, index) = open(dir.path(), SMALL);
        fill(&index, 1, 10);
        let run = index.runs()[0];
        // Remove one block: the run holds fewer entries than positions.
        let (key, _) = index
            .tree
            .scan_prefix(run.id.to_be_bytes())
            .next()
            .expect("a block")
            .expect("read");
        index.tree.remove(key).expect("remove");
        let faults = index.check_all(|_, _| {}).expect("check");
        assert!(
            faults
                .iter()
                .any(|f| f.contains("entries for the 10 positions")),
            "{faults:?}"
        );
    }

    #[test]
    fn converts_a_format_2_tree() {
        let dir = tempfile::tempdir().expect("dir");
        let (db, index) = open(dir.path(), SMALL);
        let old = db.open_tree("event_ids").expect("old");
        for position in 1..=50 {
            old.insert(id(position), &position.to_be_bytes())
                .expect("insert");
        }
        index.convert_tree(&old, 45).expect("convert");
        assert_eq!(index.through(), 45);
        index.insert((46..=50).map(|p| (id(p), p)));
        check(&index, 50);
        assert!(index.runs()[0].level >= 2);
    }

    #[test]
    fn shapes_parse_and_refuse_what_cannot_work() {
        assert_eq!(
            "4, 2,2".parse::<IdIndexShape>(),
            Ok(IdIndexShape {
                tail_entries: 4,
                fanout: 2,
                block_entries: 2,
            })
        );
        for bad in [
            "",
            "4,2",
            "4,1,2",
            "0,2,2",
            "4,2,0",
            "4,2,100000",
            "a,2,2",
            "4,2,2,2",
        ] {
            assert!(bad.parse::<IdIndexShape>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn manifest_round_trips_and_rejects_gaps() {
        let runs = vec![
            Run {
                id: 4,
                level: 1,
                first: 1,
                last: 30,
            },
            Run {
                id: 7,
                level: 0,
                first: 31,
                last: 40,
            },
        ];
        assert_eq!(
            decode_manifest(&encode_manifest(&runs)).expect("decode"),
            runs
        );
        let gap = vec![
            runs[0],
            Run {
                first: 32,
                ..runs[1]
            },
        ];
        assert!(decode_manifest(&encode_manifest(&gap)).is_err());
        assert!(decode_manifest(&[0u8; 7]).is_err());
    }
}

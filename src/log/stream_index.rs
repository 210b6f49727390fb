//! The stream index: each stream's runs of revisions and positions, packed into few
//! sled entries, with the newest runs held in memory.
//!
//! An append's events have contiguous revisions and positions, so one run
//! (`first_revision`, `first_position`, `count`) indexes all of them. The `streams`
//! tree holds a stream's runs packed:
//!
//! - key: stream ‖ 0x00 ‖ first revision (u64 BE);
//! - value: one or more runs, each first position (u64 BE) ‖ count (u32 BE); the first
//!   run starts at the key's revision and each next one where the one before ends.
//!   At most [`crate::limits::STREAM_ENTRY_RUNS_MAX`] runs an entry. A format-3 entry
//!   (one run) is an entry of this format.
//!
//! The runs of the appends since the last checkpoint live in memory, in the tail; the
//! writer adds to it and readers look at it and at the tree under one lock. A
//! checkpoint freezes the tail ([`StreamIndex::freeze`]) and the writer moves the frozen
//! runs into the tree a few streams after each group ([`StreamIndex::flush_some`]),
//! extending each stream's last entry; the next checkpoint finishes what is left and
//! only then moves `indexed_through` to where the frozen runs ended. Opening and closing
//! the log move everything at once ([`StreamIndex::flush`]). One sled insert per stream
//! and checkpoint replaces one per append: the insert was most of the writer's sled work
//! for single-event appends, and small entries at random keys cost sled several times
//! their bytes on disk. What is in memory is not in sled, so after a crash the log
//! re-derives it from the events past `indexed_through` (see `store`).

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use sled::{IVec, Tree};

use super::FastMap;
use super::error::LogError;
use super::store::StreamRun;
use crate::limits;

/// Bytes of one packed run: first position (u64 BE) ‖ count (u32 BE).
const RUN_BYTES: usize = 12;

/// Streams moved from memory into the tree under one hold of the lock: readers wait
/// for at most this many entries' inserts.
const FLUSH_STREAMS_PER_LOCK: usize = 256;

/// Streams of frozen runs the writer moves into the tree after each group (~5 µs each,
/// measured): 64 000 streams frozen by a checkpoint move over the next 500 groups
/// instead of stalling the appends of one group for ~0.3 s.
pub const FLUSH_STREAMS_PER_GROUP: usize = 128;

/// Key of the stream index: stream ‖ 0x00 ‖ revision BE.
pub fn stream_key(stream: &str, revision: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 9);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key.extend_from_slice(&revision.to_be_bytes());
    key
}

/// The prefix of all of `stream`'s keys: stream ‖ 0x00.
fn stream_prefix(stream: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(stream.len() + 1);
    key.extend_from_slice(stream.as_bytes());
    key.push(0);
    key
}

/// Value of a stream index entry of one run: first position BE ‖ count BE.
pub fn stream_value(first_position: u64, count: u32) -> [u8; 12] {
    let mut value = [0u8; RUN_BYTES];
    value[..8].copy_from_slice(&first_position.to_be_bytes());
    value[8..].copy_from_slice(&count.to_be_bytes());
    value
}

/// The value of an entry holding `runs` (which continue one another).
pub fn entry_value(runs: &[StreamRun]) -> Vec<u8> {
    let mut value = Vec::with_capacity(runs.len() * RUN_BYTES);
    for run in runs {
        value.extend_from_slice(&stream_value(run.first_position, run.count));
    }
    value
}

/// The stream-name bytes of a stream index key (`stream ‖ 0x00 ‖ revision u64 BE`), or
/// `None` if the key does not have that shape.
pub fn stream_key_name(key: &[u8]) -> Option<&[u8]> {
    let name_len = key
        .len()
        .checked_sub(9)
        .filter(|n| *n > 0 && key[*n] == 0)?;
    Some(&key[..name_len])
}

/// The first revision of a stream index key (its last 8 bytes; the caller checked its
/// shape).
fn key_revision(key: &[u8]) -> u64 {
    let mut revision = [0u8; 8];
    revision.copy_from_slice(&key[key.len() - 8..]);
    u64::from_be_bytes(revision)
}

/// The runs of an entry whose first run starts at `first_revision`, each next one where
/// the one before ends. Errors on a value that is not a whole, non-zero number of runs.
pub fn entry_runs(
    first_revision: u64,
    value: &[u8],
) -> Result<impl Iterator<Item = StreamRun> + '_, LogError> {
    if value.is_empty() || !value.len().is_multiple_of(RUN_BYTES) {
        return Err(LogError::Corrupt(format!(
            "stream index entry of {} bytes",
            value.len()
        )));
    }
    let mut next_revision = first_revision;
    Ok(value.chunks_exact(RUN_BYTES).map(move |bytes| {
        let mut position = [0u8; 8];
        position.copy_from_slice(&bytes[..8]);
        let mut count = [0u8; 4];
        count.copy_from_slice(&bytes[8..]);
        let run = StreamRun {
            first_revision: next_revision,
            first_position: u64::from_be_bytes(position),
            count: u32::from_be_bytes(count),
        };
        next_revision = next_revision.saturating_add(u64::from(run.count));
        run
    }))
}

/// Decodes a stream index entry into (stream name, its runs).
pub fn decode_stream_entry(key: &[u8], value: &[u8]) -> Result<(String, Vec<StreamRun>), LogError> {
    let Some(name) = stream_key_name(key) else {
        return Err(LogError::Corrupt("malformed stream index key".into()));
    };
    let stream = std::str::from_utf8(name)
        .map_err(|_| LogError::Corrupt("stream index key is not UTF-8".into()))?
        .to_owned();
    let runs = entry_runs(key_revision(key), value)?.collect();
    Ok((stream, runs))
}

/// The revision after `run`'s last.
fn run_end(run: &StreamRun) -> u64 {
    run.first_revision.saturating_add(u64::from(run.count))
}

/// Adds `run` after `runs`' last, merging the two when they are contiguous in positions
/// too (an append right after the stream's previous one).
fn push_run(runs: &mut Vec<StreamRun>, run: StreamRun) {
    if let Some(last) = runs.last_mut()
        && run_end(last) == run.first_revision
        && last.first_position.saturating_add(u64::from(last.count)) == run.first_position
        && let Some(count) = last.count.checked_add(run.count)
    {
        last.count = count;
        return;
    }
    runs.push(run);
}

/// Runs not in the tree yet, by stream.
#[derive(Default)]
struct Runs {
    by_stream: FastMap<Box<str>, Vec<StreamRun>>,
    runs: usize,
}

impl Runs {
    fn push(&mut self, stream: &str, run: StreamRun) {
        let runs = match self.by_stream.get_mut(stream) {
            Some(runs) => runs,
            None => self.by_stream.entry(stream.into()).or_default(),
        };
        let before = runs.len();
        push_run(runs, run);
        self.runs += runs.len() - before;
    }

    fn of(&self, stream: &str) -> &[StreamRun] {
        self.by_stream.get(stream).map_or(&[][..], Vec::as_slice)
    }
}

/// The runs not in the tree yet: `active` takes the appends since the last checkpoint;
/// `frozen`, the runs the last checkpoint froze, is moving into the tree a few streams at
/// a time (`pending`, in name order). Every run of `frozen` precedes its stream's runs in
/// `active`.
#[derive(Default)]
struct Tail {
    active: Runs,
    frozen: Runs,
    pending: std::collections::VecDeque<Box<str>>,
}

impl Tail {
    /// The first revision held in memory for `stream` (frozen, then active).
    fn first_revision(&self, stream: &str) -> Option<u64> {
        self.frozen
            .of(stream)
            .first()
            .or_else(|| self.active.of(stream).first())
            .map(|r| r.first_revision)
    }

    /// `stream`'s runs in memory, in revision order.
    fn runs_of<'a>(&'a self, stream: &str) -> impl Iterator<Item = &'a StreamRun> {
        self.frozen
            .of(stream)
            .iter()
            .chain(self.active.of(stream).iter())
    }
}

/// The stream index: the `streams` tree and the runs not in it yet.
pub struct StreamIndex {
    /// The `streams` tree (packed entries, see the module docs).
    pub tree: Tree,
    tail: RwLock<Tail>,
}

impl StreamIndex {
    /// The index over `tree`, with nothing in memory.
    pub fn new(tree: Tree) -> Self {
        Self {
            tree,
            tail: RwLock::new(Tail::default()),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Tail> {
        self.tail.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tail> {
        self.tail.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds appended runs (stream, first revision, first position, count) to the tail.
    /// The writer calls it for each group; a run continues its stream.
    pub fn push<'a>(&self, runs: impl IntoIterator<Item = (&'a str, u64, u64, u32)>) {
        let mut tail = self.write();
        for (stream, first_revision, first_position, count) in runs {
            tail.active.push(
                stream,
                StreamRun {
                    first_revision,
                    first_position,
                    count,
                },
            );
        }
    }

    /// Runs taken since the last freeze (after merging contiguous ones): the writer
    /// checkpoints when there are `LogConfig::checkpoint_runs` (at most
    /// [`limits::STREAM_TAIL_RUNS_MAX`]).
    pub fn tail_runs(&self) -> usize {
        self.read().active.runs
    }

    /// Runs held in memory, taken or frozen: none once [`StreamIndex::flush`] returned.
    pub fn runs_in_memory(&self) -> usize {
        let tail = self.read();
        tail.active.runs + tail.frozen.runs
    }

    /// Calls `f` with each stream name held in memory (for the stream filter's scan,
    /// which reads them before the tree: a stream moved into the tree meanwhile is then
    /// seen in one of the two).
    pub fn for_each_tail_stream(&self, mut f: impl FnMut(&str)) {
        let tail = self.read();
        for name in tail
            .frozen
            .by_stream
            .keys()
            .chain(tail.active.by_stream.keys())
        {
            f(name);
        }
    }

    /// The last entry of `stream` in the tree: its key's revision and value.
    fn last_entry(&self, stream: &str) -> Result<Option<(u64, IVec)>, LogError> {
        match self.tree.scan_prefix(stream_prefix(stream)).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry?;
                if stream_key_name(&key).is_none() {
                    return Err(LogError::Corrupt("malformed stream index key".into()));
                }
                Ok(Some((key_revision(&key), value)))
            }
        }
    }

    /// The last run of `stream`, if the stream exists.
    pub fn last_run(&self, stream: &str) -> Result<Option<StreamRun>, LogError> {
        let tail = self.read();
        if let Some(run) = tail.runs_of(stream).last() {
            return Ok(Some(*run));
        }
        match self.last_entry(stream)? {
            None => Ok(None),
            Some((revision, value)) => Ok(entry_runs(revision, &value)?.last()),
        }
    }

    /// The run of `stream` holding `revision`, if the stream reaches it.
    pub fn run_holding(&self, stream: &str, revision: u64) -> Result<Option<StreamRun>, LogError> {
        let holds = |run: &StreamRun| run.first_revision <= revision && revision < run_end(run);
        let tail = self.read();
        if tail
            .first_revision(stream)
            .is_some_and(|first| first <= revision)
        {
            return Ok(tail.runs_of(stream).find(|r| holds(r)).copied());
        }
        let entry = self
            .tree
            .range(stream_prefix(stream)..=stream_key(stream, revision))
            .next_back()
            .transpose()?;
        let Some((key, value)) = entry else {
            return Ok(None);
        };
        Ok(entry_runs(key_revision(&key), &value)?.find(holds))
    }

    /// Calls `f` with `stream`'s runs in revision order, starting with the run holding
    /// `lower` (or the first after it), until `f` returns false or the runs end. The
    /// tree's entries and the runs in memory are read under one hold of the lock, so
    /// runs moving into the tree are never shown twice or hidden.
    pub fn for_each_run_from(
        &self,
        stream: &str,
        lower: u64,
        mut f: impl FnMut(StreamRun) -> bool,
    ) -> Result<(), LogError> {
        let tail = self.read();
        if lower < tail.first_revision(stream).unwrap_or(u64::MAX) {
            let prefix = stream_prefix(stream);
            let start = self
                .tree
                .range(prefix.clone()..=stream_key(stream, lower))
                .next_back()
                .transpose()?
                .map_or_else(|| IVec::from(prefix.as_slice()), |(key, _)| key);
            for entry in self.tree.range(start..) {
                let (key, value) = entry?;
                if !key.starts_with(&prefix) || stream_key_name(&key).is_none() {
                    break;
                }
                for run in entry_runs(key_revision(&key), &value)? {
                    if run_end(&run) > lower && !f(run) {
                        return Ok(());
                    }
                }
            }
        }
        for run in tail.runs_of(stream) {
            if run_end(run) > lower && !f(*run) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Indexes `stream`@`revision` at `position` again (opening the log after a crash
    /// re-derives what the index lacks). A revision past the stream's runs in the tree
    /// goes to the tail like an append's; one the tree should hold between its entries
    /// (damage, not a crash) gets an entry of its own, as every run had in format 3.
    pub fn repair(&self, stream: &str, revision: u64, position: u64) -> Result<(), LogError> {
        let run = StreamRun {
            first_revision: revision,
            first_position: position,
            count: 1,
        };
        let mut tail = self.write();
        if tail.first_revision(stream).is_none() {
            let tree_end = match self.last_entry(stream)? {
                None => 0,
                Some((first, value)) => {
                    entry_runs(first, &value)?.last().map_or(0, |r| run_end(&r))
                }
            };
            if revision < tree_end {
                self.tree
                    .insert(stream_key(stream, revision), &stream_value(position, 1))?;
                return Ok(());
            }
        }
        tail.active.push(stream, run);
        Ok(())
    }

    /// Moves what is still frozen into the tree, then freezes the runs taken so far, to
    /// be moved by [`StreamIndex::flush_some`] while new appends go on: the writer calls
    /// it at a checkpoint. Returns the entries written for the runs frozen before.
    pub fn freeze(&self) -> Result<u64, LogError> {
        let written = self.flush_some(usize::MAX)?;
        // Readers wait only for the swap; the names are listed and sorted under a read
        // hold (only the writer, which is here, moves frozen runs).
        {
            let mut tail = self.write();
            tail.frozen = std::mem::take(&mut tail.active);
        }
        let mut names: Vec<Box<str>> = self.read().frozen.by_stream.keys().cloned().collect();
        names.sort_unstable();
        self.write().pending = names.into();
        Ok(written)
    }

    /// Moves every run in memory into the tree (frozen first, then the rest), as a
    /// checkpoint that leaves nothing in memory does (opening and closing the log). Not
    /// durable by itself: the caller flushes sled before it moves `indexed_through`.
    /// Returns the entries written.
    pub fn flush(&self) -> Result<u64, LogError> {
        Ok(self.freeze()? + self.flush_some(usize::MAX)?)
    }

    /// True while frozen runs wait to move into the tree.
    #[cfg(test)]
    fn flushing(&self) -> bool {
        !self.read().pending.is_empty()
    }

    /// Moves up to `streams` pending streams' frozen runs into the tree, in name order (so
    /// sled's inserts walk its leaves once), [`FLUSH_STREAMS_PER_LOCK`] under one hold of
    /// the lock. Each stream's runs extend its last entry (up to
    /// [`limits::STREAM_ENTRY_RUNS_MAX`] runs an entry), then go to new entries. The
    /// writer calls it after each group, so a checkpoint's moves are spread over the
    /// groups after it instead of stalling every append at once. Returns the entries
    /// written.
    pub fn flush_some(&self, streams: usize) -> Result<u64, LogError> {
        let mut written = 0u64;
        let mut left = streams;
        while left > 0 {
            let mut tail = self.write();
            if tail.pending.is_empty() {
                break;
            }
            for _ in 0..FLUSH_STREAMS_PER_LOCK.min(left) {
                let Some(name) = tail.pending.pop_front() else {
                    break;
                };
                left -= 1;
                let Some(runs) = tail.frozen.by_stream.remove(&name) else {
                    continue;
                };
                match self.extend_stream(&name, &runs) {
                    Ok(entries) => {
                        tail.frozen.runs -= runs.len();
                        written += entries;
                    }
                    Err(error) => {
                        // Keep the stream's runs frozen, first in line for the next try
                        // (`Log::shutdown` checkpoints again after the writer failed).
                        tail.frozen.by_stream.insert(name.clone(), runs);
                        tail.pending.push_front(name);
                        return Err(error);
                    }
                }
            }
        }
        Ok(written)
    }

    /// Writes `runs` (from the tail) after `stream`'s last entry in the tree. Returns the
    /// entries written. Runs the tree already holds are skipped: a move cut short by an
    /// error after some of a stream's entries were written is tried again whole.
    fn extend_stream(&self, stream: &str, runs: &[StreamRun]) -> Result<u64, LogError> {
        let Some(first) = runs.first() else {
            return Ok(0);
        };
        // A stream's revision-0 run has nothing before it to read. Otherwise the last
        // entry is extended when the runs continue it; a last entry that does not decode,
        // or that the runs do not continue (damage verify reports), is left as it is and
        // the runs start entries of their own.
        let held: Vec<StreamRun> = if first.first_revision == 0 {
            Vec::new()
        } else {
            match self.last_entry(stream)? {
                Some((revision, value)) => entry_runs(revision, &value)
                    .map(Iterator::collect)
                    .unwrap_or_default(),
                None => Vec::new(),
            }
        };
        let tree_end = held.last().map_or(0, run_end);
        let runs = &runs[runs.iter().take_while(|r| run_end(r) <= tree_end).count()..];
        let Some(first) = runs.first() else {
            return Ok(0);
        };
        let last = (tree_end == first.first_revision && held.len() < limits::STREAM_ENTRY_RUNS_MAX)
            .then_some(held);
        let mut pending = last.unwrap_or_default();
        let mut written = 0u64;
        for run in runs {
            if pending.len() >= limits::STREAM_ENTRY_RUNS_MAX {
                self.write_entry(stream, &pending)?;
                written += 1;
                pending.clear();
            }
            push_run(&mut pending, *run);
        }
        if !pending.is_empty() {
            self.write_entry(stream, &pending)?;
            written += 1;
        }
        Ok(written)
    }

    fn write_entry(&self, stream: &str, runs: &[StreamRun]) -> Result<(), LogError> {
        let first = runs.first().map_or(0, |r| r.first_revision);
        self.tree
            .insert(stream_key(stream, first), entry_value(runs))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(first_revision: u64, first_position: u64, count: u32) -> StreamRun {
        StreamRun {
            first_revision,
            first_position,
            count,
        }
    }

    fn index() -> (tempfile::TempDir, StreamIndex) {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::Config::new()
            .path(dir.path())
            .temporary(true)
            .open()
            .expect("sled");
        let index = StreamIndex::new(db.open_tree("streams").expect("tree"));
        (dir, index)
    }

    /// Every run of `stream` from revision 0.
    fn runs_of(index: &StreamIndex, stream: &str) -> Vec<StreamRun> {
        let mut runs = Vec::new();
        index
            .for_each_run_from(stream, 0, |r| {
                runs.push(r);
                true
            })
            .expect("runs");
        runs
    }

    #[test]
    fn an_entry_value_decodes_to_its_runs() {
        let runs = vec![run(5, 10, 2), run(7, 40, 1), run(8, 41, 3)];
        let value = entry_value(&runs);
        assert_eq!(value.len(), 36);
        let (name, decoded) =
            decode_stream_entry(&stream_key("customer-1", 5), &value).expect("decodes");
        assert_eq!(name, "customer-1");
        assert_eq!(decoded, runs);
        for bad in [&[][..], &value[..13]] {
            assert!(decode_stream_entry(&stream_key("customer-1", 5), bad).is_err());
        }
        assert!(decode_stream_entry(b"no-separator", &value).is_err());
    }

    #[test]
    fn contiguous_appends_merge_into_one_run() {
        let mut runs = Vec::new();
        push_run(&mut runs, run(0, 1, 2));
        push_run(&mut runs, run(2, 3, 1));
        push_run(&mut runs, run(3, 9, 1));
        assert_eq!(runs, vec![run(0, 1, 3), run(3, 9, 1)]);
        // A count that would overflow starts a new run.
        let mut full = vec![run(0, 1, u32::MAX)];
        push_run(
            &mut full,
            run(u64::from(u32::MAX), 1 + u64::from(u32::MAX), 1),
        );
        assert_eq!(full.len(), 2);
    }

    #[test]
    fn reads_see_the_same_runs_while_they_move_into_the_tree() {
        let (_dir, index) = index();
        // Three streams, interleaved, over several freezes whose runs move a stream at a
        // time while appends go on; one stream outgrows an entry.
        let mut position = 1u64;
        let mut revisions = [0u64; 3];
        let names = ["customer-1", "customer-10", "deal-1"];
        let mut expected: Vec<Vec<StreamRun>> = vec![Vec::new(); 3];
        for round in 0..(limits::STREAM_ENTRY_RUNS_MAX as u64 * 3) {
            for (slot, name) in names.iter().enumerate() {
                if slot == 2 && round % 5 != 0 {
                    continue;
                }
                let count = 1 + (round % 3) as u32;
                let r = run(revisions[slot], position, count);
                index.push([(*name, r.first_revision, r.first_position, r.count)]);
                push_run(&mut expected[slot], r);
                revisions[slot] += u64::from(count);
                position += u64::from(count);
            }
            match round % 7 {
                6 => index.freeze().expect("freeze"),
                _ => index.flush_some(1).expect("flush some"),
            };
            if round % 31 == 30 {
                index.flush().expect("flush");
                assert_eq!(index.runs_in_memory(), 0);
                assert!(!index.flushing());
            }
            for (slot, name) in names.iter().enumerate() {
                assert_eq!(
                    runs_of(&index, name),
                    expected[slot],
                    "round {round}: {name}"
                );
            }
        }
        for (slot, name) in names.iter().enumerate() {
            assert_eq!(runs_of(&index, name), expected[slot], "{name}");
            assert_eq!(
                index.last_run(name).expect("last"),
                expected[slot].last().copied()
            );
            for r in &expected[slot] {
                for revision in r.first_revision..run_end(r) {
                    assert_eq!(index.run_holding(name, revision).expect("run"), Some(*r));
                }
            }
            assert_eq!(index.run_holding(name, revisions[slot]).expect("run"), None);
            // A read from the middle starts at the run holding its revision.
            let middle = revisions[slot] / 2;
            let mut first = None;
            index
                .for_each_run_from(name, middle, |r| {
                    first = Some(r);
                    false
                })
                .expect("runs");
            assert_eq!(first, index.run_holding(name, middle).expect("run"));
        }
        index.flush().expect("flush");
        // No entry holds more than the limit; the long stream took several.
        let mut entries = 0;
        for entry in index.tree.scan_prefix(stream_prefix("customer-1")) {
            let (key, value) = entry.expect("entry");
            let (_, runs) = decode_stream_entry(&key, &value).expect("decodes");
            assert!(!runs.is_empty() && runs.len() <= limits::STREAM_ENTRY_RUNS_MAX);
            entries += 1;
        }
        assert!(entries > 1, "{entries}");
        assert_eq!(index.last_run("customer-2").expect("absent"), None);
        assert_eq!(index.run_holding("customer-2", 0).expect("absent"), None);
    }

    #[test]
    fn a_move_tried_again_writes_each_run_once() {
        let (_dir, index) = index();
        index.push([("customer-1", 0, 1, 1), ("customer-1", 1, 3, 1)]);
        index.flush().expect("flush");
        // 40 more runs: they fill the entry at revision 0 and start one at 32.
        let runs: Vec<StreamRun> = (0..40).map(|k| run(2 + k, 10 + 2 * k, 1)).collect();
        assert_eq!(index.extend_stream("customer-1", &runs).expect("move"), 2);
        let once = runs_of(&index, "customer-1");
        assert_eq!(once.len(), 42);
        // Tried again whole after all of it was written: nothing is written twice.
        assert_eq!(index.extend_stream("customer-1", &runs).expect("again"), 0);
        assert_eq!(runs_of(&index, "customer-1"), once);
        // Tried again after the second entry was lost: only it is written again.
        index
            .tree
            .remove(stream_key("customer-1", 32))
            .expect("remove");
        assert_eq!(index.extend_stream("customer-1", &runs).expect("again"), 1);
        assert_eq!(runs_of(&index, "customer-1"), once);
        assert_eq!(
            index.tree.scan_prefix(stream_prefix("customer-1")).count(),
            2
        );
    }

    #[test]
    fn repair_extends_the_tail_or_fills_a_hole() {
        let (_dir, index) = index();
        index.push([("customer-1", 0, 1, 2), ("customer-1", 2, 5, 2)]);
        index.flush().expect("flush");
        // A crash lost what followed: revisions 4 and 5 come back through the tail.
        index.repair("customer-1", 4, 8).expect("repair");
        index.repair("customer-1", 5, 9).expect("repair");
        assert_eq!(index.tail_runs(), 1);
        assert_eq!(
            runs_of(&index, "customer-1"),
            vec![run(0, 1, 2), run(2, 5, 2), run(4, 8, 2)]
        );
        // A hole in the tree gets an entry of its own.
        index
            .tree
            .insert(stream_key("deal-1", 0), &stream_value(1, 1))
            .expect("insert");
        index
            .tree
            .insert(stream_key("deal-1", 2), &stream_value(3, 1))
            .expect("insert");
        index.repair("deal-1", 1, 2).expect("repair");
        assert_eq!(index.tail_runs(), 1, "not in the tail");
        assert_eq!(
            runs_of(&index, "deal-1"),
            vec![run(0, 1, 1), run(1, 2, 1), run(2, 3, 1)]
        );
        index.flush().expect("flush");
        assert_eq!(
            runs_of(&index, "customer-1"),
            vec![run(0, 1, 2), run(2, 5, 2), run(4, 8, 2)]
        );
        // Packed into the entry at revision 0.
        assert_eq!(
            index.tree.scan_prefix(stream_prefix("customer-1")).count(),
            1
        );
    }
}

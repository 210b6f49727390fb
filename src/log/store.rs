//! The sled trees of the log and every synchronous read over them.
//!
//! Trees (one `sled::Db`):
//! - `events`: chunk first position (u64 BE) → chunk of contiguous events (see `record`).
//!   The truth: everything else is derived from it.
//! - `streams`: the stream index, each stream's runs (an append's events have contiguous
//!   revisions and positions) packed into entries of many runs, the runs since the last
//!   checkpoint held in memory (see `stream_index`). A stream's head is its last run.
//! - `id_runs`: the event id index, packed into sorted runs of many ids per sled entry
//!   (see `id_index`); the newest ids are held in memory and re-read from the events
//!   when the log opens.
//! - `meta`: `format_version` (u32 BE), `indexed_through` (u64 BE, a position up to
//!   which stream index entries are known to be durable; moved at checkpoints) and
//!   `id_runs` (the id index's manifest).
//!
//! Beside sled (`dir/sled/`) lives the journal (`dir/wal`, see `wal`): a group commit is
//! durable once its chunks are journaled; sled is made durable at checkpoints.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sled::{IVec, Tree};

use super::error::{LogError, ReadError};
use super::id_index::{IdIndex, IdIndexShape};
use super::record::{
    CategoryMask, ChunkLayout, Hash, LoggedEvent, ZERO_HASH, category_bit, parse_chunk,
    parse_chunk_known,
};
use super::stream_index::StreamIndex;
use super::stream_name::category;
use super::wal::{ChunkEntry, Wal};

/// The on-disk format this build writes and reads. 5: journal records carry an epoch and
/// a sequence number (an older build would stop at them, and so not replay what they
/// hold; a format-3 or -4 directory opens as it is, its journal read the old way once).
/// 4: a stream index entry packs many
/// runs (format 3 had one run an entry, which is a valid format-4 entry, so a format-3
/// directory opens as it is). 3: the event id index is packed
/// into runs (`id_runs` and its manifest) instead of one `event_ids` entry per event.
/// 2: customer events carry their personal data sealed (1 had it in clear; the envelope
/// and chunk layout are unchanged, but a version-1 directory's customer payloads would
/// not decode as today's types).
pub const FORMAT_VERSION: u32 = 5;

/// The older formats this build opens as they are and moves to [`FORMAT_VERSION`]: 3's
/// one-run stream index entries are entries of this format, 4's journal records are
/// read the old way (no journal epoch is recorded yet); older builds must not open a
/// directory once it holds packed entries or journal records with epochs.
pub const COMPATIBLE_FORMAT_VERSIONS: [u32; 2] = [3, 4];

/// The older format this build converts when it opens it: version 2 differs in its id
/// index, which opening packs into runs (and in its stream index as format 3 does).
pub const CONVERTED_FORMAT_VERSION: u32 = 2;

const FORMAT_VERSION_KEY: &[u8] = b"format_version";
const INDEXED_THROUGH_KEY: &[u8] = b"indexed_through";
/// The journal's epoch, moved on by every checkpoint ([`super::wal`]); absent in a
/// directory no format-5 build has checkpointed yet.
const JOURNAL_EPOCH_KEY: &[u8] = b"journal_epoch";

/// Last position and chain hash of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Head {
    /// Last position, 0 for an empty log.
    pub position: u64,
    /// Chain hash at `position`, zeros for an empty log.
    pub hash: Hash,
}

/// The last event of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHead {
    /// Revision of the stream's last event.
    pub revision: u64,
    /// Global position of the stream's last event.
    pub position: u64,
}

/// A contiguous run of a stream's events: revisions `first_revision..first_revision+count`
/// at positions `first_position..first_position+count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamRun {
    /// First revision of the run.
    pub first_revision: u64,
    /// Position of the first revision.
    pub first_position: u64,
    /// Events in the run.
    pub count: u32,
}

/// Which events a read returns: stream prefixes OR-ed, event types OR-ed, the two AND-ed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadFilter {
    /// Stream name prefixes; empty constrains nothing.
    pub stream_prefixes: Vec<String>,
    /// Event type names; empty constrains nothing.
    pub event_types: Vec<String>,
}

impl ReadFilter {
    /// True when the filter constrains nothing.
    pub fn is_empty(&self) -> bool {
        self.stream_prefixes.is_empty() && self.event_types.is_empty()
    }

    /// The stream categories every matching event's stream is in, when the prefixes
    /// settle them: each prefix holds a `-`, so a stream that starts with it has the
    /// prefix's part before the `-` as its category. `None` when there are no prefixes or
    /// one has no `-` (it could match streams of many categories).
    pub fn categories(&self) -> Option<CategoryMask> {
        if self.stream_prefixes.is_empty() {
            return None;
        }
        self.stream_prefixes.iter().try_fold(0, |mask, prefix| {
            let (category, _) = prefix.split_once('-')?;
            Some(mask | category_bit(category))
        })
    }

    /// True when `event` passes the filter.
    pub fn matches(&self, stream: &str, event_type: &str) -> bool {
        (self.stream_prefixes.is_empty()
            || self
                .stream_prefixes
                .iter()
                .any(|p| stream.starts_with(p.as_str())))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// One page of a read.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// The events, in read order.
    pub events: Vec<LoggedEvent>,
    /// True when nothing more exists in the read direction right now.
    pub end_reached: bool,
    /// Where the next page starts (see DESIGN §5 fine print on paging).
    pub next_cursor: u64,
}

/// One page of a read left in its chunks: each event as the parsed chunk that holds it
/// and its index there, in read order, decoded (or borrowed) by the reader.
#[derive(Clone, Debug, Default)]
pub struct ChunkPage {
    /// The events, in read order (descending for a backward stream page).
    pub events: Vec<(Arc<ParsedChunk>, usize)>,
    /// True when nothing more exists right now.
    pub end_reached: bool,
    /// Where the next page starts.
    pub next_cursor: u64,
}

impl ChunkPage {
    /// The stored bytes of the page's events (what a page's byte bound counts).
    pub fn stored_bytes(&self) -> usize {
        self.events
            .iter()
            .map(|(chunk, index)| chunk.layout.spans[*index].1)
            .sum()
    }

    /// The page's events, decoded (each checked to claim its position).
    pub fn decode(&self) -> Result<Vec<LoggedEvent>, LogError> {
        self.events
            .iter()
            .map(|(chunk, index)| chunk.layout.decode(&chunk.value, *index))
            .collect()
    }

    /// The same page with its events decoded.
    pub fn into_page(self) -> Result<Page, LogError> {
        Ok(Page {
            events: self.decode()?,
            end_reached: self.end_reached,
            next_cursor: self.next_cursor,
        })
    }
}

/// What opening a directory recovered after a crash (or a stop without its final
/// checkpoint): the work a server's start does before it serves, which `verify` (opening
/// the directory the same way) reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Events the journal held (acknowledged) that sled lacked, written to sled.
    pub journal_events: u64,
    /// Events past the index watermark, whose stream index entries were checked against
    /// the events (the truth).
    pub reindexed_events: u64,
    /// Of those, entries that were missing or wrong and were re-derived.
    pub index_entries_repaired: u64,
}

impl Recovery {
    /// True when opening found nothing to recover.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The sled database of a log and its trees.
pub struct Store {
    /// What opening this directory recovered.
    pub recovered: Recovery,
    /// The database (kept for `flush`).
    pub db: sled::Db,
    /// `events` tree.
    pub events: Tree,
    /// The stream index (`streams` tree and its in-memory tail).
    pub streams: StreamIndex,
    /// The event id index.
    pub ids: IdIndex,
    /// `meta` tree.
    pub meta: Tree,
    db_file: File,
    /// sled's directory of large values (`sled/blobs`): one file each, which sled writes
    /// but never syncs.
    blobs_dir: std::path::PathBuf,
    /// The newest blob file (sled names them by log sequence number) a sync has made
    /// durable; later ones are synced at the next checkpoint.
    blobs_synced: Mutex<i64>,
    /// The journal; only the writer appends to it.
    pub wal: Mutex<Wal>,
    /// The head when the stream index's runs were last frozen (or all written):
    /// `indexed_through` moves here once they are in the tree.
    frozen_through: std::sync::atomic::AtomicU64,
    /// The chunks written or parsed last ([`RECENT_CHUNKS`]).
    recent: Mutex<RecentChunks>,
    /// The chain hashes of many more chunks ([`ChunkHashes`]).
    hashes: Mutex<ChunkHashes>,
}

/// The chain hashes of the chunks written or parsed last, by first position, oldest
/// first out past [`crate::limits::CHUNK_HASH_CACHE_BYTES`]: a chunk parsed again after
/// it left [`RecentChunks`] is decompressed but not re-hashed ([`parse_chunk_known`]
/// takes these only if the chunk's stored last hash agrees).
struct ChunkHashes {
    by_first: super::FastMap<u64, Box<[Hash]>>,
    order: VecDeque<u64>,
    /// Bytes held ([`ChunkHashes::cost`] of each chunk kept), and at most.
    held: usize,
    capacity: usize,
}

impl Default for ChunkHashes {
    fn default() -> Self {
        Self::with_capacity(crate::limits::CHUNK_HASH_CACHE_BYTES)
    }
}

impl ChunkHashes {
    /// Memory one chunk's entry takes: its hashes, and its key, map slot, queue slot and
    /// allocation, counted as a round 100 bytes.
    fn cost(hashes: usize) -> usize {
        hashes * std::mem::size_of::<Hash>() + 100
    }

    fn with_capacity(capacity: usize) -> Self {
        Self {
            by_first: Default::default(),
            order: VecDeque::new(),
            held: 0,
            capacity,
        }
    }

    /// The hashes of the chunk under `first`, if kept.
    fn get(&self, first: u64) -> Option<&[Hash]> {
        self.by_first.get(&first).map(|h| &h[..])
    }

    /// Keeps `hashes` under `first` (unless some are kept there), dropping the oldest
    /// past the limit (a chunk larger than the whole limit is not kept).
    fn remember(&mut self, first: u64, hashes: &[Hash]) {
        let cost = Self::cost(hashes.len());
        if hashes.is_empty() || cost > self.capacity || self.by_first.contains_key(&first) {
            return;
        }
        while self.held + cost > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(gone) = self.by_first.remove(&old) {
                self.held -= Self::cost(gone.len());
            }
        }
        self.held += cost;
        self.order.push_back(first);
        self.by_first.insert(first, hashes.into());
    }
}

/// Chunks a [`Store`] keeps parsed (decompressed, with their chain hashes) for the next
/// reader: every projection runner and subscriber following the head reads the same fresh
/// chunks. The writer puts each chunk it writes here with the layout it computed while
/// packing it, so following the head costs no decompression and no re-hashing (the
/// runners' parsing was ~10 % of the server's CPU under batched appends); a chunk read
/// from disk is parsed and checked once for all readers. Chunks are immutable once
/// written (keyed by their first position), so a parsed copy never goes stale. 512 chunks
/// of ~8 KiB raw plus their layouts: ~6 MiB, about the chunks of 12k events — several
/// group commits of batched appends, so a runner one group behind still finds its chunks.
pub const RECENT_CHUNKS: usize = 512;

/// Parsed chunks by first position, oldest first out.
#[derive(Default)]
struct RecentChunks {
    by_first: HashMap<u64, Arc<ParsedChunk>>,
    order: VecDeque<u64>,
}

impl RecentChunks {
    /// The parsed chunk under `first` whose stored value has `len` bytes.
    fn get(&self, first: u64, len: usize) -> Option<Arc<ParsedChunk>> {
        self.by_first
            .get(&first)
            .filter(|c| c.value.len() == len)
            .cloned()
    }

    /// Keeps `chunk` (unless one under its key is kept), dropping the oldest past
    /// [`RECENT_CHUNKS`].
    fn remember(&mut self, chunk: Arc<ParsedChunk>) {
        if self.by_first.contains_key(&chunk.first) {
            return;
        }
        while self.order.len() >= RECENT_CHUNKS {
            if let Some(old) = self.order.pop_front() {
                self.by_first.remove(&old);
            }
        }
        self.order.push_back(chunk.first);
        self.by_first.insert(chunk.first, chunk);
    }
}

/// A stored chunk with its layout: what was read, checked against the hash chain.
#[derive(Debug)]
pub struct ParsedChunk {
    /// Position of its first event (its key).
    pub first: u64,
    /// The stored value.
    pub value: IVec,
    /// Where each event lies, with its chain hash.
    pub layout: ChunkLayout,
}

/// Decodes a big-endian u64 value.
pub fn be_u64(bytes: &[u8]) -> Result<u64, LogError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| LogError::Corrupt("expected an 8-byte big-endian integer".into()))
}

fn map_open_error(dir: &Path, error: sled::Error) -> LogError {
    let text = error.to_string();
    if text.contains("lock")
        || text.contains("WouldBlock")
        || text.contains("temporarily unavailable")
    {
        LogError::Locked(dir.display().to_string())
    } else {
        LogError::Sled(error)
    }
}

impl Store {
    /// Opens (or creates) the log in `dir` with the default id index shape.
    pub fn open(dir: &Path) -> Result<Self, LogError> {
        Self::open_with(dir, IdIndexShape::default())
    }

    /// Opens (or creates) the log in `dir`: sled in `dir/sled`, the journal in
    /// `dir/wal`. Checks the format version (converting version 2), replays journal
    /// chunks sled lacks, re-derives stream index entries a crash left behind the events
    /// and reads the ids of the events past the id index's runs into its tail.
    pub fn open_with(dir: &Path, id_shape: IdIndexShape) -> Result<Self, LogError> {
        let sled_dir = dir.join("sled");
        std::fs::create_dir_all(&sled_dir)?;
        let db = sled::Config::new()
            .path(&sled_dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(512 * 1024 * 1024)
            .open()
            .map_err(|e| map_open_error(dir, e))?;
        let meta = db.open_tree("meta")?;
        let mut convert = false;
        match meta.get(FORMAT_VERSION_KEY)? {
            Some(bytes) => {
                let found = bytes
                    .as_ref()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| LogError::Corrupt("malformed format version".into()))?;
                convert = found == CONVERTED_FORMAT_VERSION;
                if found != FORMAT_VERSION && !convert {
                    if !COMPATIBLE_FORMAT_VERSIONS.contains(&found) {
                        return Err(LogError::UnsupportedFormat {
                            found,
                            supported: FORMAT_VERSION,
                        });
                    }
                    meta.insert(FORMAT_VERSION_KEY, &FORMAT_VERSION.to_be_bytes())?;
                    tracing::info!(
                        from = found,
                        to = FORMAT_VERSION,
                        "opened an older directory as it is; new stream index entries are packed and journal records carry epochs"
                    );
                }
            }
            None => {
                meta.insert(FORMAT_VERSION_KEY, &FORMAT_VERSION.to_be_bytes())?;
            }
        }
        // sled's flush ends in sync_file_range, which is not an fsync: checkpoints call
        // fdatasync on this handle after sled's flush so they survive power loss.
        let db_file = File::open(sled_dir.join("db"))?;
        // sled holds the directory lock now, so no other process has the journal open.
        let epoch = meta
            .get(JOURNAL_EPOCH_KEY)?
            .map(|bytes| be_u64(&bytes))
            .transpose()?;
        let (wal, journal) = Wal::open(&dir.join("wal"), epoch)?;
        for path in [dir, sled_dir.as_path()] {
            if let Ok(handle) = File::open(path) {
                // Persist the directory entries of the files just created, once.
                let _ = handle.sync_all();
            }
        }
        let mut store = Self {
            recovered: Recovery::default(),
            events: db.open_tree("events")?,
            streams: StreamIndex::new(db.open_tree("streams")?),
            ids: IdIndex::open(&db, meta.clone(), id_shape)?,
            meta,
            db,
            db_file,
            blobs_dir: sled_dir.join("blobs"),
            blobs_synced: Mutex::new(-1),
            wal: Mutex::new(wal),
            frozen_through: std::sync::atomic::AtomicU64::new(0),
            recent: Mutex::new(RecentChunks::default()),
            hashes: Mutex::new(ChunkHashes::default()),
        };
        let journal_events = store.replay_journal(journal)?;
        if convert {
            store.convert_format_2()?;
        }
        let (reindexed_events, index_entries_repaired) = store.repair_indices()?;
        store.recovered = Recovery {
            journal_events,
            reindexed_events,
            index_entries_repaired,
        };
        store.load_id_tail()?;
        store.checkpoint()?;
        Ok(store)
    }

    /// Packs a version-2 `event_ids` tree into the id index and moves the directory to
    /// this format. Its entries are complete up to `indexed_through`; later ones come
    /// from the events, like every tail. Safe to repeat after a crash part way.
    fn convert_format_2(&self) -> Result<(), LogError> {
        let old = self.db.open_tree("event_ids")?;
        let through = self.indexed_through()?;
        self.ids.convert_tree(&old, through)?;
        self.meta
            .insert(FORMAT_VERSION_KEY, &FORMAT_VERSION.to_be_bytes())?;
        self.sync()?;
        drop(old);
        self.db.drop_tree("event_ids")?;
        tracing::info!(
            through,
            from = CONVERTED_FORMAT_VERSION,
            to = FORMAT_VERSION,
            "converted the event id index to this format"
        );
        Ok(())
    }

    /// Puts the ids of the events past the id index's runs into its tail.
    fn load_id_tail(&self) -> Result<(), LogError> {
        let head = self.head()?;
        let through = self.ids.through();
        if through > head.position {
            return Err(LogError::Corrupt(format!(
                "the event id index covers positions up to {through}, past the head at {}",
                head.position
            )));
        }
        let mut position = through + 1;
        while position <= head.position {
            let page = self.read_all_forward(
                position,
                4_096,
                usize::MAX,
                &ReadFilter::default(),
                head.position,
            )?;
            self.ids.insert(
                page.events
                    .iter()
                    .map(|e| (e.event.event_id, e.event.position)),
            );
            if page.events.is_empty() {
                break;
            }
            position = page.next_cursor;
        }
        Ok(())
    }

    /// Puts journal chunks that sled does not have (it was not flushed before a crash)
    /// back into the events tree, checking that they continue the chain.
    fn replay_journal(&self, journal: Vec<ChunkEntry>) -> Result<u64, LogError> {
        let mut head = self.head()?;
        let mut replayed = 0u64;
        for (first, value) in journal {
            let layout = parse_chunk(first, &value)?;
            if layout.last_position() <= head.position {
                continue;
            }
            if first != head.position + 1 || layout.prev_hash != head.hash {
                return Err(LogError::Corrupt(format!(
                    "journal chunk at {first} does not continue the log at {}",
                    head.position
                )));
            }
            self.events.insert(first.to_be_bytes(), value)?;
            head = Head {
                position: layout.last_position(),
                hash: layout.last_hash(),
            };
            replayed += layout.len() as u64;
        }
        if replayed > 0 {
            tracing::info!(
                replayed,
                head = head.position,
                "replayed journaled events into sled"
            );
        }
        Ok(replayed)
    }

    /// Moves the stream index's tail into sled, makes everything written to sled durable
    /// (flush + fdatasync of its file) and empties the journal, whose content sled now
    /// holds.
    ///
    /// Callers guarantee that every event written so far is indexed (the writer calls it
    /// between groups), so the index watermark moves to the head here (and behind it in
    /// [`Store::checkpoint_incremental`]), and only at checkpoints: after a crash, the
    /// repair re-derives indices from the watermark on.
    pub fn checkpoint(&self) -> Result<(), LogError> {
        let started = std::time::Instant::now();
        let entries = self.streams.flush()?;
        let flushed = started.elapsed();
        let head = self.head()?.position;
        self.set_indexed_through(head)?;
        self.frozen_through
            .store(head, std::sync::atomic::Ordering::Relaxed);
        self.end_checkpoint(started, flushed, entries)
    }

    /// The writer's checkpoint while appends go on: like [`Store::checkpoint`], but the
    /// stream index runs taken since the last one are only frozen, and the writer moves
    /// them into the tree over the groups that follow. So `indexed_through` moves to
    /// where the runs frozen at the last checkpoint ended (all in the tree now), not to
    /// the head; after a crash, opening re-derives at most two checkpoints' worth.
    pub fn checkpoint_incremental(&self) -> Result<(), LogError> {
        use std::sync::atomic::Ordering;
        let started = std::time::Instant::now();
        // The runs frozen last time go into the tree first (usually the groups since
        // moved them all), so the watermark may move to where they ended.
        let entries = self.streams.freeze()?;
        let flushed = started.elapsed();
        self.set_indexed_through(self.frozen_through.load(Ordering::Relaxed))?;
        self.frozen_through
            .store(self.head()?.position, Ordering::Relaxed);
        self.end_checkpoint(started, flushed, entries)
    }

    /// The end of either checkpoint: sled made durable, the journal emptied, and a debug
    /// line with the stream index entries written and the time they took.
    fn end_checkpoint(
        &self,
        started: std::time::Instant,
        index_time: std::time::Duration,
        stream_entries: u64,
    ) -> Result<(), LogError> {
        // The next epoch is durable with the checkpoint before the journal starts over in
        // it: a crash in between leaves records of the old epoch, which sled holds.
        let epoch = self.wal.lock().expect("journal lock poisoned").epoch() + 1;
        self.meta.insert(JOURNAL_EPOCH_KEY, &epoch.to_be_bytes())?;
        self.sync()?;
        self.wal
            .lock()
            .expect("journal lock poisoned")
            .reset(epoch)?;
        tracing::debug!(
            stream_entries,
            index_ms = index_time.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "checkpoint"
        );
        Ok(())
    }

    /// Flushes sled and fdatasyncs its files: after this returns, every write so far is
    /// durable. The blob files first (values past a quarter of sled's segment, e.g. a
    /// chunk of a few 60 KiB events, live in a file each, which sled never syncs: a
    /// checkpoint that then emptied the journal left them the only, unsynced copy), then
    /// sled's main file, which points at them.
    pub fn sync(&self) -> Result<(), LogError> {
        self.db.flush()?;
        self.sync_blobs()?;
        self.db_file.sync_data()?;
        Ok(())
    }

    /// fdatasyncs the blob files written since the last sync, and their directory.
    fn sync_blobs(&self) -> Result<(), LogError> {
        let mut synced = self.blobs_synced.lock().unwrap_or_else(|e| e.into_inner());
        let entries = match std::fs::read_dir(&self.blobs_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let mut newest = *synced;
        for entry in entries {
            let entry = entry?;
            let Some(lsn) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<i64>().ok())
            else {
                continue;
            };
            if lsn <= *synced {
                continue;
            }
            match File::open(entry.path()) {
                Ok(file) => file.sync_data()?,
                // sled removed it (its value was replaced or deleted) since the listing.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error.into()),
            }
            newest = newest.max(lsn);
        }
        if newest > *synced {
            File::open(&self.blobs_dir)?.sync_all()?;
            *synced = newest;
        }
        Ok(())
    }

    /// The last position and hash, read from the last chunk.
    pub fn head(&self) -> Result<Head, LogError> {
        match self.events.last()? {
            None => Ok(Head {
                position: 0,
                hash: ZERO_HASH,
            }),
            Some((key, value)) => {
                let layout = parse_chunk(be_u64(&key)?, &value)?;
                Ok(Head {
                    position: layout.last_position(),
                    hash: layout.last_hash(),
                })
            }
        }
    }

    /// Position up to which the indices are known to be written.
    pub fn indexed_through(&self) -> Result<u64, LogError> {
        self.meta
            .get(INDEXED_THROUGH_KEY)?
            .map_or(Ok(0), |v| be_u64(&v))
    }

    /// Records that indices are written up to `position` (part of the writer's batch).
    pub fn set_indexed_through(&self, position: u64) -> Result<(), LogError> {
        self.meta
            .insert(INDEXED_THROUGH_KEY, &position.to_be_bytes())?;
        Ok(())
    }

    /// Re-derives the stream index runs of events past `indexed_through` (a crash loses
    /// the in-memory tail of the index, and can leave a checkpoint's moves half done).
    /// Returns how many events it checked and how many of their entries it re-derived.
    pub fn repair_indices(&self) -> Result<(u64, u64), LogError> {
        let head = self.head()?;
        let from = self.indexed_through()? + 1;
        if from > head.position {
            return Ok((0, 0));
        }
        let mut checked = 0;
        let mut repaired = 0;
        let mut position = from;
        while position <= head.position {
            let page = self.read_all_forward(
                position,
                1_000,
                usize::MAX,
                &ReadFilter::default(),
                head.position,
            )?;
            for logged in &page.events {
                let event = &logged.event;
                if self.stream_position(&event.stream, event.revision)? != Some(event.position) {
                    self.streams
                        .repair(&event.stream, event.revision, event.position)?;
                    repaired += 1;
                }
                checked += 1;
            }
            position = page.next_cursor;
            if page.events.is_empty() {
                break;
            }
        }
        self.set_indexed_through(head.position)?;
        tracing::warn!(
            checked,
            repaired,
            "checked the index entries past the last checkpoint against the events and re-derived those a crash left behind"
        );
        Ok((checked, repaired))
    }

    /// The chunk holding `position`: its key and value.
    /// The chunk stored under `first` (its `value` as read), parsed: from the recent
    /// chunks when a reader parsed it lately, else parsed now and, if `remember`,
    /// remembered. Reads of the whole log remember (followers read the same fresh chunks);
    /// point and stream reads, scattered over old chunks, only look.
    fn parsed(
        &self,
        first: u64,
        value: IVec,
        remember: bool,
    ) -> Result<Arc<ParsedChunk>, LogError> {
        let lock = || self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = lock().get(first, value.len()) {
            return Ok(found);
        }
        let hashes = || self.hashes.lock().unwrap_or_else(|e| e.into_inner());
        let known = hashes().get(first).map(<[Hash]>::to_vec);
        let computed = known.is_none();
        let layout = parse_chunk_known(first, &value, known)?;
        if computed {
            hashes().remember(first, &layout.hashes);
        }
        let parsed = Arc::new(ParsedChunk {
            first,
            value,
            layout,
        });
        if remember {
            lock().remember(parsed.clone());
        }
        Ok(parsed)
    }

    /// Stores the writer's freshly packed chunks in the events tree and keeps them parsed
    /// for the readers that follow the head (see [`RECENT_CHUNKS`]).
    pub fn insert_chunks(&self, chunks: Vec<ParsedChunk>) -> Result<(), LogError> {
        for chunk in &chunks {
            self.events
                .insert(chunk.first.to_be_bytes(), chunk.value.clone())?;
        }
        {
            let mut hashes = self.hashes.lock().unwrap_or_else(|e| e.into_inner());
            for chunk in &chunks {
                hashes.remember(chunk.first, &chunk.layout.hashes);
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        for chunk in chunks {
            recent.remember(Arc::new(chunk));
        }
        Ok(())
    }

    fn chunk_at(&self, position: u64) -> Result<Option<(u64, IVec)>, LogError> {
        match self.events.range(..=position.to_be_bytes()).next_back() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry?;
                Ok(Some((be_u64(&key)?, value)))
            }
        }
    }

    /// The event at `position`, if it exists.
    pub fn event_at(&self, position: u64) -> Result<Option<LoggedEvent>, LogError> {
        if position == 0 {
            return Ok(None);
        }
        let Some((first, value)) = self.chunk_at(position)? else {
            return Ok(None);
        };
        let chunk = self.parsed(first, value, false)?;
        let index = (position - first) as usize;
        if index >= chunk.layout.len() {
            return Ok(None);
        }
        chunk.layout.decode(&chunk.value, index).map(Some)
    }

    /// Position of the event with `id`, checked against the event itself so a dangling
    /// index entry is never believed.
    pub fn id_position(&self, id: &[u8; 16], head: u64) -> Result<Option<LoggedEvent>, LogError> {
        let Some(position) = self.ids.get(id)? else {
            return Ok(None);
        };
        if position > head {
            return Ok(None);
        }
        Ok(self.event_at(position)?.filter(|e| &e.event.event_id == id))
    }

    /// The head of `stream`, if it exists.
    pub fn stream_head(&self, stream: &str) -> Result<Option<StreamHead>, LogError> {
        Ok(self.streams.last_run(stream)?.map(|run| StreamHead {
            revision: run.first_revision + u64::from(run.count) - 1,
            position: run.first_position + u64::from(run.count) - 1,
        }))
    }

    /// Position of `stream` at `revision`, if written.
    pub fn stream_position(&self, stream: &str, revision: u64) -> Result<Option<u64>, LogError> {
        Ok(self
            .streams
            .run_holding(stream, revision)?
            .map(|run| run.first_position + (revision - run.first_revision)))
    }

    /// The events at `positions` (ascending or descending), in that order, left in their
    /// parsed chunks (each chunk read and parsed once for a run of positions in it),
    /// stopping before their stored bytes pass `max_bytes` (always the first).
    fn events_in_chunks(
        &self,
        positions: &[u64],
        max_bytes: usize,
    ) -> Result<Vec<(Arc<ParsedChunk>, usize)>, LogError> {
        let mut out = Vec::with_capacity(positions.len());
        let mut cached: Option<Arc<ParsedChunk>> = None;
        let mut bytes = 0usize;
        for &position in positions {
            let hit = matches!(&cached, Some(chunk)
                if position >= chunk.first && position <= chunk.layout.last_position());
            if !hit {
                let (first, value) = self.chunk_at(position)?.ok_or_else(|| {
                    LogError::Corrupt(format!("index points at missing position {position}"))
                })?;
                cached = Some(self.parsed(first, value, false)?);
            }
            let chunk = cached.as_ref().expect("set above");
            let index = (position - chunk.first) as usize;
            if index >= chunk.layout.len() {
                return Err(LogError::Corrupt(format!(
                    "index points at missing position {position}"
                )));
            }
            bytes = bytes.saturating_add(chunk.layout.spans[index].1);
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push((chunk.clone(), index));
        }
        Ok(out)
    }

    /// Positions of `stream` at revisions `lower..upper`, ascending, from one walk over
    /// the stream's runs starting at the run that holds `lower` (a lookup per revision was
    /// a sled range search each, most of a short stream read). A revision the index lacks
    /// is corruption: the caller asks only for revisions below the stream's head.
    fn stream_positions(&self, stream: &str, lower: u64, upper: u64) -> Result<Vec<u64>, LogError> {
        let missing = |revision: u64| {
            LogError::Corrupt(format!(
                "{stream} has no index entry for revision {revision}"
            ))
        };
        // Sized for at most a page; a caller asking for more grows it as it reads.
        let page_max = u64::from(crate::limits::READ_PAGE_MAX);
        let mut positions = Vec::with_capacity(upper.saturating_sub(lower).min(page_max) as usize);
        if lower >= upper {
            return Ok(positions);
        }
        // A gap stops the walk with `next` short of `upper`, as the runs ending do.
        let mut next = lower;
        self.streams.for_each_run_from(stream, lower, |run| {
            if run.first_revision > next {
                return false;
            }
            let run_end = run.first_revision + u64::from(run.count);
            while next < run_end && next < upper {
                positions.push(run.first_position + (next - run.first_revision));
                next += 1;
            }
            next < upper
        })?;
        if next < upper {
            return Err(missing(next));
        }
        Ok(positions)
    }

    /// Reads `stream` (see DESIGN §5 fine print for paging), up to the durable `head`: at
    /// most `max_count` events and `max_bytes` of their stored bytes (always one event
    /// when any is there). Each event stays in its parsed chunk (checked against the chain
    /// and to belong to `stream`): a reader decodes it ([`ChunkPage::into_page`]) or
    /// re-encodes it borrowed.
    pub fn read_stream_in_chunks(
        &self,
        stream: &str,
        from_revision: u64,
        backwards: bool,
        max_count: usize,
        max_bytes: usize,
        head: u64,
    ) -> Result<ChunkPage, ReadError> {
        let bound = (max_count, max_bytes);
        match self.read_stream_quick(stream, from_revision, backwards, bound, head)? {
            Some(page) => Ok(page),
            None => {
                let last = self.last_durable_revision(stream, head)?;
                self.read_stream_within(stream, from_revision, backwards, bound, last)
            }
        }
    }

    /// [`Store::read_stream_in_chunks`] when the stream's newest entry is durable (its
    /// work bounded by the page: index lookups and a chunk per event at most); `None`
    /// when it is not, and the read must first find the last durable revision.
    pub fn read_stream_quick(
        &self,
        stream: &str,
        from_revision: u64,
        backwards: bool,
        bound: (usize, usize),
        head: u64,
    ) -> Result<Option<ChunkPage>, ReadError> {
        let Some(last) = self.stream_head(stream)?.filter(|h| h.position <= head) else {
            // The stream either does not exist or its first event is not durable yet.
            if self.stream_position(stream, 0)?.is_none_or(|p| p > head) {
                return Err(ReadError::StreamNotFound(stream.to_owned()));
            }
            return Ok(None);
        };
        self.read_stream_within(stream, from_revision, backwards, bound, last.revision)
            .map(Some)
    }

    /// The slow path's first step, for a stream whose newest entry is past the durable
    /// head: its last revision at or below `head`, found among all its runs.
    fn last_durable_revision(&self, stream: &str, head: u64) -> Result<u64, ReadError> {
        let mut last_durable = 0;
        self.streams.for_each_run_from(stream, 0, |run| {
            // The run's revisions whose positions are durable: a prefix of it.
            if run.count > 0 && run.first_position <= head {
                let durable = (head - run.first_position).min(u64::from(run.count) - 1);
                last_durable = run.first_revision + durable;
            }
            true
        })?;
        Ok(last_durable)
    }

    fn read_stream_within(
        &self,
        stream: &str,
        from_revision: u64,
        backwards: bool,
        (max_count, max_bytes): (usize, usize),
        last_revision: u64,
    ) -> Result<ChunkPage, ReadError> {
        // The page's revisions are `lower..upper`, read upwards or downwards.
        let (lower, upper, end_reached, next_cursor) = if backwards {
            // Strictly below `from_revision`; 0 means from the end.
            let upper = if from_revision == 0 || from_revision > last_revision {
                last_revision + 1
            } else {
                from_revision
            };
            let lower = upper.saturating_sub(max_count as u64);
            // The last item returned; an empty page (max_count 0) stays where it was.
            let next = if lower < upper { lower } else { 0 };
            (lower, upper, lower == 0, next)
        } else {
            let start = from_revision;
            let end = start
                .saturating_add(max_count as u64)
                .min(last_revision + 1)
                .max(start);
            (start, end, end > last_revision, end)
        };
        let mut positions = self.stream_positions(stream, lower, upper)?;
        if backwards {
            positions.reverse();
        }
        let events = self.events_in_chunks(&positions, max_bytes)?;
        for (chunk, index) in &events {
            let event = chunk.layout.view(&chunk.value, *index)?;
            if event.stream != stream {
                return Err(LogError::Corrupt(format!(
                    "stream index of {stream} points at position {} of {}",
                    event.position, event.stream
                ))
                .into());
            }
        }
        if events.len() < positions.len() {
            // Cut short by bytes: forward, the next page starts at the first event left
            // out; backward, strictly below the last one returned.
            let next_cursor = if backwards {
                upper - events.len() as u64
            } else {
                lower + events.len() as u64
            };
            return Ok(ChunkPage {
                events,
                end_reached: false,
                next_cursor,
            });
        }
        Ok(ChunkPage {
            events,
            end_reached,
            next_cursor,
        })
    }

    /// Reads forward from `from_position` (inclusive, 0 = 1) up to `head`, returning at
    /// most `max_count` matching events, at most `max_bytes` of their stored bytes (but
    /// always one event when any matches), and examining at most
    /// [`crate::limits::READ_SCAN_EVENTS_MAX`].
    pub fn read_all_forward(
        &self,
        from_position: u64,
        max_count: usize,
        max_bytes: usize,
        filter: &ReadFilter,
        head: u64,
    ) -> Result<Page, LogError> {
        self.read_all_forward_in_chunks(from_position, max_count, max_bytes, filter, head)?
            .into_page()
    }

    /// [`Store::read_all_forward`] without decoding: each matching event as its parsed
    /// chunk and index, for a reader that re-encodes events straight from the chunk
    /// ([`crate::log::record::ChunkLayout::view`]).
    pub fn read_all_forward_in_chunks(
        &self,
        from_position: u64,
        max_count: usize,
        max_bytes: usize,
        filter: &ReadFilter,
        head: u64,
    ) -> Result<ChunkPage, LogError> {
        let start = from_position.max(1);
        let mut events = Vec::new();
        let mut next = start;
        let mut examined = 0;
        let mut bytes = 0usize;
        let categories = filter.categories();
        if start <= head {
            let first_chunk = self.chunk_at(start)?.map_or(start, |(first, _)| first);
            'chunks: for entry in self.events.range(first_chunk.to_be_bytes()..) {
                let (key, value) = entry?;
                let first = be_u64(&key)?;
                if first > head {
                    break;
                }
                let chunk = self.parsed(first, value, true)?;
                let (layout, value) = (&chunk.layout, &chunk.value);
                // A chunk with none of the filter's stream categories is passed over whole,
                // exactly as the loop below would pass over it event by event: same events
                // examined, same cursor (so only when the loop would not stop inside it).
                let (from, last) = (next.max(first), layout.last_position().min(head));
                if from <= last
                    && passes_over(layout, categories, last - from + 1, examined)
                    && events.len() < max_count
                {
                    examined += (last - from + 1) as usize;
                    next = last + 1;
                    continue;
                }
                // The categories of the events this read peeks at: kept for later readers
                // when it peeks at every event of the chunk.
                let whole = categories.is_some()
                    && next <= first
                    && layout.known_categories().is_none()
                    && layout.last_position() <= head;
                let mut seen: CategoryMask = 0;
                for index in 0..layout.len() {
                    let position = first + index as u64;
                    if position < next {
                        continue;
                    }
                    if position > head
                        || events.len() >= max_count
                        || examined >= crate::limits::READ_SCAN_EVENTS_MAX
                    {
                        break 'chunks;
                    }
                    examined += 1;
                    next = position + 1;
                    // Decide on the borrowed stream and type first: a filtered read (a
                    // projection following the log) skips most events without decoding.
                    if !filter.is_empty() {
                        let (stream, event_type) = layout.peek(value, index)?;
                        if whole {
                            seen |= category_bit(category(stream));
                        }
                        if !filter.matches(stream, event_type) {
                            continue;
                        }
                    }
                    bytes = bytes.saturating_add(layout.spans[index].1);
                    if bytes > max_bytes && !events.is_empty() {
                        // The next page starts with this event.
                        next = position;
                        break 'chunks;
                    }
                    events.push((chunk.clone(), index));
                }
                if whole {
                    layout.keep_categories(seen);
                }
            }
        }
        Ok(ChunkPage {
            events,
            end_reached: next > head,
            next_cursor: next,
        })
    }

    /// Reads backward strictly below `before_position` (0 = from the head), returning at
    /// most `max_count` matching events, at most `max_bytes` of their stored bytes (but
    /// always one event when any matches), and examining at most
    /// [`crate::limits::READ_SCAN_EVENTS_MAX`]. The events stay in their parsed chunks,
    /// in descending positions, like [`Store::read_all_forward_in_chunks`]'s.
    pub fn read_all_backward_in_chunks(
        &self,
        before_position: u64,
        max_count: usize,
        max_bytes: usize,
        filter: &ReadFilter,
        head: u64,
    ) -> Result<ChunkPage, LogError> {
        let upper = if before_position == 0 || before_position > head + 1 {
            head + 1
        } else {
            before_position
        };
        let mut events = Vec::new();
        // `lowest` is the lowest position examined; the next page reads strictly below it.
        let mut lowest = upper;
        let mut examined = 0;
        let mut bytes = 0usize;
        let categories = filter.categories();
        if upper > 1 {
            let top = upper - 1;
            'chunks: for entry in self.events.range(..=top.to_be_bytes()).rev() {
                let (key, value) = entry?;
                let first = be_u64(&key)?;
                let chunk = self.parsed(first, value, true)?;
                let (layout, value) = (&chunk.layout, &chunk.value);
                // As forward: a chunk of none of the filter's categories is passed over
                // whole when the loop below would examine all of it without stopping.
                let from = layout.last_position().min(lowest - 1);
                if from >= first
                    && passes_over(layout, categories, from - first + 1, examined)
                    && events.len() < max_count
                {
                    examined += (from - first + 1) as usize;
                    lowest = first;
                    continue;
                }
                let whole = categories.is_some()
                    && lowest > layout.last_position()
                    && layout.known_categories().is_none();
                let mut seen: CategoryMask = 0;
                for index in (0..layout.len()).rev() {
                    let position = first + index as u64;
                    if position >= lowest {
                        continue;
                    }
                    if events.len() >= max_count || examined >= crate::limits::READ_SCAN_EVENTS_MAX
                    {
                        break 'chunks;
                    }
                    if !filter.is_empty() {
                        let (stream, event_type) = layout.peek(value, index)?;
                        if whole {
                            seen |= category_bit(category(stream));
                        }
                        if !filter.matches(stream, event_type) {
                            examined += 1;
                            lowest = position;
                            continue;
                        }
                    }
                    bytes = bytes.saturating_add(layout.spans[index].1);
                    if bytes > max_bytes && !events.is_empty() {
                        // The next page reads strictly below the last event returned.
                        break 'chunks;
                    }
                    examined += 1;
                    lowest = position;
                    events.push((chunk.clone(), index));
                }
                if whole {
                    layout.keep_categories(seen);
                }
            }
        }
        Ok(ChunkPage {
            events,
            end_reached: lowest <= 1,
            next_cursor: lowest.max(1),
        })
    }
}

/// Whether a filtered read may pass over `span` events of a chunk whole, without peeking
/// at them: the chunk's categories are known (left by an earlier read) and share none with
/// the filter's `wanted` ones, and examining `span` more events keeps the read within
/// [`crate::limits::READ_SCAN_EVENTS_MAX`] (so the event-by-event loop would not have
/// stopped inside the chunk either).
fn passes_over(
    layout: &ChunkLayout,
    wanted: Option<CategoryMask>,
    span: u64,
    examined: usize,
) -> bool {
    wanted.is_some_and(|wanted| {
        layout
            .known_categories()
            .is_some_and(|held| held & wanted == 0)
    }) && examined.saturating_add(span as usize) <= crate::limits::READ_SCAN_EVENTS_MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value past a quarter of sled's segment is a blob file of its own; a sync makes
    /// it durable (sled never syncs it), and only the ones written since the last sync.
    #[test]
    fn a_sync_reaches_the_blob_files_sled_writes_for_large_values() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(dir.path()).expect("open");
        store.sync().expect("sync without blobs");
        assert_eq!(*store.blobs_synced.lock().unwrap(), -1);
        let big: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        store.meta.insert("big-1", big.clone()).expect("insert");
        store.sync().expect("sync");
        let blobs = || -> Vec<i64> {
            std::fs::read_dir(dir.path().join("sled").join("blobs"))
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let first = blobs();
        assert!(
            !first.is_empty(),
            "sled kept the value inline: no blob to sync"
        );
        let synced = *store.blobs_synced.lock().unwrap();
        assert!(
            first.iter().all(|lsn| *lsn <= synced),
            "{first:?} > {synced}"
        );
        store.meta.insert("big-2", big).expect("insert");
        store.sync().expect("sync");
        let later = *store.blobs_synced.lock().unwrap();
        assert!(later > synced && blobs().iter().all(|lsn| *lsn <= later));
    }

    #[test]
    fn chunk_hashes_stay_within_their_limit_oldest_out_first() {
        let limit = ChunkHashes::cost(100);
        let mut cache = ChunkHashes::with_capacity(limit);
        for first in 0..40u64 {
            let hashes = vec![[first as u8; 32]; 1 + (first as usize % 25)];
            cache.remember(first * 100, &hashes);
            assert!(cache.held <= limit, "{} held", cache.held);
            let counted: usize = cache
                .by_first
                .values()
                .map(|h| ChunkHashes::cost(h.len()))
                .sum();
            assert_eq!(cache.held, counted);
            assert_eq!(cache.get(first * 100), Some(&hashes[..]));
        }
        // What is left is the newest chunks, in order.
        let kept: Vec<u64> = cache.order.iter().copied().collect();
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(kept.last(), Some(&3900));
        assert_eq!(cache.get(0), None);
        // A chunk already kept is not replaced; one larger than the limit is not kept.
        cache.remember(3900, &[[0; 32]]);
        assert_eq!(cache.get(3900).map(<[Hash]>::len), Some(1 + 39 % 25));
        cache.remember(5000, &vec![[1; 32]; 101]);
        assert_eq!(cache.get(5000), None);
        assert!(cache.held <= limit);
    }

    #[test]
    fn a_filter_settles_its_categories_only_when_every_prefix_names_one() {
        let filter = |prefixes: &[&str]| ReadFilter {
            stream_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            event_types: vec!["any.type".into()],
        };
        let bit = category_bit;
        assert_eq!(filter(&["customer-"]).categories(), Some(bit("customer")));
        assert_eq!(
            filter(&["customer-12", "deal-"]).categories(),
            Some(bit("customer") | bit("deal"))
        );
        // "cust" matches customer-… and custard-… alike; no prefix, any category.
        assert_eq!(filter(&["cust"]).categories(), None);
        assert_eq!(filter(&["deal-", "cust"]).categories(), None);
        assert_eq!(filter(&[]).categories(), None);
    }
}

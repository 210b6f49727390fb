//! The auditor's check: recompute the hash chain over every event and check every
//! index against the events, offline.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::path::Path;

use super::error::LogError;
use super::record::{ChunkLayout, Hash, ZERO_HASH, parse_chunk};
use super::store::{Store, be_u64};
use super::stream_index::decode_stream_entry;

/// What a verify pass found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events checked.
    pub events: u64,
    /// Chunks checked.
    pub chunks: u64,
    /// Distinct streams.
    pub streams: u64,
    /// Last position.
    pub head_position: u64,
    /// Chain hash at the head.
    pub head_hash: Hash,
    /// Every fault found; empty when the log is sound.
    pub faults: Vec<String>,
    /// What opening the directory recovered before the checks (as a server start does).
    pub recovered: super::store::Recovery,
}

impl VerifyReport {
    /// True when no fault was found.
    pub fn is_ok(&self) -> bool {
        self.faults.is_empty()
    }
}

/// Faults reported in full; beyond this only the count grows.
const FAULTS_LISTED_MAX: usize = 100;

struct Faults {
    list: Vec<String>,
    total: u64,
}

impl Faults {
    fn push(&mut self, fault: String) {
        self.total += 1;
        if self.list.len() < FAULTS_LISTED_MAX {
            self.list.push(fault);
        }
    }
}

/// Chunks read from sled per parallel parsing step.
const VERIFY_BATCH_CHUNKS: usize = 512;

/// The fields of a stored event verify needs, borrowed from the chunk (no allocation).
/// A prefix of [`super::record::StoredEvent`]'s fields, in the same order.
#[derive(serde::Deserialize)]
struct EventHead<'a> {
    position: u64,
    stream: &'a str,
    revision: u64,
    event_id: [u8; 16],
}

/// Decodes the heads of a parsed chunk's events, borrowed from its bytes.
fn event_heads<'a>(layout: &'a ChunkLayout, value: &'a [u8]) -> Result<Vec<EventHead<'a>>, String> {
    let bytes = layout.bytes(value);
    let mut events = Vec::with_capacity(layout.len());
    for (index, (start, len)) in layout.spans.iter().enumerate() {
        let position = layout.first_position + index as u64;
        let (head, _): (EventHead<'a>, usize) = bincode::serde::borrow_decode_from_slice(
            &bytes[*start..*start + *len],
            bincode::config::standard(),
        )
        .map_err(|e| format!("position {position}: undecodable event: {e}"))?;
        if head.position != position {
            return Err(format!(
                "event claims position {} but is stored at {position}",
                head.position
            ));
        }
        // A name no append could have written: reads of the event would fail.
        super::stream_name::validate(head.stream).map_err(|error| {
            format!(
                "position {position}: stream name {:?}: {error}",
                head.stream
            )
        })?;
        events.push(head);
    }
    Ok(events)
}

/// Parses (decompresses, re-hashes) a batch of chunks on `workers` threads, in order.
fn parse_in_parallel(
    batch: &[(u64, sled::IVec)],
    workers: usize,
) -> Vec<Result<ChunkLayout, String>> {
    let per_worker = batch.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = batch
            .chunks(per_worker)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|(first, value)| parse_chunk(*first, value).map_err(|e| e.to_string()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("verify worker panicked"))
            .collect()
    })
}

/// Opens the data directory (refusing clearly if a server holds it) and verifies it.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, LogError> {
    verify_dir_pinned(dir, &[])
}

/// [`verify_dir`], and then that the log leads to each pinned head `(position, hash)`: the
/// event at `position` has chain hash `hash` (with the chain verified from the start, the
/// log has not been rewritten up to there). A pin past the head, or with another hash,
/// is a fault.
pub fn verify_dir_pinned(dir: &Path, pins: &[(u64, Hash)]) -> Result<VerifyReport, LogError> {
    if !dir.join("sled").join("db").exists() {
        return Err(LogError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not a rapport data directory", dir.display()),
        )));
    }
    let opened = std::time::Instant::now();
    let store = Store::open(dir)?;
    tracing::debug!(
        seconds = opened.elapsed().as_secs_f64(),
        "opened the store for verify"
    );
    let mut report = verify_store(&store)?;
    for &(position, hash) in pins {
        let found = if position == 0 {
            Some(ZERO_HASH)
        } else if position > report.head_position {
            None
        } else {
            store.event_at(position)?.map(|logged| logged.hash)
        };
        match found {
            Some(found) if found == hash => {}
            Some(found) => report.faults.push(format!(
                "pinned head {position}:{} is not in the log: the event at {position} has hash {}",
                hex::encode(hash),
                hex::encode(found)
            )),
            None => report.faults.push(format!(
                "pinned head {position}:{} is past the log's head {}",
                hex::encode(hash),
                report.head_position
            )),
        }
    }
    Ok(report)
}

/// Verifies an open store: the chain, density of positions and revisions, and that the
/// `streams` index and the id index hold exactly the entries the events imply.
///
/// Runs the streaming pass ([`verify_streaming`]), which proves a sound log sound; when it
/// finds anything wrong, the exact pass ([`verify_exact`]) runs and its report, which
/// names every faulty entry, is returned.
pub fn verify_store(store: &Store) -> Result<VerifyReport, LogError> {
    let started = std::time::Instant::now();
    let report = verify_streaming(store)?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        sound = report.is_ok(),
        "streaming verify pass"
    );
    if report.is_ok() {
        return Ok(report);
    }
    verify_exact(store)
}

/// A keyed, order-independent digest of a multiset of index entries: their number and
/// the sum (mod 2^128) of each entry's 128-bit keyed hash. Two multisets with equal
/// digests are equal but with a chance of about 2^-128 for entries that nobody chose to
/// collide, and nobody who altered the store can aim at a collision: the keys are drawn
/// at random for each run and never leave the process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Digest {
    count: u64,
    sum: u128,
}

/// The keys of one run's digests: two independently keyed SipHash instances (std's
/// `RandomState`, made to resist callers who would choose colliding keys), whose two
/// 64-bit outputs make one 128-bit hash. SipHash costs a fraction of a keyed BLAKE3
/// call on 24-byte entries, and verify hashes two entries per event.
#[derive(Clone)]
struct DigestKey(RandomState, RandomState);

impl DigestKey {
    /// Fresh random keys.
    fn new() -> Self {
        Self(RandomState::new(), RandomState::new())
    }

    fn hash(&self, entry: &[u8]) -> u128 {
        let half = |state: &RandomState| {
            let mut hasher = state.build_hasher();
            hasher.write(entry);
            hasher.finish()
        };
        (u128::from(half(&self.0)) << 64) | u128::from(half(&self.1))
    }
}

impl Digest {
    fn add(&mut self, key: &DigestKey, entry: &[u8]) {
        self.count = self.count.wrapping_add(1);
        self.sum = self.sum.wrapping_add(key.hash(entry));
    }

    fn merge(&mut self, other: &Digest) {
        self.count = self.count.wrapping_add(other.count);
        self.sum = self.sum.wrapping_add(other.sum);
    }
}

/// The digest entry of an id index entry (id → position).
fn id_entry(id: &[u8; 16], position: u64) -> [u8; 24] {
    let mut entry = [0u8; 24];
    entry[..16].copy_from_slice(id);
    entry[16..].copy_from_slice(&position.to_be_bytes());
    entry
}

/// The digest entry of one (stream, revision, position) triple; `buf` is reused.
fn stream_entry<'b>(buf: &'b mut Vec<u8>, stream: &[u8], revision: u64, position: u64) -> &'b [u8] {
    buf.clear();
    buf.extend_from_slice(&revision.to_be_bytes());
    buf.extend_from_slice(&position.to_be_bytes());
    buf.extend_from_slice(stream);
    buf
}

/// Verify reads the stream index from its tree, which holds all of it once the store is
/// open (opening ends with a checkpoint, which moves every run held in memory into the
/// tree): runs left in memory are a fault of the caller's, reported rather than read past.
fn unflushed_runs(store: &Store) -> Option<String> {
    let runs = store.streams.runs_in_memory();
    (runs > 0)
        .then(|| format!("the stream index holds {runs} runs in memory that no checkpoint wrote"))
}

/// What a worker of the streaming pass makes of one chunk: its layout and the digests of
/// the index entries its events imply.
struct ParsedForDigest {
    layout: ChunkLayout,
    ids: Digest,
    streams: Digest,
}

fn parse_and_digest(first: u64, value: &[u8], key: &DigestKey) -> Result<ParsedForDigest, String> {
    let layout = parse_chunk(first, value).map_err(|e| e.to_string())?;
    let mut ids = Digest::default();
    let mut streams = Digest::default();
    let mut buf = Vec::with_capacity(64);
    for event in event_heads(&layout, value)? {
        ids.add(key, &id_entry(&event.event_id, event.position));
        streams.add(
            key,
            stream_entry(
                &mut buf,
                event.stream.as_bytes(),
                event.revision,
                event.position,
            ),
        );
    }
    Ok(ParsedForDigest {
        layout,
        ids,
        streams,
    })
}

/// The digest of the id index (its runs and its tail), or what is wrong with it: the
/// first fault of a run's shape, or an id it holds twice.
fn digest_id_index(store: &Store, key: &DigestKey) -> Result<Result<Digest, String>, LogError> {
    let mut digest = Digest::default();
    let mut previous: Option<[u8; 16]> = None;
    let mut twice: Option<[u8; 16]> = None;
    let faults = store.ids.check_all(|id, position| {
        if previous == Some(*id) {
            twice.get_or_insert(*id);
        }
        previous = Some(*id);
        digest.add(key, &id_entry(id, position));
    })?;
    if let Some(fault) = faults.first() {
        return Ok(Err(fault.clone()));
    }
    if let Some(id) = twice {
        return Ok(Err(format!(
            "the event id index holds {} twice",
            uuid::Uuid::from_bytes(id)
        )));
    }
    Ok(Ok(digest))
}

/// The digest of the `streams` tree's runs expanded to (stream, revision, position)
/// triples and the number of streams, or the first entry that is malformed or breaks a
/// stream's density.
///
/// The tree is in (stream, revision) order, so one pass checks that each stream's
/// revisions run from 0 without a gap or an overlap and that its positions rise with its
/// revisions. Once the digest equals the events' own, that is the density check of the
/// events themselves: the two hold the same triples.
fn digest_stream_index(
    store: &Store,
    key: &DigestKey,
) -> Result<Result<(Digest, u64), String>, LogError> {
    let mut digest = Digest::default();
    let mut buf = Vec::with_capacity(64);
    let mut streams = 0u64;
    // The stream being read, its next revision and its last position.
    let mut current: Option<(String, u64, u64)> = None;
    for entry in store.streams.tree.iter() {
        let (entry_key, value) = entry?;
        let (stream, runs) = match decode_stream_entry(&entry_key, &value) {
            Ok(decoded) => decoded,
            Err(error) => return Ok(Err(error.to_string())),
        };
        for run in runs {
            if run.count == 0 {
                return Ok(Err(format!("stream index has an empty run in {stream}")));
            }
            let continues = match &current {
                Some((name, next, last)) if *name == stream => {
                    run.first_revision == *next && run.first_position > *last
                }
                _ => {
                    streams += 1;
                    run.first_revision == 0
                }
            };
            if !continues {
                return Ok(Err(format!(
                    "stream index: {stream}@{} does not continue the stream",
                    run.first_revision
                )));
            }
            for offset in 0..u64::from(run.count) {
                let entry = stream_entry(
                    &mut buf,
                    stream.as_bytes(),
                    run.first_revision + offset,
                    run.first_position + offset,
                );
                digest.add(key, entry);
            }
            let next = run.first_revision + u64::from(run.count);
            let last = run.first_position + u64::from(run.count) - 1;
            current = Some((stream.clone(), next, last));
        }
    }
    Ok(Ok((digest, streams)))
}

/// The streaming pass: checks the chain and the density of positions and revisions while
/// it reads the events, and compares each index with the events through [`Digest`]s, so
/// it holds one entry per stream in memory instead of one per event and sorts nothing.
/// Both index trees are read on threads of their own while the events are read, and the
/// chunks are parsed on all cores. Its report lists only what it can tell (a mismatching
/// index is one fault for the whole tree); [`verify_store`] then runs [`verify_exact`].
pub fn verify_streaming(store: &Store) -> Result<VerifyReport, LogError> {
    let key = DigestKey::new();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    std::thread::scope(|scope| {
        let key = &key;
        let ids = scope.spawn(move || digest_id_index(store, key));
        let streams = scope.spawn(move || digest_stream_index(store, key));

        let mut faults = Vec::new();
        let mut previous = ZERO_HASH;
        let mut expected_position = 1u64;
        let mut chunks = 0u64;
        let mut events = 0u64;
        let mut id_digest = Digest::default();
        let mut stream_digest = Digest::default();
        let mut batch: Vec<(u64, sled::IVec)> = Vec::with_capacity(VERIFY_BATCH_CHUNKS);
        let mut entries = store.events.iter();
        loop {
            batch.clear();
            for entry in entries.by_ref().take(VERIFY_BATCH_CHUNKS) {
                let (chunk_key, value) = entry?;
                batch.push((be_u64(&chunk_key)?, value));
            }
            if batch.is_empty() {
                break;
            }
            let per_worker = batch.len().div_ceil(workers).max(1);
            let parsed: Vec<Result<ParsedForDigest, String>> = std::thread::scope(|inner| {
                let handles: Vec<_> = batch
                    .chunks(per_worker)
                    .map(|part| {
                        inner.spawn(move || {
                            part.iter()
                                .map(|(first, value)| parse_and_digest(*first, value, key))
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().expect("verify worker panicked"))
                    .collect()
            });
            for ((first, _), result) in batch.iter().zip(parsed) {
                chunks += 1;
                if *first != expected_position {
                    faults.push(format!(
                        "gap: expected a chunk at position {expected_position}, found {first}"
                    ));
                }
                let parsed = match result {
                    Ok(parsed) => parsed,
                    Err(error) => {
                        faults.push(error);
                        expected_position = first + 1;
                        continue;
                    }
                };
                if parsed.layout.prev_hash != previous {
                    faults.push(format!(
                        "chain broken before position {first}: chunk starts from another hash"
                    ));
                }
                previous = parsed.layout.last_hash();
                expected_position = first + parsed.layout.len() as u64;
                events += parsed.layout.len() as u64;
                id_digest.merge(&parsed.ids);
                stream_digest.merge(&parsed.streams);
            }
            if faults.len() > FAULTS_LISTED_MAX {
                break;
            }
        }
        let head_position = expected_position - 1;
        let id_index = ids.join().expect("verify index reader panicked")?;
        let stream_index = streams.join().expect("verify index reader panicked")?;
        match id_index {
            Ok(digest) if digest == id_digest => {}
            Ok(digest) => faults.push(format!(
                "the event id index ({} entries) does not hold exactly the {} events' ids",
                digest.count, id_digest.count
            )),
            Err(error) => faults.push(error),
        }
        let mut streams = 0;
        match stream_index {
            Ok((digest, count)) if digest == stream_digest => streams = count,
            Ok((digest, _)) => faults.push(format!(
                "the stream index ({} revisions) does not map exactly the {} events",
                digest.count, stream_digest.count
            )),
            Err(error) => faults.push(error),
        }
        let indexed = store.indexed_through()?;
        if indexed != head_position {
            faults.push(format!(
                "index watermark is {indexed}, the head is {head_position}"
            ));
        }
        faults.extend(unflushed_runs(store));
        Ok(VerifyReport {
            events,
            chunks,
            streams,
            head_position,
            head_hash: previous,
            faults,
            recovered: store.recovered,
        })
    })
}

/// The exact pass: like [`verify_streaming`], but it keeps every event's index entries,
/// sorts them and merges them with both index trees, so its report names each missing,
/// extra or wrong entry. Holds ~48 bytes per event in memory.
pub fn verify_exact(store: &Store) -> Result<VerifyReport, LogError> {
    let mut faults = Faults {
        list: Vec::new(),
        total: 0,
    };
    let mut previous = ZERO_HASH;
    let mut expected_position = 1u64;
    let mut chunks = 0u64;
    // Stream name → id, next expected revision.
    let mut stream_ids: HashMap<String, u32> = HashMap::new();
    let mut next_revision: Vec<u64> = Vec::new();
    // (stream id, revision, position) and (event id, position), compared with the indices.
    let mut by_stream: Vec<(u32, u64, u64)> = Vec::new();
    let mut by_id: Vec<([u8; 16], u64)> = Vec::new();

    // Chunks are read from sled in order, in batches; each batch is parsed (decompressed,
    // every hash recomputed, every event decoded) on all cores, then checked in order.
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let mut batch: Vec<(u64, sled::IVec)> = Vec::with_capacity(VERIFY_BATCH_CHUNKS);
    let mut entries = store.events.iter();
    loop {
        batch.clear();
        for entry in entries.by_ref().take(VERIFY_BATCH_CHUNKS) {
            let (key, value) = entry?;
            batch.push((be_u64(&key)?, value));
        }
        if batch.is_empty() {
            break;
        }
        let parsed = parse_in_parallel(&batch, workers);
        for ((first, value), result) in batch.iter().zip(parsed) {
            let first = *first;
            chunks += 1;
            if first != expected_position {
                faults.push(format!(
                    "gap: expected a chunk at position {expected_position}, found {first}"
                ));
            }
            let layout = match result {
                Ok(layout) => layout,
                Err(error) => {
                    faults.push(error);
                    expected_position = first + 1;
                    continue;
                }
            };
            if layout.prev_hash != previous {
                faults.push(format!(
                    "chain broken before position {first}: chunk starts from another hash"
                ));
            }
            previous = layout.last_hash();
            expected_position = first + layout.len() as u64;
            let heads = match event_heads(&layout, value) {
                Ok(heads) => heads,
                Err(error) => {
                    faults.push(error);
                    continue;
                }
            };
            for event in heads {
                let stream_id = match stream_ids.get(event.stream) {
                    Some(id) => *id,
                    None => {
                        let id = u32::try_from(stream_ids.len()).unwrap_or(u32::MAX);
                        stream_ids.insert(event.stream.to_owned(), id);
                        next_revision.push(0);
                        id
                    }
                };
                let expected_revision = &mut next_revision[stream_id as usize];
                if event.revision != *expected_revision {
                    faults.push(format!(
                        "position {}: {} revision {} where {} was expected",
                        event.position, event.stream, event.revision, expected_revision
                    ));
                }
                *expected_revision = event.revision + 1;
                by_stream.push((stream_id, event.revision, event.position));
                by_id.push((event.event_id, event.position));
            }
        }
    }
    let head_position = expected_position - 1;
    let events = by_id.len() as u64;

    // the id index: exactly one entry per event, pointing at it.
    by_id.sort_unstable();
    for pair in by_id.windows(2) {
        if pair[0].0 == pair[1].0 {
            faults.push(format!(
                "event id {} used at positions {} and {}",
                uuid::Uuid::from_bytes(pair[0].0),
                pair[0].1,
                pair[1].1
            ));
        }
    }
    let mut expected_ids = by_id.iter().peekable();
    let mut id_faults = Vec::new();
    let mut previous_id: Option<[u8; 16]> = None;
    let shape_faults = store.ids.check_all(|&id, position| {
        if previous_id == Some(id) {
            id_faults.push(format!(
                "the event id index holds {} twice (once at {position})",
                uuid::Uuid::from_bytes(id)
            ));
            return;
        }
        previous_id = Some(id);
        while expected_ids.peek().is_some_and(|(e, _)| *e < id) {
            let (missing, at) = expected_ids.next().expect("peeked");
            id_faults.push(format!(
                "event id index lacks {} (position {at})",
                uuid::Uuid::from_bytes(*missing)
            ));
        }
        match expected_ids.peek() {
            Some((e, p)) if *e == id => {
                if *p != position {
                    id_faults.push(format!(
                        "event id index maps {} to {position}, the event is at {p}",
                        uuid::Uuid::from_bytes(id)
                    ));
                }
                expected_ids.next();
            }
            _ => id_faults.push(format!(
                "event id index has {} → {position}, which no event carries",
                uuid::Uuid::from_bytes(id)
            )),
        }
    })?;
    for fault in shape_faults.into_iter().chain(id_faults) {
        faults.push(fault);
    }
    for (missing, at) in expected_ids {
        faults.push(format!(
            "event id index lacks {} (position {at})",
            uuid::Uuid::from_bytes(*missing)
        ));
    }
    drop(by_id);

    // streams: the runs, expanded, are exactly the (stream, revision, position) triples.
    let mut names: Vec<(&String, u32)> = stream_ids.iter().map(|(n, i)| (n, *i)).collect();
    names.sort();
    let mut rank = vec![0u32; names.len()];
    for (order, (_, id)) in names.iter().enumerate() {
        rank[*id as usize] = order as u32;
    }
    by_stream.sort_unstable_by_key(|(id, revision, _)| (rank[*id as usize], *revision));
    let mut expected_runs = by_stream.iter().peekable();
    for entry in store.streams.tree.iter() {
        let (key, value) = entry?;
        let (stream, runs) = match decode_stream_entry(&key, &value) {
            Ok(decoded) => decoded,
            Err(error) => {
                faults.push(error.to_string());
                continue;
            }
        };
        let Some(&stream_id) = stream_ids.get(&stream) else {
            faults.push(format!("stream index has {stream}, which has no events"));
            continue;
        };
        'runs: for run in runs {
            for offset in 0..u64::from(run.count) {
                let revision = run.first_revision + offset;
                let position = run.first_position + offset;
                match expected_runs.next() {
                    Some(&(id, r, p)) if id == stream_id && r == revision && p == position => {}
                    Some(&(id, r, p)) => {
                        faults.push(format!(
                            "stream index maps {stream}@{revision} to {position}; next event is {}@{r} at {p}",
                            names[rank[id as usize] as usize].0
                        ));
                        break 'runs;
                    }
                    None => {
                        faults.push(format!(
                            "stream index maps {stream}@{revision} to {position}, past the events"
                        ));
                        break 'runs;
                    }
                }
            }
        }
    }
    if let Some(&(id, revision, position)) = expected_runs.next() {
        faults.push(format!(
            "stream index lacks {}@{revision} (position {position})",
            names[rank[id as usize] as usize].0
        ));
    }

    let indexed = store.indexed_through()?;
    if indexed != head_position {
        faults.push(format!(
            "index watermark is {indexed}, the head is {head_position}"
        ));
    }
    if let Some(fault) = unflushed_runs(store) {
        faults.push(fault);
    }
    let mut list = faults.list;
    if faults.total > list.len() as u64 {
        list.push(format!(
            "... and {} more faults",
            faults.total - list.len() as u64
        ));
    }
    Ok(VerifyReport {
        events,
        chunks,
        streams: stream_ids.len() as u64,
        head_position,
        head_hash: previous,
        faults: list,
        recovered: store.recovered,
    })
}

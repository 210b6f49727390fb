//! The auditor's check: recompute the hash chain over every event and check every
//! index against the events, offline.

use std::collections::HashMap;
use std::path::Path;

use super::error::LogError;
use super::record::{ChunkLayout, Hash, ZERO_HASH, parse_chunk};
use super::store::{Store, be_u64, decode_stream_entry};

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
    verify_store(&store)
}

/// Verifies an open store: the chain, density of positions and revisions, and that the
/// `streams` and `event_ids` indices hold exactly the entries the events imply.
pub fn verify_store(store: &Store) -> Result<VerifyReport, LogError> {
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

    // event_ids: exactly one entry per event, pointing at it.
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
    for entry in store.event_ids.iter() {
        let (key, value) = entry?;
        let position = be_u64(&value)?;
        let id: [u8; 16] = match key.as_ref().try_into() {
            Ok(id) => id,
            Err(_) => {
                faults.push("malformed event id index key".into());
                continue;
            }
        };
        while expected_ids.peek().is_some_and(|(e, _)| *e < id) {
            let (missing, at) = expected_ids.next().expect("peeked");
            faults.push(format!(
                "event id index lacks {} (position {at})",
                uuid::Uuid::from_bytes(*missing)
            ));
        }
        match expected_ids.peek() {
            Some((e, p)) if *e == id => {
                if *p != position {
                    faults.push(format!(
                        "event id index maps {} to {position}, the event is at {p}",
                        uuid::Uuid::from_bytes(id)
                    ));
                }
                expected_ids.next();
            }
            _ => faults.push(format!(
                "event id index has {} → {position}, which no event carries",
                uuid::Uuid::from_bytes(id)
            )),
        }
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
    for entry in store.streams.iter() {
        let (key, value) = entry?;
        let (stream, run) = match decode_stream_entry(&key, &value) {
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
                    break;
                }
                None => {
                    faults.push(format!(
                        "stream index maps {stream}@{revision} to {position}, past the events"
                    ));
                    break;
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
    })
}

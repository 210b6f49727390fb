//! The auditor's check: recompute the hash chain over every event and check every
//! index against the events, offline.

use std::collections::HashMap;
use std::path::Path;

use super::error::LogError;
use super::record::{Hash, ZERO_HASH, parse_chunk};
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

/// Opens the data directory (refusing clearly if a server holds it) and verifies it.
pub fn verify_dir(dir: &Path) -> Result<VerifyReport, LogError> {
    if !dir.join("sled").join("db").exists() {
        return Err(LogError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} is not a rapport data directory", dir.display()),
        )));
    }
    let store = Store::open(dir)?;
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

    for entry in store.events.iter() {
        let (key, value) = entry?;
        let first = be_u64(&key)?;
        chunks += 1;
        if first != expected_position {
            faults.push(format!(
                "gap: expected a chunk at position {expected_position}, found {first}"
            ));
        }
        let layout = match parse_chunk(first, &value) {
            Ok(layout) => layout,
            Err(error) => {
                faults.push(error.to_string());
                expected_position = first + 1;
                continue;
            }
        };
        if layout.prev_hash != previous {
            faults.push(format!(
                "chain broken before position {first}: chunk starts from another hash"
            ));
        }
        for index in 0..layout.len() {
            let logged = match layout.decode(&value, index) {
                Ok(logged) => logged,
                Err(error) => {
                    faults.push(error.to_string());
                    continue;
                }
            };
            let event = logged.event;
            let next_id = u32::try_from(stream_ids.len()).unwrap_or(u32::MAX);
            let stream_id = *stream_ids.entry(event.stream.clone()).or_insert(next_id);
            if stream_id as usize == next_revision.len() {
                next_revision.push(0);
            }
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
        previous = layout.last_hash();
        expected_position = layout.last_position() + 1;
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

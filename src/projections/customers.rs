//! `customers`: the customer 360 read model. A thin adapter from the engine to the pure
//! fold in [`crate::domain::profile`]: profiles are decoded once per batch, folded, and
//! written back once at the batch's end (with the checkpoint, by the engine).
//!
//! Keys: `p ‖ customer uuid (16 bytes)` → bincode of [`Profile`]. Personal parts inside
//! profiles stay sealed; the edge opens them at query time.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::{ApplyError, Projection, StateBatch};
use crate::domain::DomainEvent;
use crate::domain::profile::{self, Envelope, Profile, ProfileStatus, Profiles, customer_stream};
use crate::limits::{self, MERGE_DEPTH_MAX};
use crate::log::{Log, LoggedEvent, ReadError, ReadFilter, StreamName};

/// Reading a customer's history from the log failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The log could not be read.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A stream is longer than the bound of one customer's history.
    #[error("{0}")]
    TooLong(String),
    /// A stored event does not decode.
    #[error("{0}")]
    Decode(String),
}

/// The projection's name.
pub const NAME: &str = "customers";

/// Key prefix of profiles.
const PROFILE_PREFIX: u8 = b'p';

/// The customer projection.
pub struct CustomersProjection;

impl Projection for CustomersProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        // 2: profiles keep every order and refund with its business time (analytics).
        2
    }

    fn filter(&self) -> ReadFilter {
        ReadFilter {
            stream_prefixes: vec![format!("{}-", profile::CUSTOMER_CATEGORY)],
            event_types: Vec::new(),
        }
    }

    fn apply(&self, state: &mut StateBatch<'_>, events: &[LoggedEvent]) -> Result<(), ApplyError> {
        let mut profiles = BatchProfiles {
            state,
            cache: BTreeMap::new(),
        };
        for logged in events {
            let e = &logged.event;
            let fail = |message: String| ApplyError::new(e.position, message);
            let event = DomainEvent::decode(&e.event_type, e.schema_version, &e.payload)
                .map_err(|error| fail(error.to_string()))?;
            let envelope = Envelope {
                position: e.position,
                stream: &e.stream,
                event_id: e.id(),
                occurred_at_us: e.occurred_at_us,
            };
            profile::apply(&mut profiles, &envelope, &event).map_err(fail)?;
        }
        profiles.flush();
        Ok(())
    }
}

/// The profile key of a customer.
pub fn profile_key(id: Uuid) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = PROFILE_PREFIX;
    key[1..].copy_from_slice(id.as_bytes());
    key
}

fn encode(profile: &Profile) -> Vec<u8> {
    bincode::serde::encode_to_vec(profile, bincode::config::standard())
        .expect("a profile has no unsealed personal part and encodes into a Vec")
}

/// Decodes a stored profile.
pub fn decode(bytes: &[u8]) -> Result<Profile, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(profile, _)| profile)
        .map_err(|e| format!("stored profile does not decode: {e}"))
}

/// Profiles of one batch: decoded once, written back once.
struct BatchProfiles<'s, 'a> {
    state: &'s mut StateBatch<'a>,
    cache: BTreeMap<Uuid, Profile>,
}

impl BatchProfiles<'_, '_> {
    fn flush(self) {
        for (id, profile) in self.cache {
            self.state.insert(&profile_key(id), encode(&profile));
        }
    }
}

impl Profiles for BatchProfiles<'_, '_> {
    type Error = String;

    fn status(&mut self, id: Uuid) -> Result<Option<ProfileStatus>, String> {
        if !self.cache.contains_key(&id) {
            match self
                .state
                .get(&profile_key(id))
                .map_err(|e| e.to_string())?
            {
                Some(bytes) => {
                    self.cache.insert(id, decode(&bytes)?);
                }
                None => return Ok(None),
            }
        }
        Ok(self.cache.get(&id).map(|p| p.status))
    }

    fn entry(&mut self, id: Uuid) -> Result<&mut Profile, String> {
        if !self.cache.contains_key(&id) {
            let profile = match self
                .state
                .get(&profile_key(id))
                .map_err(|e| e.to_string())?
            {
                Some(bytes) => decode(&bytes)?,
                None => Profile::new(id),
            };
            self.cache.insert(id, profile);
        }
        Ok(self.cache.get_mut(&id).expect("inserted above"))
    }
}

/// Reads a profile as stored (not following merges).
pub fn read(tree: &sled::Tree, id: Uuid) -> Result<Option<Profile>, String> {
    match tree.get(profile_key(id)).map_err(|e| e.to_string())? {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// Reads the profile `id` resolves to: a merged duplicate's survivor.
pub fn read_resolved(tree: &sled::Tree, id: Uuid) -> Result<Option<Profile>, String> {
    let mut current = id;
    for _ in 0..MERGE_DEPTH_MAX {
        match read(tree, current)? {
            Some(Profile {
                status: ProfileStatus::Merged { into },
                ..
            }) => current = into,
            other => return Ok(other),
        }
    }
    Ok(None)
}

/// Every registered, non-merged profile, in customer id order: the customers analytics
/// and segments count (a merged duplicate's history is its survivor's).
pub fn live_profiles(tree: &sled::Tree) -> Result<Vec<Profile>, String> {
    let mut profiles = Vec::new();
    for profile in scan(tree, None) {
        let profile = profile?;
        if profile.registered.is_some() && !matches!(profile.status, ProfileStatus::Merged { .. }) {
            profiles.push(profile);
        }
    }
    Ok(profiles)
}

/// Profiles in customer id order starting after `after` (exclusive), as stored.
pub fn scan(
    tree: &sled::Tree,
    after: Option<Uuid>,
) -> impl Iterator<Item = Result<Profile, String>> + '_ {
    let start = match after {
        Some(id) => {
            let mut key = profile_key(id).to_vec();
            key.push(0);
            key
        }
        None => vec![PROFILE_PREFIX],
    };
    tree.range(start..)
        .take_while(|item| {
            item.as_ref()
                .map_or(true, |(key, _)| key.first() == Some(&PROFILE_PREFIX))
        })
        .map(|item| {
            let (_, value) = item.map_err(|e| e.to_string())?;
            decode(&value)
        })
}

/// A deterministic digest of every profile (for tests and the rebuild check).
pub fn digest(tree: &sled::Tree) -> Result<blake3::Hash, String> {
    let mut hasher = blake3::Hasher::new();
    for item in tree.scan_prefix([PROFILE_PREFIX]) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(&key);
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(&value);
    }
    Ok(hasher.finalize())
}

/// The same digest over profiles held in memory (an as-of fold).
pub fn digest_of(profiles: &BTreeMap<Uuid, Profile>) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    for (id, profile) in profiles {
        let key = profile_key(*id);
        let value = encode(profile);
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(&key);
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(&value);
    }
    hasher.finalize()
}

/// Reads a whole stream (bounded), oldest first.
pub fn read_stream_all(log: &Log, stream: &str) -> Result<Vec<LoggedEvent>, HistoryError> {
    let name = StreamName::parse(stream).map_err(|e| HistoryError::Decode(e.to_string()))?;
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let page = match log.read_stream(&name, from, false, limits::READ_PAGE_MAX as usize) {
            Ok(page) => page,
            Err(crate::log::ReadError::StreamNotFound(_)) => return Ok(out),
            Err(error) => return Err(HistoryError::Read(error)),
        };
        let done = page.end_reached || page.events.is_empty();
        out.extend(page.events);
        if out.len() > limits::CUSTOMER_STREAM_EVENTS_MAX {
            return Err(HistoryError::TooLong(format!(
                "stream {stream} has more than {} events",
                limits::CUSTOMER_STREAM_EVENTS_MAX
            )));
        }
        if done {
            return Ok(out);
        }
        from = page.next_cursor;
    }
}

/// Decodes a logged event's body (personal parts stay sealed).
pub fn decode_event(logged: &LoggedEvent) -> Result<DomainEvent, HistoryError> {
    let e = &logged.event;
    DomainEvent::decode(&e.event_type, e.schema_version, &e.payload)
        .map_err(|error| HistoryError::Decode(format!("event at position {}: {error}", e.position)))
}

/// Gathers the events of `id`'s profile that `include` keeps: its own stream, and the
/// streams of duplicates merged into it (recursively), merged by position. Merges are
/// discovered among the kept events only, unless `every_merge` (a timeline shows a
/// duplicate's history whatever page it is on; an as-of answer counts only merges that
/// had happened by then).
pub fn history(
    log: &Log,
    id: Uuid,
    include: &dyn Fn(&LoggedEvent) -> bool,
    every_merge: bool,
) -> Result<Vec<(LoggedEvent, DomainEvent)>, HistoryError> {
    let mut seen = BTreeSet::new();
    let mut queue = vec![id];
    let mut all = Vec::new();
    while let Some(current) = queue.pop() {
        if !seen.insert(current) || seen.len() > limits::MERGED_STREAMS_MAX {
            continue;
        }
        for logged in read_stream_all(log, &customer_stream(current))? {
            let included = include(&logged);
            if !included && !every_merge {
                continue;
            }
            let event = decode_event(&logged)?;
            if let DomainEvent::CustomersMerged(m) = &event
                && m.survivor_id == current
            {
                queue.push(m.duplicate_id);
            }
            if included {
                all.push((logged, event));
            }
        }
    }
    all.sort_by_key(|(logged, _)| logged.event.position);
    all.dedup_by_key(|(logged, _)| logged.event.position);
    Ok(all)
}

/// The as-of fold: the projection's own code ([`profile::apply`]) over the customer's
/// streams, keeping the events `include` keeps (up to a position or a recorded time).
/// Merges are resolved as they stood then. Returns the profile and the last position
/// folded into it.
pub fn fold_as_of(
    log: &Log,
    id: Uuid,
    include: &dyn Fn(&LoggedEvent) -> bool,
) -> Result<Option<(Profile, u64)>, HistoryError> {
    // Resolve merges as they stood at the bound.
    let mut target = id;
    for _ in 0..limits::MERGE_DEPTH_MAX {
        let mut merged_into = None;
        for logged in read_stream_all(log, &customer_stream(target))? {
            if !include(&logged) {
                continue;
            }
            // The first merge of a duplicate is the one in force: the fold ignores a
            // later one (the service refuses it; a raw log might hold it).
            if let DomainEvent::CustomersMerged(m) = decode_event(&logged)?
                && m.duplicate_id == target
                && m.survivor_id != target
                && merged_into.is_none()
            {
                merged_into = Some(m.survivor_id);
            }
        }
        match merged_into {
            Some(next) => target = next,
            None => break,
        }
    }
    let history = history(log, target, include, false)?;
    let mut profiles: BTreeMap<Uuid, Profile> = BTreeMap::new();
    let mut last = 0;
    for (logged, event) in &history {
        let e = &logged.event;
        let envelope = Envelope {
            position: e.position,
            stream: &e.stream,
            event_id: e.id(),
            occurred_at_us: e.occurred_at_us,
        };
        let Ok(()) = profile::apply(&mut profiles, &envelope, event);
        last = last.max(e.position);
    }
    Ok(profiles.remove(&target).map(|p| (p, last)))
}

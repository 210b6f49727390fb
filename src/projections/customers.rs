//! `customers`: the customer 360 read model. A thin adapter from the engine to the pure
//! fold in [`crate::domain::profile`]: profiles are decoded once per batch, folded, and
//! written back once at the batch's end (with the checkpoint, by the engine).
//!
//! Keys: `p ‖ customer uuid (16 bytes)` → bincode of [`Profile`]. Personal parts inside
//! profiles stay sealed; the edge opens them at query time.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{ApplyError, Projection, StateBatch};
use crate::domain::DomainEvent;
use crate::domain::profile::{self, Envelope, Profile, ProfileStatus, Profiles};
use crate::limits::MERGE_DEPTH_MAX;
use crate::log::{LoggedEvent, ReadFilter};

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
        1
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

    fn get(&mut self, id: Uuid) -> Result<Option<Profile>, String> {
        if let Some(profile) = self.cache.get(&id) {
            return Ok(Some(profile.clone()));
        }
        match self
            .state
            .get(&profile_key(id))
            .map_err(|e| e.to_string())?
        {
            Some(bytes) => {
                let profile = decode(&bytes)?;
                self.cache.insert(id, profile.clone());
                Ok(Some(profile))
            }
            None => Ok(None),
        }
    }

    fn put(&mut self, profile: Profile) -> Result<(), String> {
        self.cache.insert(profile.customer_id, profile);
        Ok(())
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

//! `log_stats`: per event type and per stream category, how many events, the first and
//! last position, and the earliest and latest `occurred_at` (business time). Small, but a
//! real fold over every event: it proves the engine and backs the admin `GetLogStats`.
//!
//! Keys (in the projection's tree): `t/<event type>` and `c/<stream category>` (the part
//! of the stream name before the first `-`). Value: 40 bytes, big-endian: count u64 |
//! first position u64 | last position u64 | min occurred_at µs i64 | max occurred_at µs i64.

use std::collections::BTreeMap;

use super::{ApplyError, Projection, ProjectionError, StateBatch};
use crate::log::LoggedEvent;
use crate::log::stream_name::category;

/// Name of the projection.
pub const NAME: &str = "log_stats";

const TYPE_PREFIX: &[u8] = b"t/";
const CATEGORY_PREFIX: &[u8] = b"c/";

/// The `log_stats` projection.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogStatsProjection;

/// Counts for one event type or one stream category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Event type or stream category.
    pub key: String,
    /// Events.
    pub count: u64,
    /// Position of the first.
    pub first_position: u64,
    /// Position of the last.
    pub last_position: u64,
    /// Earliest `occurred_at`, UTC µs.
    pub min_occurred_at_us: i64,
    /// Latest `occurred_at`, UTC µs.
    pub max_occurred_at_us: i64,
}

impl Stat {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40);
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.first_position.to_be_bytes());
        out.extend_from_slice(&self.last_position.to_be_bytes());
        out.extend_from_slice(&self.min_occurred_at_us.to_be_bytes());
        out.extend_from_slice(&self.max_occurred_at_us.to_be_bytes());
        out
    }

    fn decode(key: String, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != 40 {
            return None;
        }
        let u = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let s = |i: usize| i64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Some(Self {
            key,
            count: u(0),
            first_position: u(8),
            last_position: u(16),
            min_occurred_at_us: s(24),
            max_occurred_at_us: s(32),
        })
    }

    fn add(&mut self, position: u64, occurred_at_us: i64) {
        if self.count == 0 {
            self.first_position = position;
            self.min_occurred_at_us = occurred_at_us;
            self.max_occurred_at_us = occurred_at_us;
        }
        self.count += 1;
        self.last_position = position;
        self.min_occurred_at_us = self.min_occurred_at_us.min(occurred_at_us);
        self.max_occurred_at_us = self.max_occurred_at_us.max(occurred_at_us);
    }
}

impl Projection for LogStatsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn envelopes_only(&self) -> bool {
        // Counts and dates events by type and category: no payload read.
        true
    }

    fn apply(&self, state: &mut StateBatch<'_>, events: &[LoggedEvent]) -> Result<(), ApplyError> {
        // Accumulate the batch in a local ordered map (one state read per key per batch),
        // then write each touched key once.
        let mut touched: BTreeMap<Vec<u8>, Stat> = BTreeMap::new();
        // Each event's keys are built in one reused buffer: a key is allocated only the
        // first time the batch touches it.
        let mut key_buf = Vec::with_capacity(64);
        for logged in events {
            let event = &logged.event;
            for (prefix, name) in [
                (TYPE_PREFIX, event.event_type.as_str()),
                (CATEGORY_PREFIX, category(&event.stream)),
            ] {
                key_buf.clear();
                key_buf.extend_from_slice(prefix);
                key_buf.extend_from_slice(name.as_bytes());
                if let Some(stat) = touched.get_mut(key_buf.as_slice()) {
                    stat.add(event.position, event.occurred_at_us);
                    continue;
                }
                let stored = state
                    .get(&key_buf)
                    .map_err(|e| ApplyError::new(event.position, e.to_string()))?;
                let mut stat = match stored {
                    Some(bytes) => Stat::decode(String::new(), &bytes).ok_or_else(|| {
                        ApplyError::new(event.position, "malformed log_stats value")
                    })?,
                    None => Stat {
                        key: String::new(),
                        count: 0,
                        first_position: 0,
                        last_position: 0,
                        min_occurred_at_us: 0,
                        max_occurred_at_us: 0,
                    },
                };
                stat.add(event.position, event.occurred_at_us);
                touched.insert(key_buf.clone(), stat);
            }
        }
        for (key, stat) in touched {
            state.insert(&key, stat.encode());
        }
        Ok(())
    }
}

/// The whole read model: both tables, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// One row per event type.
    pub by_event_type: Vec<Stat>,
    /// One row per stream category.
    pub by_category: Vec<Stat>,
    /// True when a table had more than `rows_max` rows and was cut.
    pub truncated: bool,
}

fn table(
    tree: &sled::Tree,
    prefix: &[u8],
    rows_max: usize,
) -> Result<(Vec<Stat>, bool), ProjectionError> {
    let mut rows = Vec::new();
    for entry in tree.scan_prefix(prefix) {
        if rows.len() >= rows_max {
            return Ok((rows, true));
        }
        let (key, value) = entry?;
        let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
        let stat = Stat::decode(name, &value)
            .ok_or_else(|| ProjectionError::Corrupt("malformed log_stats value".into()))?;
        rows.push(stat);
    }
    Ok((rows, false))
}

/// Reads the stats from a `log_stats` tree (see [`super::Projections::reader`]), at most
/// `rows_max` rows per table.
pub fn read(tree: &sled::Tree, rows_max: usize) -> Result<LogStats, ProjectionError> {
    let (by_event_type, cut_types) = table(tree, TYPE_PREFIX, rows_max)?;
    let (by_category, cut_categories) = table(tree, CATEGORY_PREFIX, rows_max)?;
    Ok(LogStats {
        by_event_type,
        by_category,
        truncated: cut_types || cut_categories,
    })
}

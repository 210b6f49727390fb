//! `segments`: segment definitions and current membership, folded from the `segment-*`
//! streams (definitions from the Analytics service, entered / left events from the
//! segment job).
//!
//! Keys: `d ‖ segment id` → [`SegmentDef`]; `m ‖ segment id ‖ customer id` and
//! `c ‖ customer id ‖ segment id` → [`Membership`] (the second for a customer's segments).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApplyError, Projection, StateBatch};
use crate::domain::DomainEvent;
use crate::log::{LoggedEvent, ReadFilter};

/// The projection's name.
pub const NAME: &str = "segments";

/// A segment's definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentDef {
    /// Its id.
    pub segment_id: Uuid,
    /// Its name.
    pub name: String,
    /// Its rule.
    pub rule: String,
    /// Archived.
    pub archived: bool,
    /// Position of the definition or its last change.
    pub changed_at_position: u64,
}

/// A customer's membership of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The time the rule was evaluated at when they entered.
    pub entered_as_of_us: i64,
    /// Position of the entered event.
    pub position: u64,
}

/// The segments projection.
pub struct SegmentsProjection;

fn definition_key(segment: Uuid) -> Vec<u8> {
    let mut key = vec![b'd'];
    key.extend_from_slice(segment.as_bytes());
    key
}

/// The member key of (segment, customer).
pub fn member_key(segment: Uuid, customer: Uuid) -> Vec<u8> {
    let mut key = vec![b'm'];
    key.extend_from_slice(segment.as_bytes());
    key.extend_from_slice(customer.as_bytes());
    key
}

fn customer_key(customer: Uuid, segment: Uuid) -> Vec<u8> {
    let mut key = vec![b'c'];
    key.extend_from_slice(customer.as_bytes());
    key.extend_from_slice(segment.as_bytes());
    key
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("plain values encode into a Vec")
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| format!("stored segment data does not decode: {e}"))
}

fn uuid_at(bytes: &[u8], at: usize) -> Option<Uuid> {
    bytes
        .get(at..at + 16)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(Uuid::from_bytes)
}

impl Projection for SegmentsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        1
    }

    fn filter(&self) -> ReadFilter {
        ReadFilter {
            stream_prefixes: vec!["segment-".into()],
            event_types: Vec::new(),
        }
    }

    fn apply(&self, state: &mut StateBatch<'_>, events: &[LoggedEvent]) -> Result<(), ApplyError> {
        for logged in events {
            let e = &logged.event;
            let fail = |message: String| ApplyError::new(e.position, message);
            let event = DomainEvent::decode(&e.event_type, e.schema_version, &e.payload)
                .map_err(|error| fail(error.to_string()))?;
            match event {
                DomainEvent::SegmentDefined(d) => state.insert(
                    &definition_key(d.segment_id),
                    encode(&SegmentDef {
                        segment_id: d.segment_id,
                        name: d.name,
                        rule: d.rule,
                        archived: false,
                        changed_at_position: e.position,
                    }),
                ),
                DomainEvent::SegmentChanged(c) => {
                    let key = definition_key(c.segment_id);
                    if let Some(bytes) = state.get(&key).map_err(|e| fail(e.to_string()))? {
                        let mut def: SegmentDef = decode(&bytes).map_err(fail)?;
                        def.name = c.name;
                        def.rule = c.rule;
                        def.changed_at_position = e.position;
                        state.insert(&key, encode(&def));
                    }
                }
                DomainEvent::SegmentArchived(a) => {
                    let key = definition_key(a.segment_id);
                    if let Some(bytes) = state.get(&key).map_err(|e| fail(e.to_string()))? {
                        let mut def: SegmentDef = decode(&bytes).map_err(fail)?;
                        def.archived = true;
                        def.changed_at_position = e.position;
                        state.insert(&key, encode(&def));
                    }
                    // An archived segment has no members.
                    let mut prefix = vec![b'm'];
                    prefix.extend_from_slice(a.segment_id.as_bytes());
                    for (key, _) in state
                        .scan_prefix(&prefix)
                        .map_err(|e| fail(e.to_string()))?
                    {
                        if let Some(customer) = uuid_at(&key, 17) {
                            state.remove(&customer_key(customer, a.segment_id));
                        }
                        state.remove(&key);
                    }
                }
                DomainEvent::CustomerEnteredSegment(m) => {
                    let value = encode(&Membership {
                        entered_as_of_us: m.as_of_us,
                        position: e.position,
                    });
                    state.insert(&member_key(m.segment_id, m.customer_id), value.clone());
                    state.insert(&customer_key(m.customer_id, m.segment_id), value);
                }
                DomainEvent::CustomerLeftSegment(m) => {
                    state.remove(&member_key(m.segment_id, m.customer_id));
                    state.remove(&customer_key(m.customer_id, m.segment_id));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Every segment definition, archived ones included, in id order.
pub fn definitions(tree: &sled::Tree) -> Result<Vec<SegmentDef>, String> {
    tree.scan_prefix([b'd'])
        .map(|item| {
            let (_, value) = item.map_err(|e| e.to_string())?;
            decode(&value)
        })
        .collect()
}

/// One segment's definition.
pub fn definition(tree: &sled::Tree, segment: Uuid) -> Result<Option<SegmentDef>, String> {
    match tree
        .get(definition_key(segment))
        .map_err(|e| e.to_string())?
    {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// Members of a segment after `after` (exclusive), in customer id order, at most `limit`.
pub fn members(
    tree: &sled::Tree,
    segment: Uuid,
    after: Option<Uuid>,
    limit: usize,
) -> Result<Vec<(Uuid, Membership)>, String> {
    let mut prefix = vec![b'm'];
    prefix.extend_from_slice(segment.as_bytes());
    let start = match after {
        Some(customer) => {
            let mut key = member_key(segment, customer);
            key.push(0);
            key
        }
        None => prefix.clone(),
    };
    let mut out = Vec::new();
    for item in tree.range(start..) {
        let (key, value) = item.map_err(|e| e.to_string())?;
        if !key.starts_with(&prefix) || out.len() == limit {
            break;
        }
        let customer = uuid_at(&key, 17).ok_or("malformed member key")?;
        out.push((customer, decode(&value)?));
    }
    Ok(out)
}

/// The segments a customer is in, by segment id.
pub fn of_customer(tree: &sled::Tree, customer: Uuid) -> Result<Vec<(Uuid, Membership)>, String> {
    let mut prefix = vec![b'c'];
    prefix.extend_from_slice(customer.as_bytes());
    tree.scan_prefix(&prefix)
        .map(|item| {
            let (key, value) = item.map_err(|e| e.to_string())?;
            let segment = uuid_at(&key, 17).ok_or("malformed member key")?;
            Ok((segment, decode(&value)?))
        })
        .collect()
}

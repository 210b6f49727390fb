//! `loyalty`: member ledgers, the programme's versions and the rewards catalogue, folded
//! from the `loyalty-*`, `loyalty_programme-*` and `loyalty_reward-*` streams with the
//! pure fold of [`crate::domain::loyalty::ledger`] (the same code serves as-of answers,
//! over the log, in [`fold_member_as_of`] and [`fold_all_as_of`]).
//!
//! Keys: `m ‖ customer id` → [`Member`]; `p` → [`ProgrammeHistory`]; `r ‖ reward id` →
//! [`Reward`]. Members are decoded once per batch and written back once.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::{ApplyError, Projection, StateBatch};
use crate::domain::DomainEvent;
use crate::domain::loyalty::ledger::{
    self, Envelope, MEMBER_CATEGORY, Member, PROGRAMME_STREAM, REWARD_CATEGORY, Reward,
    member_of_stream, member_stream,
};
use crate::domain::loyalty::{ProgrammeHistory, apply_programme};
use crate::limits;
use crate::log::{Log, LoggedEvent, ReadError, ReadFilter, StreamName};

/// The projection's name.
pub const NAME: &str = "loyalty";

const MEMBER_PREFIX: u8 = b'm';
const PROGRAMME_KEY: &[u8] = b"p";
const REWARD_PREFIX: u8 = b'r';

/// The loyalty projection.
pub struct LoyaltyProjection;

/// The streams it folds.
pub fn filter() -> ReadFilter {
    ReadFilter {
        stream_prefixes: vec![
            format!("{MEMBER_CATEGORY}-"),
            format!("{REWARD_CATEGORY}-"),
            PROGRAMME_STREAM.to_owned(),
        ],
        event_types: Vec::new(),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("plain values encode into a Vec")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(value, _)| value)
        .map_err(|e| format!("stored loyalty data does not decode: {e}"))
}

/// The key of a member.
pub fn member_key(id: Uuid) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = MEMBER_PREFIX;
    key[1..].copy_from_slice(id.as_bytes());
    key
}

fn reward_key(id: Uuid) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = REWARD_PREFIX;
    key[1..].copy_from_slice(id.as_bytes());
    key
}

/// `loyalty_reward-<uuid>` → the uuid.
pub fn reward_of_stream(stream: &str) -> Option<Uuid> {
    Uuid::parse_str(stream.strip_prefix("loyalty_reward-")?).ok()
}

/// Where an event of the loyalty streams goes.
enum Target {
    Member(Uuid),
    Programme,
    Reward(Uuid),
}

fn target(stream: &str) -> Option<Target> {
    if stream == PROGRAMME_STREAM {
        Some(Target::Programme)
    } else if let Some(id) = member_of_stream(stream) {
        Some(Target::Member(id))
    } else {
        reward_of_stream(stream).map(Target::Reward)
    }
}

impl Projection for LoyaltyProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn version(&self) -> u32 {
        // 2: members carry merges (`LedgerMerged`): new fields in the stored `Member`.
        2
    }

    fn filter(&self) -> ReadFilter {
        filter()
    }

    fn apply(&self, state: &mut StateBatch<'_>, events: &[LoggedEvent]) -> Result<(), ApplyError> {
        let mut members: BTreeMap<Uuid, Member> = BTreeMap::new();
        let mut rewards: BTreeMap<Uuid, Reward> = BTreeMap::new();
        let mut programme: Option<ProgrammeHistory> = None;
        for logged in events {
            let e = &logged.event;
            let fail = |message: String| ApplyError::new(e.position, message);
            let Some(target) = target(&e.stream) else {
                continue;
            };
            let event = DomainEvent::decode(&e.event_type, e.schema_version, &e.payload)
                .map_err(|error| fail(error.to_string()))?;
            match target {
                Target::Member(id) => {
                    let member = match members.entry(id) {
                        Entry::Occupied(found) => found.into_mut(),
                        Entry::Vacant(slot) => slot.insert(
                            match state
                                .get(&member_key(id))
                                .map_err(|e| fail(e.to_string()))?
                            {
                                Some(bytes) => decode(&bytes).map_err(fail)?,
                                None => Member::new(id),
                            },
                        ),
                    };
                    let env = Envelope {
                        position: e.position,
                        event_id: e.id(),
                        occurred_at_us: e.occurred_at_us,
                    };
                    ledger::apply(member, &env, &event);
                }
                Target::Programme => {
                    if programme.is_none() {
                        programme = Some(
                            match state.get(PROGRAMME_KEY).map_err(|e| fail(e.to_string()))? {
                                Some(bytes) => decode(&bytes).map_err(fail)?,
                                None => ProgrammeHistory::default(),
                            },
                        );
                    }
                    let history = programme.as_mut().expect("set above");
                    apply_programme(history, e.position, e.occurred_at_us, &event);
                }
                Target::Reward(id) => {
                    let reward = match rewards.entry(id) {
                        Entry::Occupied(found) => found.into_mut(),
                        Entry::Vacant(slot) => slot.insert(
                            match state
                                .get(&reward_key(id))
                                .map_err(|e| fail(e.to_string()))?
                            {
                                Some(bytes) => decode(&bytes).map_err(fail)?,
                                None => Reward {
                                    reward_id: id,
                                    ..Reward::default()
                                },
                            },
                        ),
                    };
                    ledger::apply_reward(reward, &event);
                }
            }
        }
        for (id, member) in members {
            state.insert(&member_key(id), encode(&member));
        }
        for (id, reward) in rewards {
            state.insert(&reward_key(id), encode(&reward));
        }
        if let Some(history) = programme {
            state.insert(PROGRAMME_KEY, encode(&history));
        }
        Ok(())
    }
}

/// A member as folded by the projection.
pub fn read_member(tree: &sled::Tree, id: Uuid) -> Result<Option<Member>, String> {
    match tree.get(member_key(id)).map_err(|e| e.to_string())? {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// Members in customer id order after `after` (exclusive).
pub fn scan_members(
    tree: &sled::Tree,
    after: Option<Uuid>,
) -> impl Iterator<Item = Result<Member, String>> + '_ {
    let start = match after {
        Some(id) => {
            let mut key = member_key(id).to_vec();
            key.push(0);
            key
        }
        None => vec![MEMBER_PREFIX],
    };
    tree.range(start..)
        .take_while(|item| {
            item.as_ref()
                .map_or(true, |(key, _)| key.first() == Some(&MEMBER_PREFIX))
        })
        .map(|item| {
            let (_, value) = item.map_err(|e| e.to_string())?;
            decode(&value)
        })
}

/// The programme's versions.
pub fn read_programme(tree: &sled::Tree) -> Result<ProgrammeHistory, String> {
    match tree.get(PROGRAMME_KEY).map_err(|e| e.to_string())? {
        Some(bytes) => decode(&bytes),
        None => Ok(ProgrammeHistory::default()),
    }
}

/// Every reward, in id order.
pub fn read_rewards(tree: &sled::Tree) -> Result<Vec<Reward>, String> {
    tree.scan_prefix([REWARD_PREFIX])
        .map(|item| {
            let (_, value) = item.map_err(|e| e.to_string())?;
            decode(&value)
        })
        .collect()
}

/// A deterministic digest of the whole read model (tests: rebuild == incremental).
pub fn digest(tree: &sled::Tree) -> Result<blake3::Hash, String> {
    let mut hasher = blake3::Hasher::new();
    for item in tree.iter() {
        let (key, value) = item.map_err(|e| e.to_string())?;
        if key.first() == Some(&0) {
            continue;
        }
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(&key);
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(&value);
    }
    Ok(hasher.finalize())
}

/// Reads a whole stream (bounded by [`limits::LOYALTY_MEMBER_EVENTS_MAX`]), oldest first,
/// with the stream's last revision.
pub fn read_stream(log: &Log, stream: &str) -> Result<(Vec<LoggedEvent>, Option<u64>), String> {
    let name = StreamName::parse(stream).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let page = match log.read_stream(&name, from, false, limits::READ_PAGE_MAX as usize) {
            Ok(page) => page,
            Err(ReadError::StreamNotFound(_)) => return Ok((out, None)),
            Err(error) => return Err(error.to_string()),
        };
        let done = page.end_reached || page.events.is_empty();
        out.extend(page.events);
        if out.len() > limits::LOYALTY_MEMBER_EVENTS_MAX {
            return Err(format!(
                "stream {stream} has more than {} events",
                limits::LOYALTY_MEMBER_EVENTS_MAX
            ));
        }
        if done {
            let revision = out.last().map(|l| l.event.revision);
            return Ok((out, revision));
        }
        from = page.next_cursor;
    }
}

fn decode_logged(logged: &LoggedEvent) -> Result<DomainEvent, String> {
    let e = &logged.event;
    DomainEvent::decode(&e.event_type, e.schema_version, &e.payload)
        .map_err(|error| format!("event at position {}: {error}", e.position))
}

/// A member folded from its stream, keeping the events `include` keeps, with the
/// stream's revision (of the whole stream, for an append's expectation).
pub fn fold_member_as_of(
    log: &Log,
    id: Uuid,
    include: &dyn Fn(&LoggedEvent) -> bool,
) -> Result<(Member, Option<u64>), String> {
    let (events, revision) = read_stream(log, &member_stream(id))?;
    let mut member = Member::new(id);
    for logged in events.iter().filter(|l| include(l)) {
        let e = &logged.event;
        let env = Envelope {
            position: e.position,
            event_id: e.id(),
            occurred_at_us: e.occurred_at_us,
        };
        ledger::apply(&mut member, &env, &decode_logged(logged)?);
    }
    Ok((member, revision))
}

/// The programme's versions folded from its stream (events `include` keeps).
pub fn fold_programme(
    log: &Log,
    include: &dyn Fn(&LoggedEvent) -> bool,
) -> Result<(ProgrammeHistory, Option<u64>), String> {
    let (events, revision) = read_stream(log, PROGRAMME_STREAM)?;
    let mut history = ProgrammeHistory::default();
    for logged in events.iter().filter(|l| include(l)) {
        let e = &logged.event;
        apply_programme(
            &mut history,
            e.position,
            e.occurred_at_us,
            &decode_logged(logged)?,
        );
    }
    if history.versions.len() > limits::LOYALTY_PROGRAMME_VERSIONS_MAX {
        return Err("the programme has too many versions".into());
    }
    Ok((history, revision))
}

/// A reward folded from its stream, with the stream's revision.
pub fn fold_reward(log: &Log, id: Uuid) -> Result<(Reward, Option<u64>), String> {
    let (events, revision) = read_stream(log, &ledger::reward_stream(id))?;
    let mut reward = Reward {
        reward_id: id,
        ..Reward::default()
    };
    for logged in &events {
        ledger::apply_reward(&mut reward, &decode_logged(logged)?);
    }
    Ok((reward, revision))
}

/// Every member folded from the log, keeping the events `include` keeps (the as-of
/// answer of programme statistics: reads every loyalty event of the log).
pub fn fold_all_as_of(
    log: &Log,
    include: &dyn Fn(&LoggedEvent) -> bool,
) -> Result<BTreeMap<Uuid, Member>, String> {
    let filter = ReadFilter {
        stream_prefixes: vec![format!("{MEMBER_CATEGORY}-")],
        event_types: Vec::new(),
    };
    let head = log.head().position;
    let mut members: BTreeMap<Uuid, Member> = BTreeMap::new();
    let mut cursor = 1;
    while cursor <= head {
        let page = log
            .read_all(cursor, false, limits::READ_PAGE_MAX as usize, &filter)
            .map_err(|e| e.to_string())?;
        for logged in &page.events {
            let e = &logged.event;
            if e.position > head {
                break;
            }
            let Some(id) = member_of_stream(&e.stream) else {
                continue;
            };
            if !include(logged) {
                continue;
            }
            let member = members.entry(id).or_insert_with(|| Member::new(id));
            let env = Envelope {
                position: e.position,
                event_id: e.id(),
                occurred_at_us: e.occurred_at_us,
            };
            ledger::apply(member, &env, &decode_logged(logged)?);
        }
        if page.end_reached || page.next_cursor <= cursor {
            break;
        }
        cursor = page.next_cursor;
    }
    Ok(members)
}

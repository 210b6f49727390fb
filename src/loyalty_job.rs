//! The loyalty job: the **earning policy** that follows the log, and the **time tick**
//! (expiry and tier re-evaluation). Both run inside `serve` (the tick on a schedule,
//! with time from the injected clock, for the members the `loyalty` read model shows
//! due); operators run them offline with
//! `rapport loyalty tick --as-of T --data-dir D`, or online with `Loyalty.RunTick`.
//!
//! **Exactly once.** For every purchase, refund or custom event of an enrolled customer
//! (a merged duplicate resolves to its survivor, as the customer projection does) and
//! every enrolment, the policy folds the member's stream, decides with the pure
//! [`decide::earn`] under the programme version in force at the source's business time,
//! and appends the points events with `causation_id` = the source event, an event id
//! derived from (source event id, rule), and the member stream's revision it read as the
//! expectation. A concurrent write fails the expectation and the source is decided again;
//! a member's ledger remembers every source it accounted for, and a replay after a crash
//! (or from position 1) proposes the same ids, so nothing is ever awarded twice.
//!
//! **Merges.** A `CustomersMerged` whose duplicate is an enrolled member ends the batch it
//! falls in: the duplicate's earlier sources are written first, then its ledger moves to
//! the survivor ([`decide::merge_ledger`], `LedgerMerged` in both member streams, one
//! atomic append, ids derived from the merge event), then later sources are decided.
//!
//! The policy's checkpoint, the merges and the enrolled members it has seen live in the
//! sled tree `loyalty_policy`, saved after each page; losing them only costs a replay.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::clock::Clock;
use crate::domain::DomainEvent;
use crate::domain::events::BUILT_IN_EVENT_TYPES;
use crate::domain::events::CustomerIdentity;
use crate::domain::loyalty::decide::{self, Source, SourceKind, derived_event_id};
use crate::domain::loyalty::ledger::{self, member_of_stream, member_stream};
use crate::domain::loyalty::{Member, ProgrammeHistory};
use crate::domain::profile::customer_of_stream;
use crate::limits;
use crate::log::{
    AppendError, ExpectedRevision, Log, LoggedEvent, ProposedEvent, ReadFilter, StreamAppend,
    StreamName,
};
use crate::privacy::Privacy;
use crate::projections::Projections;
use crate::projections::loyalty::{fold_member_as_of, fold_programme};

/// The sled tree of the policy's own state.
pub const POLICY_TREE: &str = "loyalty_policy";
const CHECKPOINT_KEY: &[u8] = b"checkpoint";
const MERGE_PREFIX: u8 = b'm';
const MEMBER_PREFIX: u8 = b'e';

/// Who the policy and the tick write as.
pub const POLICY_ACTOR: &str = "rapport loyalty policy";
/// Who the tick writes as.
pub const TICK_ACTOR: &str = "rapport loyalty tick";

/// The policy's position in the log and what it learned on the way.
pub struct Policy {
    tree: sled::Tree,
    checkpoint: u64,
    merges: BTreeMap<Uuid, Uuid>,
    members: BTreeSet<Uuid>,
}

fn uuid_at(bytes: &[u8], at: usize) -> Option<Uuid> {
    bytes
        .get(at..at + 16)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(Uuid::from_bytes)
}

impl Policy {
    /// Opens the policy's state in the log's database.
    pub fn open(log: &Log) -> Result<Self, String> {
        let tree = log.db().open_tree(POLICY_TREE).map_err(|e| e.to_string())?;
        let checkpoint = match tree.get(CHECKPOINT_KEY).map_err(|e| e.to_string())? {
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .as_ref()
                    .try_into()
                    .map_err(|_| "corrupt loyalty policy checkpoint".to_owned())?,
            ),
            None => 0,
        };
        let mut merges = BTreeMap::new();
        for item in tree.scan_prefix([MERGE_PREFIX]) {
            let (key, value) = item.map_err(|e| e.to_string())?;
            if let (Some(dup), Some(survivor)) = (uuid_at(&key, 1), uuid_at(&value, 0)) {
                merges.insert(dup, survivor);
            }
        }
        let mut members = BTreeSet::new();
        for item in tree.scan_prefix([MEMBER_PREFIX]) {
            let (key, _) = item.map_err(|e| e.to_string())?;
            if let Some(id) = uuid_at(&key, 1) {
                members.insert(id);
            }
        }
        Ok(Self {
            tree,
            checkpoint,
            merges,
            members,
        })
    }

    /// The last log position the policy has handled.
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Members the policy has seen enrol, in id order.
    pub fn members(&self) -> &BTreeSet<Uuid> {
        &self.members
    }

    /// The customer `id` resolves to through the merges seen so far.
    fn resolve(&self, id: Uuid) -> Uuid {
        let mut current = id;
        for _ in 0..limits::MERGE_DEPTH_MAX {
            match self.merges.get(&current) {
                Some(next) if *next != current => current = *next,
                _ => break,
            }
        }
        current
    }

    fn save(&self, new_merges: &[(Uuid, Uuid)], new_members: &[Uuid]) -> Result<(), String> {
        if new_merges.is_empty() && new_members.is_empty() {
            // One key: a plain insert is atomic, and unlike a sled batch it does not seal
            // sled's I/O buffer (see `StateBatch::commit`).
            return self
                .tree
                .insert(CHECKPOINT_KEY, &self.checkpoint.to_be_bytes())
                .map(|_| ())
                .map_err(|e| e.to_string());
        }
        let mut batch = sled::Batch::default();
        for (dup, survivor) in new_merges {
            let mut key = vec![MERGE_PREFIX];
            key.extend_from_slice(dup.as_bytes());
            batch.insert(key, survivor.as_bytes().to_vec());
        }
        for member in new_members {
            let mut key = vec![MEMBER_PREFIX];
            key.extend_from_slice(member.as_bytes());
            batch.insert(key, Vec::new());
        }
        batch.insert(CHECKPOINT_KEY, &self.checkpoint.to_be_bytes());
        self.tree.apply_batch(batch).map_err(|e| e.to_string())
    }
}

/// What one [`follow`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Followed {
    /// Log events read.
    pub scanned: u64,
    /// Source events decided (purchases, refunds, custom events, enrolments).
    pub sources: u64,
    /// Points events appended (awards, and the `LedgerMerged` events of merges).
    pub awards: u64,
    /// The checkpoint afterwards.
    pub through: u64,
}

/// A source event with its body owned.
struct Owned {
    member: Uuid,
    event_id: Uuid,
    position: u64,
    occurred_at_us: i64,
    correlation_id: String,
    body: Body,
}

enum Body {
    Purchase(crate::domain::events::PurchaseCompleted),
    Refund(crate::domain::events::PurchaseRefunded),
    Custom(String),
    Enrolment,
    /// A `CustomersMerged` of this duplicate into `member` (the survivor, resolved): its
    /// ledger moves, between the sources before and after it.
    Merge {
        duplicate: Uuid,
    },
}

impl Owned {
    /// The source to decide; `None` for a merge (not a source: it moves a ledger).
    fn source(&self) -> Option<Source<'_>> {
        let kind = match &self.body {
            Body::Purchase(p) => SourceKind::Purchase(p),
            Body::Refund(r) => SourceKind::Refund(r),
            Body::Custom(t) => SourceKind::Custom(t),
            Body::Enrolment => SourceKind::Enrolment,
            Body::Merge { .. } => return None,
        };
        Some(Source {
            event_id: self.event_id,
            position: self.position,
            occurred_at_us: self.occurred_at_us,
            kind,
        })
    }

    fn is_merge(&self) -> bool {
        matches!(self.body, Body::Merge { .. })
    }

    fn correlation(&self) -> String {
        if self.correlation_id.is_empty() {
            self.event_id.to_string()
        } else {
            self.correlation_id.clone()
        }
    }
}

fn decode(logged: &LoggedEvent) -> Result<DomainEvent, String> {
    let e = &logged.event;
    DomainEvent::decode(&e.event_type, e.schema_version, &e.payload)
        .map_err(|error| format!("event at position {}: {error}", e.position))
}

fn proposed(id: Uuid, event: &DomainEvent, occurred_at_us: i64, actor: &str) -> ProposedEvent {
    ProposedEvent {
        event_id: Some(id),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        payload: event
            .encode()
            .expect("loyalty events have no personal parts"),
        occurred_at_us: Some(occurred_at_us),
        actor: actor.to_owned(),
        ..Default::default()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("loyalty task failed: {e}"))?
}

/// Follows the log from the policy's checkpoint to the head, awarding what each source
/// event earns (see the module docs). Returns what it did.
pub async fn follow(log: &Log, policy: &mut Policy) -> Result<Followed, String> {
    let mut done = Followed::default();
    let filter = ReadFilter {
        stream_prefixes: vec!["customer-".into(), "loyalty-".into()],
        event_types: Vec::new(),
    };
    loop {
        let head = log.head().position;
        if policy.checkpoint >= head {
            break;
        }
        let (log2, filter2, from) = (log.clone(), filter.clone(), policy.checkpoint + 1);
        let page = blocking(move || {
            log2.read_all(from, false, limits::LOYALTY_POLICY_PAGE, &filter2)
                .map_err(|e| e.to_string())
        })
        .await?;
        let mut new_merges = Vec::new();
        let mut new_members = Vec::new();
        let mut sources = Vec::new();
        for logged in &page.events {
            let e = &logged.event;
            if e.position > head {
                break;
            }
            done.scanned += 1;
            let owned = if let Some(customer) = customer_of_stream(&e.stream) {
                let body = match e.event_type.as_str() {
                    "CustomersMerged" => match decode(logged)? {
                        DomainEvent::CustomersMerged(m) if m.duplicate_id != m.survivor_id => {
                            if let Entry::Vacant(slot) = policy.merges.entry(m.duplicate_id) {
                                slot.insert(m.survivor_id);
                                new_merges.push((m.duplicate_id, m.survivor_id));
                            }
                            // Resolved below: to the survivor, or where it was merged since.
                            Some(Body::Merge {
                                duplicate: m.duplicate_id,
                            })
                        }
                        _ => None,
                    },
                    "PurchaseCompleted" => match decode(logged)? {
                        DomainEvent::PurchaseCompleted(p) => Some(Body::Purchase(p)),
                        _ => None,
                    },
                    "PurchaseRefunded" => match decode(logged)? {
                        DomainEvent::PurchaseRefunded(r) => Some(Body::Refund(r)),
                        _ => None,
                    },
                    other if !BUILT_IN_EVENT_TYPES.contains(&other) => {
                        Some(Body::Custom(other.to_owned()))
                    }
                    _ => None,
                };
                body.map(|body| {
                    let member = match &body {
                        Body::Merge { duplicate } => policy.resolve(*duplicate),
                        _ => policy.resolve(customer),
                    };
                    (member, body)
                })
            } else if let Some(member) = member_of_stream(&e.stream)
                && e.event_type == "MemberEnrolled"
            {
                if policy.members.insert(member) {
                    new_members.push(member);
                }
                Some((member, Body::Enrolment))
            } else {
                None
            };
            let Some((member, body)) = owned else {
                continue;
            };
            sources.push(Owned {
                member,
                event_id: e.id(),
                position: e.position,
                occurred_at_us: e.occurred_at_us,
                correlation_id: e.correlation_id.clone(),
                body,
            });
        }
        // The programme's versions, read only when the page has something to decide (a
        // log busy with other streams costs no programme read per round).
        let programme = if sources.is_empty() {
            ProgrammeHistory::default()
        } else {
            let log2 = log.clone();
            blocking(move || fold_programme(&log2, &|_| true).map(|(h, _)| h)).await?
        };
        // Decide a batch of sources against the members' streams, append all their awards
        // in one atomic multi-stream append (one group commit), and fall back to one
        // source at a time when a member changed meanwhile.
        let mut rest: Vec<Owned> = sources;
        while !rest.is_empty() {
            if rest[0].is_merge() {
                // A merge ends a batch: the sources before it are written to the
                // duplicate's ledger, the move follows, then the ones after it.
                let merge = rest.remove(0);
                let survivor = merge.member;
                let parts = merge_ledger(log, &programme, &merge).await?;
                if parts > 0 {
                    // One `LedgerMerged` per part in each of the two member streams.
                    done.awards += 2 * parts as u64;
                    if policy.members.insert(survivor) {
                        new_members.push(survivor);
                    }
                }
                continue;
            }
            let (decided, staged, left) = stage(log, &programme, rest).await?;
            rest = left;
            if staged.is_empty() {
                done.sources += decided.len() as u64;
                continue;
            }
            let events: usize = staged.iter().map(|a| a.events.len()).sum();
            match log.append_multi(staged).await {
                Ok(_) => {
                    done.sources += decided.len() as u64;
                    done.awards += events as u64;
                }
                Err(
                    AppendError::WrongExpectedRevision { .. } | AppendError::EventIdConflict { .. },
                ) => {
                    for source in decided {
                        if let Some(n) = award(log, &programme, source).await? {
                            done.sources += 1;
                            done.awards += n as u64;
                        }
                    }
                }
                Err(error) => return Err(error.to_string()),
            }
        }
        let through = if page.next_cursor > from {
            (page.next_cursor - 1).min(head)
        } else {
            head
        };
        policy.checkpoint = through;
        policy.save(&new_merges, &new_members)?;
        done.through = through;
        if page.end_reached && through >= head {
            break;
        }
    }
    done.through = policy.checkpoint;
    Ok(done)
}

/// Awards of one batch: the sources decided, the appends (one per member, expecting the
/// revision read), and the sources left for the next batch.
type Staged = (Vec<Owned>, Vec<StreamAppend>, Vec<Owned>);

/// Decides sources in log order against their members' streams (each read once; the
/// awards decided so far are folded in, so a member's second purchase in the batch sees
/// its first), until about [`limits::LOYALTY_POLICY_BATCH_EVENTS`] events are staged.
async fn stage(
    log: &Log,
    programme: &ProgrammeHistory,
    sources: Vec<Owned>,
) -> Result<Staged, String> {
    let (log, programme) = (log.clone(), programme.clone());
    blocking(move || {
        let mut states: BTreeMap<Uuid, Option<(Member, Option<u64>)>> = BTreeMap::new();
        let mut staged: BTreeMap<Uuid, Vec<ProposedEvent>> = BTreeMap::new();
        let mut count = 0;
        let mut decided = Vec::new();
        let mut sources = sources.into_iter().peekable();
        while let Some(source) = sources.next_if(|s| !s.is_merge()) {
            let Some(decided_source) = source.source() else {
                continue;
            };
            let state = match states.entry(source.member) {
                Entry::Occupied(found) => found.into_mut(),
                Entry::Vacant(slot) => {
                    let stream = StreamName::parse(&member_stream(source.member))
                        .map_err(|e| e.to_string())?;
                    let enrolled = log
                        .stream_head(&stream)
                        .map_err(|e| e.to_string())?
                        .is_some();
                    slot.insert(if enrolled {
                        Some(fold_member_as_of(&log, source.member, &|_| true)?)
                    } else {
                        None
                    })
                }
            };
            if let Some((member, _)) = state {
                let awards =
                    decide::earn(member, programme.at(source.occurred_at_us), &decided_source);
                let correlation = source.correlation();
                for (id, event) in &awards {
                    // Provisional envelope: the decisions of later sources in this batch
                    // need the award, not its final position.
                    let env = ledger::Envelope {
                        position: source.position,
                        event_id: *id,
                        occurred_at_us: source.occurred_at_us,
                    };
                    ledger::apply(member, &env, event);
                    staged
                        .entry(source.member)
                        .or_default()
                        .push(ProposedEvent {
                            causation_id: source.event_id.to_string(),
                            correlation_id: correlation.clone(),
                            ..proposed(*id, event, source.occurred_at_us, POLICY_ACTOR)
                        });
                    count += 1;
                }
            }
            decided.push(source);
            if count >= limits::LOYALTY_POLICY_BATCH_EVENTS {
                break;
            }
        }
        let mut appends = Vec::new();
        for (member, events) in staged {
            let revision = states
                .get(&member)
                .and_then(|s| s.as_ref())
                .and_then(|(_, r)| *r);
            appends.push(StreamAppend {
                stream: StreamName::parse(&member_stream(member)).map_err(|e| e.to_string())?,
                expected: revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact),
                events,
            });
        }
        Ok((decided, appends, sources.collect()))
    })
    .await
}

/// Decides and appends what one source earns. `None` when the customer is not a member.
async fn award(
    log: &Log,
    programme: &ProgrammeHistory,
    source: Owned,
) -> Result<Option<usize>, String> {
    let stream = StreamName::parse(&member_stream(source.member)).map_err(|e| e.to_string())?;
    let source = Arc::new(source);
    let Some(decided_source) = source.source() else {
        return Ok(None);
    };
    for _ in 0..limits::WRITE_RETRIES_MAX {
        let (log2, stream2, id) = (log.clone(), stream.clone(), source.member);
        let loaded = blocking(move || {
            if log2
                .stream_head(&stream2)
                .map_err(|e| e.to_string())?
                .is_none()
            {
                return Ok(None);
            }
            fold_member_as_of(&log2, id, &|_| true).map(Some)
        })
        .await?;
        let Some((member, revision)) = loaded else {
            return Ok(None);
        };
        let awards = decide::earn(
            &member,
            programme.at(source.occurred_at_us),
            &decided_source,
        );
        if awards.is_empty() {
            return Ok(Some(0));
        }
        let correlation = source.correlation();
        let events: Vec<ProposedEvent> = awards
            .iter()
            .map(|(id, event)| ProposedEvent {
                causation_id: source.event_id.to_string(),
                correlation_id: correlation.clone(),
                ..proposed(*id, event, source.occurred_at_us, POLICY_ACTOR)
            })
            .collect();
        let append = StreamAppend {
            stream: stream.clone(),
            expected: revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact),
            events,
        };
        match log.append(append).await {
            Ok(_) => return Ok(Some(awards.len())),
            Err(AppendError::WrongExpectedRevision { .. }) => continue,
            Err(AppendError::EventIdConflict { ids }) => {
                // The ids exist with other content: this source was awarded before under
                // a state that has changed since. It is not awarded again.
                tracing::warn!(?ids, source = %source.event_id, "loyalty award already written");
                return Ok(Some(0));
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    Err(format!(
        "member {} changed concurrently too many times while awarding {}",
        source.member, source.event_id
    ))
}

/// Moves a merged duplicate's ledger into its survivor's (see
/// [`decide::merge_ledger`]): the `LedgerMerged` parts go to both member streams in one
/// atomic append, each expecting the revision read, with ids derived from the merge event,
/// so a replay or a crash never moves a ledger twice (the duplicate's moved ledger decides
/// nothing more). Returns the parts written (0: nothing to move).
async fn merge_ledger(
    log: &Log,
    programme: &ProgrammeHistory,
    merge: &Owned,
) -> Result<usize, String> {
    let Body::Merge { duplicate } = merge.body else {
        return Ok(0);
    };
    let survivor = merge.member;
    if duplicate == survivor {
        return Ok(0);
    }
    let from = StreamName::parse(&member_stream(duplicate)).map_err(|e| e.to_string())?;
    let to = StreamName::parse(&member_stream(survivor)).map_err(|e| e.to_string())?;
    for _ in 0..limits::WRITE_RETRIES_MAX {
        let (log2, from2) = (log.clone(), from.clone());
        let loaded = blocking(move || {
            if log2
                .stream_head(&from2)
                .map_err(|e| e.to_string())?
                .is_none()
            {
                return Ok(None);
            }
            let dup = fold_member_as_of(&log2, duplicate, &|_| true)?;
            let to = fold_member_as_of(&log2, survivor, &|_| true)?;
            Ok(Some((dup, to)))
        })
        .await?;
        let Some(((dup, from_revision), (to_member, to_revision))) = loaded else {
            return Ok(0);
        };
        let parts = match decide::merge_ledger(
            &dup,
            &to_member,
            programme.at(merge.occurred_at_us),
            merge.event_id,
        ) {
            Ok(parts) => parts,
            Err(error) => {
                tracing::warn!(%error, "loyalty ledger not moved on merge");
                return Ok(0);
            }
        };
        if parts.is_empty() {
            return Ok(0);
        }
        let events = |side: &str| -> Vec<ProposedEvent> {
            parts
                .iter()
                .map(|part| {
                    let event = DomainEvent::LedgerMerged(part.clone());
                    ProposedEvent {
                        causation_id: merge.event_id.to_string(),
                        correlation_id: merge.correlation(),
                        ..proposed(
                            derived_event_id(
                                merge.event_id,
                                &format!("ledger {side} {}", part.part),
                            ),
                            &event,
                            merge.occurred_at_us,
                            POLICY_ACTOR,
                        )
                    }
                })
                .collect()
        };
        let appends = vec![
            StreamAppend {
                stream: from.clone(),
                expected: from_revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact),
                events: events("out"),
            },
            StreamAppend {
                stream: to.clone(),
                expected: to_revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact),
                events: events("in"),
            },
        ];
        match log.append_multi(appends).await {
            Ok(_) => return Ok(parts.len()),
            Err(AppendError::WrongExpectedRevision { .. }) => continue,
            Err(AppendError::EventIdConflict { ids }) => {
                tracing::warn!(?ids, merge = %merge.event_id, "loyalty ledger move already written");
                return Ok(0);
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    Err(format!(
        "members {duplicate} / {survivor} changed concurrently too many times while moving the ledger"
    ))
}

/// What one [`tick`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ticked {
    /// Members evaluated (on their streams).
    pub members: u64,
    /// Points expired.
    pub expired_points: u64,
    /// Tier changes.
    pub tier_changes: u64,
}

/// Appends, for each of `members`, the expiry and tier changes due at `as_of_us`
/// (business time; the events carry it as `occurred_at`). Exactly once per member
/// state: each append expects the revision it read, with ids derived from (member,
/// revision). Members are decided in batches (up to [`limits::LOYALTY_TICK_BATCH_MEMBERS`]
/// members or [`limits::LOYALTY_POLICY_BATCH_EVENTS`] events) whose appends go to the log
/// in one atomic multi-stream append — one group commit per batch instead of one per
/// member; a batch that meets a concurrent write is redone member by member.
pub async fn tick(
    log: &Log,
    members: impl IntoIterator<Item = Uuid>,
    as_of_us: i64,
    birthdays: &BirthdayLookup,
) -> Result<Ticked, String> {
    tick_batched(
        log,
        members,
        as_of_us,
        birthdays,
        limits::LOYALTY_TICK_BATCH_MEMBERS,
    )
    .await
}

/// [`tick`] with batches of at most `batch_members` members (at least 1; the benchmark
/// compares 1, one append per member, with the default).
pub async fn tick_batched(
    log: &Log,
    members: impl IntoIterator<Item = Uuid>,
    as_of_us: i64,
    birthdays: &BirthdayLookup,
    batch_members: usize,
) -> Result<Ticked, String> {
    let batch_members = batch_members.clamp(1, limits::LOYALTY_TICK_BATCH_MEMBERS);
    let programme = {
        let log2 = log.clone();
        Arc::new(blocking(move || fold_programme(&log2, &|_| true).map(|(h, _)| h)).await?)
    };
    let mut done = Ticked::default();
    let mut members: std::collections::VecDeque<Uuid> = members.into_iter().collect();
    while !members.is_empty() {
        let (log2, programme2, lookup) = (log.clone(), programme.clone(), birthdays.clone());
        // The queue goes into the blocking task and comes back with what is left: how many
        // members a batch takes depends on how many events their decisions make.
        let ((batch, rest), decided) = blocking(move || {
            let mut batch = Vec::new();
            let mut decided = Vec::new();
            let mut events = 0;
            while let Some(member) = members.pop_front() {
                batch.push(member);
                if let Some(found) = decide_tick(&log2, &programme2, member, as_of_us, &lookup)? {
                    events += found.1.len();
                    decided.push(found);
                }
                if batch.len() >= batch_members || events >= limits::LOYALTY_POLICY_BATCH_EVENTS {
                    break;
                }
            }
            Ok(((batch, members), decided))
        })
        .await?;
        members = rest;
        done.members += batch.len() as u64;
        if decided.is_empty() {
            continue;
        }
        let (appends, events): (Vec<StreamAppend>, Vec<Vec<DomainEvent>>) =
            decided.into_iter().unzip();
        match log.append_multi(appends).await {
            Ok(_) => events
                .iter()
                .flatten()
                .for_each(|e| count_tick(&mut done, e)),
            Err(
                AppendError::WrongExpectedRevision { .. } | AppendError::EventIdConflict { .. },
            ) => {
                for member in batch {
                    tick_one(log, &programme, member, as_of_us, birthdays, &mut done).await?;
                }
            }
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(done)
}

fn count_tick(done: &mut Ticked, event: &DomainEvent) {
    match event {
        DomainEvent::PointsExpired(x) => {
            done.expired_points += x.lines.iter().map(|l| l.points).sum::<u64>();
        }
        DomainEvent::TierChanged(_) => done.tier_changes += 1,
        _ => {}
    }
}

/// What the tick appends for one member now: its stream's append (expecting the
/// revision folded) and the events, or `None` when nothing is due.
fn decide_tick(
    log: &Log,
    programme: &ProgrammeHistory,
    member: Uuid,
    as_of_us: i64,
    birthdays: &BirthdayLookup,
) -> Result<Option<(StreamAppend, Vec<DomainEvent>)>, String> {
    let stream = StreamName::parse(&member_stream(member)).map_err(|e| e.to_string())?;
    let (state, revision): (Member, Option<u64>) = fold_member_as_of(log, member, &|_| true)?;
    let in_force = programme.at(as_of_us);
    let birthday = if in_force.is_some_and(has_birthday_bonus) && state.is_active() {
        birthdays(member)
    } else {
        None
    };
    let events = decide::tick(&state, in_force, as_of_us, birthday);
    if events.is_empty() {
        return Ok(None);
    }
    let base = derived_event_id(member, &format!("tick {revision:?}"));
    let proposed_events = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            proposed(
                derived_event_id(base, &i.to_string()),
                e,
                as_of_us,
                TICK_ACTOR,
            )
        })
        .collect();
    let append = StreamAppend {
        stream,
        expected: revision.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact),
        events: proposed_events,
    };
    Ok(Some((append, events)))
}

/// One member's tick, re-decided on a concurrent write (the fallback of a batch).
async fn tick_one(
    log: &Log,
    programme: &Arc<ProgrammeHistory>,
    member: Uuid,
    as_of_us: i64,
    birthdays: &BirthdayLookup,
    done: &mut Ticked,
) -> Result<(), String> {
    for _ in 0..limits::WRITE_RETRIES_MAX {
        let (log2, programme2, lookup) = (log.clone(), programme.clone(), birthdays.clone());
        let Some((append, events)) =
            blocking(move || decide_tick(&log2, &programme2, member, as_of_us, &lookup)).await?
        else {
            return Ok(());
        };
        match log.append(append).await {
            Ok(_) => {
                events.iter().for_each(|e| count_tick(done, e));
                return Ok(());
            }
            Err(AppendError::WrongExpectedRevision { .. }) => continue,
            Err(AppendError::EventIdConflict { .. }) => return Ok(()),
            Err(error) => return Err(error.to_string()),
        }
    }
    Ok(())
}

/// Where a tick finds a member's birthday (month, day): read from the birth date of the
/// customer's registration, which is sealed personal data, so only code holding the key
/// store can answer. `None`: unknown (no birth date, erased, or no keys).
pub type BirthdayLookup = Arc<dyn Fn(Uuid) -> Option<decide::Birthday> + Send + Sync>;

fn has_birthday_bonus(programme: &crate::domain::loyalty::Programme) -> bool {
    programme
        .bonuses
        .iter()
        .any(|b| b.trigger == crate::domain::loyalty::config::BonusTrigger::Birthday)
}

fn birthday_of(
    privacy: &Privacy,
    profile: &crate::domain::profile::Profile,
) -> Option<decide::Birthday> {
    let identity: CustomerIdentity = privacy.open_ref(profile.identity.as_ref()?)?;
    let date = identity.birth_date?;
    Some((u32::from(date.month), u32::from(date.day)))
}

/// Birthdays from the `customers` read model, opened with `privacy` (the server's tick).
pub fn birthdays_from_profiles(projections: Projections, privacy: Privacy) -> BirthdayLookup {
    Arc::new(move |id| {
        let view = projections
            .reader(crate::projections::customers::NAME)
            .ok()?;
        let profile = crate::projections::customers::read(&view.tree, id).ok()??;
        birthday_of(&privacy, &profile)
    })
}

/// Birthdays folded from the customers' own streams, opened with `privacy` (the offline
/// tick, which has no running read model). No key store: no birthdays.
pub fn birthdays_from_log(log: Log, privacy: Option<Privacy>) -> BirthdayLookup {
    Arc::new(move |id| {
        let privacy = privacy.as_ref()?;
        let (profile, _) =
            crate::projections::customers::fold_as_of(&log, id, &|_| true).ok()??;
        birthday_of(privacy, &profile)
    })
}

/// No birthdays known: birthday bonuses are not awarded.
pub fn no_birthdays() -> BirthdayLookup {
    Arc::new(|_| None)
}

/// The members of the `loyalty` read model for which a tick at `as_of_us` would append
/// something (points lapsed with some left, or a tier move), in id order: a cheap scan
/// of folded members, so a tick reads and re-decides only their streams. A lagging read
/// model only delays a member to the next tick; the tick itself decides on the stream.
pub fn due_members(
    tree: &sled::Tree,
    as_of_us: i64,
    birthdays: &BirthdayLookup,
) -> Result<Vec<Uuid>, String> {
    let history = crate::projections::loyalty::read_programme(tree)?;
    let programme = history.at(as_of_us);
    let birthday_bonus = programme.is_some_and(has_birthday_bonus);
    let mut due = Vec::new();
    for member in crate::projections::loyalty::scan_members(tree, None) {
        let member = member?;
        let birthday = if birthday_bonus && member.is_active() {
            birthdays(member.customer_id)
        } else {
            None
        };
        if !decide::tick(&member, programme, as_of_us, birthday).is_empty() {
            due.push(member.customer_id);
        }
    }
    Ok(due)
}

/// Runs the policy (after every move of the log's head) and the tick (every
/// [`limits::LOYALTY_TICK_MS`] of wall time, as of the clock's now, for the members the
/// `loyalty` read model shows due) until `stop`.
pub async fn run(
    log: Log,
    projections: Projections,
    privacy: Privacy,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let birthdays = birthdays_from_profiles(projections.clone(), privacy);
    let mut policy = match Policy::open(&log) {
        Ok(policy) => policy,
        Err(error) => {
            tracing::error!(%error, "loyalty policy cannot open its state; not running");
            return;
        }
    };
    let mut heads = log.watch_head();
    let mut next_tick = tokio::time::Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        heads.borrow_and_update();
        match follow(&log, &mut policy).await {
            Ok(done) if done.awards > 0 => tracing::debug!(?done, "loyalty points awarded"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "loyalty policy round failed"),
        }
        if tokio::time::Instant::now() >= next_tick {
            let now = clock.now_us();
            let due = match projections.reader(crate::projections::loyalty::NAME) {
                Ok(view) => {
                    let (tree, lookup) = (view.tree.clone(), birthdays.clone());
                    blocking(move || due_members(&tree, now, &lookup)).await
                }
                Err(error) => Err(error.to_string()),
            };
            let members = due.unwrap_or_else(|error| {
                tracing::warn!(%error, "loyalty read model unreadable; ticking every member");
                policy.members().iter().copied().collect()
            });
            match tick(&log, members, now, &birthdays).await {
                Ok(done) if done.expired_points + done.tier_changes > 0 => {
                    tracing::debug!(?done, "loyalty tick");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "loyalty tick failed"),
            }
            next_tick =
                tokio::time::Instant::now() + Duration::from_millis(limits::LOYALTY_TICK_MS);
        }
        let moved = tokio::select! {
            _ = heads.changed() => true,
            _ = tokio::time::sleep_until(next_tick) => false,
            _ = stop.changed() => false,
        };
        // As the projection runners do: on a busy log, let a few appends gather so that one
        // round reads (and checkpoints) several of them.
        if moved {
            tokio::time::sleep(Duration::from_millis(limits::PROJECTION_FOLLOW_GATHER_MS)).await;
        }
    }
}

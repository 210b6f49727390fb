//! The `rapport.v1.EventStore` service: validate limits → convert → call the log →
//! convert back (reads: encode straight to protobuf bytes, [`super::wire`]). No business
//! logic lives here.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::append_wire::{WireAppendRequest, WireProposedEvent, custom_to_stored};
use super::convert::{event_from_proto, timestamp_to_us};
use super::encoded::{Encoded, PREFIX_BYTES, length_prefix, status_trailers};
use super::pb;
use super::status::{invalid_argument, invalid_field};
use super::wire;
use crate::domain::events::CustomEvent;
use crate::domain::{DomainEvent, Violations};
use crate::limits;
use crate::log::{
    ChunkPage, ExpectedRevision, FastSet, Log, ParsedChunk, ProposedEvent, ReadFilter,
    StreamAppend, StreamName, same_envelope,
};
use crate::privacy::{Privacy, PrivacyError};

/// The EventStore service over one log.
#[derive(Clone)]
pub struct EventStoreService {
    log: Log,
    privacy: Privacy,
    subscriptions: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
}

impl EventStoreService {
    /// A service over `log`, sealing and opening personal data with `privacy`;
    /// subscriptions end when `shutdown` turns true.
    pub fn new(log: Log, privacy: Privacy, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            log,
            privacy,
            subscriptions: Arc::new(Semaphore::new(limits::SUBSCRIPTIONS_MAX)),
            shutdown,
        }
    }

    /// `Append` for a request decoded as [`WireAppendRequest`] (how the server mounts it,
    /// [`super::encoded::EventStoreEdge`]).
    pub async fn append_wire(
        &self,
        request: Request<WireAppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        let pending = append_from_wire(request.into_inner())?;
        let append = if pending.creates_keys(&self.privacy) {
            // A new customer's key is written durably first: off the async workers, and
            // only for an append not refused anyway.
            let (privacy, log) = (self.privacy.clone(), self.log.clone());
            let sealed = tokio::task::spawn_blocking(move || {
                if let Some(outcome) = pending.resent_after_erasure(&log, &privacy)? {
                    return Ok(Err(outcome));
                }
                pending.refuse_before_keys(&log)?;
                pending.seal(&privacy).map(Ok)
            })
            .await
            .map_err(|e| Status::internal(format!("sealing task failed: {e}")))??;
            match sealed {
                Ok(append) => append,
                Err(outcome) => return Ok(Response::new(outcome)),
            }
        } else {
            pending.seal(&self.privacy)?
        };
        let outcome = self.log.append(append).await?;
        Ok(Response::new(pb::AppendResponse {
            first_position: outcome.first_position,
            last_position: outcome.last_position,
            last_revision: outcome.last_revision,
        }))
    }
}

/// A validated append whose events with personal data still need sealing (their
/// payloads are empty until [`PendingAppend::seal`]).
pub struct PendingAppend {
    append: StreamAppend,
    personal: Vec<(usize, DomainEvent)>,
}

impl PendingAppend {
    /// True when sealing must create a customer's key first (a durable write to the key
    /// store: blocking). Sealing with existing keys is some microseconds of CPU.
    pub fn creates_keys(&self, privacy: &Privacy) -> bool {
        self.personal.iter().any(|(_, event)| {
            event
                .personal_owner()
                .is_some_and(|owner| privacy.keys().data_key(owner).is_none())
        })
    }

    /// A re-send of events whose customer was erased since they landed: the key is gone,
    /// so they cannot be sealed again and compared whole, and sealing would refuse them
    /// (`FAILED_PRECONDITION`) though idempotency comes first. When every event carries
    /// the client's id, all of them are in the log in this order, in this stream, with
    /// the same envelope ([`same_envelope`]) and, for events without personal data, the
    /// same payload, the answer is their original positions. `None` otherwise, and for
    /// any append that names no erased customer.
    pub fn resent_after_erasure(
        &self,
        log: &Log,
        privacy: &Privacy,
    ) -> Result<Option<pb::AppendResponse>, Status> {
        let names_erased = self.personal.iter().any(|(_, event)| {
            event
                .personal_owner()
                .is_some_and(|owner| privacy.keys().is_erased(owner))
        });
        if !names_erased {
            return Ok(None);
        }
        let stream = self.append.stream.as_str();
        let mut found = Vec::with_capacity(self.append.events.len());
        for (index, proposed) in self.append.events.iter().enumerate() {
            let Some(id) = proposed.event_id else {
                return Ok(None);
            };
            let Some(logged) = log.event_by_id(id)? else {
                return Ok(None);
            };
            let stored = logged.event;
            // `personal` is in event order.
            let personal = self
                .personal
                .binary_search_by_key(&index, |(i, _)| *i)
                .is_ok();
            if !same_envelope(stream, proposed, &stored)
                || (!personal && stored.payload != proposed.payload)
            {
                return Ok(None);
            }
            found.push(stored);
        }
        let in_order = found.windows(2).all(|w| w[0].position < w[1].position);
        match (found.first(), found.last()) {
            (Some(first), Some(last)) if in_order => Ok(Some(pb::AppendResponse {
                first_position: first.position,
                last_position: last.position,
                last_revision: last.revision,
            })),
            _ => Ok(None),
        }
    }

    /// For an append whose sealing would create a customer's key, the refusals the writer
    /// would answer anyway that can be known before the key is written: an event too
    /// large once sealed, and an expectation the stream's durable head does not meet. So
    /// a refused append leaves no key behind ("a rejected request changes nothing"). An
    /// append naming an id already in the log goes on to the writer, whose idempotency
    /// comes first. (An append racing this check to the same stream can still turn the
    /// writer's answer; its customer then has events, so the key is not a stray.)
    pub fn refuse_before_keys(&self, log: &Log) -> Result<(), Status> {
        let stream = self.append.stream.as_str();
        let mut sized = self.personal.clone();
        {
            let mut refs: Vec<(&str, Uuid, &mut DomainEvent)> = sized
                .iter_mut()
                .map(|(index, event)| {
                    let id = self.append.events[*index].event_id.unwrap_or(Uuid::nil());
                    (stream, id, event)
                })
                .collect();
            Privacy::seal_events_for_size(&mut refs);
        }
        let mut v = Violations::new("");
        for (index, event) in &sized {
            let payload = event
                .encode()
                .map_err(|error| Status::internal(error.to_string()))?;
            check_payload_size(|| format!("events[{index}].event"), &payload, &mut v);
        }
        v.into_result().map_err(invalid_argument)?;
        for proposed in &self.append.events {
            if let Some(id) = proposed.event_id
                && log.event_by_id(id)?.is_some()
            {
                return Ok(());
            }
        }
        let actual = log.stream_head(&self.append.stream)?.map(|h| h.revision);
        if !self.append.expected.admits(actual) {
            return Err(crate::log::AppendError::WrongExpectedRevision {
                stream: stream.to_owned(),
                expected: self.append.expected,
                actual,
            }
            .into());
        }
        Ok(())
    }

    /// Seals personal parts with the owner's key, bound to the stream and the event id
    /// (assigned here when the client gave none), and encodes them.
    pub fn seal(self, privacy: &Privacy) -> Result<StreamAppend, Status> {
        let Self {
            mut append,
            mut personal,
        } = self;
        if personal.is_empty() {
            return Ok(append);
        }
        let stream = append.stream.as_str().to_owned();
        for (index, _) in &personal {
            append.events[*index]
                .event_id
                .get_or_insert_with(Uuid::now_v7);
        }
        {
            let mut refs: Vec<(&str, Uuid, &mut DomainEvent)> = personal
                .iter_mut()
                .map(|(index, event)| {
                    let id = append.events[*index].event_id.expect("assigned above");
                    (stream.as_str(), id, event)
                })
                .collect();
            privacy.seal_events(&mut refs).map_err(|error| match error {
                PrivacyError::WrongStream { owner, .. } => invalid_field(
                    "stream",
                    format!(
                        "events with personal data of customer {owner} belong in stream customer-{owner}"
                    ),
                ),
                other => other.into(),
            })?;
        }
        let mut v = Violations::new("");
        for (index, event) in personal {
            let payload = match event.encode() {
                Ok(payload) => payload,
                Err(error) => return Err(Status::internal(error.to_string())),
            };
            check_payload_size(|| format!("events[{index}].event"), &payload, &mut v);
            append.events[index].payload = payload;
        }
        v.into_result().map_err(invalid_argument)?;
        Ok(append)
    }
}

/// Validates and converts an `AppendRequest` into a log append (personal data not yet
/// sealed).
pub fn append_from_proto(request: pb::AppendRequest) -> Result<PendingAppend, Status> {
    append_from_wire(WireAppendRequest::from(request))
}

/// [`append_from_proto`] for a request decoded as the server decodes it: each event's
/// body still encoded, so a custom event's data goes straight to its stored bytes.
pub fn append_from_wire(request: WireAppendRequest) -> Result<PendingAppend, Status> {
    let WireAppendRequest {
        request: pb::AppendRequest {
            stream, expected, ..
        },
        events,
    } = request;
    let mut v = Violations::new("");
    let stream = match StreamName::parse(&stream) {
        Ok(stream) => Some(stream),
        Err(error) => {
            v.add("stream", error.to_string());
            None
        }
    };
    if events.is_empty() {
        v.add("events", "an append needs at least one event");
    } else if events.len() > limits::EVENTS_PER_APPEND_MAX {
        v.add(
            "events",
            format!(
                "{} events; the limit per append is {}",
                events.len(),
                limits::EVENTS_PER_APPEND_MAX
            ),
        );
        return Err(invalid_argument(v.into_vec()));
    }
    let expected = match expected {
        None | Some(pb::append_request::Expected::Any(())) => ExpectedRevision::Any,
        Some(pb::append_request::Expected::NoStream(())) => ExpectedRevision::NoStream,
        Some(pb::append_request::Expected::StreamExists(())) => ExpectedRevision::StreamExists,
        Some(pb::append_request::Expected::Exact(revision)) => ExpectedRevision::Exact(revision),
    };
    let mut proposed = Vec::with_capacity(events.len());
    let mut personal = Vec::new();
    let mut seen_ids = FastSet::with_capacity_and_hasher(events.len(), Default::default());
    for (index, event) in events.into_iter().enumerate() {
        if let Some((p, unsealed)) = proposed_from_proto(index, event, &mut v, &mut seen_ids) {
            if let Some(event) = unsealed {
                personal.push((proposed.len(), event));
            }
            proposed.push(p);
        }
    }
    match (stream, v.is_empty()) {
        (Some(stream), true) => Ok(PendingAppend {
            append: StreamAppend {
                stream,
                expected,
                events: proposed,
            },
            personal,
        }),
        _ => Err(invalid_argument(v.into_vec())),
    }
}

fn proposed_from_proto(
    index: usize,
    event: WireProposedEvent,
    v: &mut Violations,
    seen_ids: &mut FastSet<Uuid>,
) -> Option<(ProposedEvent, Option<DomainEvent>)> {
    let WireProposedEvent {
        envelope: event,
        body,
    } = event;
    let pb::ProposedEvent {
        event_id,
        event: _,
        occurred_at,
        metadata,
        correlation_id,
        causation_id,
        actor,
        source_channel,
    } = event;
    let at = |field: &str| format!("events[{index}].{field}");
    let event_id = if event_id.is_empty() {
        None
    } else {
        match Uuid::parse_str(&event_id) {
            Ok(id) if id.is_nil() => {
                v.add(&at("event_id"), "must not be the nil UUID");
                None
            }
            Ok(id) => {
                if !seen_ids.insert(id) {
                    v.add(
                        &at("event_id"),
                        format!("{id} appears more than once in the append"),
                    );
                }
                Some(id)
            }
            Err(_) => {
                v.add(
                    &at("event_id"),
                    "must be a UUID (or empty for a server-assigned one)",
                );
                None
            }
        }
    };
    let occurred_at_us = occurred_at.and_then(|ts| timestamp_to_us(&at("occurred_at"), &ts, v));
    if metadata.len() > limits::METADATA_ENTRIES_MAX {
        v.add(
            &at("metadata"),
            format!(
                "{} entries; the limit is {}",
                metadata.len(),
                limits::METADATA_ENTRIES_MAX
            ),
        );
    }
    for (key, value) in &metadata {
        if key.is_empty() || key.len() > limits::METADATA_KEY_BYTES_MAX {
            v.add(
                &at("metadata"),
                format!("keys must be 1..={} bytes", limits::METADATA_KEY_BYTES_MAX),
            );
        }
        // Field paths are built only for a violation: formatting them for every field
        // of every event was a visible share of a batch append's decoding.
        if value.len() > limits::METADATA_VALUE_BYTES_MAX {
            v.max_len(
                &at(&format!("metadata[{key}]")),
                value,
                limits::METADATA_VALUE_BYTES_MAX,
            );
        }
    }
    for (name, value) in [
        ("correlation_id", &correlation_id),
        ("causation_id", &causation_id),
        ("actor", &actor),
        ("source_channel", &source_channel),
    ] {
        if value.len() > limits::ENVELOPE_STRING_BYTES_MAX {
            v.max_len(&at(name), value, limits::ENVELOPE_STRING_BYTES_MAX);
        }
    }
    let Some(body) = body else {
        v.add(&at("event"), "is required");
        return None;
    };
    let envelope = |event_type: String, schema_version: u16, payload: Vec<u8>| ProposedEvent {
        event_id,
        event_type,
        schema_version,
        payload,
        occurred_at_us,
        metadata: metadata.into_iter().collect(),
        correlation_id,
        causation_id,
        actor,
        source_channel,
    };
    if let Some((event_type, payload)) = custom_to_stored(&body) {
        check_payload_size(|| at("event"), &payload, v);
        return Some((
            envelope(event_type, CustomEvent::SCHEMA_VERSION, payload),
            None,
        ));
    }
    let body = match <pb::Event as prost::Message>::decode(body) {
        Ok(body) => body,
        Err(error) => {
            v.add(
                &at("event"),
                format!("is not a valid Event message: {error}"),
            );
            return None;
        }
    };
    let event_path = at("event");
    let mut body_violations = Violations::new(event_path.clone());
    let Some(domain) = event_from_proto(body, &mut body_violations) else {
        // An `Event` with no case set: report it, never drop the event from the batch.
        for violation in body_violations.into_vec() {
            v.add(&violation.field, violation.description);
        }
        return None;
    };
    // These carry the customer model's own invariants (one merge per duplicate, no
    // cycles; an erasure with its deleted keys; the uniqueness reservations): only the
    // Customers service writes them, after checking its rules.
    let service_only = match &domain {
        DomainEvent::CustomersMerged(_) => Some(("the Customers service", "MergeCustomers")),
        DomainEvent::CustomerErased(_) => Some(("the Customers service", "EraseCustomer")),
        DomainEvent::IdentifierClaimed(_) | DomainEvent::IdentifierReleased(_) => Some((
            "the Customers service",
            "RegisterCustomer / UpdateContactDetails",
        )),
        DomainEvent::SegmentDefined(_)
        | DomainEvent::SegmentChanged(_)
        | DomainEvent::SegmentArchived(_) => Some((
            "the Analytics service",
            "DefineSegment / ChangeSegment / ArchiveSegment",
        )),
        DomainEvent::CustomerEnteredSegment(_) | DomainEvent::CustomerLeftSegment(_) => {
            Some(("the segment job", "it evaluates the segment rules"))
        }
        // Loyalty (issue 5): the ledger's invariants (no overdraw, exactly-once awards,
        // FIFO lines) hold only if the service, the policy and the tick write it.
        DomainEvent::ProgrammeDefined(_)
        | DomainEvent::ProgrammeChanged(_)
        | DomainEvent::RewardDefined(_)
        | DomainEvent::RewardRetired(_)
        | DomainEvent::RewardClaimed(_)
        | DomainEvent::MemberEnrolled(_)
        | DomainEvent::MemberLeft(_)
        | DomainEvent::PointsSpent(_)
        | DomainEvent::PointsAdjusted(_)
        | DomainEvent::PointsTransferred(_) => Some((
            "the Loyalty service",
            "DefineProgramme / DefineReward / Enrol / SpendPoints / RedeemReward / ...",
        )),
        DomainEvent::PointsEarned(_)
        | DomainEvent::PointsCancelled(_)
        | DomainEvent::PointsExpired(_)
        | DomainEvent::TierChanged(_)
        | DomainEvent::LedgerMerged(_) => Some((
            "the loyalty policy and tick",
            "they follow purchases, refunds, merges and time",
        )),
        // Sales pipelines (issue 4): the deal, lead, account, pipeline and task rules (stage
        // moves only within the deal's pipeline, no stage removed while it has deals, a lead
        // qualified once, linked both ways) hold only if the Pipeline service writes them.
        event if crate::projections::pipeline::target(event).is_some() => Some((
            "the Pipeline service",
            "its commands (CreateAccount, OpenDeal, MoveDealStage, ...)",
        )),
        _ => None,
    };
    if let Some((who, how)) = service_only {
        v.add(
            &event_path,
            format!(
                "{} is written by {who} only ({how}), which checks its rules",
                domain.event_type()
            ),
        );
    }
    let converted = body_violations.into_vec();
    if let Err(found) = domain.validate(&event_path) {
        // A field that did not convert (a malformed UUID becomes nil) is reported once,
        // with the conversion's reason, not also as "must not be the nil UUID".
        for violation in found {
            if !converted.iter().any(|c| c.field == violation.field) {
                v.add(&violation.field, violation.description);
            }
        }
    }
    for violation in converted {
        v.add(&violation.field, violation.description);
    }
    let event_type = domain.event_type().to_owned();
    let schema_version = domain.schema_version();
    if domain.has_personal_parts() {
        // Sealed (and size-checked) once the event id is known.
        return Some((
            envelope(event_type, schema_version, Vec::new()),
            Some(domain),
        ));
    }
    let payload = match domain.encode() {
        Ok(payload) => payload,
        Err(error) => {
            v.add(&at("event"), error.to_string());
            Vec::new()
        }
    };
    check_payload_size(|| at("event"), &payload, v);
    Some((envelope(event_type, schema_version, payload), None))
}

/// The payload limit, checked on an event's stored bytes.
fn check_payload_size(field: impl FnOnce() -> String, payload: &[u8], v: &mut Violations) {
    // The field path is formatted only for a violation: formatting it for every event
    // was ~7 % of the async workers' time under batched appends (perf).
    if payload.len() > limits::PAYLOAD_BYTES_MAX {
        v.add(
            &field(),
            format!(
                "encoded payload is {} bytes; the limit is {}",
                payload.len(),
                limits::PAYLOAD_BYTES_MAX
            ),
        );
    }
}

/// Validates a filter and converts it.
pub fn filter_from_proto(filter: Option<pb::Filter>) -> Result<ReadFilter, Status> {
    let pb::Filter {
        stream_prefixes,
        event_types,
    } = filter.unwrap_or_default();
    let mut v = Violations::new("filter");
    for (name, list) in [
        ("stream_prefixes", &stream_prefixes),
        ("event_types", &event_types),
    ] {
        v.max_items(name, list.len(), limits::FILTER_ITEMS_MAX);
        for (i, item) in list.iter().enumerate() {
            v.required(&format!("{name}[{i}]"), item, limits::STREAM_NAME_BYTES_MAX);
        }
    }
    v.into_result().map_err(invalid_argument)?;
    Ok(ReadFilter {
        stream_prefixes,
        event_types,
    })
}

/// Caps a requested page size: 0 is the default, above the cap is capped.
pub fn page_size(max_count: u32) -> usize {
    match max_count {
        0 => limits::READ_PAGE_DEFAULT as usize,
        n => n.min(limits::READ_PAGE_MAX) as usize,
    }
}

/// A page as the bytes of its `ReadResponse` (see [`super::wire`]).
/// What a read page's cursor counts (DESIGN §5 fine print on paging).
#[derive(Clone, Copy)]
enum Cursor {
    /// `ReadAll`: global positions.
    Position,
    /// `ReadStream`: stream revisions.
    Revision,
}

/// A page left in its chunks (of the whole log or of a stream, either way) as its
/// `ReadResponse`, stopping before the message passes [`limits::READ_PAGE_BYTES_MAX`]
/// (one event at least): each event is written borrowed from its chunk, never decoded
/// into an owned event. A forward page cut short continues at the first event left out;
/// a backward one strictly below the last event sent.
fn chunk_page_bytes(
    page: ChunkPage,
    backwards: bool,
    cursor: Cursor,
    privacy: &Privacy,
) -> Result<Encoded, Status> {
    let events = &page.events;
    response_bytes(
        events.len(),
        (page.end_reached, page.next_cursor),
        backwards,
        |i, out| {
            let (chunk, index) = &events[i];
            let event = chunk.layout.view(&chunk.value, *index)?;
            let hash = &chunk.layout.hashes[*index];
            wire::put_read_response_view(out, &event, hash, None, Some(privacy))
        },
        |i| {
            let (chunk, index) = &events[i];
            Ok(match cursor {
                Cursor::Position => chunk.first + *index as u64,
                // Only a cut page asks, once: the event's envelope is viewed again.
                Cursor::Revision => chunk.layout.view(&chunk.value, *index)?.revision,
            })
        },
    )
}

/// The `ReadResponse` of `count` events written by `put`, cut before the message passes
/// [`limits::READ_PAGE_BYTES_MAX`] (one event at least): a cut page continues at the
/// cursor `cursor_of` gives for the first event left out (forward) or the last one sent
/// (backward); a whole page ends with the read's own `(end_reached, next_cursor)`.
fn response_bytes(
    count: usize,
    (end_reached, next_cursor): (bool, u64),
    backwards: bool,
    mut put: impl FnMut(usize, &mut Vec<u8>) -> Result<(), Status>,
    cursor_of: impl Fn(usize) -> Result<u64, Status>,
) -> Result<Encoded, Status> {
    let mut out = Vec::with_capacity(count * 512);
    let mut sent = 0;
    for i in 0..count {
        let start = out.len();
        put(i, &mut out)?;
        if out.len() > limits::READ_PAGE_BYTES_MAX && sent > 0 {
            out.truncate(start);
            break;
        }
        sent += 1;
    }
    let (end_reached, next_cursor) = if sent < count {
        let at = if backwards { sent - 1 } else { sent };
        (false, cursor_of(at)?)
    } else {
        (end_reached, next_cursor)
    };
    wire::put_read_response_end(&mut out, end_reached, next_cursor);
    Ok(Encoded(out.into()))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Status::internal(format!("read task failed: {e}")))?
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::RecordedEvent, Status>> + Send>>;

/// The read RPCs, answering with protobuf bytes written straight from the stored events
/// ([`super::wire`]). [`super::encoded::EventStoreEdge`] serves these; the generated
/// trait's methods (below) decode the same bytes, for callers of the plain service.
impl EventStoreService {
    /// `ReadStream`, its `ReadResponse` encoded.
    pub async fn read_stream_encoded(
        &self,
        request: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<Encoded>, Status> {
        let pb::ReadStreamRequest {
            stream,
            from_revision,
            backwards,
            max_count,
        } = request.into_inner();
        let stream =
            StreamName::parse(&stream).map_err(|e| invalid_field("stream", e.to_string()))?;
        let count = page_size(max_count);
        let max_bytes = limits::READ_PAGE_BYTES_MAX;
        // A short page (most customer streams) is read and encoded right here: bounded
        // work, cheaper than the hand-off to a blocking thread and back.
        let quick = count.min(limits::READ_INLINE_EVENTS);
        let first = match self.log.read_stream_in_chunks_quick(
            &stream,
            from_revision,
            backwards,
            quick,
            max_bytes,
        )? {
            // Done: the stream ends within it, it is the whole page, or the byte bound
            // cut it (a valid page that continues at its cursor).
            Some(page)
                if page.end_reached
                    || page.events.len() < quick
                    || page.events.len() >= count
                    || page.stored_bytes() >= max_bytes =>
            {
                let bytes = chunk_page_bytes(page, backwards, Cursor::Revision, &self.privacy)?;
                return Ok(Response::new(bytes));
            }
            other => other,
        };
        let log = self.log.clone();
        let privacy = self.privacy.clone();
        // The rest of a longer page (up to 1000 events) is blocking work: read and
        // encoded off the async workers, after the events read above.
        let page = blocking(move || {
            let page = match first {
                None => {
                    log.read_stream_in_chunks(&stream, from_revision, backwards, count, max_bytes)?
                }
                Some(mut first) => {
                    let rest = log.read_stream_in_chunks(
                        &stream,
                        first.next_cursor,
                        backwards,
                        count - first.events.len(),
                        max_bytes - first.stored_bytes(),
                    )?;
                    first.events.extend(rest.events);
                    first.end_reached = rest.end_reached;
                    first.next_cursor = rest.next_cursor;
                    first
                }
            };
            chunk_page_bytes(page, backwards, Cursor::Revision, &privacy)
        })
        .await?;
        Ok(Response::new(page))
    }

    /// `ReadAll`, its `ReadResponse` encoded.
    pub async fn read_all_encoded(
        &self,
        request: Request<pb::ReadAllRequest>,
    ) -> Result<Response<Encoded>, Status> {
        let pb::ReadAllRequest {
            from_position,
            backwards,
            max_count,
            filter,
        } = request.into_inner();
        let filter = filter_from_proto(filter)?;
        let log = self.log.clone();
        let privacy = self.privacy.clone();
        let page = blocking(move || {
            let (count, bytes) = (page_size(max_count), limits::READ_PAGE_BYTES_MAX);
            let page = log.read_all_in_chunks(from_position, backwards, count, bytes, &filter)?;
            chunk_page_bytes(page, backwards, Cursor::Position, &privacy)
        })
        .await?;
        Ok(Response::new(page))
    }

    /// `Subscribe`, each `RecordedEvent` encoded.
    pub fn subscribe_encoded(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<EncodedStream>, Status> {
        let receiver = self.start_subscription(request.into_inner())?;
        Ok(Response::new(EncodedStream {
            receiver,
            current: Batch::default(),
            next: 0,
            ended: false,
        }))
    }

    /// `Subscribe` as the response body itself: each step's messages, already behind their
    /// gRPC length prefixes, go out as one frame of data, without tonic's copy of every
    /// message into its own buffer; the trailers carry the status that ends it.
    pub fn subscribe_body(
        &self,
        request: pb::SubscribeRequest,
    ) -> Result<SubscriptionBody, Status> {
        Ok(SubscriptionBody {
            receiver: self.start_subscription(request)?,
            error: None,
            done: false,
        })
    }

    /// Checks a subscription request, takes one of the subscription slots and starts
    /// feeding the subscription ([`follow`]); returns where its batches arrive.
    fn start_subscription(
        &self,
        request: pb::SubscribeRequest,
    ) -> Result<mpsc::Receiver<Batch>, Status> {
        let pb::SubscribeRequest {
            after_position,
            filter,
        } = request;
        let filter = filter_from_proto(filter)?;
        let permit = self
            .subscriptions
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "the limit of {} open subscriptions is reached; retry later",
                    limits::SUBSCRIPTIONS_MAX
                ))
            })?;
        let (sender, receiver) = mpsc::channel(limits::SUBSCRIPTION_BUFFER_BATCHES);
        let log = self.log.clone();
        let privacy = self.privacy.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            follow(log, privacy, after_position, filter, sender, shutdown).await;
        });
        Ok(receiver)
    }
}

#[tonic::async_trait]
impl pb::event_store_server::EventStore for EventStoreService {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        self.append_wire(request.map(WireAppendRequest::from)).await
    }

    async fn read_stream(
        &self,
        request: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let encoded = self.read_stream_encoded(request).await?;
        Ok(Response::new(encoded.into_inner().decode()?))
    }

    async fn read_all(
        &self,
        request: Request<pb::ReadAllRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let encoded = self.read_all_encoded(request).await?;
        Ok(Response::new(encoded.into_inner().decode()?))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let encoded = self.subscribe_encoded(request)?.into_inner();
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(
            encoded,
            |item| item.and_then(|message| message.decode()),
        ))))
    }

    async fn get_head(&self, _request: Request<()>) -> Result<Response<pb::LogHead>, Status> {
        let head = self.log.head();
        Ok(Response::new(pb::LogHead {
            position: head.position,
            hash: head.hash.to_vec(),
        }))
    }
}

/// Feeds one subscription: reads and encodes its events in steps (bounded in events and
/// bytes) on the blocking pool at the subscriber's pace (the bounded channel blocks this
/// task when the subscriber is slow), then waits for the writer to publish a new head.
/// Ends when the subscriber goes away or on shutdown.
///
/// Each step covers a window of [`limits::SUBSCRIPTION_READ_BATCH`] positions, so the
/// windows ahead are known before the current one is read and
/// [`limits::SUBSCRIPTION_READS_AHEAD`] of them are read and encoded at once, on both
/// cores: one reader at a time left a replay's cores a quarter idle (BENCHMARKS.md). A
/// step that stops early at its byte bound is followed by a step over the rest of its
/// window, so the events go out in order, without gaps.
///
/// A step travels as one channel message: per-event sends cost a wake-up each and
/// kept the network task from batching its writes (measured in BENCHMARKS.md).
async fn follow(
    log: Log,
    privacy: Privacy,
    after_position: u64,
    filter: ReadFilter,
    sender: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut heads = log.watch_head();
    // The first position no step in flight covers yet.
    let mut planned = after_position.saturating_add(1);
    // Steps in flight, in position order, each with the last position of its window.
    let mut ahead: VecDeque<(u64, ReadStep)> = VecDeque::new();
    let step = |from, through| read_step(&log, from, through, &filter, &privacy);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let head = heads.borrow_and_update().position;
        while ahead.len() < limits::SUBSCRIPTION_READS_AHEAD && planned <= head {
            let through =
                head.min(planned.saturating_add(u64::from(limits::SUBSCRIPTION_READ_BATCH) - 1));
            ahead.push_back((through, step(planned, through)));
            planned = through.saturating_add(1);
        }
        let Some((through, read)) = ahead.pop_front() else {
            tokio::select! {
                changed = heads.changed() => if changed.is_err() { return },
                _ = sender.closed() => return,
                stopped = shutdown.changed() => if stopped.is_err() || *shutdown.borrow() { return },
            }
            continue;
        };
        let (batch, ended) = match read.await {
            Ok(Ok(Step {
                batch,
                ended,
                next_cursor,
            })) => {
                if next_cursor <= through && !ended {
                    // Cut short by its byte bound: the rest of the window comes next.
                    ahead.push_front((through, step(next_cursor, through)));
                }
                (batch, ended)
            }
            Ok(Err(error)) => (Batch::failed(error.into()), true),
            Err(error) => (
                Batch::failed(Status::internal(format!("read task failed: {error}"))),
                true,
            ),
        };
        if !send(&sender, batch, &mut shutdown).await || ended {
            return;
        }
    }
}

/// One step of a subscription, read and encoded.
struct Step {
    batch: Batch,
    /// True when an event failed to encode: the batch ends with its error.
    ended: bool,
    /// Where the next step starts.
    next_cursor: u64,
}

/// A subscription's step in flight on the blocking pool.
type ReadStep = tokio::task::JoinHandle<Result<Step, crate::log::LogError>>;

/// Starts reading and encoding the matching events at positions `from..=through` (at
/// most [`limits::SUBSCRIPTION_READ_BYTES`] of them) on the blocking pool.
fn read_step(
    log: &Log,
    from: u64,
    through: u64,
    filter: &ReadFilter,
    privacy: &Privacy,
) -> ReadStep {
    let log = log.clone();
    let filter = filter.clone();
    let privacy = privacy.clone();
    tokio::task::spawn_blocking(move || {
        let page =
            log.read_window_in_chunks(from, through, limits::SUBSCRIPTION_READ_BYTES, &filter)?;
        let (batch, ended) = to_batch(&page.events, &privacy);
        Ok(Step {
            batch,
            ended,
            next_cursor: page.next_cursor,
        })
    })
}

/// Events on their way to one subscriber, in order: their `RecordedEvent` messages back
/// to back in one buffer, each behind its gRPC length prefix (so the buffer is already the
/// response body's bytes), and an error that ends the subscription after them.
#[derive(Default)]
struct Batch {
    bytes: prost::bytes::Bytes,
    /// Where each message ends in `bytes`. The next message's prefix starts there (the
    /// first's at 0), and the message itself [`PREFIX_BYTES`] further on.
    ends: Vec<usize>,
    error: Option<Status>,
}

impl Batch {
    fn failed(error: Status) -> Self {
        Self {
            error: Some(error),
            ..Self::default()
        }
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty() && self.error.is_none()
    }
}

/// Encodes a page, each event borrowed from its chunk, stopping at the first event that
/// fails; the flag says whether one did (the subscription then ends with that error).
fn to_batch(events: &[(Arc<ParsedChunk>, usize)], privacy: &Privacy) -> (Batch, bool) {
    let mut bytes = Vec::with_capacity(events.len() * 512);
    let mut ends = Vec::with_capacity(events.len());
    let mut error = None;
    for (chunk, index) in events {
        let start = bytes.len();
        bytes.extend_from_slice(&[0; PREFIX_BYTES]);
        let written = chunk
            .layout
            .view(&chunk.value, *index)
            .map_err(Status::from)
            .and_then(|event| {
                let hash = &chunk.layout.hashes[*index];
                wire::put_recorded_view(&mut bytes, &event, hash, None, Some(privacy))
            });
        if let Err(failed) = written {
            bytes.truncate(start);
            error = Some(failed);
            break;
        }
        match length_prefix(bytes.len() - start - PREFIX_BYTES) {
            Some(prefix) => bytes[start..start + PREFIX_BYTES].copy_from_slice(&prefix),
            None => {
                bytes.truncate(start);
                error = Some(Status::internal("an event larger than 4 GiB"));
                break;
            }
        }
        ends.push(bytes.len());
    }
    let failed = error.is_some();
    let batch = Batch {
        bytes: bytes.into(),
        ends,
        error,
    };
    (batch, failed)
}

/// Sends one batch, waiting for the subscriber's buffer to have room — but not past a
/// shutdown: a subscriber that stopped reading must not hold the server's drain up.
async fn send(
    sender: &mpsc::Sender<Batch>,
    batch: Batch,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    if batch.is_empty() {
        return true;
    }
    tokio::select! {
        sent = sender.send(batch) => sent.is_ok(),
        _ = shutdown.wait_for(|stopping| *stopping) => false,
    }
}

/// A subscription's response body ([`EventStoreService::subscribe_body`]): one data frame
/// per batch, then trailers with the status that ended it (OK when the server stops).
pub struct SubscriptionBody {
    receiver: mpsc::Receiver<Batch>,
    /// The error that ends the subscription, once the data before it is out.
    error: Option<Status>,
    /// The trailers are out.
    done: bool,
}

impl SubscriptionBody {
    fn trailers(&mut self, status: Status) -> http_body::Frame<prost::bytes::Bytes> {
        self.done = true;
        http_body::Frame::trailers(status_trailers(&status))
    }
}

impl http_body::Body for SubscriptionBody {
    type Data = prost::bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return std::task::Poll::Ready(None);
            }
            if let Some(error) = this.error.take() {
                return std::task::Poll::Ready(Some(Ok(this.trailers(error))));
            }
            match std::task::ready!(this.receiver.poll_recv(cx)) {
                Some(batch) => {
                    this.error = batch.error;
                    if !batch.bytes.is_empty() {
                        return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(
                            batch.bytes,
                        ))));
                    }
                }
                None => {
                    return std::task::Poll::Ready(Some(Ok(this.trailers(interrupted()))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// How a subscription ends when its feeder stopped without an error of its own: it only
/// stops so at a shutdown (a subscription has no end of its own; a gone subscriber reads
/// nothing more). `UNAVAILABLE`, the status a client retries on, so a follower
/// resubscribes after the last position it received instead of taking the end for a
/// normal one.
fn interrupted() -> Status {
    Status::unavailable(
        "the server is shutting down; subscribe again after the last position received",
    )
}

/// The subscriber's side of a subscription: each event's `RecordedEvent` bytes in turn.
pub struct EncodedStream {
    receiver: mpsc::Receiver<Batch>,
    current: Batch,
    /// How many messages of `current` are out.
    next: usize,
    /// The end is out (an error, or [`interrupted`]).
    ended: bool,
}

impl Stream for EncodedStream {
    type Item = Result<Encoded, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        loop {
            let this = &mut *self;
            if let Some(&end) = this.current.ends.get(this.next) {
                let start =
                    this.next.checked_sub(1).map_or(0, |i| this.current.ends[i]) + PREFIX_BYTES;
                this.next += 1;
                let message = this.current.bytes.slice(start..end);
                return std::task::Poll::Ready(Some(Ok(Encoded(message))));
            }
            if this.ended {
                return std::task::Poll::Ready(None);
            }
            if let Some(error) = this.current.error.take() {
                this.ended = true;
                return std::task::Poll::Ready(Some(Err(error)));
            }
            match std::task::ready!(this.receiver.poll_recv(cx)) {
                Some(batch) => {
                    this.current = batch;
                    this.next = 0;
                }
                None => {
                    this.ended = true;
                    return std::task::Poll::Ready(Some(Err(interrupted())));
                }
            }
        }
    }
}

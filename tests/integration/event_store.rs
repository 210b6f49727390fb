//! The EventStore service over real gRPC: every RPC and every status code, against the
//! contract of issue 2 §3 and the fine print of DESIGN §5.
//!
//! Every test starts its own server on 127.0.0.1:0 over a temp dir and talks to it with
//! the generated tonic client. Nothing sleeps: live behaviour is awaited event by event
//! under `tokio::time::timeout` guards.

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, append, custom, proposed};
use pb::append_request::Expected;
use pb::event_store_client::EventStoreClient;
use prost_types::{Struct, Timestamp, Value, value::Kind as ValueKind};
use rapport::grpc::pb;
use rapport::limits;
use tokio::time::timeout;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;
use uuid::Uuid;

type Client = EventStoreClient<Channel>;

/// How long any single awaited step may take before the test fails instead of hanging.
const STEP: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A deterministic, valid, non-nil UUID string.
fn id(n: u128) -> String {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 | n).to_string()
}

/// A custom event of the given type with `{"n": n}`.
fn custom_typed(event_type: &str, n: f64) -> pb::Event {
    pb::Event {
        kind: Some(pb::event::Kind::Custom(pb::CustomEvent {
            r#type: event_type.to_owned(),
            data: Some(Struct {
                fields: BTreeMap::from([(
                    "n".to_owned(),
                    Value {
                        kind: Some(ValueKind::NumberValue(n)),
                    },
                )]),
            }),
        })),
    }
}

/// A custom event whose data holds one string of `len` bytes.
fn custom_blob(len: usize) -> pb::Event {
    pb::Event {
        kind: Some(pb::event::Kind::Custom(pb::CustomEvent {
            r#type: "blob.stored".into(),
            data: Some(Struct {
                fields: BTreeMap::from([(
                    "blob".to_owned(),
                    Value {
                        kind: Some(ValueKind::StringValue("x".repeat(len))),
                    },
                )]),
            }),
        })),
    }
}

fn address() -> pb::PostalAddress {
    pb::PostalAddress {
        lines: vec!["Hauptstraße 1".into(), "3. Stock".into()],
        city: "Wien".into(),
        region: "Wien".into(),
        postal_code: "1010".into(),
        country_code: "AT".into(),
    }
}

fn customer_registered(customer: &str) -> pb::Event {
    pb::Event {
        kind: Some(pb::event::Kind::CustomerRegistered(
            pb::CustomerRegistered {
                customer_id: customer.to_owned(),
                given_name: "Ada".into(),
                family_name: "Lovelace".into(),
                emails: vec!["ada@example.com".into(), "ada@work.example".into()],
                phones: vec!["+43 1 234567".into()],
                birth_date: "1815-12-10".into(),
                address: Some(address()),
                locale: "de-AT".into(),
                external_ids: HashMap::from([
                    ("pos_card".to_owned(), "4711".to_owned()),
                    ("eshop".to_owned(), "c-981".to_owned()),
                ]),
                acquisition_channel: pb::Channel::Store as i32,
            },
        )),
    }
}

fn contact_details_changed(customer: &str) -> pb::Event {
    pb::Event {
        kind: Some(pb::event::Kind::ContactDetailsChanged(
            pb::ContactDetailsChanged {
                customer_id: customer.to_owned(),
                emails: vec!["ada@new.example".into()],
                phones: vec![],
                address: Some(pb::PostalAddress {
                    lines: vec!["Ring 5".into()],
                    city: "Graz".into(),
                    region: String::new(),
                    postal_code: "8010".into(),
                    country_code: "AT".into(),
                }),
            },
        )),
    }
}

fn interaction_logged(customer: &str) -> pb::Event {
    pb::Event {
        kind: Some(pb::event::Kind::InteractionLogged(pb::InteractionLogged {
            customer_id: customer.to_owned(),
            channel: pb::Channel::Phone as i32,
            direction: pb::Direction::Inbound as i32,
            kind: pb::InteractionKind::Complaint as i32,
            subject: "Late delivery".into(),
            summary: "Parcel arrived a week late; offered a voucher.".into(),
            agent: "agent-17".into(),
            duration_seconds: 420,
        })),
    }
}

fn purchase(customer: &str, currency: &str) -> pb::PurchaseCompleted {
    pb::PurchaseCompleted {
        customer_id: customer.to_owned(),
        order_id: "o-1001".into(),
        lines: vec![
            pb::PurchaseLine {
                sku: "mug-1".into(),
                name: "Mug".into(),
                category: "kitchen".into(),
                quantity: 2,
                unit_price_minor: 1299,
            },
            pb::PurchaseLine {
                sku: "tea-9".into(),
                name: "Tea".into(),
                category: "food".into(),
                quantity: 1,
                unit_price_minor: 450,
            },
        ],
        total_minor: 3048,
        currency: currency.to_owned(),
        channel: pb::Channel::Web as i32,
        store_id: String::new(),
    }
}

fn purchase_completed(customer: &str) -> pb::Event {
    pb::Event {
        kind: Some(pb::event::Kind::PurchaseCompleted(purchase(
            customer, "EUR",
        ))),
    }
}

/// A proposed event with a body and an id (empty: server-assigned).
fn with_body(event_id: &str, event: pb::Event) -> pb::ProposedEvent {
    pb::ProposedEvent {
        event_id: event_id.to_owned(),
        event: Some(event),
        ..Default::default()
    }
}

async fn head(client: &mut Client) -> pb::LogHead {
    client.get_head(()).await.expect("GetHead").into_inner()
}

async fn read_stream(
    client: &mut Client,
    stream: &str,
    from_revision: u64,
    backwards: bool,
    max_count: u32,
) -> Result<pb::ReadResponse, Status> {
    client
        .read_stream(pb::ReadStreamRequest {
            stream: stream.to_owned(),
            from_revision,
            backwards,
            max_count,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn read_all(
    client: &mut Client,
    from_position: u64,
    backwards: bool,
    max_count: u32,
    filter: Option<pb::Filter>,
) -> pb::ReadResponse {
    client
        .read_all(pb::ReadAllRequest {
            from_position,
            backwards,
            max_count,
            filter,
        })
        .await
        .expect("ReadAll")
        .into_inner()
}

/// The whole log, forward, in pages of the maximum size.
async fn whole_log(client: &mut Client) -> Vec<pb::RecordedEvent> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let page = read_all(client, cursor, false, limits::READ_PAGE_MAX, None).await;
        out.extend(page.events);
        cursor = page.next_cursor;
        if page.end_reached {
            return out;
        }
    }
}

/// A whole stream, forward.
async fn whole_stream(client: &mut Client, stream: &str) -> Vec<pb::RecordedEvent> {
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let page = read_stream(client, stream, cursor, false, limits::READ_PAGE_MAX)
            .await
            .expect("ReadStream");
        out.extend(page.events);
        cursor = page.next_cursor;
        if page.end_reached {
            return out;
        }
    }
}

fn positions(events: &[pb::RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

fn revisions(events: &[pb::RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

/// The `(first, last, revision)` triple of an append response.
fn landed(response: &pb::AppendResponse) -> (u64, u64, u64) {
    (
        response.first_position,
        response.last_position,
        response.last_revision,
    )
}

async fn append_ok(client: &mut Client, request: pb::AppendRequest) -> pb::AppendResponse {
    let what = format!("append to {}", request.stream);
    client
        .append(request)
        .await
        .unwrap_or_else(|status| panic!("{what}: {status:?}"))
        .into_inner()
}

async fn append_err(client: &mut Client, request: pb::AppendRequest) -> Status {
    let what = format!("append to {}", request.stream);
    match client.append(request).await {
        Ok(response) => panic!("{what} should fail, but landed at {:?}", response.get_ref()),
        Err(status) => status,
    }
}

/// The field paths of the `google.rpc.BadRequest` in an `INVALID_ARGUMENT` status.
fn violated_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let details = status.get_error_details();
    let bad_request = details
        .bad_request()
        .unwrap_or_else(|| panic!("no google.rpc.BadRequest in {status:?}"));
    assert!(!bad_request.field_violations.is_empty(), "{status:?}");
    for violation in &bad_request.field_violations {
        assert!(
            !violation.description.is_empty(),
            "violation without a description: {status:?}"
        );
    }
    bad_request
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect()
}

/// The set of violated field paths (a field may be reported with several reasons).
fn violated_set(status: &Status) -> Vec<String> {
    let mut fields = violated_fields(status);
    fields.sort();
    fields.dedup();
    fields
}

/// The `google.rpc.ErrorInfo` metadata of a status.
fn error_info(status: &Status) -> (String, String, HashMap<String, String>) {
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no google.rpc.ErrorInfo in {status:?}"));
    (
        info.reason.clone(),
        info.domain.clone(),
        info.metadata.clone(),
    )
}

/// Receives the next event of a subscription, failing on a stall or an early end.
async fn next_event(stream: &mut Streaming<pb::RecordedEvent>) -> pb::RecordedEvent {
    timeout(STEP, stream.message())
        .await
        .expect("subscription stalled")
        .expect("subscription failed")
        .expect("subscription ended early")
}

async fn collect(stream: &mut Streaming<pb::RecordedEvent>, n: usize) -> Vec<pb::RecordedEvent> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_event(stream).await);
    }
    out
}

async fn subscribe(
    client: &mut Client,
    after_position: u64,
    filter: Option<pb::Filter>,
) -> Streaming<pb::RecordedEvent> {
    client
        .subscribe(pb::SubscribeRequest {
            after_position,
            filter,
        })
        .await
        .expect("Subscribe")
        .into_inner()
}

fn filter(prefixes: &[&str], types: &[&str]) -> pb::Filter {
    pb::Filter {
        stream_prefixes: prefixes.iter().map(|s| (*s).to_owned()).collect(),
        event_types: types.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The filter semantics of the fine print, computed on the client side.
fn passes(f: &pb::Filter, event: &pb::RecordedEvent) -> bool {
    (f.stream_prefixes.is_empty()
        || f.stream_prefixes
            .iter()
            .any(|p| event.stream.starts_with(p.as_str())))
        && (f.event_types.is_empty() || f.event_types.contains(&event.event_type))
}

// ---------------------------------------------------------------------------------------
// Append: expectations
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn append_then_read_back() {
    let t = TestServer::start().await;
    let mut client = t.client().await;
    let response = client
        .append(append(
            "customer-1",
            Some(Expected::NoStream(())),
            vec![proposed("", 1.0), proposed("", 2.0)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            response.first_position,
            response.last_position,
            response.last_revision
        ),
        (1, 2, 1)
    );
    let page = client
        .read_stream(pb::ReadStreamRequest {
            stream: "customer-1".into(),
            from_revision: 0,
            backwards: false,
            max_count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.events.len(), 2);
    assert!(page.end_reached);
    assert_eq!(page.next_cursor, 2);
    assert_eq!(page.events[1].event, Some(common::custom(2.0)));
    assert_eq!(page.events[1].event_type, "test.happened");
    let head = client.get_head(()).await.unwrap().into_inner();
    assert_eq!(head.position, 2);
    assert_eq!(head.hash, page.events[1].hash);
    t.server.stop().await.unwrap();
}

/// Checks an `ABORTED` for a wrong expectation: code, message and ErrorInfo details.
fn assert_wrong_expectation(status: &Status, stream: &str, expected: &str, actual: &str) {
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let message = status.message();
    let (expected_words, actual_words) = (
        match expected {
            "no_stream" => "expected no stream".to_owned(),
            "stream_exists" => "expected an existing stream".to_owned(),
            n => format!("expected revision {n}"),
        },
        match actual {
            "no_stream" => "no stream".to_owned(),
            n => format!("revision {n}"),
        },
    );
    assert!(message.contains(stream), "{message}");
    assert!(message.contains(&expected_words), "{message}");
    assert!(
        message
            .split(&expected_words)
            .nth(1)
            .is_some_and(|rest| rest.contains(&actual_words)),
        "the message should say the actual revision ({actual_words}): {message}"
    );
    let (reason, domain, metadata) = error_info(status);
    assert_eq!(reason, "WRONG_EXPECTED_REVISION");
    assert_eq!(domain, "rapport.v1");
    assert_eq!(metadata.get("stream").map(String::as_str), Some(stream));
    assert_eq!(metadata.get("expected").map(String::as_str), Some(expected));
    assert_eq!(metadata.get("actual").map(String::as_str), Some(actual));
}

#[tokio::test]
async fn every_expectation_kind_succeeds_and_fails() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let s = "customer-exp";
    let mut n = 0.0;
    let mut next = || {
        n += 1.0;
        vec![proposed("", n)]
    };

    // On a missing stream: stream_exists and exact fail, saying "no stream".
    let status = append_err(&mut c, append(s, Some(Expected::StreamExists(())), next())).await;
    assert_wrong_expectation(&status, s, "stream_exists", "no_stream");
    let status = append_err(&mut c, append(s, Some(Expected::Exact(0)), next())).await;
    assert_wrong_expectation(&status, s, "0", "no_stream");
    assert_eq!(head(&mut c).await.position, 0, "a rejected append wrote");
    let missing = read_stream(&mut c, s, 0, false, 0).await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // no_stream creates it.
    let r = append_ok(&mut c, append(s, Some(Expected::NoStream(())), next())).await;
    assert_eq!(landed(&r), (1, 1, 0));
    // no_stream now fails with the actual revision.
    let status = append_err(&mut c, append(s, Some(Expected::NoStream(())), next())).await;
    assert_wrong_expectation(&status, s, "no_stream", "0");
    // stream_exists succeeds.
    let r = append_ok(&mut c, append(s, Some(Expected::StreamExists(())), next())).await;
    assert_eq!(landed(&r), (2, 2, 1));
    // exact: right revision succeeds, wrong ones (behind and ahead) fail.
    let r = append_ok(&mut c, append(s, Some(Expected::Exact(1)), next())).await;
    assert_eq!(landed(&r), (3, 3, 2));
    let status = append_err(&mut c, append(s, Some(Expected::Exact(1)), next())).await;
    assert_wrong_expectation(&status, s, "1", "2");
    let status = append_err(&mut c, append(s, Some(Expected::Exact(5)), next())).await;
    assert_wrong_expectation(&status, s, "5", "2");
    // any and unset succeed on an existing stream...
    let r = append_ok(&mut c, append(s, Some(Expected::Any(())), next())).await;
    assert_eq!(landed(&r), (4, 4, 3));
    let r = append_ok(
        &mut c,
        append(s, None, vec![proposed("", 50.0), proposed("", 51.0)]),
    )
    .await;
    assert_eq!(landed(&r), (5, 6, 5));
    // ...and on a missing one (unset = any).
    let r = append_ok(&mut c, append("customer-unset", None, next())).await;
    assert_eq!(landed(&r), (7, 7, 0));
    let r = append_ok(
        &mut c,
        append("customer-any", Some(Expected::Any(())), next()),
    )
    .await;
    assert_eq!(landed(&r), (8, 8, 0));

    // A rejected append changes nothing: the log head and the stream stay as they were.
    let before_head = head(&mut c).await;
    let before_stream = whole_stream(&mut c, s).await;
    for expected in [
        Expected::NoStream(()),
        Expected::Exact(0),
        Expected::Exact(4),
        Expected::Exact(6),
    ] {
        let batch = vec![proposed(&id(900), 1.0), proposed("", 2.0)];
        let status = append_err(&mut c, append(s, Some(expected), batch)).await;
        assert_eq!(status.code(), Code::Aborted);
    }
    assert_eq!(head(&mut c).await, before_head);
    assert_eq!(whole_stream(&mut c, s).await, before_stream);
    // The id of a rejected batch was not recorded: it can be used now.
    let r = append_ok(
        &mut c,
        append(s, Some(Expected::Exact(5)), vec![proposed(&id(900), 3.0)]),
    )
    .await;
    assert_eq!(landed(&r), (9, 9, 6));

    let stream = whole_stream(&mut c, s).await;
    assert_eq!(revisions(&stream), (0..7).collect::<Vec<_>>());
    assert_eq!(positions(&stream), [1, 2, 3, 4, 5, 6, 9]);
    t.server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Append: idempotency
// ---------------------------------------------------------------------------------------

/// The first two events of `customer-idem`: full envelopes, one without occurred_at.
fn idem_batch() -> Vec<pb::ProposedEvent> {
    vec![
        pb::ProposedEvent {
            event_id: id(1),
            event: Some(customer_registered(&id(100))),
            occurred_at: Some(Timestamp {
                seconds: 1_600_000_000,
                nanos: 250_000_000,
            }),
            metadata: HashMap::from([
                ("tenant".to_owned(), "acme".to_owned()),
                ("import".to_owned(), "batch-7".to_owned()),
            ]),
            correlation_id: "corr-1".into(),
            causation_id: "cmd-1".into(),
            actor: "user:17".into(),
            source_channel: "pos".into(),
        },
        pb::ProposedEvent {
            event_id: id(2),
            event: Some(custom_typed("review.written", 5.0)),
            ..Default::default()
        },
    ]
}

#[tokio::test]
async fn resending_the_same_ids_returns_the_original_positions_under_every_expectation() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let s = "customer-idem";
    let first = append_ok(
        &mut c,
        append(s, Some(Expected::NoStream(())), idem_batch()),
    )
    .await;
    assert_eq!(landed(&first), (1, 2, 1));
    // The stream and the log move on.
    append_ok(&mut c, append(s, None, vec![proposed(&id(3), 3.0)])).await;
    append_ok(&mut c, append("deal-other", None, vec![proposed("", 4.0)])).await;
    let before = head(&mut c).await;
    assert_eq!(before.position, 4);

    for expected in [
        None,
        Some(Expected::Any(())),
        Some(Expected::NoStream(())),
        Some(Expected::StreamExists(())),
        Some(Expected::Exact(0)),
        Some(Expected::Exact(1)),
        Some(Expected::Exact(2)),
        Some(Expected::Exact(99)),
    ] {
        let again = append_ok(&mut c, append(s, expected, idem_batch())).await;
        assert_eq!(landed(&again), landed(&first), "resent under {expected:?}");
    }
    // A resent single event, too (the third one, whose retry comes with `exact` now wrong).
    let again = append_ok(
        &mut c,
        append(s, Some(Expected::Exact(0)), vec![proposed(&id(3), 3.0)]),
    )
    .await;
    assert_eq!(landed(&again), (3, 3, 2));
    // Nothing was written by any retry.
    assert_eq!(head(&mut c).await, before);
    assert_eq!(whole_log(&mut c).await.len(), 4);
    t.server.stop().await.unwrap();
}

/// The fine print (DESIGN §5): all ids present, in the same order, with the same stream
/// and content, is a re-send whatever else the log holds. Events appended one by one and
/// re-sent as one batch get the positions of the first and the last of them (the range
/// spans the events between), and nothing is written.
#[tokio::test]
async fn ids_of_separate_appends_resent_as_one_batch_get_their_first_and_last_positions() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let s = "order-gaps";
    for n in [1, 2, 3] {
        append_ok(
            &mut c,
            append(s, None, vec![proposed(&id(n), f64::from(n as u32))]),
        )
        .await;
    }
    let before = head(&mut c).await;
    let again = append_ok(
        &mut c,
        append(
            s,
            Some(Expected::NoStream(())),
            vec![proposed(&id(1), 1.0), proposed(&id(3), 3.0)],
        ),
    )
    .await;
    assert_eq!(landed(&again), (1, 3, 2));
    // Out of order is not a re-send.
    let status = append_err(
        &mut c,
        append(s, None, vec![proposed(&id(3), 3.0), proposed(&id(1), 1.0)]),
    )
    .await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert_eq!(head(&mut c).await, before);
    t.server.stop().await.unwrap();
}

/// `customer`'s registration (personal data, sealed with the customer's key) with client
/// id `id`.
fn registration(customer: Uuid, id: &str) -> pb::ProposedEvent {
    pb::ProposedEvent {
        event_id: id.to_owned(),
        event: Some(customer_registered(&customer.to_string())),
        ..Default::default()
    }
}

/// A refused append changes nothing, the key store included: a new customer's first
/// personal event under a wrong expectation is ABORTED and leaves no key behind; under
/// the right one it lands and its key exists.
#[tokio::test]
async fn a_refused_first_personal_event_creates_no_key() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let customer = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0abc);
    let stream = format!("customer-{customer}");
    let registered = |id: &str| registration(customer, id);
    for expected in [Expected::Exact(5), Expected::StreamExists(())] {
        let status = append_err(
            &mut c,
            append(&stream, Some(expected), vec![registered(&id(1))]),
        )
        .await;
        assert_eq!(status.code(), Code::Aborted, "{expected:?}: {status:?}");
        assert!(
            t.server.keys.data_key(customer).is_none(),
            "{expected:?}: a refused append left a key"
        );
    }
    assert_eq!(head(&mut c).await.position, 0);
    // Under the right expectation it lands; sent again, under the now wrong one, it is an
    // idempotent re-send.
    for attempt in ["first", "re-send"] {
        let outcome = append_ok(
            &mut c,
            append(
                &stream,
                Some(Expected::NoStream(())),
                vec![registered(&id(1))],
            ),
        )
        .await;
        assert_eq!(landed(&outcome), (1, 1, 0), "{attempt}");
        assert!(t.server.keys.data_key(customer).is_some(), "{attempt}");
    }
    t.server.stop().await.unwrap();
}

/// Idempotency comes first, also for a customer erased since: the key is gone, so the
/// events cannot be sealed and compared again, but a re-send with the same ids, order,
/// stream and envelope gets its original positions; anything else meets the erasure.
#[tokio::test]
async fn a_resent_personal_event_of_an_erased_customer_gets_its_original_positions() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let customer = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0def);
    let stream = format!("customer-{customer}");
    let registered = |id: &str| pb::ProposedEvent {
        metadata: HashMap::from([("tenant".to_owned(), "shop-1".to_owned())]),
        ..registration(customer, id)
    };
    let first = append_ok(&mut c, append(&stream, None, vec![registered(&id(1))])).await;
    assert_eq!(landed(&first), (1, 1, 0));
    t.customers()
        .await
        .erase_customer(pb::EraseCustomerRequest {
            customer_id: customer.to_string(),
            reason: "test".into(),
            requested_by: "test".into(),
            context: None,
        })
        .await
        .unwrap();
    let before = head(&mut c).await;
    for expected in [None, Some(Expected::NoStream(())), Some(Expected::Exact(7))] {
        let again = append_ok(&mut c, append(&stream, expected, vec![registered(&id(1))])).await;
        assert_eq!(landed(&again), (1, 1, 0), "{expected:?}");
    }
    // Another envelope, or a new id: the customer is erased.
    let mut other = registered(&id(1));
    other.metadata.insert("tenant".into(), "shop-2".into());
    for batch in [vec![other], vec![registered(&id(2))]] {
        let status = append_err(&mut c, append(&stream, None, batch)).await;
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }
    assert_eq!(head(&mut c).await, before, "nothing was appended");
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn reusing_an_id_with_other_content_is_already_exists() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let s = "customer-idem";
    append_ok(
        &mut c,
        append(s, Some(Expected::NoStream(())), idem_batch()),
    )
    .await;
    let before = head(&mut c).await;
    let log_before = whole_log(&mut c).await;

    type Change = fn(&mut Vec<pb::ProposedEvent>);
    let changes: [(&str, Change); 10] = [
        ("other body", |b| {
            b[0].event = Some(customer_registered(&id(101)))
        }),
        ("other metadata", |b| {
            b[0].metadata.insert("tenant".into(), "other".into());
        }),
        ("metadata dropped", |b| b[0].metadata.clear()),
        ("other occurred_at", |b| {
            b[0].occurred_at = Some(Timestamp {
                seconds: 1_600_000_001,
                nanos: 250_000_000,
            });
        }),
        ("occurred_at dropped", |b| b[0].occurred_at = None),
        ("occurred_at added", |b| {
            b[1].occurred_at = Some(Timestamp {
                seconds: 1,
                nanos: 0,
            });
        }),
        ("other correlation", |b| {
            b[0].correlation_id = "corr-2".into()
        }),
        ("other causation", |b| b[0].causation_id = String::new()),
        ("other custom data", |b| {
            b[1].event = Some(custom_typed("review.written", 4.0));
        }),
        ("other custom type", |b| {
            b[1].event = Some(custom_typed("review.edited", 5.0));
        }),
    ];
    for (what, change) in changes {
        let mut batch = idem_batch();
        change(&mut batch);
        let changed_ids: Vec<String> = batch
            .iter()
            .zip(idem_batch())
            .filter(|(a, b)| **a != *b)
            .map(|(a, _)| a.event_id.clone())
            .collect();
        assert_eq!(changed_ids.len(), 1, "{what}");
        for expected in [None, Some(Expected::Exact(1)), Some(Expected::NoStream(()))] {
            let status = append_err(&mut c, append(s, expected, batch.clone())).await;
            assert_eq!(status.code(), Code::AlreadyExists, "{what}: {status:?}");
            assert!(
                status.message().contains(&changed_ids[0]),
                "{what}: the message should name {}: {}",
                changed_ids[0],
                status.message()
            );
            let (reason, _, metadata) = error_info(&status);
            assert_eq!(reason, "EVENT_ID_CONFLICT");
            assert_eq!(metadata["event_ids"], changed_ids[0], "{what}");
        }
    }

    // The same id and content, but in another stream.
    let status = append_err(&mut c, append("customer-elsewhere", None, idem_batch())).await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains(&id(1)), "{}", status.message());
    assert_eq!(
        read_stream(&mut c, "customer-elsewhere", 0, false, 0)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // A batch mixing present and new ids, under every expectation.
    for expected in [None, Some(Expected::Exact(1)), Some(Expected::NoStream(()))] {
        let mut batch = idem_batch();
        batch.push(proposed(&id(7), 7.0));
        let status = append_err(&mut c, append(s, expected, batch)).await;
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert!(status.message().contains(&id(1)), "{}", status.message());
        assert!(!status.message().contains(&id(7)), "{}", status.message());
        // A present id next to a server-assigned one mixes, too.
        let batch = vec![idem_batch().remove(0), proposed("", 8.0)];
        let status = append_err(&mut c, append(s, expected, batch)).await;
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert!(status.message().contains(&id(1)), "{}", status.message());
    }
    // Present ids in another order are not a retry of that batch.
    let mut reversed = idem_batch();
    reversed.reverse();
    let status = append_err(&mut c, append(s, None, reversed)).await;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // Nothing changed, and the new id of the mixed batch was not taken.
    assert_eq!(head(&mut c).await, before);
    assert_eq!(whole_log(&mut c).await, log_before);
    let r = append_ok(
        &mut c,
        append(s, Some(Expected::Exact(1)), vec![proposed(&id(7), 7.0)]),
    )
    .await;
    assert_eq!(landed(&r), (3, 3, 2));
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_duplicate_id_inside_one_batch_is_invalid_argument() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let batch = vec![
        proposed(&id(1), 1.0),
        proposed(&id(2), 2.0),
        proposed(&id(1), 1.0),
    ];
    let status = append_err(&mut c, append("customer-dup", None, batch)).await;
    assert_eq!(violated_set(&status), ["events[2].event_id"]);
    assert!(status.message().contains(&id(1)), "{}", status.message());
    assert_eq!(head(&mut c).await.position, 0);
    // Upper-case spelling of the same UUID is the same id.
    let batch = vec![proposed(&id(1), 1.0), proposed(&id(1).to_uppercase(), 1.0)];
    let status = append_err(&mut c, append("customer-dup", None, batch)).await;
    assert_eq!(violated_set(&status), ["events[1].event_id"]);
    assert_eq!(head(&mut c).await.position, 0);
    t.server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Append: invalid input
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn invalid_appends_are_invalid_argument_with_field_violations_and_change_nothing() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    // Some history, so "changes nothing" is about a non-trivial head.
    append_ok(
        &mut c,
        append(
            "customer-ok",
            None,
            vec![proposed("", 1.0), proposed("", 2.0)],
        ),
    )
    .await;
    let before = head(&mut c).await;
    let log_before = whole_log(&mut c).await;
    let target = "order-target";
    let one = || vec![proposed("", 1.0)];
    let body = |event: pb::Event| vec![with_body("", event)];
    let purchase_with = |change: fn(&mut pb::PurchaseCompleted)| {
        let mut p = purchase(&id(5), "EUR");
        change(&mut p);
        vec![with_body(
            "",
            pb::Event {
                kind: Some(pb::event::Kind::PurchaseCompleted(p)),
            },
        )]
    };
    let too_long_stream = format!("c-{}", "x".repeat(limits::STREAM_NAME_BYTES_MAX - 1));
    assert_eq!(too_long_stream.len(), limits::STREAM_NAME_BYTES_MAX + 1);

    let cases: Vec<(&str, pb::AppendRequest, Vec<&str>)> = vec![
        // Stream names.
        ("empty stream", append("", None, one()), vec!["stream"]),
        (
            "no separator",
            append("customer", None, one()),
            vec!["stream"],
        ),
        ("space", append("customer-a b", None, one()), vec!["stream"]),
        (
            "leading space",
            append(" customer-1", None, one()),
            vec!["stream"],
        ),
        (
            "upper-case category",
            append("Customer-1", None, one()),
            vec!["stream"],
        ),
        (
            "digit-first category",
            append("1customer-1", None, one()),
            vec!["stream"],
        ),
        (
            "non-ASCII id",
            append("customer-é", None, one()),
            vec!["stream"],
        ),
        (
            "non-ASCII category",
            append("kündin-1", None, one()),
            vec!["stream"],
        ),
        (
            "control character",
            append("customer-a\nb", None, one()),
            vec!["stream"],
        ),
        ("NUL", append("customer-a\0b", None, one()), vec!["stream"]),
        ("empty category", append("-1", None, one()), vec!["stream"]),
        ("empty id", append("customer-", None, one()), vec!["stream"]),
        (
            "too long",
            append(&too_long_stream, None, one()),
            vec!["stream"],
        ),
        // Event counts.
        ("zero events", append(target, None, vec![]), vec!["events"]),
        (
            "too many events",
            append(
                target,
                None,
                (0..=limits::EVENTS_PER_APPEND_MAX)
                    .map(|i| proposed("", i as f64))
                    .collect(),
            ),
            vec!["events"],
        ),
        // Envelope fields.
        (
            "bad uuid",
            append(target, None, vec![proposed("not-a-uuid", 1.0)]),
            vec!["events[0].event_id"],
        ),
        (
            "truncated uuid",
            append(target, None, vec![proposed(&id(1)[..35], 1.0)]),
            vec!["events[0].event_id"],
        ),
        (
            "nil uuid",
            append(target, None, vec![proposed(&Uuid::nil().to_string(), 1.0)]),
            vec!["events[0].event_id"],
        ),
        (
            "bad uuid at index 2",
            append(
                target,
                None,
                vec![proposed("", 1.0), proposed("", 2.0), proposed("xyz", 3.0)],
            ),
            vec!["events[2].event_id"],
        ),
        (
            "missing event body",
            append(
                target,
                None,
                vec![pb::ProposedEvent {
                    event_id: id(1),
                    ..Default::default()
                }],
            ),
            vec!["events[0].event"],
        ),
        // Guards the edge: an `Event` with no case set used to be dropped without a
        // violation, so the rest of the batch was appended without it.
        (
            "event body with no case",
            append(target, None, vec![with_body("", pb::Event { kind: None })]),
            vec!["events[0].event"],
        ),
        (
            "event body with no case after a good one",
            append(
                target,
                None,
                vec![proposed("", 1.0), with_body("", pb::Event { kind: None })],
            ),
            vec!["events[1].event"],
        ),
        (
            "oversize payload",
            append(
                target,
                None,
                vec![
                    proposed("", 1.0),
                    with_body("", custom_blob(limits::PAYLOAD_BYTES_MAX)),
                ],
            ),
            vec!["events[1].event"],
        ),
        (
            "bad occurred_at",
            append(
                target,
                None,
                vec![pb::ProposedEvent {
                    occurred_at: Some(Timestamp {
                        seconds: 0,
                        nanos: -1,
                    }),
                    ..proposed("", 1.0)
                }],
            ),
            vec!["events[0].occurred_at"],
        ),
        (
            "oversize correlation id",
            append(
                target,
                None,
                vec![pb::ProposedEvent {
                    correlation_id: "c".repeat(limits::ENVELOPE_STRING_BYTES_MAX + 1),
                    ..proposed("", 1.0)
                }],
            ),
            vec!["events[0].correlation_id"],
        ),
        (
            "too many metadata entries",
            append(
                target,
                None,
                vec![pb::ProposedEvent {
                    metadata: (0..=limits::METADATA_ENTRIES_MAX)
                        .map(|i| (format!("k{i}"), "v".to_owned()))
                        .collect(),
                    ..proposed("", 1.0)
                }],
            ),
            vec!["events[0].metadata"],
        ),
        (
            "oversize metadata value",
            append(
                target,
                None,
                vec![
                    proposed("", 1.0),
                    pb::ProposedEvent {
                        metadata: [(
                            "note".to_owned(),
                            "v".repeat(limits::METADATA_VALUE_BYTES_MAX + 1),
                        )]
                        .into(),
                        actor: "a".repeat(limits::ENVELOPE_STRING_BYTES_MAX + 1),
                        ..proposed("", 2.0)
                    },
                ],
            ),
            vec!["events[1].metadata[note]", "events[1].actor"],
        ),
        // Custom events.
        (
            "custom event with a built-in type",
            append(target, None, body(custom_typed("CustomerRegistered", 1.0))),
            vec!["events[0].event.custom.type"],
        ),
        (
            "custom event with another built-in type",
            append(target, None, body(custom_typed("PurchaseCompleted", 1.0))),
            vec!["events[0].event.custom.type"],
        ),
        (
            "custom event with an empty type",
            append(target, None, body(custom_typed("", 1.0))),
            vec!["events[0].event.custom.type"],
        ),
        (
            "custom event with a malformed type",
            append(target, None, body(custom_typed("1 review", 1.0))),
            vec!["events[0].event.custom.type"],
        ),
        (
            "custom event with a non-finite number",
            append(target, None, body(custom_typed("review.written", f64::NAN))),
            vec!["events[0].event.custom.data.n"],
        ),
        // Typed events.
        (
            "purchase with a lower-case currency",
            append(target, None, purchase_with(|p| p.currency = "eur".into())),
            vec!["events[0].event.purchase_completed.currency"],
        ),
        (
            "purchase with a four-letter currency",
            append(target, None, purchase_with(|p| p.currency = "EURO".into())),
            vec!["events[0].event.purchase_completed.currency"],
        ),
        (
            "purchase with a bad customer id",
            append(
                target,
                None,
                purchase_with(|p| p.customer_id = "cust-5".into()),
            ),
            vec!["events[0].event.purchase_completed.customer_id"],
        ),
        (
            "purchase with a missing customer id",
            append(target, None, purchase_with(|p| p.customer_id.clear())),
            vec!["events[0].event.purchase_completed.customer_id"],
        ),
        (
            "purchase with a zero quantity and a negative total",
            append(
                target,
                None,
                purchase_with(|p| {
                    p.lines[1].quantity = 0;
                    p.total_minor = -1;
                }),
            ),
            vec![
                "events[0].event.purchase_completed.lines[1].quantity",
                "events[0].event.purchase_completed.total_minor",
            ],
        ),
        (
            "purchase with an unknown channel",
            append(target, None, purchase_with(|p| p.channel = 99)),
            vec!["events[0].event.purchase_completed.channel"],
        ),
        (
            "registration with a bad customer id",
            append(target, None, body(customer_registered("42"))),
            vec!["events[0].event.customer_registered.customer_id"],
        ),
        (
            "registration with an impossible birth date",
            append(target, None, {
                let mut event = customer_registered(&id(5));
                if let Some(pb::event::Kind::CustomerRegistered(r)) = &mut event.kind {
                    r.birth_date = "2023-02-29".into();
                    r.emails.push("no-at-sign".into());
                }
                body(event)
            }),
            vec![
                "events[0].event.customer_registered.birth_date",
                "events[0].event.customer_registered.emails[2]",
            ],
        ),
        (
            "contact change with a bad country",
            append(target, None, {
                let mut event = contact_details_changed(&id(5));
                if let Some(pb::event::Kind::ContactDetailsChanged(c)) = &mut event.kind {
                    c.address.as_mut().unwrap().country_code = "Austria".into();
                }
                body(event)
            }),
            vec!["events[0].event.contact_details_changed.address.country_code"],
        ),
        (
            "interaction without channel and kind",
            append(target, None, {
                let mut event = interaction_logged(&id(5));
                if let Some(pb::event::Kind::InteractionLogged(i)) = &mut event.kind {
                    i.channel = 0;
                    i.kind = 0;
                }
                body(event)
            }),
            vec![
                "events[0].event.interaction_logged.channel",
                "events[0].event.interaction_logged.kind",
            ],
        ),
        // Every problem is reported at once.
        (
            "several problems",
            append(
                "Bad Stream",
                Some(Expected::NoStream(())),
                vec![
                    proposed("", 1.0),
                    proposed("nope", 2.0),
                    with_body("", custom_typed("InteractionLogged", 3.0)),
                    pb::ProposedEvent::default(),
                ],
            ),
            vec![
                "events[1].event_id",
                "events[2].event.custom.type",
                "events[3].event",
                "stream",
            ],
        ),
    ];
    for (what, request, expected) in cases {
        let status = append_err(&mut c, request).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let mut expected: Vec<String> = expected.into_iter().map(str::to_owned).collect();
        expected.sort();
        // Each field once: a malformed value is not also reported with a second,
        // misleading reason (guards the edge's merge of conversion and rule violations).
        let mut fields = violated_fields(&status);
        fields.sort();
        assert_eq!(fields, expected, "{what}: {status:?}");
        // The message names the first violated field.
        let fields = violated_fields(&status);
        assert!(
            status.message().starts_with(&fields[0]),
            "{what}: {}",
            status.message()
        );
        assert_eq!(head(&mut c).await, before, "{what} changed the log");
    }
    // A malformed UUID is reported as malformed (not as "the nil UUID" it parses to).
    let status = append_err(
        &mut c,
        append(
            target,
            None,
            purchase_with(|p| p.customer_id = "cust-5".into()),
        ),
    )
    .await;
    let details = status.get_error_details();
    let found = &details.bad_request().unwrap().field_violations;
    assert_eq!(found.len(), 1, "{status:?}");
    assert!(found[0].description.contains("must be a UUID"), "{found:?}");
    assert!(status.message().contains("must be a UUID"), "{status:?}");
    assert_eq!(whole_log(&mut c).await, log_before);
    assert_eq!(
        read_stream(&mut c, target, 0, false, 0)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // The bounds themselves are accepted: a 128-byte stream name, exactly the maximum
    // number of events, a payload just under the limit.
    let longest = format!("c-{}", "x".repeat(limits::STREAM_NAME_BYTES_MAX - 2));
    let r = append_ok(&mut c, append(&longest, None, one())).await;
    assert_eq!(r.first_position, before.position + 1);
    let r = append_ok(
        &mut c,
        append(
            target,
            Some(Expected::NoStream(())),
            (0..limits::EVENTS_PER_APPEND_MAX)
                .map(|i| proposed("", i as f64))
                .collect(),
        ),
    )
    .await;
    assert_eq!(r.last_revision, limits::EVENTS_PER_APPEND_MAX as u64 - 1);
    let r = append_ok(
        &mut c,
        append(
            target,
            None,
            vec![with_body("", custom_blob(limits::PAYLOAD_BYTES_MAX - 64))],
        ),
    )
    .await;
    let big = read_stream(&mut c, target, r.last_revision, false, 1)
        .await
        .unwrap();
    assert_eq!(
        big.events[0].event,
        Some(custom_blob(limits::PAYLOAD_BYTES_MAX - 64))
    );
    // Every well-formed stream name of DESIGN §2 is accepted.
    for name in ["loyalty_v2-member:7.a_b", "a1-X", "deal-0190-ab_c.d:e"] {
        append_ok(&mut c, append(name, None, one())).await;
    }
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_over_the_transport_limit_is_resource_exhausted() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    append_ok(&mut c, append("customer-1", None, vec![proposed("", 1.0)])).await;
    let before = head(&mut c).await;
    // Events each under the payload limit, together over the message limit.
    let each = limits::PAYLOAD_BYTES_MAX - 1024;
    let count = limits::MESSAGE_BYTES_MAX / each + 2;
    let batch: Vec<_> = (0..count)
        .map(|_| with_body("", custom_blob(each)))
        .collect();
    let mut big_client = t
        .client()
        .await
        .max_encoding_message_size(4 * limits::MESSAGE_BYTES_MAX);
    let status = big_client
        .append(append("blob-1", None, batch))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(head(&mut c).await, before);
    assert_eq!(
        read_stream(&mut c, "blob-1", 0, false, 0)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // The server keeps serving on the same connection after refusing it.
    let r = append_ok(
        &mut big_client,
        append("blob-1", None, vec![proposed("", 2.0)]),
    )
    .await;
    assert_eq!(r.first_position, 2);
    t.server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// ReadStream
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn read_stream_of_a_missing_or_malformed_stream() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let status = read_stream(&mut c, "customer-none", 0, false, 0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("customer-none"), "{status:?}");
    let status = read_stream(&mut c, "customer-none", 0, true, 0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    append_ok(
        &mut c,
        append("customer-some", None, vec![proposed("", 1.0)]),
    )
    .await;
    // A prefix of an existing stream is not that stream.
    let status = read_stream(&mut c, "customer-som", 0, false, 0)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = read_stream(&mut c, "Customer some", 0, false, 0)
        .await
        .unwrap_err();
    assert_eq!(violated_set(&status), ["stream"]);
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn read_stream_pages_follow_the_fine_print() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let s = "deal-paging";
    // 23 events in appends of 1..3, interleaved with another stream so that positions
    // and revisions differ.
    let mut sizes = [1usize, 2, 3].iter().cycle();
    let mut written = 0;
    while written < 23 {
        let n = (*sizes.next().unwrap()).min(23 - written);
        let batch = (0..n).map(|i| proposed("", (written + i) as f64)).collect();
        append_ok(&mut c, append(s, Some(Expected::Any(())), batch)).await;
        append_ok(&mut c, append("deal-noise", None, vec![proposed("", -1.0)])).await;
        written += n;
    }
    let all = whole_stream(&mut c, s).await;
    assert_eq!(revisions(&all), (0..23).collect::<Vec<_>>());
    for (i, event) in all.iter().enumerate() {
        assert_eq!(event.stream, s);
        assert_eq!(event.event, Some(custom(i as f64)));
    }
    assert!(positions(&all).windows(2).all(|w| w[0] < w[1]));
    assert_ne!(positions(&all), (1..=23).collect::<Vec<_>>());

    let reader = c.clone();
    let page = move |from: u64, backwards: bool, max: u32| {
        let mut c = reader.clone();
        async move { read_stream(&mut c, s, from, backwards, max).await.unwrap() }
    };

    // Forward: inclusive; next_cursor is the first unread revision.
    let p = page(0, false, 5).await;
    assert_eq!(revisions(&p.events), [0, 1, 2, 3, 4]);
    assert_eq!((p.next_cursor, p.end_reached), (5, false));
    let p = page(5, false, 5).await;
    assert_eq!(revisions(&p.events), [5, 6, 7, 8, 9]);
    assert_eq!(p.events, all[5..10]);
    assert_eq!((p.next_cursor, p.end_reached), (10, false));
    // A page that ends exactly at the last event reports the end.
    let p = page(18, false, 5).await;
    assert_eq!(revisions(&p.events), [18, 19, 20, 21, 22]);
    assert_eq!((p.next_cursor, p.end_reached), (23, true));
    let p = page(20, false, 5).await;
    assert_eq!(revisions(&p.events), [20, 21, 22]);
    assert_eq!((p.next_cursor, p.end_reached), (23, true));
    // At the end: empty, still a cursor to poll from...
    let p = page(23, false, 5).await;
    assert!(p.events.is_empty());
    assert_eq!((p.next_cursor, p.end_reached), (23, true));
    // ...which returns the next event once it is written.
    append_ok(
        &mut c,
        append(s, Some(Expected::Exact(22)), vec![proposed("", 23.0)]),
    )
    .await;
    let p = page(23, false, 5).await;
    assert_eq!(revisions(&p.events), [23]);
    assert_eq!(p.events[0].event, Some(custom(23.0)));
    assert_eq!((p.next_cursor, p.end_reached), (24, true));
    let all = whole_stream(&mut c, s).await;
    assert_eq!(all.len(), 24);
    // Past the end: empty.
    let p = page(100, false, 5).await;
    assert!(p.events.is_empty());
    assert!(p.end_reached);
    // Pages longer than the part read on the async worker (limits::READ_INLINE_EVENTS)
    // go on from where it stopped, both ways, and are one page to the client.
    let p = page(2, false, 20).await;
    assert_eq!(p.events, all[2..22]);
    assert_eq!((p.next_cursor, p.end_reached), (22, false));
    let p = page(0, true, 20).await;
    assert_eq!(p.events, all[4..].iter().rev().cloned().collect::<Vec<_>>());
    assert_eq!((p.next_cursor, p.end_reached), (4, false));
    let p = page(0, false, 0).await;
    assert_eq!(p.events, all);
    assert_eq!((p.next_cursor, p.end_reached), (24, true));

    // Backward: exclusive; 0 = from the end; next_cursor is the last returned.
    let p = page(0, true, 5).await;
    assert_eq!(revisions(&p.events), [23, 22, 21, 20, 19]);
    assert_eq!((p.next_cursor, p.end_reached), (19, false));
    let p = page(19, true, 5).await;
    assert_eq!(revisions(&p.events), [18, 17, 16, 15, 14]);
    assert_eq!(
        p.events,
        all[14..19].iter().rev().cloned().collect::<Vec<_>>()
    );
    assert_eq!((p.next_cursor, p.end_reached), (14, false));
    let p = page(3, true, 5).await;
    assert_eq!(revisions(&p.events), [2, 1, 0]);
    assert_eq!((p.next_cursor, p.end_reached), (0, true));
    // A page that reaches revision 0 exactly reports the end.
    let p = page(5, true, 5).await;
    assert_eq!(revisions(&p.events), [4, 3, 2, 1, 0]);
    assert_eq!((p.next_cursor, p.end_reached), (0, true));
    let p = page(1, true, 5).await;
    assert_eq!(revisions(&p.events), [0]);
    assert!(p.end_reached);
    let p = page(6, true, 5).await;
    assert_eq!(revisions(&p.events), [5, 4, 3, 2, 1]);
    assert_eq!((p.next_cursor, p.end_reached), (1, false));
    // "Strictly below" a revision past the end is the whole stream.
    let p = page(24, true, 2).await;
    assert_eq!(revisions(&p.events), [23, 22]);
    let p = page(1_000, true, 2).await;
    assert_eq!(revisions(&p.events), [23, 22]);

    // Walk both ways with several page sizes, passing next_cursor back unchanged.
    for size in [1u32, 4, 7, 24, 25, 0] {
        let mut forward = Vec::new();
        let mut cursor = 0;
        let mut pages = 0;
        loop {
            let p = page(cursor, false, size).await;
            assert!(p.events.len() <= if size == 0 { 100 } else { size as usize });
            forward.extend(p.events);
            cursor = p.next_cursor;
            pages += 1;
            assert!(pages <= 30, "forward walk does not end");
            if p.end_reached {
                break;
            }
        }
        assert_eq!(forward, all, "forward walk with pages of {size}");
        let mut backward = Vec::new();
        let mut cursor = 0;
        let mut pages = 0;
        loop {
            let p = page(cursor, true, size).await;
            backward.extend(p.events);
            cursor = p.next_cursor;
            pages += 1;
            assert!(pages <= 30, "backward walk does not end");
            if p.end_reached {
                break;
            }
        }
        backward.reverse();
        assert_eq!(backward, all, "backward walk with pages of {size}");
    }

    // A one-event stream read backward from the end.
    append_ok(&mut c, append("deal-single", None, vec![proposed("", 1.0)])).await;
    let p = read_stream(&mut c, "deal-single", 0, true, 0)
        .await
        .unwrap();
    assert_eq!(revisions(&p.events), [0]);
    assert_eq!((p.next_cursor, p.end_reached), (0, true));
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn page_size_zero_is_the_default_and_larger_than_the_cap_is_capped() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let s = "bulk-1";
    let total = limits::READ_PAGE_MAX as usize + 100;
    let first = (0..limits::EVENTS_PER_APPEND_MAX)
        .map(|i| proposed("", i as f64))
        .collect();
    append_ok(&mut c, append(s, Some(Expected::NoStream(())), first)).await;
    let rest = (limits::EVENTS_PER_APPEND_MAX..total)
        .map(|i| proposed("", i as f64))
        .collect();
    let r = append_ok(&mut c, append(s, Some(Expected::Exact(999)), rest)).await;
    assert_eq!(landed(&r), (1001, total as u64, total as u64 - 1));
    let default = limits::READ_PAGE_DEFAULT as usize;
    let cap = limits::READ_PAGE_MAX as usize;

    let p = read_stream(&mut c, s, 0, false, 0).await.unwrap();
    assert_eq!(p.events.len(), default);
    assert_eq!((p.next_cursor, p.end_reached), (default as u64, false));
    let p = read_stream(&mut c, s, 0, true, 0).await.unwrap();
    assert_eq!(p.events.len(), default);
    assert_eq!(p.events[0].revision, total as u64 - 1);
    for max in [limits::READ_PAGE_MAX + 1, 5_000, u32::MAX] {
        let p = read_stream(&mut c, s, 0, false, max).await.unwrap();
        assert_eq!(p.events.len(), cap, "max_count {max}");
        assert_eq!((p.next_cursor, p.end_reached), (cap as u64, false));
        let p = read_stream(&mut c, s, 0, true, max).await.unwrap();
        assert_eq!(p.events.len(), cap, "max_count {max}");
        assert_eq!(p.next_cursor, (total - cap) as u64);
        let p = read_all(&mut c, 0, false, max, None).await;
        assert_eq!(p.events.len(), cap, "max_count {max}");
        assert_eq!((p.next_cursor, p.end_reached), (cap as u64 + 1, false));
        let p = read_all(&mut c, 0, true, max, None).await;
        assert_eq!(p.events.len(), cap, "max_count {max}");
        assert_eq!(p.events[0].position, total as u64);
    }
    let p = read_all(&mut c, 0, false, 0, None).await;
    assert_eq!(
        positions(&p.events),
        (1..=default as u64).collect::<Vec<_>>()
    );
    assert_eq!(p.next_cursor, default as u64 + 1);
    let p = read_all(&mut c, 0, true, 0, None).await;
    assert_eq!(p.events.len(), default);

    // Walk the long stream both ways in pages of 300 and compare with the full list.
    let mut forward = Vec::new();
    let mut cursor = 0;
    loop {
        let p = read_stream(&mut c, s, cursor, false, 300).await.unwrap();
        forward.extend(p.events);
        cursor = p.next_cursor;
        if p.end_reached {
            break;
        }
    }
    assert_eq!(revisions(&forward), (0..total as u64).collect::<Vec<_>>());
    let mut backward = Vec::new();
    let mut cursor = 0;
    loop {
        let p = read_stream(&mut c, s, cursor, true, 300).await.unwrap();
        backward.extend(p.events);
        cursor = p.next_cursor;
        if p.end_reached {
            break;
        }
    }
    backward.reverse();
    assert_eq!(backward, forward);
    for (i, event) in forward.iter().enumerate() {
        assert_eq!(event.event, Some(custom(i as f64)));
        assert_eq!(event.position, i as u64 + 1);
    }
    t.server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// ReadAll and filters, over a log of several streams with custom and typed events
// ---------------------------------------------------------------------------------------

/// Appends a log across several streams with every typed event and some custom ones.
/// Returns the bodies sent, by position.
async fn mixed_log(c: &mut Client) -> Vec<(String, pb::Event)> {
    let (c1, c2, c10) = (id(1001), id(1002), id(1010));
    let appends: Vec<(&str, Vec<pb::Event>)> = vec![
        (
            "customer-1",
            vec![
                customer_registered(&c1),
                interaction_logged(&c1),
                purchase_completed(&c1),
            ],
        ),
        ("deal-1", vec![custom_typed("deal.opened", 1.0)]),
        (
            "customer-2",
            vec![customer_registered(&c2), contact_details_changed(&c2)],
        ),
        (
            "customer-10",
            vec![
                customer_registered(&c10),
                custom_typed("review.written", 4.0),
            ],
        ),
        (
            "deal-2",
            vec![custom_typed("deal.opened", 2.0), purchase_completed(&c2)],
        ),
        (
            "loyalty-1",
            vec![
                custom_typed("points.earned", 10.0),
                custom_typed("points.earned", 20.0),
            ],
        ),
        (
            "customer-1",
            vec![
                contact_details_changed(&c1),
                custom_typed("review.written", 5.0),
            ],
        ),
        ("deal-1", vec![custom_typed("deal.won", 1.0)]),
        ("customer-2", vec![interaction_logged(&c2)]),
    ];
    let mut sent = Vec::new();
    for (stream, events) in appends {
        let batch = events.iter().map(|e| with_body("", e.clone())).collect();
        let r = append_ok(c, append(stream, None, batch)).await;
        assert_eq!(r.first_position, sent.len() as u64 + 1);
        sent.extend(events.into_iter().map(|e| (stream.to_owned(), e)));
    }
    sent
}

fn type_name(event: &pb::Event) -> String {
    match event.kind.as_ref().unwrap() {
        pb::event::Kind::Custom(c) => c.r#type.clone(),
        pb::event::Kind::CustomerRegistered(_) => "CustomerRegistered".into(),
        pb::event::Kind::ContactDetailsChanged(_) => "ContactDetailsChanged".into(),
        pb::event::Kind::InteractionLogged(_) => "InteractionLogged".into(),
        pb::event::Kind::PurchaseCompleted(_) => "PurchaseCompleted".into(),
        other => panic!("mixed_log does not use {other:?}"),
    }
}

#[tokio::test]
async fn typed_and_custom_events_round_trip_through_every_read() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let sent = mixed_log(&mut c).await;
    let log = whole_log(&mut c).await;
    assert_eq!(log.len(), sent.len());
    let mut seen_types = HashSet::new();
    for (event, (stream, body)) in log.iter().zip(&sent) {
        assert_eq!(&event.stream, stream);
        assert_eq!(
            event.event.as_ref(),
            Some(body),
            "body at {}",
            event.position
        );
        assert_eq!(event.event_type, type_name(body));
        assert_eq!(event.schema_version, 1);
        seen_types.insert(event.event_type.clone());
    }
    for name in [
        "CustomerRegistered",
        "ContactDetailsChanged",
        "InteractionLogged",
        "PurchaseCompleted",
        "review.written",
    ] {
        assert!(seen_types.contains(name), "{name} not in the log");
    }
    // The same events through ReadStream and Subscribe.
    for stream in [
        "customer-1",
        "customer-2",
        "customer-10",
        "deal-1",
        "deal-2",
        "loyalty-1",
    ] {
        let by_stream = whole_stream(&mut c, stream).await;
        let expected: Vec<_> = log.iter().filter(|e| e.stream == stream).cloned().collect();
        assert_eq!(by_stream, expected, "{stream}");
        assert_eq!(
            revisions(&by_stream),
            (0..expected.len() as u64).collect::<Vec<_>>()
        );
    }
    let mut sub = subscribe(&mut c, 0, None).await;
    assert_eq!(collect(&mut sub, log.len()).await, log);
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn read_all_pages_follow_the_fine_print() {
    let t = TestServer::start().await;
    let mut c = t.client().await;

    // Empty log: nothing either way, the end is reached, forward polls from 1.
    let p = read_all(&mut c, 0, false, 0, None).await;
    assert!(p.events.is_empty());
    assert_eq!((p.next_cursor, p.end_reached), (1, true));
    let p = read_all(&mut c, 0, true, 0, None).await;
    assert!(p.events.is_empty());
    assert!(p.end_reached);

    let sent = mixed_log(&mut c).await;
    let n = sent.len() as u64;
    let log = whole_log(&mut c).await;
    assert_eq!(positions(&log), (1..=n).collect::<Vec<_>>());

    // Forward is inclusive (0 = the start), next_cursor the first unread position.
    let p = read_all(&mut c, 0, false, 3, None).await;
    assert_eq!(positions(&p.events), [1, 2, 3]);
    assert_eq!((p.next_cursor, p.end_reached), (4, false));
    let p = read_all(&mut c, 1, false, 3, None).await;
    assert_eq!(positions(&p.events), [1, 2, 3]);
    let p = read_all(&mut c, 7, false, 3, None).await;
    assert_eq!(positions(&p.events), [7, 8, 9]);
    assert_eq!(p.events, log[6..9]);
    assert_eq!((p.next_cursor, p.end_reached), (10, false));
    let p = read_all(&mut c, n - 2, false, 3, None).await;
    assert_eq!(positions(&p.events), [n - 2, n - 1, n]);
    assert_eq!((p.next_cursor, p.end_reached), (n + 1, true));
    // At the end: empty, with a cursor to poll from that yields the next event.
    let p = read_all(&mut c, n + 1, false, 3, None).await;
    assert!(p.events.is_empty());
    assert_eq!((p.next_cursor, p.end_reached), (n + 1, true));

    // Backward is exclusive, 0 = from the head, next_cursor the last returned.
    let p = read_all(&mut c, 0, true, 3, None).await;
    assert_eq!(positions(&p.events), [n, n - 1, n - 2]);
    assert_eq!((p.next_cursor, p.end_reached), (n - 2, false));
    let p = read_all(&mut c, 7, true, 3, None).await;
    assert_eq!(positions(&p.events), [6, 5, 4]);
    assert_eq!((p.next_cursor, p.end_reached), (4, false));
    let p = read_all(&mut c, 4, true, 3, None).await;
    assert_eq!(positions(&p.events), [3, 2, 1]);
    assert_eq!((p.next_cursor, p.end_reached), (1, true));
    let p = read_all(&mut c, 3, true, 5, None).await;
    assert_eq!(positions(&p.events), [2, 1]);
    assert!(p.end_reached);
    let p = read_all(&mut c, n + 1, true, 1, None).await;
    assert_eq!(positions(&p.events), [n]);
    let p = read_all(&mut c, n + 50, true, 1, None).await;
    assert_eq!(positions(&p.events), [n]);

    // Walk both ways with several page sizes.
    for size in [1u32, 2, 3, 5, n as u32, n as u32 + 1] {
        let mut forward = Vec::new();
        let mut cursor = 0;
        loop {
            let p = read_all(&mut c, cursor, false, size, None).await;
            if let Some(first) = p.events.first()
                && cursor > 0
            {
                assert_eq!(first.position, cursor, "forward pages are inclusive");
            }
            forward.extend(p.events);
            cursor = p.next_cursor;
            if p.end_reached {
                break;
            }
        }
        assert_eq!(forward, log, "forward walk with pages of {size}");
        let mut backward = Vec::new();
        let mut cursor = 0;
        loop {
            let p = read_all(&mut c, cursor, true, size, None).await;
            if let Some(first) = p.events.first()
                && cursor > 0
            {
                assert_eq!(first.position, cursor - 1, "backward pages are exclusive");
            }
            if let Some(last) = p.events.last() {
                assert_eq!(p.next_cursor, last.position);
            }
            backward.extend(p.events);
            cursor = p.next_cursor;
            if p.end_reached {
                break;
            }
        }
        backward.reverse();
        assert_eq!(backward, log, "backward walk with pages of {size}");
    }

    // Poll from the end cursor.
    let end = read_all(&mut c, 0, false, 1_000, None).await;
    assert!(end.end_reached);
    append_ok(&mut c, append("deal-3", None, vec![proposed("", 9.0)])).await;
    let p = read_all(&mut c, end.next_cursor, false, 10, None).await;
    assert_eq!(positions(&p.events), [n + 1]);
    assert_eq!(p.events[0].stream, "deal-3");
    assert_eq!((p.next_cursor, p.end_reached), (n + 2, true));
    t.server.stop().await.unwrap();
}

/// Every page from the start (forward) or the end (backward) until `end_reached`, each
/// checked to be within the page byte bound as a message.
async fn pages_of(
    c: &mut Client,
    stream: Option<&str>,
    backwards: bool,
    filter: Option<pb::Filter>,
) -> (Vec<pb::RecordedEvent>, usize) {
    use prost::Message;
    let (mut events, mut pages, mut cursor) = (Vec::new(), 0, 0);
    loop {
        let page = match stream {
            Some(stream) => read_stream(c, stream, cursor, backwards, limits::READ_PAGE_MAX)
                .await
                .expect("ReadStream"),
            None => read_all(c, cursor, backwards, limits::READ_PAGE_MAX, filter.clone()).await,
        };
        assert!(
            page.encoded_len() <= limits::READ_PAGE_BYTES_MAX || page.events.len() == 1,
            "a page of {} events is {} bytes",
            page.events.len(),
            page.encoded_len()
        );
        assert!(!page.events.is_empty() || page.end_reached);
        events.extend(page.events);
        pages += 1;
        assert!(pages < 1_000, "the pages do not end");
        cursor = page.next_cursor;
        if page.end_reached {
            return (events, pages);
        }
    }
}

#[tokio::test]
async fn pages_of_large_events_stop_at_the_byte_bound_and_chain() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    // Three pages' worth of events near the payload limit, between small events on
    // another stream. A page of 1 000 such events would be 60 MiB: before the byte
    // bound, a read of them failed OUT_OF_RANGE (tonic refused to encode a message over
    // the limit).
    let each = limits::PAYLOAD_BYTES_MAX - 1024;
    let count = 3 * limits::READ_PAGE_BYTES_MAX / each + 1;
    let per_append = limits::MESSAGE_BYTES_MAX / each / 2;
    let mut appended = 0;
    while appended < count {
        let n = per_append.min(count - appended);
        let batch = (0..n).map(|_| with_body("", custom_blob(each))).collect();
        append_ok(&mut c, append("blob-1", None, batch)).await;
        append_ok(&mut c, append("small-1", None, vec![proposed("", 1.0)])).await;
        appended += n;
    }
    let head = head(&mut c).await.position;
    let blob = Some(pb::Filter {
        stream_prefixes: vec!["blob-".into()],
        event_types: vec![],
    });

    let (forward, pages) = pages_of(&mut c, None, false, None).await;
    assert_eq!(positions(&forward), (1..=head).collect::<Vec<_>>());
    assert!(pages >= 3, "{pages} pages");
    let (backward, _) = pages_of(&mut c, None, true, None).await;
    assert_eq!(positions(&backward), (1..=head).rev().collect::<Vec<_>>());
    let blobs: Vec<u64> = forward
        .iter()
        .filter(|e| e.stream == "blob-1")
        .map(|e| e.position)
        .collect();
    assert_eq!(blobs.len(), count);
    let (filtered, _) = pages_of(&mut c, None, false, blob.clone()).await;
    assert_eq!(positions(&filtered), blobs);
    let (filtered_back, _) = pages_of(&mut c, None, true, blob).await;
    assert_eq!(
        positions(&filtered_back),
        blobs.iter().rev().copied().collect::<Vec<_>>()
    );
    let (stream, pages) = pages_of(&mut c, Some("blob-1"), false, None).await;
    assert_eq!(revisions(&stream), (0..count as u64).collect::<Vec<_>>());
    assert!(pages >= 3, "{pages} pages");
    let (stream_back, _) = pages_of(&mut c, Some("blob-1"), true, None).await;
    assert_eq!(
        revisions(&stream_back),
        (0..count as u64).rev().collect::<Vec<_>>()
    );
    // The events themselves come whole.
    assert!(stream.iter().all(|e| e.event == Some(custom_blob(each))));

    // Data far larger as protobuf than as stored (a null is 1 byte stored, 4 on the
    // wire): the stored bound lets ~30 of these through, the encoded bound cuts.
    let nulls = || {
        let values = vec![
            Value {
                kind: Some(ValueKind::NullValue(0))
            };
            50_000
        ];
        let list = Value {
            kind: Some(ValueKind::ListValue(prost_types::ListValue { values })),
        };
        pb::Event {
            kind: Some(pb::event::Kind::Custom(pb::CustomEvent {
                r#type: "nulls.stored".into(),
                data: Some(Struct {
                    fields: BTreeMap::from([("nulls".to_owned(), list)]),
                }),
            })),
        }
    };
    for _ in 0..4 {
        let batch = (0..10).map(|_| with_body("", nulls())).collect();
        append_ok(&mut c, append("nulls-1", None, batch)).await;
    }
    let (stream, pages) = pages_of(&mut c, Some("nulls-1"), false, None).await;
    assert_eq!(revisions(&stream), (0..40).collect::<Vec<_>>());
    assert!(pages >= 4, "{pages} pages");
    let (stream_back, _) = pages_of(&mut c, Some("nulls-1"), true, None).await;
    assert_eq!(revisions(&stream_back), (0..40).rev().collect::<Vec<_>>());
    let (tail, _) = pages_of(&mut c, None, true, None).await;
    assert_eq!(positions(&tail), (1..=head + 40).rev().collect::<Vec<_>>());
    assert!(stream.iter().all(|e| e.event == Some(nulls())));
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_subscription_over_large_events_reads_byte_bounded_steps_in_order() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    // Large events between small ones: a subscription's step (a window of positions read
    // ahead) stops at its byte bound several times, and the rest of each window must
    // still come before the next window's events.
    let each = limits::PAYLOAD_BYTES_MAX - 1024;
    let blobs = 3 * limits::SUBSCRIPTION_READ_BYTES / each + 2;
    for i in 0..blobs {
        let mut batch = vec![with_body("", custom_blob(each))];
        if i % 2 == 0 {
            batch.push(with_body("", custom_blob(each)));
        }
        append_ok(&mut c, append("blob-1", None, batch)).await;
        append_ok(&mut c, append("small-1", None, vec![proposed("", 1.0)])).await;
    }
    assert_eq!(
        whole_log(&mut c).await.len() as u64,
        head(&mut c).await.position
    );
    for (after, filter) in [
        (0, None),
        (5, None),
        (0, Some(filter(&["blob-"], &[]))),
        (3, Some(filter(&["small-"], &[]))),
    ] {
        // Each round appends one live event: the log so far, read in pages.
        let whole = whole_log(&mut c).await;
        let expected: Vec<u64> = whole
            .iter()
            .filter(|e| e.position > after && filter.as_ref().is_none_or(|f| passes(f, e)))
            .map(|e| e.position)
            .collect();
        let mut stream = subscribe(&mut c, after, filter.clone()).await;
        let got = collect(&mut stream, expected.len()).await;
        assert_eq!(
            positions(&got),
            expected,
            "after {after}, filter {filter:?}"
        );
        assert!(
            got.iter()
                .filter(|e| e.stream == "blob-1")
                .all(|e| e.event == Some(custom_blob(each)))
        );
        // Then live, still in order.
        let live = append_ok(&mut c, append("small-1", None, vec![proposed("", 2.0)])).await;
        let small_passes = filter.as_ref().is_none_or(|f| {
            f.stream_prefixes
                .iter()
                .any(|p| "small-1".starts_with(p.as_str()))
        });
        if small_passes {
            assert_eq!(next_event(&mut stream).await.position, live.last_position);
        }
    }
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn read_all_filters_or_within_a_list_and_and_across_lists() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    mixed_log(&mut c).await;
    let log = whole_log(&mut c).await;

    let cases: Vec<(pb::Filter, usize)> = vec![
        (filter(&[], &[]), log.len()),
        (filter(&["customer-"], &[]), 10),
        (filter(&["customer-1"], &[]), 7), // customer-1 and customer-10
        (filter(&["cust"], &[]), 10),
        (filter(&["customer-2", "loyalty-"], &[]), 5),
        (filter(&["deal-", "loyalty-"], &[]), 6),
        (filter(&[], &["PurchaseCompleted"]), 2),
        (filter(&[], &["CustomerRegistered", "review.written"]), 5),
        (
            filter(&[], &["deal.opened", "deal.won", "points.earned"]),
            5,
        ),
        (
            filter(&["customer-"], &["CustomerRegistered", "InteractionLogged"]),
            5,
        ),
        (filter(&["deal-"], &["PurchaseCompleted"]), 1),
        (
            filter(
                &["deal-", "customer-2"],
                &["PurchaseCompleted", "ContactDetailsChanged"],
            ),
            2,
        ),
        (filter(&["deal-"], &["CustomerRegistered"]), 0),
        (filter(&["nothing-"], &[]), 0),
        (filter(&[], &["customerregistered"]), 0),
    ];
    for (f, count) in cases {
        let expected: Vec<_> = log.iter().filter(|e| passes(&f, e)).cloned().collect();
        assert_eq!(expected.len(), count, "sanity of the fixture for {f:?}");
        // One page.
        let p = read_all(&mut c, 0, false, 0, Some(f.clone())).await;
        assert_eq!(p.events, expected, "{f:?}");
        assert!(p.end_reached);
        let p = read_all(&mut c, 0, true, 0, Some(f.clone())).await;
        assert_eq!(
            p.events,
            expected.iter().rev().cloned().collect::<Vec<_>>(),
            "{f:?}"
        );
        assert!(p.end_reached);
        // Pages of 2, both ways.
        let mut forward = Vec::new();
        let mut cursor = 0;
        for _ in 0..=log.len() {
            let p = read_all(&mut c, cursor, false, 2, Some(f.clone())).await;
            assert!(p.events.len() <= 2);
            forward.extend(p.events);
            cursor = p.next_cursor;
            if p.end_reached {
                break;
            }
        }
        assert_eq!(forward, expected, "forward pages of {f:?}");
        let mut backward = Vec::new();
        let mut cursor = 0;
        for _ in 0..=log.len() {
            let p = read_all(&mut c, cursor, true, 2, Some(f.clone())).await;
            assert!(p.events.len() <= 2);
            backward.extend(p.events);
            cursor = p.next_cursor;
            if p.end_reached {
                break;
            }
        }
        backward.reverse();
        assert_eq!(backward, expected, "backward pages of {f:?}");
    }

    // A malformed filter is refused with the field named.
    let status = c
        .read_all(pb::ReadAllRequest {
            filter: Some(filter(&["customer-", ""], &[])),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_set(&status), ["filter.stream_prefixes[1]"]);
    let many: Vec<String> = (0..=limits::FILTER_ITEMS_MAX)
        .map(|i| format!("t{i}"))
        .collect();
    let status = c
        .read_all(pb::ReadAllRequest {
            filter: Some(pb::Filter {
                stream_prefixes: vec![],
                event_types: many,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_set(&status), ["filter.event_types"]);
    t.server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Envelope defaults, ids and the chain
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn envelope_defaults_and_round_trips() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let occurred = Timestamp {
        seconds: 1_556_712_000,
        nanos: 123_456_000,
    };
    let metadata = HashMap::from([
        ("tenant".to_owned(), "acme".to_owned()),
        ("import".to_owned(), "2019-q2".to_owned()),
        ("note".to_owned(), "ünïcödé ✓".to_owned()),
    ]);
    let batch = vec![
        pb::ProposedEvent {
            event_id: String::new(),
            event: Some(purchase_completed(&id(7))),
            occurred_at: None,
            metadata: HashMap::new(),
            correlation_id: String::new(),
            causation_id: String::new(),
            actor: String::new(),
            source_channel: String::new(),
        },
        pb::ProposedEvent {
            event_id: String::new(),
            event: Some(custom_typed("review.written", 4.5)),
            occurred_at: Some(occurred),
            metadata: metadata.clone(),
            correlation_id: "corr-42".into(),
            causation_id: "cmd-41".into(),
            actor: "user:ada".into(),
            source_channel: "web-shop".into(),
        },
        pb::ProposedEvent {
            event_id: id(77).to_uppercase(),
            ..proposed("", 3.0)
        },
    ];
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    append_ok(&mut c, append("customer-env", None, batch)).await;
    let after = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let events = whole_stream(&mut c, "customer-env").await;
    assert_eq!(events.len(), 3);
    let recorded = events[0].recorded_at.expect("recorded_at is set");
    assert!(
        (before - 1..=after + 1).contains(&recorded.seconds),
        "recorded_at {recorded:?} is not the time of the append"
    );
    for event in &events {
        assert_eq!(
            event.recorded_at,
            Some(recorded),
            "one append, one recorded_at"
        );
    }
    // A missing occurred_at is the recorded_at; a given one comes back.
    assert_eq!(events[0].occurred_at, Some(recorded));
    assert_eq!(events[1].occurred_at, Some(occurred));
    // Envelope fields round-trip; absent ones come back empty.
    assert_eq!(events[1].metadata, metadata);
    assert_eq!(events[1].correlation_id, "corr-42");
    assert_eq!(events[1].causation_id, "cmd-41");
    assert_eq!(events[1].actor, "user:ada");
    assert_eq!(events[1].source_channel, "web-shop");
    assert!(events[0].metadata.is_empty());
    assert_eq!(
        (
            events[0].correlation_id.as_str(),
            events[0].causation_id.as_str(),
            events[0].actor.as_str(),
            events[0].source_channel.as_str()
        ),
        ("", "", "", "")
    );
    // Event types and bodies.
    assert_eq!(events[0].event_type, "PurchaseCompleted");
    assert_eq!(events[0].event, Some(purchase_completed(&id(7))));
    assert_eq!(events[1].event_type, "review.written");
    assert_eq!(events[1].event, Some(custom_typed("review.written", 4.5)));
    // Server-assigned ids are UUIDv7, distinct, and time-ordered; a client id is kept.
    let ids: Vec<Uuid> = events
        .iter()
        .map(|e| Uuid::parse_str(&e.event_id).expect("event_id is a UUID"))
        .collect();
    for assigned in &ids[..2] {
        assert_eq!(assigned.get_version_num(), 7, "{assigned}");
        assert_eq!(assigned.get_variant(), uuid::Variant::RFC4122);
        let (seconds, _) = assigned.get_timestamp().unwrap().to_unix();
        assert!((before as u64 - 1..=after as u64 + 1).contains(&seconds));
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(
        events[2].event_id,
        id(77),
        "ids come back in canonical form"
    );
    // The canonical id is the same id: a retry with it is idempotent.
    let again = append_ok(
        &mut c,
        append(
            "customer-env",
            Some(Expected::NoStream(())),
            vec![proposed(&id(77), 3.0)],
        ),
    )
    .await;
    assert_eq!(landed(&again), (3, 3, 2));

    // recorded_at never goes backwards along the log.
    append_ok(
        &mut c,
        append("customer-env", None, vec![proposed("", 4.0)]),
    )
    .await;
    let log = whole_log(&mut c).await;
    let times: Vec<(i64, i32)> = log
        .iter()
        .map(|e| {
            let t = e.recorded_at.unwrap();
            (t.seconds, t.nanos)
        })
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn the_head_pins_the_hash_chain() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let empty = head(&mut c).await;
    assert_eq!(empty.position, 0);
    assert_eq!(empty.hash, vec![0u8; 32]);

    let mut heads = Vec::new();
    for (i, stream) in ["customer-1", "deal-1", "customer-1", "loyalty-1"]
        .iter()
        .enumerate()
    {
        let batch = (0..=i).map(|k| proposed("", (i * 10 + k) as f64)).collect();
        let r = append_ok(&mut c, append(stream, None, batch)).await;
        let h = head(&mut c).await;
        assert_eq!(
            h.position, r.last_position,
            "the head moves with each append"
        );
        heads.push(h);
    }
    let log = whole_log(&mut c).await;
    assert_eq!(positions(&log), (1..=10).collect::<Vec<_>>());
    let mut distinct = HashSet::new();
    for event in &log {
        assert_eq!(event.hash.len(), 32, "hash at {}", event.position);
        assert_ne!(event.hash, vec![0u8; 32]);
        assert!(
            distinct.insert(event.hash.clone()),
            "hash repeats at {}",
            event.position
        );
    }
    // Each head seen equals the hash of the event at its position.
    for h in &heads {
        assert_eq!(h.hash, log[h.position as usize - 1].hash);
    }
    let last = head(&mut c).await;
    assert_eq!(last.position, 10);
    assert_eq!(last.hash, log[9].hash);
    // Stream reads carry the same chain hashes.
    for event in whole_stream(&mut c, "customer-1").await {
        assert_eq!(event.hash, log[event.position as usize - 1].hash);
    }
    t.server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Subscribe
// ---------------------------------------------------------------------------------------

fn assert_dense(events: &[pb::RecordedEvent], first: u64, last: u64) {
    let got = positions(events);
    let want: Vec<u64> = (first..=last).collect();
    if got != want {
        let dupes = got.len() - got.iter().collect::<HashSet<_>>().len();
        panic!(
            "positions are not dense {first}..={last}: {} events, {dupes} duplicates, first few {:?}",
            got.len(),
            &got[..got.len().min(10)]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_catches_up_then_goes_live_without_gaps_or_duplicates() {
    const WRITERS: usize = 5;
    const APPENDS: usize = 50;
    const HISTORY: u64 = 40;
    let t = TestServer::start().await;
    let mut c = t.client().await;
    for i in 0..HISTORY {
        let stream = format!("history-{}", i % 3);
        append_ok(&mut c, append(&stream, None, vec![proposed("", i as f64)])).await;
    }
    let total = HISTORY + (WRITERS * APPENDS) as u64;
    // Several subscriptions on their own connections: from the start, from the middle
    // of the history, from the head (live only).
    let (mut c1, mut c2, mut c3) = (t.client().await, t.client().await, t.client().await);
    let mut from_start = subscribe(&mut c1, 0, None).await;
    let mut from_middle = subscribe(&mut c2, HISTORY / 2, None).await;
    let mut from_head = subscribe(&mut c3, HISTORY, None).await;
    // After a position the log has not reached yet: only what comes past it.
    let mut from_future = subscribe(&mut c3, HISTORY + 100, None).await;
    // The first events prove the first two are running before the writers start.
    let start_first = next_event(&mut from_start).await;
    let middle_first = next_event(&mut from_middle).await;
    assert_eq!(start_first.position, 1);
    assert_eq!(middle_first.position, HISTORY / 2 + 1);

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let mut client = c.clone();
        writers.push(tokio::spawn(async move {
            let stream = format!("writer-{w}");
            for k in 0..APPENDS {
                let expected = if k == 0 {
                    Expected::NoStream(())
                } else {
                    Expected::Exact(k as u64 - 1)
                };
                let r = append_ok(
                    &mut client,
                    append(&stream, Some(expected), vec![proposed("", k as f64)]),
                )
                .await;
                assert_eq!(r.last_revision, k as u64);
            }
        }));
    }
    // Meanwhile the head is never ahead of what can be read: the event at the head's
    // position is readable and carries the head's hash.
    let mut checker = c.clone();
    let head_checks = async move {
        let mut checks = 0;
        loop {
            let h = head(&mut checker).await;
            let p = read_all(&mut checker, h.position, false, 1, None).await;
            assert_eq!(
                positions(&p.events),
                [h.position],
                "head {h:?} is not readable"
            );
            assert_eq!(p.events[0].hash, h.hash);
            checks += 1;
            if h.position == total {
                return checks;
            }
        }
    };
    let (start_rest, middle_rest, live, future, checks) = tokio::join!(
        collect(&mut from_start, (total - 1) as usize),
        collect(&mut from_middle, (total - HISTORY / 2 - 1) as usize),
        collect(&mut from_head, (total - HISTORY) as usize),
        collect(&mut from_future, (total - HISTORY - 100) as usize),
        timeout(STEP * 3, head_checks),
    );
    assert!(checks.expect("head checks stalled") > 0);
    for writer in writers {
        timeout(STEP, writer)
            .await
            .expect("writer stalled")
            .unwrap();
    }
    let mut start_all = vec![start_first];
    start_all.extend(start_rest);
    let mut middle_all = vec![middle_first];
    middle_all.extend(middle_rest);
    assert_dense(&start_all, 1, total);
    assert_dense(&middle_all, HISTORY / 2 + 1, total);
    assert_dense(&live, HISTORY + 1, total);
    assert_dense(&future, HISTORY + 101, total);

    // What the subscriptions saw is the log.
    let log = whole_log(&mut c).await;
    assert_eq!(start_all, log);
    assert_eq!(middle_all, log[HISTORY as usize / 2..]);
    assert_eq!(live, log[HISTORY as usize..]);
    // Every writer's stream arrived in revision order.
    for w in 0..WRITERS {
        let stream = format!("writer-{w}");
        let seen: Vec<u64> = live
            .iter()
            .filter(|e| e.stream == stream)
            .map(|e| e.revision)
            .collect();
        assert_eq!(seen, (0..APPENDS as u64).collect::<Vec<_>>(), "{stream}");
    }
    // Nothing more is pending: the next event is one appended now.
    append_ok(&mut c, append("sentinel-1", None, vec![proposed("", 0.0)])).await;
    for sub in [
        &mut from_start,
        &mut from_middle,
        &mut from_head,
        &mut from_future,
    ] {
        let next = next_event(sub).await;
        assert_eq!(
            (next.position, next.stream.as_str()),
            (total + 1, "sentinel-1")
        );
    }
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_a_filter() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    mixed_log(&mut c).await;
    let history = whole_log(&mut c).await;
    let f = filter(
        &["customer-1", "deal-"],
        &["PurchaseCompleted", "deal.won", "review.written"],
    );
    let expected_history: Vec<_> = history.iter().filter(|e| passes(&f, e)).cloned().collect();
    assert_eq!(expected_history.len(), 5);
    let mut sub = subscribe(&mut c, 0, Some(f.clone())).await;
    let mut from_middle = subscribe(&mut c, 8, Some(f.clone())).await;
    let seen = collect(&mut sub, expected_history.len()).await;
    assert_eq!(seen, expected_history);

    // Live: matching and non-matching events from two tasks; then a sentinel that
    // matches, so that "nothing else arrived" is observable without waiting.
    let mut a = c.clone();
    let mut b = c.clone();
    tokio::join!(
        async move {
            for i in 0..20 {
                let event = if i % 2 == 0 {
                    purchase_completed(&id(1001))
                } else {
                    interaction_logged(&id(1001))
                };
                append_ok(
                    &mut a,
                    append("customer-1", None, vec![with_body("", event)]),
                )
                .await;
            }
        },
        async move {
            for i in 0..20 {
                let event = match i % 3 {
                    0 => custom_typed("deal.won", i as f64),
                    1 => custom_typed("deal.lost", i as f64),
                    _ => purchase_completed(&id(1002)),
                };
                append_ok(&mut b, append("deal-9", None, vec![with_body("", event)])).await;
                append_ok(
                    &mut b,
                    append(
                        "customer-2",
                        None,
                        vec![with_body("", purchase_completed(&id(1002)))],
                    ),
                )
                .await;
            }
        },
    );
    append_ok(
        &mut c,
        append(
            "deal-end",
            None,
            vec![with_body("", custom_typed("deal.won", -1.0))],
        ),
    )
    .await;
    let log = whole_log(&mut c).await;
    let expected: Vec<_> = log.iter().filter(|e| passes(&f, e)).cloned().collect();
    let live_expected = &expected[expected_history.len()..];
    assert_eq!(live_expected.len(), 10 + 13 + 1);
    let live = collect(&mut sub, live_expected.len()).await;
    assert_eq!(live, live_expected);
    assert_eq!(live.last().unwrap().stream, "deal-end");
    let middle_expected: Vec<_> = expected
        .iter()
        .filter(|e| e.position > 8)
        .cloned()
        .collect();
    assert_eq!(
        collect(&mut from_middle, middle_expected.len()).await,
        middle_expected
    );
    // A filter that is malformed is refused before any stream starts.
    let status = c
        .subscribe(pb::SubscribeRequest {
            after_position: 0,
            filter: Some(filter(&[""], &[])),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_set(&status), ["filter.stream_prefixes[0]"]);
    t.server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_refused_at_the_start_says_why_with_its_field_violations() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let too_many: Vec<String> = (0..=limits::FILTER_ITEMS_MAX)
        .map(|i| format!("customer-{i}"))
        .collect();
    for filter in [
        pb::Filter {
            stream_prefixes: too_many,
            event_types: Vec::new(),
        },
        pb::Filter {
            stream_prefixes: Vec::new(),
            event_types: vec![String::new()],
        },
    ] {
        let status = c
            .subscribe(pb::SubscribeRequest {
                after_position: 0,
                filter: Some(filter),
            })
            .await
            .expect_err("a bad filter is refused before any event");
        let fields = violated_fields(&status);
        assert!(
            fields.iter().all(|f| f.starts_with("filter.")),
            "{fields:?}"
        );
    }
    // The server still serves subscriptions after the refusals.
    append_ok(&mut c, append("customer-1", None, vec![proposed("", 1.0)])).await;
    let mut events = c
        .subscribe(pb::SubscribeRequest {
            after_position: 0,
            filter: None,
        })
        .await
        .expect("subscribe")
        .into_inner();
    let first = events
        .message()
        .await
        .expect("an event")
        .expect("not ended");
    assert_eq!(first.position, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_goes_away_does_not_break_the_server() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    for i in 0..10 {
        append_ok(
            &mut c,
            append("customer-1", None, vec![proposed("", i as f64)]),
        )
        .await;
    }
    // Subscribers on their own connections and on the shared one, dropped mid-history
    // and while live.
    for round in 0..5 {
        let own = t.client().await;
        let mut own_clone = own.clone();
        let mut sub = subscribe(&mut own_clone, 0, None).await;
        assert_eq!(next_event(&mut sub).await.position, 1);
        drop(sub);
        drop(own_clone);
        drop(own);
        let mut shared = subscribe(&mut c, 5, None).await;
        assert_eq!(next_event(&mut shared).await.position, 6);
        drop(shared);
        append_ok(
            &mut c,
            append("customer-1", None, vec![proposed("", round as f64)]),
        )
        .await;
    }
    let mut live = subscribe(&mut c, 15, None).await;
    let mut keep = subscribe(&mut c, 15, None).await;
    append_ok(&mut c, append("customer-1", None, vec![proposed("", 99.0)])).await;
    assert_eq!(next_event(&mut live).await.position, 16);
    drop(live);
    // The server keeps serving: appends, reads, other subscribers, new subscribers.
    let r = append_ok(
        &mut c,
        append("customer-1", None, vec![proposed("", 100.0)]),
    )
    .await;
    assert_eq!(r.first_position, 17);
    assert_eq!(
        collect(&mut keep, 2)
            .await
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        [16, 17]
    );
    let mut again = subscribe(&mut c, 0, None).await;
    assert_dense(&collect(&mut again, 17).await, 1, 17);
    assert_eq!(head(&mut c).await.position, 17);
    t.server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_exact_appends_to_one_stream_have_one_winner_per_revision() {
    const TASKS: usize = 20;
    const ROUNDS: u64 = 6;
    let t = TestServer::start().await;
    let c = t.client().await;
    let s = "deal-contended";
    let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut client = c.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for round in 0..ROUNDS {
                barrier.wait().await;
                // Round r expects the stream at revision r-1 (round 0: no stream).
                let expected = match round {
                    0 => Expected::NoStream(()),
                    r => Expected::Exact(r - 1),
                };
                let event_id = id(((task as u128) << 16) | u128::from(round));
                let result = client
                    .append(append(
                        s,
                        Some(expected),
                        vec![proposed(&event_id, task as f64)],
                    ))
                    .await;
                outcomes.push((round, event_id, result.map(tonic::Response::into_inner)));
            }
            outcomes
        }));
    }
    let mut winners: BTreeMap<u64, Vec<(String, u64)>> = BTreeMap::new();
    for task in tasks {
        for (round, event_id, result) in timeout(STEP, task).await.expect("stalled").unwrap() {
            match result {
                Ok(r) => {
                    assert_eq!(r.last_revision, round);
                    winners
                        .entry(round)
                        .or_default()
                        .push((event_id, r.last_position));
                }
                Err(status) => {
                    let expected = match round {
                        0 => "no_stream".to_owned(),
                        r => (r - 1).to_string(),
                    };
                    assert_wrong_expectation(&status, s, &expected, &round.to_string());
                }
            }
        }
    }
    assert_eq!(winners.len(), ROUNDS as usize, "{winners:?}");
    for (round, won) in &winners {
        assert_eq!(
            won.len(),
            1,
            "round {round}: exactly one winner, got {won:?}"
        );
    }
    let stream = whole_stream(&mut c.clone(), s).await;
    assert_eq!(revisions(&stream), (0..ROUNDS).collect::<Vec<_>>());
    assert_dense(&stream, 1, ROUNDS);
    for event in &stream {
        assert_eq!(winners[&event.revision][0].0, event.event_id);
        assert_eq!(winners[&event.revision][0].1, event.position);
    }
    assert_eq!(head(&mut c.clone()).await.position, ROUNDS);

    // Free-for-all: each task retries on ABORTED until it has appended once, reading the
    // stream's head before every try. Every task lands exactly once; the stream is dense.
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut client = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            loop {
                let last = read_stream(&mut client, s, 0, true, 1)
                    .await
                    .unwrap()
                    .events[0]
                    .revision;
                let result = client
                    .append(append(
                        s,
                        Some(Expected::Exact(last)),
                        vec![proposed(&id(0xF000 + task as u128), task as f64)],
                    ))
                    .await;
                match result {
                    Ok(r) => return (r.into_inner().last_revision, conflicts),
                    Err(status) => {
                        assert_eq!(status.code(), Code::Aborted, "{status:?}");
                        conflicts += 1;
                        assert!(conflicts < 1_000, "no progress");
                    }
                }
            }
        }));
    }
    let mut landed_at = Vec::new();
    for task in tasks {
        landed_at.push(timeout(STEP * 3, task).await.expect("stalled").unwrap().0);
    }
    landed_at.sort_unstable();
    assert_eq!(
        landed_at,
        (ROUNDS..ROUNDS + TASKS as u64).collect::<Vec<_>>()
    );
    let stream = whole_stream(&mut c.clone(), s).await;
    assert_eq!(
        revisions(&stream),
        (0..ROUNDS + TASKS as u64).collect::<Vec<_>>()
    );
    assert_dense(&stream, 1, ROUNDS + TASKS as u64);
    t.server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_restart() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let sent = mixed_log(&mut c).await;
    append_ok(
        &mut c,
        append("customer-idem", Some(Expected::NoStream(())), idem_batch()),
    )
    .await;
    let log = whole_log(&mut c).await;
    let before = head(&mut c).await;
    assert_eq!(before.position, sent.len() as u64 + 2);
    // A live subscription ends cleanly when the server stops; the stop does not hang.
    let mut sub = subscribe(&mut c, before.position, None).await;
    let t = timeout(STEP, t.restart()).await.expect("restart hung");
    let ended = timeout(STEP, sub.message())
        .await
        .expect("subscription did not end");
    assert!(!matches!(ended, Ok(Some(_))), "{ended:?}");

    let mut c = t.client().await;
    assert_eq!(head(&mut c).await, before);
    assert_eq!(whole_log(&mut c).await, log);
    for stream in [
        "customer-1",
        "customer-2",
        "customer-10",
        "deal-1",
        "deal-2",
        "loyalty-1",
        "customer-idem",
    ] {
        let expected: Vec<_> = log.iter().filter(|e| e.stream == stream).cloned().collect();
        assert_eq!(whole_stream(&mut c, stream).await, expected, "{stream}");
    }
    // Idempotency and expectations still hold against the reopened log.
    let again = append_ok(
        &mut c,
        append("customer-idem", Some(Expected::Exact(7)), idem_batch()),
    )
    .await;
    assert_eq!(landed(&again), (before.position - 1, before.position, 1));
    let status = append_err(
        &mut c,
        append(
            "customer-idem",
            Some(Expected::NoStream(())),
            vec![proposed("", 1.0)],
        ),
    )
    .await;
    assert_wrong_expectation(&status, "customer-idem", "no_stream", "1");
    // The log continues from the same head: dense positions, revisions, a new hash.
    let r = append_ok(
        &mut c,
        append(
            "customer-idem",
            Some(Expected::Exact(1)),
            vec![proposed("", 1.0)],
        ),
    )
    .await;
    assert_eq!(landed(&r), (before.position + 1, before.position + 1, 2));
    let after = head(&mut c).await;
    assert_eq!(after.position, before.position + 1);
    assert_ne!(after.hash, before.hash);
    let mut sub = subscribe(&mut c, 0, None).await;
    let all = collect(&mut sub, after.position as usize).await;
    assert_eq!(all[..log.len()], log[..]);
    assert_eq!(all.last().unwrap().hash, after.hash);

    // And once more, with the appended event.
    let t = timeout(STEP, t.restart()).await.expect("restart hung");
    let mut c = t.client().await;
    assert_eq!(head(&mut c).await, after);
    assert_eq!(whole_log(&mut c).await, all);
    t.server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// Health and reflection
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let t = TestServer::start().await;
    let mut health = HealthClient::new(t.channel().await);
    for service in ["", "rapport.v1.EventStore"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|s| panic!("health of {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let status = health
        .check(HealthCheckRequest {
            service: "rapport.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    t.server.stop().await.unwrap();
}

/// From the start of a shutdown the server and every service report NOT_SERVING, so a
/// probe aimed at one service stops routing to a draining server too.
#[tokio::test]
async fn health_of_each_service_turns_not_serving_when_a_shutdown_begins() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let t = TestServer::start().await;
    let mut health = HealthClient::new(t.channel().await);
    let mut watches = Vec::new();
    for service in [
        "",
        "rapport.v1.EventStore",
        "rapport.v1.Customers",
        "rapport.v1.Pipeline",
    ] {
        let mut stream = health
            .watch(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|s| panic!("watch {service:?}: {s:?}"))
            .into_inner();
        let first = timeout(STEP, stream.message()).await.unwrap().unwrap();
        assert_eq!(
            first.map(|r| r.status()),
            Some(ServingStatus::Serving),
            "{service:?}"
        );
        watches.push((service, stream));
    }
    // The watches stay open, so the drain runs to its bound: stop in the background.
    let stopping = tokio::spawn(t.server.stop());
    for (service, mut stream) in watches {
        let next = timeout(STEP, stream.message()).await.unwrap();
        assert_eq!(
            next.ok().flatten().map(|r| r.status()),
            Some(ServingStatus::NotServing),
            "{service:?}"
        );
    }
    timeout(STEP, stopping).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn reflection_lists_the_services_in_v1_and_v1alpha() {
    let t = TestServer::start().await;
    let channel = t.channel().await;
    let wanted = ["rapport.v1.EventStore", "grpc.health.v1.Health"];

    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel.clone());
        let requests = vec![
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            },
            ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "rapport.v1.EventStore".into(),
                )),
            },
        ];
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .unwrap()
            .into_inner();
        let list = timeout(STEP, responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = list.message_response else {
            panic!("not a list: {list:?}");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        for name in wanted {
            assert!(names.contains(&name), "v1 lists {names:?}");
        }
        let file = timeout(STEP, responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Some(MessageResponse::FileDescriptorResponse(file)) = file.message_response else {
            panic!("not a file: {file:?}");
        };
        assert!(!file.file_descriptor_proto.is_empty());
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = client
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        let list = timeout(STEP, responses.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = list.message_response else {
            panic!("not a list: {list:?}");
        };
        let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
        for name in wanted {
            assert!(names.contains(&name), "v1alpha lists {names:?}");
        }
    }
    t.server.stop().await.unwrap();
}

/// A subscriber that stops reading must not hold the server's shutdown up: its feeder
/// blocks on a full buffer, and the stop signal has to reach it there.
#[tokio::test]
async fn a_stalled_subscriber_does_not_block_shutdown() {
    let t = TestServer::start().await;
    let mut client = t.client().await;
    // Subscribed, never read: the server's buffer, the HTTP/2 windows and the socket fill up.
    let _stalled = client
        .subscribe(pb::SubscribeRequest {
            after_position: 0,
            filter: None,
        })
        .await
        .unwrap();
    for batch in 0..40u32 {
        let events = (0..limits::EVENTS_PER_APPEND_MAX)
            .map(|i| proposed("", f64::from(batch * 10_000 + i as u32)))
            .collect();
        client
            .append(append("customer-stall", None, events))
            .await
            .unwrap();
    }
    timeout(STEP, t.server.stop())
        .await
        .expect("shutdown must not wait for a subscriber that stopped reading")
        .unwrap();
}

/// A subscriber reading along when the server shuts down gets every event up to the
/// head, then `UNAVAILABLE` (the status to resubscribe on), not a normal end.
#[tokio::test]
async fn a_subscription_ends_unavailable_when_the_server_shuts_down() {
    let t = TestServer::start().await;
    let mut client = t.client().await;
    append_ok(
        &mut client,
        append("order-1", None, vec![proposed("", 1.0)]),
    )
    .await;
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            after_position: 0,
            filter: None,
        })
        .await
        .unwrap()
        .into_inner();
    let first = timeout(STEP, stream.message()).await.unwrap().unwrap();
    assert_eq!(first.map(|e| e.position), Some(1));
    let stopping = tokio::spawn(t.server.stop());
    let end = timeout(STEP, stream.message())
        .await
        .expect("the subscription ends at the shutdown");
    let status = end.expect_err("an UNAVAILABLE end, not a normal one");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    timeout(STEP, stopping).await.unwrap().unwrap().unwrap();
}

/// Sends an append as raw wire parts (event bodies as bytes), as any client may encode it.
async fn append_raw(
    t: &TestServer,
    stream: &str,
    bodies: Vec<Vec<u8>>,
) -> Result<pb::AppendResponse, Status> {
    use rapport::grpc::append_wire::{WireAppendRequest, WireProposedEvent};
    let request = WireAppendRequest {
        request: append(stream, None, Vec::new()),
        events: bodies
            .into_iter()
            .map(|body| WireProposedEvent {
                envelope: pb::ProposedEvent::default(),
                body: Some(body.into()),
            })
            .collect(),
    };
    let mut grpc = tonic::client::Grpc::new(t.channel().await);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<WireAppendRequest, pb::AppendResponse>::default();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/rapport.v1.EventStore/Append");
    grpc.unary(tonic::Request::new(request), path, codec)
        .await
        .map(tonic::Response::into_inner)
}

/// The edge converts a custom event's data straight from the request's bytes; what
/// that path declines (input prost reads its own way) goes the general way, with the
/// same answer: bodies that are not valid `Event` messages are INVALID_ARGUMENT on
/// their field, a body split in two is merged, and of equal keys the last one counts.
#[tokio::test]
async fn event_bodies_take_the_protobuf_rules_whichever_way_they_are_converted() {
    use prost::Message;
    let t = TestServer::start().await;
    let mut c = t.client().await;
    let before = head(&mut c).await;
    // `type` (custom field 1) with invalid UTF-8, and a truncated body.
    let bad_utf8 = vec![0x0a, 0x04, 0x0a, 0x02, 0xff, 0xfe];
    let mut truncated = custom(1.0).encode_to_vec();
    truncated.pop();
    for (what, bodies, field) in [
        (
            "invalid UTF-8",
            vec![custom(1.0).encode_to_vec(), bad_utf8],
            "events[1].event",
        ),
        ("truncated", vec![truncated], "events[0].event"),
    ] {
        let status = append_raw(&t, "order-raw", bodies).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(violated_fields(&status), vec![field.to_owned()], "{what}");
        assert_eq!(head(&mut c).await, before, "{what} changed the log");
    }

    // One body in two parts: the second part's `custom` merges into the first's.
    let mut split = Vec::new();
    prost::encoding::bytes::encode(2, &custom(1.0).encode_to_vec(), &mut split);
    prost::encoding::bytes::encode(
        2,
        &custom_typed("other.kind", 2.0).encode_to_vec(),
        &mut split,
    );
    let merged = pb::ProposedEvent::decode(&split[..])
        .unwrap()
        .event
        .unwrap();
    let envelope = rapport::grpc::append_wire::WireProposedEvent::decode(&split[..]).unwrap();
    // Equal keys on the wire: protobuf keeps the last.
    let entry = |n: f64| {
        let mut entry = Vec::new();
        prost::encoding::string::encode(1, &"n".to_owned(), &mut entry);
        let value = Value {
            kind: Some(ValueKind::NumberValue(n)),
        };
        prost::encoding::message::encode(2, &value, &mut entry);
        entry
    };
    let mut data = Vec::new();
    for n in [1.0, 7.0] {
        prost::encoding::bytes::encode(1, &entry(n), &mut data);
    }
    let mut custom_bytes = Vec::new();
    prost::encoding::string::encode(1, &"test.happened".to_owned(), &mut custom_bytes);
    prost::encoding::bytes::encode(2, &data, &mut custom_bytes);
    let mut repeated_key = Vec::new();
    prost::encoding::bytes::encode(1, &custom_bytes, &mut repeated_key);
    let bodies = vec![
        envelope.body.unwrap().to_vec(),
        repeated_key,
        custom(3.0).encode_to_vec(),
    ];
    append_raw(&t, "order-raw", bodies).await.unwrap();
    let stored: Vec<pb::Event> = whole_stream(&mut c, "order-raw")
        .await
        .into_iter()
        .map(|e| e.event.unwrap())
        .collect();
    assert_eq!(stored, vec![merged, custom(7.0), custom(3.0)]);
}

/// A request's strings as raw bytes, to send what a Rust `String` cannot hold.
#[derive(Clone, PartialEq, prost::Message)]
struct BytesStreamRequest {
    #[prost(bytes = "vec", tag = "1")]
    stream: Vec<u8>,
}

/// `Filter` with raw-byte prefixes.
#[derive(Clone, PartialEq, prost::Message)]
struct BytesFilter {
    #[prost(bytes = "vec", repeated, tag = "1")]
    stream_prefixes: Vec<Vec<u8>>,
}

/// `ReadAllRequest` with a raw-byte filter (filter = 4).
#[derive(Clone, PartialEq, prost::Message)]
struct BytesReadAll {
    #[prost(message, optional, tag = "4")]
    filter: Option<BytesFilter>,
}

/// `SubscribeRequest` with a raw-byte filter (filter = 2).
#[derive(Clone, PartialEq, prost::Message)]
struct BytesSubscribe {
    #[prost(message, optional, tag = "2")]
    filter: Option<BytesFilter>,
}

/// Calls the unary `EventStore` method `method` with `request` as it is encoded, and
/// returns the error it must answer with.
async fn unary_err<Req, Resp>(
    grpc: &mut tonic::client::Grpc<Channel>,
    method: &str,
    request: Req,
) -> Status
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
        "/rapport.v1.EventStore/{method}"
    ))
    .unwrap();
    grpc.unary(
        tonic::Request::new(request),
        path,
        tonic_prost::ProstCodec::<Req, Resp>::default(),
    )
    .await
    .map(|_| ())
    .unwrap_err()
}

/// Bytes that are not a valid message of the request's type (here: invalid UTF-8 in a
/// string) are bad input: INVALID_ARGUMENT naming the field, for each of the service's
/// request types, and nothing is appended.
#[tokio::test]
async fn a_request_that_is_not_valid_protobuf_is_invalid_on_its_field() {
    let t = TestServer::start().await;
    let mut c = t.client().await;
    c.append(append("order-1", None, vec![proposed("", 1.0)]))
        .await
        .unwrap();
    let before = head(&mut c).await;
    let mut grpc = tonic::client::Grpc::new(t.channel().await);
    let bad_stream = BytesStreamRequest {
        stream: b"order-\xff".to_vec(),
    };
    let bad_filter = Some(BytesFilter {
        stream_prefixes: vec![b"ord\xfe".to_vec()],
    });
    let answers = vec![
        (
            "Append",
            "stream",
            unary_err::<_, pb::AppendResponse>(&mut grpc, "Append", bad_stream.clone()).await,
        ),
        (
            "ReadStream",
            "stream",
            unary_err::<_, pb::ReadResponse>(&mut grpc, "ReadStream", bad_stream).await,
        ),
        (
            "ReadAll",
            "filter.stream_prefixes",
            unary_err::<_, pb::ReadResponse>(
                &mut grpc,
                "ReadAll",
                BytesReadAll {
                    filter: bad_filter.clone(),
                },
            )
            .await,
        ),
        ("Subscribe", "filter.stream_prefixes", {
            grpc.ready().await.unwrap();
            grpc.server_streaming(
                tonic::Request::new(BytesSubscribe { filter: bad_filter }),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/rapport.v1.EventStore/Subscribe",
                ),
                tonic_prost::ProstCodec::<BytesSubscribe, pb::RecordedEvent>::default(),
            )
            .await
            .map(|_| ())
            .unwrap_err()
        }),
    ];
    for (rpc, field, status) in answers {
        assert_eq!(status.code(), Code::InvalidArgument, "{rpc}: {status:?}");
        let violations = status
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("{rpc}: a BadRequest in {status:?}"))
            .field_violations;
        assert_eq!(violations.len(), 1, "{rpc}: {violations:?}");
        assert_eq!(violations[0].field, field, "{rpc}");
        assert!(
            violations[0].description.contains("UTF-8"),
            "{rpc}: {violations:?}"
        );
    }
    assert_eq!(head(&mut c).await, before, "nothing was appended");
}

//! Segments over a real server with a manual clock: defined through Analytics, kept
//! current by the segment job as events **and time** arrive, observable as entered / left
//! events through `EventStore.Subscribe`, listed per segment and per customer.

use std::sync::Arc;
use std::time::Duration;

use rapport::clock::ManualClock;
use rapport::grpc::pb;
use rapport::grpc::pb::analytics_client::AnalyticsClient;
use rapport::grpc::pb::customers_client::CustomersClient;
use rapport::grpc::pb::event_store_client::EventStoreClient;
use rapport::grpc::{ServerConfig, start_with};
use rapport::log::LogConfig;
use tonic::Code;

const DAY_S: i64 = 86_400;
const T0: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

fn at(seconds: i64) -> Option<pb::WriteContext> {
    Some(pb::WriteContext {
        occurred_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        ..Default::default()
    })
}

async fn members(a: &mut AnalyticsClient<tonic::transport::Channel>, segment: &str) -> Vec<String> {
    let mut out: Vec<String> = a
        .list_segment_members(pb::ListSegmentMembersRequest {
            segment_id: segment.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .map(|m| m.customer_id)
        .collect();
    out.sort();
    out
}

/// Polls until `members` equals `expected` (the job runs in the background).
async fn eventually(
    a: &mut AnalyticsClient<tonic::transport::Channel>,
    segment: &str,
    expected: &[String],
) {
    let mut expected = expected.to_vec();
    expected.sort();
    for _ in 0..200 {
        if members(a, segment).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        members(a, segment).await,
        expected,
        "membership did not settle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_follows_events_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0 * 1_000_000);
    let mut log = LogConfig::new(dir.path().join("data"));
    log.clock = Arc::new(clock.clone());
    let server = start_with(
        ServerConfig {
            log,
            master_key_file: None,
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let url = server.url();
    let mut customers = CustomersClient::connect(url.clone()).await.unwrap();
    let mut analytics = AnalyticsClient::connect(url.clone()).await.unwrap();
    let mut store = EventStoreClient::connect(url.clone()).await.unwrap();

    let bad = analytics
        .define_segment(pb::DefineSegmentRequest {
            name: "broken".into(),
            rule: "spent EUR >=".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("column"), "{}", bad.message());

    let segment = analytics
        .define_segment(pb::DefineSegmentRequest {
            name: "Recent big spenders".into(),
            rule: "spent EUR >= 1000 and last_purchase within 30d".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .segment_id;
    let mut follow = store
        .subscribe(pb::SubscribeRequest {
            after_position: 0,
            filter: Some(pb::Filter {
                stream_prefixes: vec![format!("segment-{segment}")],
                event_types: vec![
                    "CustomerEnteredSegment".into(),
                    "CustomerLeftSegment".into(),
                ],
            }),
        })
        .await
        .unwrap()
        .into_inner();

    let ada = customers
        .register_customer(pb::RegisterCustomerRequest {
            given_name: "Ada".into(),
            context: at(T0 - DAY_S),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    let bob = customers
        .register_customer(pb::RegisterCustomerRequest {
            given_name: "Bob".into(),
            context: at(T0 - DAY_S),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    for (id, total) in [(&ada, 1500), (&bob, 500)] {
        customers
            .record_purchase(pb::RecordPurchaseRequest {
                customer_id: id.clone(),
                order_id: "o-1".into(),
                total_minor: total,
                currency: "EUR".into(),
                context: at(T0 - DAY_S),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // An event arrives: Ada enters.
    eventually(&mut analytics, &segment, std::slice::from_ref(&ada)).await;
    let entered = follow.message().await.unwrap().unwrap();
    assert_eq!(entered.event_type, "CustomerEnteredSegment");
    match entered.event.and_then(|e| e.kind) {
        Some(pb::event::Kind::CustomerEnteredSegment(e)) => {
            assert_eq!(e.customer_id, ada);
            assert_eq!(
                e.as_of,
                Some(prost_types::Timestamp {
                    seconds: T0,
                    nanos: 0
                })
            );
        }
        other => panic!("{other:?}"),
    }
    // Bob's second order brings him over the line.
    customers
        .record_purchase(pb::RecordPurchaseRequest {
            customer_id: bob.clone(),
            order_id: "o-2".into(),
            total_minor: 600,
            currency: "EUR".into(),
            context: at(T0 - 2 * DAY_S),
            ..Default::default()
        })
        .await
        .unwrap();
    eventually(&mut analytics, &segment, &[ada.clone(), bob.clone()]).await;
    let segs = analytics
        .get_customer_segments(pb::GetCustomerSegmentsRequest {
            customer_id: bob.clone(),
            min_position: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(segs.segments.len(), 1);
    assert_eq!(segs.segments[0].segment_id, segment);

    // Time passes with no event: 40 days later nobody ordered within 30 days.
    clock.advance(40 * DAY_S * 1_000_000);
    eventually(&mut analytics, &segment, &[]).await;
    let mut left = Vec::new();
    while left.len() < 2 {
        let event = follow.message().await.unwrap().unwrap();
        if event.event_type == "CustomerLeftSegment" {
            left.push(event.position);
        }
    }

    // A change of rule re-evaluates; archiving releases everyone.
    analytics
        .change_segment(pb::ChangeSegmentRequest {
            segment_id: segment.clone(),
            name: "Anyone who spent".into(),
            rule: "spent EUR > 0".into(),
        })
        .await
        .unwrap();
    eventually(&mut analytics, &segment, &[ada.clone(), bob.clone()]).await;
    analytics
        .archive_segment(pb::ArchiveSegmentRequest {
            segment_id: segment.clone(),
        })
        .await
        .unwrap();
    eventually(&mut analytics, &segment, &[]).await;
    let archived = analytics
        .change_segment(pb::ChangeSegmentRequest {
            segment_id: segment.clone(),
            name: "x".into(),
            rule: "spent EUR > 0".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(archived.code(), Code::FailedPrecondition);
    let listed = analytics
        .list_segments(pb::ListSegmentsRequest {
            min_position: 0,
            include_archived: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        listed
            .segments
            .iter()
            .any(|s| s.segment_id == segment && s.archived)
    );
    // Membership events cannot be forged through the raw API.
    let forged = store
        .append(pb::AppendRequest {
            stream: format!("segment-{segment}"),
            expected: None,
            events: vec![pb::ProposedEvent {
                event: Some(pb::Event {
                    kind: Some(pb::event::Kind::CustomerEnteredSegment(
                        pb::CustomerEnteredSegment {
                            segment_id: segment.clone(),
                            customer_id: ada.clone(),
                            as_of: None,
                        },
                    )),
                }),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::InvalidArgument);
    drop(follow);
    server.stop().await.unwrap();
}

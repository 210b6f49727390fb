//! The segments read model's invariant: for random histories of segment definitions,
//! changes, archivals and entered / left events, the tree built incrementally (with
//! runner restarts) equals a rebuild from scratch, byte for byte.

use crate::common::tree_digest as digest;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rapport::domain::DomainEvent;
use rapport::domain::events::{
    CustomerEnteredSegment, CustomerLeftSegment, SegmentArchived, SegmentChanged, SegmentDefined,
};
use rapport::log::{ExpectedRevision, Log, LogConfig, ProposedEvent, StreamAppend, StreamName};
use rapport::projections::segments::{self, SegmentsProjection};
use rapport::projections::{Projection, Projections, rebuild_offline};
use uuid::Uuid;

#[derive(Clone, Debug)]
enum Op {
    Define(u8),
    Change(u8),
    Archive(u8),
    Enter(u8, u8),
    Leave(u8, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..3).prop_map(Op::Define),
        1 => (0u8..3).prop_map(Op::Change),
        1 => (0u8..3).prop_map(Op::Archive),
        4 => (0u8..3, 0u8..6).prop_map(|(s, c)| Op::Enter(s, c)),
        3 => (0u8..3, 0u8..6).prop_map(|(s, c)| Op::Leave(s, c)),
    ]
}

fn segment(n: u8) -> Uuid {
    Uuid::from_u128(0x5e6 << 64 | u128::from(n))
}

fn customer(n: u8) -> Uuid {
    Uuid::from_u128(0xc0 << 64 | u128::from(n))
}

fn event(op: &Op, i: usize) -> (Uuid, DomainEvent) {
    match *op {
        Op::Define(s) => (
            segment(s),
            DomainEvent::SegmentDefined(SegmentDefined {
                segment_id: segment(s),
                name: format!("s{s}"),
                rule: "spent EUR > 0".into(),
            }),
        ),
        Op::Change(s) => (
            segment(s),
            DomainEvent::SegmentChanged(SegmentChanged {
                segment_id: segment(s),
                name: format!("s{s}-{i}"),
                rule: "tag \"vip\"".into(),
            }),
        ),
        Op::Archive(s) => (
            segment(s),
            DomainEvent::SegmentArchived(SegmentArchived {
                segment_id: segment(s),
            }),
        ),
        Op::Enter(s, c) => (
            segment(s),
            DomainEvent::CustomerEnteredSegment(CustomerEnteredSegment {
                segment_id: segment(s),
                customer_id: customer(c),
                as_of_us: i as i64,
            }),
        ),
        Op::Leave(s, c) => (
            segment(s),
            DomainEvent::CustomerLeftSegment(CustomerLeftSegment {
                segment_id: segment(s),
                customer_id: customer(c),
                as_of_us: i as i64,
            }),
        ),
    }
}

async fn write(log: &Log, ops: &[Op], range: std::ops::Range<usize>) {
    for i in range {
        let (segment, event) = event(&ops[i], i);
        log.append(StreamAppend {
            stream: StreamName::parse(&format!("segment-{segment}")).unwrap(),
            expected: ExpectedRevision::Any,
            events: vec![ProposedEvent {
                event_id: Some(Uuid::now_v7()),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                payload: event.encode().unwrap(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    }
}

fn run_case(ops: Vec<Op>, restart_at: usize) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(LogConfig::new(dir.path())).unwrap();
        let projection: Arc<dyn Projection> = Arc::new(SegmentsProjection);
        let split = restart_at.min(ops.len());
        let running = Projections::start(log.clone(), vec![projection.clone()]).unwrap();
        write(&log, &ops, 0..split).await;
        running.shutdown();
        let running = Projections::start(log.clone(), vec![projection.clone()]).unwrap();
        write(&log, &ops, split..ops.len()).await;
        let head = log.head().position;
        let view = running
            .wait_for(segments::NAME, head, Duration::from_secs(10))
            .await
            .unwrap();
        let incremental = digest(&view.tree);
        // Membership as the reads see it matches a model of the ops.
        for s in 0..3u8 {
            let mut model = std::collections::BTreeSet::new();
            let mut defined = false;
            for op in &ops {
                match *op {
                    Op::Define(x) if x == s => defined = true,
                    Op::Archive(x) if x == s => {
                        model.clear();
                    }
                    Op::Enter(x, c) if x == s => {
                        model.insert(customer(c));
                    }
                    Op::Leave(x, c) if x == s => {
                        model.remove(&customer(c));
                    }
                    _ => {}
                }
            }
            let members: std::collections::BTreeSet<Uuid> =
                segments::members(&view.tree, segment(s), None, 100)
                    .unwrap()
                    .into_iter()
                    .map(|(c, _)| c)
                    .collect();
            prop_assert_eq!(&members, &model, "segment {} (defined: {})", s, defined);
        }
        drop(view);
        running.shutdown();
        rebuild_offline(&log, projection.clone(), &mut |_| {}).unwrap();
        let running = Projections::start(log.clone(), vec![projection]).unwrap();
        let rebuilt = digest(&running.reader(segments::NAME).unwrap().tree);
        prop_assert_eq!(incremental, rebuilt);
        running.shutdown();
        log.shutdown();
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_rebuild(ops in proptest::collection::vec(op(), 1..50), restart_at in 0usize..50) {
        run_case(ops, restart_at)?;
    }
}

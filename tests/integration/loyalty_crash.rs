//! kill -9 between purchases and their awards: customers enrolled in a programme buy
//! under load while the server (`rapport serve`, a real process) is killed with SIGKILL,
//! several times. After each kill the log holds purchases the policy had not yet awarded
//! (the crash landed between a purchase and its award); after the last restart every
//! purchase of a member has its award exactly once, and no source was awarded twice.
//! One member is merged into another during the first round: its ledger moves to the
//! survivor exactly once (one `LedgerMerged` in each of the two streams), whatever the
//! kills interrupted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::ChildServer;
use rapport::domain::DomainEvent;
use rapport::grpc::pb;
use rapport::grpc::pb::customers_client::CustomersClient;
use rapport::grpc::pb::event_store_client::EventStoreClient;
use rapport::grpc::pb::loyalty_client::LoyaltyClient;
use rapport::log::{Log, LogConfig, ReadFilter};
use uuid::Uuid;

const ROUNDS: u64 = 3;
const CUSTOMERS: usize = 4;

/// Offline audit of a stopped server's log: for every purchase, how many `base` awards
/// name it as their source (and causation), and whether any (source, rule) repeats.
struct Audit {
    purchases: usize,
    unawarded: usize,
    awards_per_source: BTreeMap<(Uuid, String), usize>,
    /// (merge event, member stream) → `LedgerMerged` events.
    ledger_moves: BTreeMap<(Uuid, String), usize>,
}

fn audit(dir: &Path) -> Audit {
    let log = Log::open(LogConfig::new(dir)).expect("reopen after kill");
    let mut purchases = Vec::new();
    let mut awards_per_source: BTreeMap<(Uuid, String), usize> = BTreeMap::new();
    let mut ledger_moves: BTreeMap<(Uuid, String), usize> = BTreeMap::new();
    let mut cursor = 1;
    loop {
        let page = log
            .read_all(cursor, false, 1_000, &ReadFilter::default())
            .unwrap();
        for logged in &page.events {
            let e = &logged.event;
            match DomainEvent::decode(&e.event_type, e.schema_version, &e.payload).unwrap() {
                DomainEvent::PurchaseCompleted(_) => purchases.push(e.id()),
                DomainEvent::PointsEarned(p) => {
                    assert_eq!(e.causation_id, p.source_event_id.to_string());
                    *awards_per_source
                        .entry((p.source_event_id, p.rule))
                        .or_default() += 1;
                }
                DomainEvent::LedgerMerged(m) => {
                    assert_eq!(e.causation_id, m.merge_event_id.to_string());
                    *ledger_moves
                        .entry((m.merge_event_id, e.stream.clone()))
                        .or_default() += 1;
                }
                _ => {}
            }
        }
        if page.end_reached || page.events.is_empty() {
            break;
        }
        cursor = page.next_cursor;
    }
    log.shutdown();
    let unawarded = purchases
        .iter()
        .filter(|id| !awards_per_source.contains_key(&(**id, "base".to_owned())))
        .count();
    Audit {
        purchases: purchases.len(),
        unawarded,
        awards_per_source,
        ledger_moves,
    }
}

fn spawn_buyers(
    url: String,
    customers: Vec<String>,
    counter: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..6)
        .map(|w| {
            let (url, customers, counter) = (url.clone(), customers.clone(), counter.clone());
            tokio::spawn(async move {
                let Ok(mut c) = CustomersClient::connect(url).await else {
                    return;
                };
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let customer = customers[(n as usize + w) % customers.len()].clone();
                    if c.record_purchase(pb::RecordPurchaseRequest {
                        customer_id: customer,
                        order_id: format!("o-{n}"),
                        total_minor: 1_000 + (n as i64 % 7) * 100,
                        currency: "EUR".into(),
                        ..Default::default()
                    })
                    .await
                    .is_err()
                    {
                        return;
                    }
                }
            })
        })
        .collect()
}

/// Waits until the log's head has not moved for a while (the policy is done).
async fn settle(url: String) {
    let mut store = EventStoreClient::connect(url).await.unwrap();
    let mut last = u64::MAX;
    let mut still = 0;
    for _ in 0..400 {
        let head = store.get_head(()).await.unwrap().into_inner().position;
        if head == last {
            still += 1;
            if still == 8 {
                return;
            }
        } else {
            still = 0;
            last = head;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the log never settled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_between_purchases_and_awards_every_award_appears_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Set-up: a programme, enrolled customers.
    let server = ChildServer::start(&data, &[]);
    let mut loyalty = LoyaltyClient::connect(server.url()).await.unwrap();
    let mut customers = CustomersClient::connect(server.url()).await.unwrap();
    loyalty
        .define_programme(pb::DefineProgrammeRequest {
            programme: Some(pb::LoyaltyProgramme {
                name: "Crash club".into(),
                currency: "EUR".into(),
                // Points live one day: the offline tick below expires them all.
                lifetime: pb::PointsLifetimeKind::Days as i32,
                lifetime_days: 1,
                points_per_unit: 1,
                minor_per_unit: 100,
                bonuses: vec![pb::LoyaltyBonus {
                    name: "first".into(),
                    trigger: pb::BonusTrigger::FirstPurchase as i32,
                    points: 10,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            context: Some(pb::WriteContext {
                occurred_at: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: 0,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..CUSTOMERS {
        let id = customers
            .register_customer(pb::RegisterCustomerRequest {
                given_name: format!("Buyer {n}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .customer_id;
        loyalty
            .enrol(pb::EnrolRequest {
                customer_id: id.clone(),
                context: Some(pb::WriteContext {
                    occurred_at: Some(prost_types::Timestamp {
                        seconds: 0,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push(id);
    }
    let _ = server.kill();

    let counter = Arc::new(AtomicU64::new(0));
    let mut caught_between = 0;
    for round in 0..ROUNDS {
        let server = ChildServer::start(&data, &[]);
        let buyers = spawn_buyers(server.url(), ids.clone(), counter.clone());
        if round == 0 {
            // The last member is merged into the first while the buyers run, once both
            // have earned, so each member has its own first-purchase bonus (a survivor
            // that had bought nothing would take the duplicate's orders as its history
            // and rightly get none).
            let mut loyalty = LoyaltyClient::connect(server.url()).await.unwrap();
            for _ in 0..1_000 {
                let mut both = true;
                for id in [&ids[0], &ids[CUSTOMERS - 1]] {
                    let earned = loyalty
                        .get_member(pb::GetMemberRequest {
                            customer_id: id.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(|m| m.into_inner().lifetime_earned)
                        .unwrap_or(0);
                    both &= earned > 0;
                }
                if both {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Under six buyers on the same customers the merge can lose every retry of
            // the service (ABORTED): a client retries, as this one does.
            let mut customers = CustomersClient::connect(server.url()).await.unwrap();
            let mut merged = false;
            for _ in 0..100 {
                match customers
                    .merge_customers(pb::MergeCustomersRequest {
                        survivor_id: ids[0].clone(),
                        duplicate_id: ids[CUSTOMERS - 1].clone(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(_) => {
                        merged = true;
                        break;
                    }
                    Err(status) if status.code() == tonic::Code::Aborted => continue,
                    Err(status) => panic!("merge failed: {status:?}"),
                }
            }
            assert!(merged, "the merge kept losing to the buyers");
        }
        tokio::time::sleep(Duration::from_millis(300 + 200 * round)).await;
        let _ = server.kill();
        for buyer in buyers {
            let _ = buyer.await;
        }
        let data2 = data.clone();
        let found = tokio::task::spawn_blocking(move || audit(&data2))
            .await
            .unwrap();
        assert!(
            found.awards_per_source.values().all(|n| *n == 1),
            "a source was awarded twice"
        );
        assert!(
            found.ledger_moves.values().all(|n| *n == 1),
            "a ledger moved twice: {:?}",
            found.ledger_moves
        );
        caught_between += found.unawarded;
    }
    assert!(
        counter.load(Ordering::Relaxed) > 20,
        "the buyers made progress"
    );
    assert!(
        caught_between > 0,
        "no kill landed between a purchase and its award"
    );

    // Restart: the policy resumes from its checkpoint and awards what is missing.
    let server = ChildServer::start(&data, &[]);
    settle(server.url()).await;
    let _ = server.kill();
    let data2 = data.clone();
    let found = tokio::task::spawn_blocking(move || audit(&data2))
        .await
        .unwrap();
    assert!(found.purchases > 20);
    assert_eq!(
        found.unawarded, 0,
        "every purchase is awarded after the restart"
    );
    assert!(
        found.awards_per_source.values().all(|n| *n == 1),
        "exactly once"
    );
    // The merged member's ledger moved once, into both streams.
    let streams: Vec<&str> = found
        .ledger_moves
        .keys()
        .map(|(_, stream)| stream.as_str())
        .collect();
    assert_eq!(
        streams.len(),
        2,
        "one move of the merged ledger: {:?}",
        found.ledger_moves
    );
    assert!(streams.contains(&format!("loyalty-{}", ids[0]).as_str()));
    assert!(streams.contains(&format!("loyalty-{}", ids[CUSTOMERS - 1]).as_str()));
    assert!(found.ledger_moves.values().all(|n| *n == 1), "exactly once");
    let first_bonuses = found
        .awards_per_source
        .keys()
        .filter(|(_, rule)| rule == "first")
        .count();
    assert_eq!(
        first_bonuses, CUSTOMERS,
        "one first-purchase bonus per member"
    );
}

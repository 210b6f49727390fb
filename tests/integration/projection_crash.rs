//! kill -9 during live projection and during a rebuild of the customer projection:
//! after a restart, the read model's digest equals a fresh rebuild from the log (the
//! checkpoint is committed with the state, so no event is applied twice or skipped).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::common::ChildServer;
use rapport::grpc::pb;
use rapport::grpc::pb::admin_client::AdminClient;
use rapport::grpc::pb::customers_client::CustomersClient;
use rapport::log::{Log, LogConfig};
use rapport::projections::customers::{self, CustomersProjection};
use rapport::projections::{Projection, Projections, rebuild_offline};

const ROUNDS: u64 = 3;

/// Writers registering customers and recording purchases until the server dies.
fn spawn_writers(url: String, counter: Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..6)
        .map(|_| {
            let url = url.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(mut c) = CustomersClient::connect(url).await else {
                    return;
                };
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let Ok(r) = c
                        .register_customer(pb::RegisterCustomerRequest {
                            given_name: format!("Crash {n}"),
                            emails: vec![format!("crash{n}@example.com")],
                            ..Default::default()
                        })
                        .await
                    else {
                        return;
                    };
                    let id = r.into_inner().customer_id;
                    for order in 0..3 {
                        if c.record_purchase(pb::RecordPurchaseRequest {
                            customer_id: id.clone(),
                            order_id: format!("o-{order}"),
                            total_minor: 100 * (order + 1),
                            currency: "EUR".into(),
                            ..Default::default()
                        })
                        .await
                        .is_err()
                        {
                            return;
                        }
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_during_live_projection_and_rebuild_the_read_model_equals_a_fresh_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let counter = Arc::new(AtomicU64::new(0));
    for round in 0..ROUNDS {
        // Live projection under write load, then SIGKILL.
        let server = ChildServer::start(&data, &[]);
        let writers = spawn_writers(server.url(), counter.clone());
        tokio::time::sleep(Duration::from_millis(400 + 150 * round)).await;
        let _ = server.kill();
        for writer in writers {
            let _ = writer.await;
        }
        // A rebuild in progress (with writes continuing), then SIGKILL.
        let server = ChildServer::start(&data, &[]);
        let writers = spawn_writers(server.url(), counter.clone());
        let mut admin = AdminClient::connect(server.url()).await.unwrap();
        admin
            .rebuild_projection(pb::RebuildProjectionRequest {
                name: customers::NAME.into(),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30 + 40 * round)).await;
        let _ = server.kill();
        for writer in writers {
            let _ = writer.await;
        }
    }
    assert!(
        counter.load(Ordering::Relaxed) > 10,
        "the writers made progress"
    );

    // Reopen in process: let the projection catch up (resuming any rebuild), then
    // compare with a rebuild from scratch.
    let log = tokio::task::spawn_blocking({
        let data = data.clone();
        move || Log::open(LogConfig::new(data))
    })
    .await
    .unwrap()
    .unwrap();
    let projection: Arc<dyn Projection> = Arc::new(CustomersProjection);
    let running = Projections::start(log.clone(), vec![projection.clone()]).unwrap();
    let head = log.head().position;
    let view = running
        .wait_for(customers::NAME, head, Duration::from_secs(60))
        .await
        .unwrap();
    let recovered = customers::digest(&view.tree).unwrap();
    drop(view);
    running.shutdown();
    let rebuilt = tokio::task::spawn_blocking({
        let log = log.clone();
        move || {
            rebuild_offline(&log, projection.clone(), &mut |_| {}).unwrap();
            let running = Projections::start(log, vec![projection]).unwrap();
            let digest = customers::digest(&running.reader(customers::NAME).unwrap().tree);
            running.shutdown();
            digest
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        recovered, rebuilt,
        "read model after kill -9 differs from a rebuild"
    );
    log.shutdown();
}

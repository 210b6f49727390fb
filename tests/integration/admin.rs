//! The Admin service over a real server: projection status, log statistics, a rebuild
//! watched to the end, and the error statuses.

use crate::common;

use std::time::Duration;

use common::{TestServer, append, proposed};
use pb::projection_status::State;
use rapport::grpc::pb;
use tokio_stream::StreamExt;
use tonic::Code;

/// Appends `count` events of type `test.happened` to `stream`; returns the last position.
async fn fill(t: &TestServer, stream: &str, count: usize) -> u64 {
    let mut client = t.client().await;
    let events = (0..count).map(|n| proposed("", n as f64)).collect();
    client
        .append(append(stream, None, events))
        .await
        .expect("append")
        .into_inner()
        .last_position
}

async fn log_stats_status(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
) -> pb::ProjectionStatus {
    let list = admin
        .list_projections(pb::ListProjectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    list.projections
        .into_iter()
        .find(|p| p.name == "log_stats")
        .expect("log_stats is listed")
}

/// Waits until `log_stats` is live at `head`.
async fn wait_live(
    admin: &mut pb::admin_client::AdminClient<tonic::transport::Channel>,
    head: u64,
) -> pb::ProjectionStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = log_stats_status(admin).await;
        if matches!(status.state, Some(State::Live(_))) && status.checkpoint == head {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not live: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (key, count, first position, last position) per row.
type Rows = Vec<(String, u64, u64, u64)>;

fn counts(stats: &pb::LogStats) -> (Rows, Rows) {
    let rows = |table: &[pb::LogStat]| {
        table
            .iter()
            .map(|s| (s.key.clone(), s.count, s.first_position, s.last_position))
            .collect()
    };
    (rows(&stats.by_event_type), rows(&stats.by_category))
}

#[tokio::test]
async fn log_stats_is_live_and_counts_the_log() {
    let t = TestServer::start().await;
    fill(&t, "customer-1", 5).await;
    fill(&t, "deal-7", 3).await;
    let head = fill(&t, "customer-2", 2).await;
    assert_eq!(head, 10);
    let mut admin = t.admin().await;
    let status = wait_live(&mut admin, head).await;
    assert_eq!((status.head, status.lag, status.version), (head, 0, 1));

    // Read your writes through min_position.
    let stats = admin
        .get_log_stats(pb::GetLogStatsRequest { min_position: head })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.applied_position, head);
    assert!(!stats.truncated);
    let (types, categories) = counts(&stats);
    assert_eq!(types, vec![("test.happened".to_owned(), 10, 1, 10)]);
    assert_eq!(
        categories,
        vec![
            ("customer".to_owned(), 7, 1, 10),
            ("deal".to_owned(), 3, 6, 8)
        ]
    );
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn a_rebuild_is_watched_to_the_end_and_the_counts_still_match() {
    let t = TestServer::start().await;
    for n in 0..5 {
        fill(&t, &format!("customer-{n}"), 200).await;
    }
    let head = fill(&t, "ticket-1", 1).await;
    let mut admin = t.admin().await;
    wait_live(&mut admin, head).await;
    let before = admin
        .get_log_stats(pb::GetLogStatsRequest { min_position: head })
        .await
        .unwrap()
        .into_inner();

    let rebuilt = admin
        .rebuild_projection(pb::RebuildProjectionRequest {
            name: "log_stats".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(rebuilt.name, "log_stats");
    let mut watch = admin
        .watch_projection(pb::WatchProjectionRequest {
            name: "log_stats".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(status) = tokio::time::timeout(Duration::from_secs(20), watch.next())
        .await
        .expect("the watch ends")
    {
        let status = status.unwrap();
        if let Some(State::Rebuilding(progress)) = &status.state {
            assert!(progress.position <= progress.head);
            assert_eq!(progress.target_version, 1);
        }
        last = Some(status);
    }
    let last = last.expect("at least one status");
    assert!(matches!(last.state, Some(State::Live(_))), "{last:?}");
    assert_eq!(last.checkpoint, head);

    let after = admin
        .get_log_stats(pb::GetLogStatsRequest { min_position: head })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(&after), counts(&before));
    assert_eq!(
        counts(&after).1,
        vec![
            ("customer".to_owned(), 1000, 1, 1000),
            ("ticket".to_owned(), 1, 1001, 1001)
        ]
    );

    // The rebuilt generation survives a restart and keeps following the log.
    let t = t.restart().await;
    let head = fill(&t, "ticket-1", 1).await;
    let mut admin = t.admin().await;
    wait_live(&mut admin, head).await;
    let stats = admin
        .get_log_stats(pb::GetLogStatsRequest { min_position: head })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(counts(&stats).1[1], ("ticket".to_owned(), 2, 1001, 1002));
    t.server.stop().await.unwrap();
}

#[tokio::test]
async fn unknown_projections_and_unreached_positions_are_clear_errors() {
    let t = TestServer::start().await;
    let mut admin = t.admin().await;
    let status = admin
        .rebuild_projection(pb::RebuildProjectionRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = admin
        .watch_projection(pb::WatchProjectionRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = admin
        .rebuild_projection(pb::RebuildProjectionRequest {
            name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // A position nobody appends: the wait, bounded by the client's deadline, ends in
    // DEADLINE_EXCEEDED that says how far the projection got.
    let mut request = tonic::Request::new(pb::GetLogStatsRequest { min_position: 5 });
    request.set_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let status = admin.get_log_stats(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("not yet 5"), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    t.server.stop().await.unwrap();
}

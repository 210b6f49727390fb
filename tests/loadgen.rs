//! The load generator against a real server: what `rapport bench append` writes, every
//! replay of `rapport bench read` reads back in full (ReadAll pages, the decoded
//! Subscribe, the receive-only Subscribe that checks positions from raw messages).

mod common;

use std::time::Duration;

use common::TestServer;
use rapport::loadgen;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replay_reads_back_what_the_load_generator_appended() {
    let server = TestServer::start().await;
    let url = server.server.url();
    // 4 callers x 30 calls x 10 events, a fixed amount of work (the duration only caps it).
    let report = loadgen::run_append(&url, 4, 10, Duration::from_secs(60), Some(30))
        .await
        .expect("load generator runs");
    assert_eq!(report.errors, 0);
    assert_eq!(report.requests, 4 * 30);
    assert_eq!(report.events, 4 * 30 * 10);

    let (read, _) = loadgen::run_read_all(&url).await.expect("ReadAll replay");
    assert_eq!(read, report.events);
    let (decoded, _) = loadgen::run_subscribe_all(&url)
        .await
        .expect("decoded Subscribe replay");
    assert_eq!(decoded, report.events);
    let (raw, _) = loadgen::run_subscribe_raw(&url)
        .await
        .expect("receive-only Subscribe replay");
    assert_eq!(raw, report.events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_of_an_empty_log_read_nothing() {
    let server = TestServer::start().await;
    let url = server.server.url();
    assert_eq!(loadgen::run_subscribe_raw(&url).await.expect("replay").0, 0);
    assert_eq!(loadgen::run_subscribe_all(&url).await.expect("replay").0, 0);
}

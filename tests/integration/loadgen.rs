//! The load generator against a real server: what `rapport bench append` writes, every
//! replay of `rapport bench read` reads back in full (ReadAll pages, the decoded
//! Subscribe, the receive-only Subscribe that checks positions from raw messages).

use crate::common;

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
    for transport in [loadgen::Transport::H2, loadgen::Transport::Tonic] {
        let (raw, _) = loadgen::run_subscribe_raw(&url, transport)
            .await
            .expect("receive-only Subscribe replay");
        assert_eq!(raw, report.events, "{transport:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_of_an_empty_log_read_nothing() {
    let server = TestServer::start().await;
    let url = server.server.url();
    for transport in [loadgen::Transport::H2, loadgen::Transport::Tonic] {
        let (raw, _) = loadgen::run_subscribe_raw(&url, transport)
            .await
            .expect("replay");
        assert_eq!(raw, 0);
    }
    assert_eq!(loadgen::run_subscribe_all(&url).await.expect("replay").0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_split_over_threads_do_all_their_work_on_either_transport() {
    let server = TestServer::start().await;
    let url = server.server.url();
    let mut appended = 0;
    for transport in [loadgen::Transport::H2, loadgen::Transport::Tonic] {
        // 5 callers over 3 client threads (shares of 1, 2 and 2), 20 calls of 3 events each.
        let report = loadgen::run_append_with(
            &url,
            5,
            3,
            Duration::from_secs(60),
            Some(20),
            loadgen::AppendKind::Custom,
            loadgen::ClientSetup {
                threads: 3,
                transport,
                connections: 2,
            },
        )
        .await
        .expect("load generator runs");
        assert_eq!(report.errors, 0, "{transport:?}");
        assert_eq!(report.requests, 5 * 20);
        assert_eq!(report.events, 5 * 20 * 3);
        assert!(report.p50_us > 0 && report.p50_us <= report.max_us);
        appended += report.events;
        let (read, _) = loadgen::run_read_all(&url).await.expect("ReadAll replay");
        assert_eq!(read, appended);

        // More threads than clients: one client each, no empty thread.
        let (calls, elapsed) = loadgen::run_get_head(
            &url,
            2,
            Duration::from_millis(200),
            loadgen::ClientSetup {
                threads: 8,
                transport,
                ..Default::default()
            },
        )
        .await
        .expect("GetHead runs");
        assert!(calls > 0, "no GetHead call answered in {elapsed:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_h2_client_answers_what_the_server_answered() {
    let server = TestServer::start().await;
    let url = server.server.url();
    let connection = loadgen::H2Connection::connect(&url)
        .await
        .expect("connects");
    let head: rapport::grpc::pb::LogHead = connection
        .unary("/rapport.v1.EventStore/GetHead", &())
        .await
        .expect("GetHead");
    assert_eq!(head.position, 0);
    // A non-OK answer comes back as its status, with its message.
    let missing = connection
        .unary::<_, rapport::grpc::pb::ReadResponse>(
            "/rapport.v1.EventStore/ReadStream",
            &rapport::grpc::pb::ReadStreamRequest {
                stream: "customer-nobody".into(),
                ..Default::default()
            },
        )
        .await
        .expect_err("no such stream");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    assert!(missing.message().contains("customer-nobody"), "{missing:?}");
    // So does a path the server does not serve.
    let unknown = connection
        .unary::<_, rapport::grpc::pb::LogHead>("/rapport.v1.EventStore/NoSuchCall", &())
        .await
        .expect_err("no such method");
    assert_eq!(unknown.code(), tonic::Code::Unimplemented, "{unknown:?}");
    // An invalid append is rejected with its field violations, and changes nothing.
    let invalid = connection
        .unary::<_, rapport::grpc::pb::AppendResponse>(
            "/rapport.v1.EventStore/Append",
            &rapport::grpc::pb::AppendRequest {
                stream: "customer-x".into(),
                expected: None,
                events: Vec::new(),
            },
        )
        .await
        .expect_err("no events");
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument, "{invalid:?}");
    let head: rapport::grpc::pb::LogHead = connection
        .unary("/rapport.v1.EventStore/GetHead", &())
        .await
        .expect("GetHead");
    assert_eq!(head.position, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_there_is_an_error_not_a_hang() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    for transport in [loadgen::Transport::H2, loadgen::Transport::Tonic] {
        let result = loadgen::run_append_with(
            &url,
            4,
            1,
            Duration::from_secs(1),
            Some(1),
            loadgen::AppendKind::Custom,
            loadgen::ClientSetup {
                threads: 2,
                transport,
                ..Default::default()
            },
        )
        .await;
        assert!(
            matches!(
                result,
                Err(loadgen::LoadError::Connect(_) | loadgen::LoadError::ConnectH2(_))
            ),
            "{result:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_stream_reads_whole_streams_and_counts_a_missing_one_as_an_error() {
    let server = TestServer::start().await;
    let url = server.server.url();
    let mut client = server.client().await;
    // Streams customer-0 .. customer-3, three events each, as `bench fill` names them.
    for stream in 0..4 {
        let events = (0..3).map(|n| common::proposed("", f64::from(n))).collect();
        client
            .append(common::append(&format!("customer-{stream}"), None, events))
            .await
            .expect("append");
    }
    let report = loadgen::run_read_stream(
        &url,
        3,
        4,
        Duration::from_millis(300),
        loadgen::ClientSetup::with_threads(2),
    )
    .await
    .expect("read-stream runs");
    assert_eq!(report.errors, 0);
    assert!(report.requests > 0);
    assert_eq!(report.events, report.requests * 3);

    // customer-4 does not exist: its reads are NOT_FOUND, counted as errors.
    let report = loadgen::run_read_stream(
        &url,
        2,
        5,
        Duration::from_millis(300),
        loadgen::ClientSetup {
            threads: 1,
            transport: loadgen::Transport::Tonic,
            connections: 1,
        },
    )
    .await
    .expect("read-stream runs");
    assert!(report.errors > 0 && report.requests > 0, "{report}");
    assert_eq!(report.events, report.requests * 3);
}

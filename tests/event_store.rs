//! The EventStore service over real gRPC: every RPC and every status code.

mod common;

use common::{TestServer, append, proposed};
use pb::append_request::Expected;
use rapport::grpc::pb;

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

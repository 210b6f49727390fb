//! Shared helpers of the integration tests: a real server on 127.0.0.1:0 over a temp
//! data dir, and tonic clients for it.
#![allow(dead_code)]

use rapport::grpc::pb;
use rapport::grpc::pb::admin_client::AdminClient;
use rapport::grpc::pb::customers_client::CustomersClient;
use rapport::grpc::pb::event_store_client::EventStoreClient;
use rapport::grpc::{RunningServer, start};
use tonic::transport::Channel;

/// A server over a fresh temp dir; the dir lives as long as this value.
pub struct TestServer {
    pub server: RunningServer,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// The data directory: inside the temp dir, so the master key created beside it
    /// (`data.master-key`) is cleaned up with it.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = start(dir.path().join("data"), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("server starts");
        Self { server, dir }
    }

    /// Stops the server and starts a new one over the same data dir.
    pub async fn restart(self) -> Self {
        let Self { server, dir } = self;
        server.stop().await.expect("clean stop");
        let server = start(dir.path().join("data"), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("server restarts");
        Self { server, dir }
    }

    pub async fn client(&self) -> EventStoreClient<Channel> {
        EventStoreClient::connect(self.server.url())
            .await
            .expect("client connects")
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::connect(self.server.url())
            .await
            .expect("admin client connects")
    }

    pub async fn customers(&self) -> CustomersClient<Channel> {
        CustomersClient::connect(self.server.url())
            .await
            .expect("customers client connects")
    }

    pub async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(self.server.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

/// A custom event body `{"n": n}` of type `test.happened`.
pub fn custom(n: f64) -> pb::Event {
    let fields = std::collections::BTreeMap::from([(
        "n".to_owned(),
        prost_types::Value {
            kind: Some(prost_types::value::Kind::NumberValue(n)),
        },
    )]);
    pb::Event {
        kind: Some(pb::event::Kind::Custom(pb::CustomEvent {
            r#type: "test.happened".into(),
            data: Some(prost_types::Struct { fields }),
        })),
    }
}

/// A proposed event with a given id (empty for server-assigned) and body `custom(n)`.
pub fn proposed(id: &str, n: f64) -> pb::ProposedEvent {
    pb::ProposedEvent {
        event_id: id.to_owned(),
        event: Some(custom(n)),
        ..Default::default()
    }
}

/// An append request.
pub fn append(
    stream: &str,
    expected: Option<pb::append_request::Expected>,
    events: Vec<pb::ProposedEvent>,
) -> pb::AppendRequest {
    pb::AppendRequest {
        stream: stream.to_owned(),
        expected,
        events,
    }
}

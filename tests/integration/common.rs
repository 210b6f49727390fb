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

/// A running `rapport serve` child process on 127.0.0.1:0 over `dir` (the kill -9
/// tests): its stderr is drained for its whole life (a full pipe would block it) and
/// the last lines kept for failure messages.
pub struct ChildServer {
    child: std::process::Child,
    /// The address the server reported.
    pub addr: std::net::SocketAddr,
    stderr: std::thread::JoinHandle<Vec<String>>,
}

/// How long a child server may take to report its address.
const CHILD_STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes ANSI colour sequences, in case the subscriber colours its output anyway.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl ChildServer {
    /// Starts `rapport serve --data-dir dir --listen 127.0.0.1:0 [args]` and reads the
    /// bound address from its log.
    pub fn start(dir: &std::path::Path, args: &[&str]) -> Self {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_rapport"))
            .arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rapport serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let line = strip_ansi(&line);
                if let Some(rest) = line.split("addr=").nth(1) {
                    let text: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                    if let (Ok(addr), Some(tx)) = (text.parse(), addr_tx.take()) {
                        let _ = tx.send(addr);
                    }
                }
                lines.push(line);
                if lines.len() > 200 {
                    lines.remove(0);
                }
            }
            lines
        });
        match addr_rx.recv_timeout(CHILD_STARTUP_TIMEOUT) {
            Ok(addr) => Self {
                child,
                addr,
                stderr: reader,
            },
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                let lines = reader.join().unwrap_or_default();
                panic!(
                    "rapport serve did not report its address ({status:?}); stderr:\n{}",
                    lines.join("\n")
                );
            }
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap; the last lines it logged.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
        self.stderr.join().unwrap_or_default()
    }
}

/// A digest of a projection's tree, every key and value but the engine's checkpoint
/// (keys starting with 0): equal digests, equal read models.
pub fn tree_digest(tree: &sled::Tree) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    for item in tree.iter() {
        let (key, value) = item.unwrap();
        if key.first() == Some(&0) {
            continue; // the engine's checkpoint
        }
        hasher.update(&(key.len() as u64).to_le_bytes());
        hasher.update(&key);
        hasher.update(&(value.len() as u64).to_le_bytes());
        hasher.update(&value);
    }
    hasher.finalize()
}

/// Runs `open` again while it fails with `LogError::Locked`, for up to 2 s: sled lets go
/// of a closed directory's file lock only once its background I/O threads drop their
/// handles, a few milliseconds after this process dropped its last one (the server's
/// start waits the same way).
pub fn retry_while_locked<T>(
    mut open: impl FnMut() -> Result<T, rapport::log::LogError>,
) -> Result<T, rapport::log::LogError> {
    for _ in 0..100 {
        match open() {
            Err(rapport::log::LogError::Locked(_)) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
    open()
}

/// `sled::open(path)`, again while the directory is still locked by a handle this
/// process just dropped (see [`retry_while_locked`]).
pub fn sled_open_closed(path: &std::path::Path) -> sled::Db {
    for _ in 0..100 {
        match sled::open(path) {
            Ok(db) => return db,
            Err(error) if error.to_string().contains("lock") => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(error) => panic!("opening {}: {error}", path.display()),
        }
    }
    sled::open(path).expect("the directory stayed locked")
}

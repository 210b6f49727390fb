//! The load generator behind `rapport bench`: appends and reads over real gRPC against a
//! running server (a separate process, as pgbench is for PostgreSQL), and the raw sled
//! ceiling measured on the same disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::grpc::pb;
use crate::grpc::pb::event_store_client::EventStoreClient;

/// Streams each load-generator client owns and cycles over (the peer's known-revision
/// script does the same with 1000 fresh streams per client).
pub const STREAMS_PER_CLIENT: usize = 1000;

/// Size of the generated event payload, in bytes (the peer benchmark's 200-byte body).
pub const PAYLOAD_BYTES: usize = 200;

/// What an append load run measured.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Append calls answered OK.
    pub requests: u64,
    /// Events appended.
    pub events: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Wall time of the measured window.
    pub elapsed: Duration,
    /// Median call latency, microseconds.
    pub p50_us: u64,
    /// 99th percentile call latency, microseconds.
    pub p99_us: u64,
    /// Worst call latency, microseconds.
    pub max_us: u64,
}

impl LoadReport {
    /// Events per second over the window.
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "events/s {:.0}  calls/s {:.0}  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  events {}  errors {}  over {:.1} s",
            self.events_per_second(),
            self.requests as f64 / self.elapsed.as_secs_f64(),
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.max_us as f64 / 1000.0,
            self.events,
            self.errors,
            self.elapsed.as_secs_f64()
        )
    }
}

/// A ~200-byte custom event body, like the peer's JSON-ish payload: a few fixed fields
/// and a pad of pseudo-random `[a-z0-9]` (the peer pads with `tr -dc 'a-z0-9'` of
/// /dev/urandom), so neither side gains from compressible filler. Deterministic in `serial`.
pub fn sample_event(serial: u64) -> pb::Event {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let pad: String = (0..PAYLOAD_BYTES - 58)
        .map(|_| {
            // xorshift64*: cheap, deterministic, good enough for filler.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let x = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            ALPHABET[(x >> 58) as usize % ALPHABET.len()] as char
        })
        .collect();
    let fields = BTreeMap::from([
        ("customerId".to_owned(), string_value("c-0042")),
        ("field".to_owned(), string_value("email")),
        ("old".to_owned(), string_value("a@example.com")),
        ("new".to_owned(), string_value(&pad)),
    ]);
    pb::Event {
        kind: Some(pb::event::Kind::Custom(pb::CustomEvent {
            r#type: "customer.email_changed".into(),
            data: Some(prost_types::Struct { fields }),
        })),
    }
}

/// [`sample_event`] as the log stores it, with a fresh client-style event id: what the
/// in-process benches and `bench fill` append.
pub fn sample_proposed(serial: u64) -> crate::log::ProposedEvent {
    let mut v = crate::domain::Violations::new("");
    let domain = crate::grpc::convert::event_from_proto(sample_event(serial), &mut v)
        .expect("sample events are valid");
    crate::log::ProposedEvent {
        event_id: Some(Uuid::new_v4()),
        event_type: domain.event_type().to_owned(),
        schema_version: domain.schema_version(),
        payload: domain
            .encode()
            .expect("a custom event has no personal data"),
        ..Default::default()
    }
}

fn string_value(text: &str) -> prost_types::Value {
    prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(text.to_owned())),
    }
}

/// Connects `connections` HTTP/2 channels to `server`.
pub async fn connect(
    server: &str,
    connections: usize,
) -> Result<Vec<Channel>, tonic::transport::Error> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        channels.push(
            Endpoint::from_shared(server.to_owned())?
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(crate::grpc::server::HTTP2_STREAM_WINDOW_BYTES))
                .initial_connection_window_size(Some(
                    crate::grpc::server::HTTP2_CONNECTION_WINDOW_BYTES,
                ))
                .connect()
                .await?,
        );
    }
    Ok(channels)
}

/// Appends with `clients` concurrent callers for `duration`, each call carrying
/// `events_per_request` events to one of the caller's own streams (cycling over
/// [`STREAMS_PER_CLIENT`]) with an exact expected
/// revision and client-made event ids (an idempotent client, like the peer's known-revision
/// INSERT). With `requests_per_client`, each caller stops after that many calls (fixed
/// work, for timing whole runs against pgbench `-t`).
pub async fn run_append(
    server: &str,
    clients: usize,
    events_per_request: usize,
    duration: Duration,
    requests_per_client: Option<u64>,
) -> Result<LoadReport, tonic::transport::Error> {
    let calls_max = requests_per_client.unwrap_or(u64::MAX);
    let channels = connect(server, clients.clamp(1, 8)).await?;
    let run_id = Uuid::new_v4().simple().to_string();
    let start = Instant::now();
    // An absurd duration must not overflow the clock: it means "until the calls run out".
    let deadline = start
        .checked_add(duration)
        .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600));
    let mut tasks = Vec::with_capacity(clients);
    let serial = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for client_index in 0..clients {
        let mut client = EventStoreClient::new(channels[client_index % channels.len()].clone())
            .max_decoding_message_size(crate::limits::MESSAGE_BYTES_MAX)
            .max_encoding_message_size(crate::limits::MESSAGE_BYTES_MAX);
        // Like the peer's known-revision client: each caller owns STREAMS_PER_CLIENT
        // fresh streams and cycles over them, knowing each one's revision.
        let streams: Vec<String> = (0..STREAMS_PER_CLIENT)
            .map(|k| format!("bench-{run_id}-{client_index}-{k}"))
            .collect();
        let serial = serial.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("valid precision");
            let (mut requests, mut events, mut errors) = (0u64, 0u64, 0u64);
            let mut revisions: Vec<Option<u64>> = vec![None; STREAMS_PER_CLIENT];
            let mut call = 0usize;
            while Instant::now() < deadline && requests + errors < calls_max {
                let batch: Vec<pb::ProposedEvent> = (0..events_per_request)
                    .map(|_| pb::ProposedEvent {
                        event_id: Uuid::new_v4().to_string(),
                        event: Some(sample_event(
                            serial.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                        )),
                        ..Default::default()
                    })
                    .collect();
                let slot = call % STREAMS_PER_CLIENT;
                call += 1;
                let expected = Some(match revisions[slot] {
                    None => pb::append_request::Expected::NoStream(()),
                    Some(r) => pb::append_request::Expected::Exact(r),
                });
                let call_start = Instant::now();
                let result = client
                    .append(pb::AppendRequest {
                        stream: streams[slot].clone(),
                        expected,
                        events: batch,
                    })
                    .await;
                let micros = call_start.elapsed().as_micros() as u64;
                match result {
                    Ok(response) => {
                        revisions[slot] = Some(response.into_inner().last_revision);
                        requests += 1;
                        events += events_per_request as u64;
                        let _ = histogram.record(micros.max(1));
                    }
                    Err(status) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("append failed: {status}");
                        }
                    }
                }
            }
            (histogram, requests, events, errors)
        }));
    }
    let mut histogram = Histogram::<u64>::new(3).expect("valid precision");
    let (mut requests, mut events, mut errors) = (0, 0, 0);
    for task in tasks {
        let (h, r, e, x) = task.await.expect("client task panicked");
        histogram.add(h).expect("same precision");
        requests += r;
        events += e;
        errors += x;
    }
    Ok(LoadReport {
        requests,
        events,
        errors,
        elapsed: start.elapsed(),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        max_us: histogram.max(),
    })
}

/// The gRPC ceiling of this machine: `clients` callers doing `GetHead` (no log work,
/// a few bytes each way) for `duration`; returns (calls, elapsed).
pub async fn run_get_head(
    server: &str,
    clients: usize,
    duration: Duration,
) -> Result<(u64, Duration), tonic::transport::Error> {
    let channels = connect(server, clients.clamp(1, 8)).await?;
    let start = Instant::now();
    // An absurd duration must not overflow the clock: it means "until the calls run out".
    let deadline = start
        .checked_add(duration)
        .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600));
    let mut tasks = Vec::with_capacity(clients);
    for client_index in 0..clients {
        let mut client = EventStoreClient::new(channels[client_index % channels.len()].clone());
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while Instant::now() < deadline {
                if client.get_head(()).await.is_ok() {
                    calls += 1;
                }
            }
            calls
        }));
    }
    let mut calls = 0;
    for task in tasks {
        calls += task.await.expect("client task panicked");
    }
    Ok((calls, start.elapsed()))
}

/// Reads the whole log forward over gRPC in pages of 1000; returns (events, elapsed).
pub async fn run_read_all(server: &str) -> Result<(u64, Duration), Box<dyn std::error::Error>> {
    let channel = connect(server, 1).await?.remove(0);
    let mut client = EventStoreClient::new(channel)
        .max_decoding_message_size(crate::limits::MESSAGE_BYTES_MAX * 4);
    let start = Instant::now();
    let mut cursor = 0;
    let mut events = 0u64;
    loop {
        let page = client
            .read_all(pb::ReadAllRequest {
                from_position: cursor,
                backwards: false,
                max_count: crate::limits::READ_PAGE_MAX,
                filter: None,
            })
            .await?
            .into_inner();
        events += page.events.len() as u64;
        cursor = page.next_cursor;
        if page.end_reached {
            break;
        }
    }
    Ok((events, start.elapsed()))
}

/// Replays the whole log over gRPC with one `Subscribe` from position 0 (the server
/// streams pages without waiting for a request per page) until the head known at the
/// start; returns (events, elapsed).
pub async fn run_subscribe_all(
    server: &str,
) -> Result<(u64, Duration), Box<dyn std::error::Error>> {
    use tokio_stream::StreamExt;
    let channel = connect(server, 1).await?.remove(0);
    let mut client =
        EventStoreClient::new(channel).max_decoding_message_size(crate::limits::MESSAGE_BYTES_MAX);
    let head = client.get_head(()).await?.into_inner().position;
    let start = Instant::now();
    let mut events = 0u64;
    if head > 0 {
        let mut stream = client
            .subscribe(pb::SubscribeRequest {
                after_position: 0,
                filter: None,
            })
            .await?
            .into_inner();
        while let Some(event) = stream.next().await {
            events += 1;
            if event?.position >= head {
                break;
            }
        }
    }
    Ok((events, start.elapsed()))
}

/// The raw sled ceiling on this disk: `events` plain inserts of 200-byte values under
/// u64 keys into one tree, `batch` per flush + fdatasync (the same durability as an
/// append). Returns inserts per second.
pub fn run_sled_ceiling(
    dir: &Path,
    events: u64,
    batch: u64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .open()?;
    let tree = db.open_tree("raw")?;
    let file = std::fs::File::open(dir.join("db"))?;
    let value = [b'x'; PAYLOAD_BYTES];
    let start = Instant::now();
    let mut key = 0u64;
    while key < events {
        let mut sled_batch = sled::Batch::default();
        for _ in 0..batch.min(events - key) {
            key += 1;
            sled_batch.insert(&key.to_be_bytes(), &value[..]);
        }
        tree.apply_batch(sled_batch)?;
        db.flush()?;
        file.sync_data()?;
    }
    Ok(events as f64 / start.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_payload_is_about_200_bytes_and_deterministic() {
        assert_eq!(sample_proposed(7).payload.len(), PAYLOAD_BYTES);
        assert_eq!(sample_event(7), sample_event(7));
        assert_ne!(sample_event(7), sample_event(8));
    }
}

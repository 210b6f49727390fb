//! The load generator behind `rapport bench`: appends and reads over real gRPC against a
//! running server (a separate process, as pgbench is for PostgreSQL), and the raw sled
//! ceiling measured on the same disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prost::bytes::Bytes;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

use crate::grpc::append_wire::{WireAppendRequest, WireProposedEvent};
use crate::grpc::pb;
use crate::grpc::pb::event_store_client::EventStoreClient;

mod h2_client;
pub use h2_client::{H2ConnectError, H2Connection, H2Messages};

/// Streams each load-generator client owns and cycles over (the peer's known-revision
/// script does the same with 1000 fresh streams per client).
pub const STREAMS_PER_CLIENT: usize = 1000;

/// Size of the generated event payload, in bytes (the peer benchmark's 200-byte body).
pub const PAYLOAD_BYTES: usize = 200;

/// Distinct sample bodies an append run encodes up front and cycles over.
pub const SAMPLE_POOL: usize = 4096;

const APPEND_PATH: &str = "/rapport.v1.EventStore/Append";

/// Client-made event ids (UUIDv4 layout) from a per-client generator seeded once from the
/// OS: `Uuid::new_v4` asked the kernel for 16 random bytes per event.
struct EventIds {
    state: u64,
}

impl EventIds {
    fn new(client_index: u64) -> Self {
        let seed = Uuid::new_v4().as_u64_pair();
        Self {
            state: seed.0 ^ seed.1.rotate_left(17) ^ client_index,
        }
    }

    /// splitmix64, twice: 128 bits, then the v4 version and variant bits.
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn next(&mut self) -> String {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        id.hyphenated()
            .encode_lower(&mut Uuid::encode_buffer())
            .to_owned()
    }
}

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

/// What one client, or the clients of one thread, measured: call latencies and
/// (requests, events, errors).
type Tally = (Histogram<u64>, u64, u64, u64);

fn new_tally() -> Tally {
    (Histogram::<u64>::new(3).expect("valid precision"), 0, 0, 0)
}

/// Counts one call that took `micros`: `Ok(events)` adds a request, its events and its
/// latency; `Err` adds an error (the first three of a client are printed).
fn count_call(tally: &mut Tally, micros: u64, outcome: Result<u64, String>, what: &str) {
    match outcome {
        Ok(events) => {
            tally.1 += 1;
            tally.2 += events;
            let _ = tally.0.record(micros.max(1));
        }
        Err(message) => {
            tally.3 += 1;
            if tally.3 <= 3 {
                eprintln!("{what} failed: {message}");
            }
        }
    }
}

/// How the load generator's calls reach the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// A bare HTTP/2 stream per call ([`H2Connection`]): the lightest client, so that the
    /// CPU the machine has goes to the server under test, as pgbench's libpq leaves it.
    #[default]
    H2,
    /// tonic's client (`Channel`), what a Rust service would use: the same wire, with a
    /// buffer task and hyper's client in front of the connection (23–25 µs of client CPU
    /// per call at 64 clients on this machine, against 13–16 µs for [`Transport::H2`]).
    Tonic,
}

/// How a run's clients are set up: client threads ([`on_client_threads`]) and transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSetup {
    /// OS threads, each one event loop driving its share of the clients.
    pub threads: usize,
    /// How calls reach the server.
    pub transport: Transport,
    /// HTTP/2 connections over all threads (each thread at least one), shared by the
    /// clients as services behind one gRPC channel pool would share them.
    pub connections: usize,
}

impl Default for ClientSetup {
    fn default() -> Self {
        Self {
            threads: CLIENT_THREADS_DEFAULT,
            transport: Transport::default(),
            connections: CONNECTIONS_DEFAULT,
        }
    }
}

impl ClientSetup {
    /// The default transport on `threads` client threads.
    pub fn with_threads(threads: usize) -> Self {
        Self {
            threads,
            ..Self::default()
        }
    }
}

/// One connection of a run, shared by the clients handed clones of it.
#[derive(Clone)]
enum Connection {
    Tonic(Channel),
    H2(H2Connection),
}

/// What one client calls through.
enum Caller {
    Tonic(tonic::client::Grpc<Channel>),
    H2(H2Connection),
}

impl Caller {
    fn new(connection: Connection) -> Self {
        match connection {
            Connection::Tonic(channel) => Self::Tonic(
                tonic::client::Grpc::new(channel)
                    .max_decoding_message_size(crate::limits::MESSAGE_BYTES_MAX)
                    .max_encoding_message_size(crate::limits::MESSAGE_BYTES_MAX),
            ),
            Connection::H2(connection) => Self::H2(connection),
        }
    }

    /// One unary call of `path` with `request`: its latency in microseconds (from waiting
    /// for the connection to the decoded answer) and the answer.
    async fn timed_unary<Req, Resp>(
        &mut self,
        path: &'static str,
        request: Req,
    ) -> (u64, Result<Resp, tonic::Status>)
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let start = Instant::now();
        let result = match self {
            Self::Tonic(client) => match client.ready().await {
                Ok(()) => client
                    .unary(
                        tonic::Request::new(request),
                        tonic::codegen::http::uri::PathAndQuery::from_static(path),
                        tonic_prost::ProstCodec::<Req, Resp>::default(),
                    )
                    .await
                    .map(tonic::Response::into_inner),
                Err(error) => Err(tonic::Status::unavailable(error.to_string())),
            },
            Self::H2(connection) => connection.unary(path, &request).await,
        };
        (start.elapsed().as_micros() as u64, result)
    }
}

/// Connects `connections` connections of `transport` to `server`.
async fn connect_with(
    server: &str,
    connections: usize,
    transport: Transport,
) -> Result<Vec<Connection>, LoadError> {
    Ok(match transport {
        Transport::Tonic => connect(server, connections)
            .await?
            .into_iter()
            .map(Connection::Tonic)
            .collect(),
        Transport::H2 => {
            let mut all = Vec::with_capacity(connections.max(1));
            for _ in 0..connections.max(1) {
                all.push(Connection::H2(H2Connection::connect(server).await?));
            }
            all
        }
    })
}

/// Runs `clients` load-generator clients as `setup` says ([`on_client_threads`]): each
/// thread connects its share of the connections and spawns `client(index, caller)` for
/// each of its clients. Returns every client's result, in client order.
async fn run_clients<T, F, Fut>(
    server: &str,
    clients: usize,
    setup: ClientSetup,
    client: F,
) -> Result<Vec<T>, LoadError>
where
    F: Fn(usize, Caller) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let server: Arc<str> = server.into();
    let connections = (setup.connections / setup.threads.max(1)).max(1);
    let client = Arc::new(client);
    let parts = on_client_threads(setup.threads, clients, move |range| {
        let (server, client) = (server.clone(), client.clone());
        async move {
            let all =
                connect_with(&server, range.len().clamp(1, connections), setup.transport).await?;
            let tasks: Vec<_> = range
                .map(|index| {
                    let caller = Caller::new(all[index % all.len()].clone());
                    tokio::spawn(client(index, caller))
                })
                .collect();
            let mut results = Vec::with_capacity(tasks.len());
            for task in tasks {
                results.push(task.await.expect("client task panicked"));
            }
            Ok(results)
        }
    })
    .await?;
    Ok(parts.into_iter().flatten().collect())
}

/// `duration` after `start`. An absurd duration must not overflow the clock: it means
/// "until the calls run out".
fn deadline_after(start: Instant, duration: Duration) -> Instant {
    start
        .checked_add(duration)
        .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600))
}

fn add_tally(total: &mut Tally, (histogram, requests, events, errors): Tally) {
    total.0.add(histogram).expect("same precision");
    total.1 += requests;
    total.2 += events;
    total.3 += errors;
}

impl LoadReport {
    /// One report from what each client thread measured over `elapsed`.
    fn merged(parts: Vec<Tally>, elapsed: Duration) -> Self {
        let mut total = new_tally();
        for part in parts {
            add_tally(&mut total, part);
        }
        let (histogram, requests, events, errors) = total;
        Self {
            requests,
            events,
            errors,
            elapsed,
            p50_us: histogram.value_at_quantile(0.5),
            p99_us: histogram.value_at_quantile(0.99),
            max_us: histogram.max(),
        }
    }

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

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A connection to the server failed.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// An HTTP/2 connection to the server failed.
    #[error("cannot connect: {0}")]
    ConnectH2(#[from] H2ConnectError),
    /// A client thread or its runtime could not be started.
    #[error("cannot start a client thread: {0}")]
    Thread(#[from] std::io::Error),
    /// A client thread panicked (a bug of the load generator, reported, not re-raised).
    #[error("a client thread panicked")]
    ThreadPanicked,
}

/// Client threads of `rapport bench append` and `bench head` unless told otherwise. One:
/// the client shares this machine's 2 cores with the server, and a second event loop took
/// CPU the server lacked (`bench head --clients 64`: ~34k calls/s on one thread, 25-28k on
/// two, 25-29k on the process's multi-threaded runtime; measured here).
pub const CLIENT_THREADS_DEFAULT: usize = 1;

/// HTTP/2 connections of a run's clients, over all its threads: clients share them, as
/// services behind one gRPC channel pool would.
pub const CONNECTIONS_DEFAULT: usize = 8;

/// Runs `work` to its end on a thread of its own with a single-threaded runtime, as one
/// client thread of [`on_client_threads`]: the whole-log reads of `rapport bench read` run
/// this way. On the process's multi-threaded runtime a replay's connection task and its
/// reading loop woke each other across threads (a quarter of the client's samples in
/// thread switches; the receive-only replay's client took 0.32–0.40 s of CPU for 1M events
/// there, 0.21–0.25 s on one thread, measured here). Errors come back as their text.
pub async fn on_own_thread<T, F, Fut>(work: F) -> Result<T, String>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, Box<dyn std::error::Error>>>,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(async move { work().await.map_err(|e| e.to_string()) })
    })
    .await
    .map_err(|e| format!("the reading thread failed: {e}"))?
}

/// Runs `clients` load-generator clients split over `threads` OS threads, each driving its
/// share (a range of client indices) on a single-threaded tokio runtime, as `pgbench -j`
/// splits its clients over threads that are each one event loop. On the process's
/// multi-threaded runtime a call's wake-ups (caller, channel buffer, connection) moved
/// between threads: a one-client `GetHead` round trip took ~180 µs there against ~130 µs
/// on one thread (measured here, `rapport bench head --clients 1`). Returns each thread's
/// result, in thread order; the first error of any thread, if one failed.
async fn on_client_threads<T, F, Fut>(
    threads: usize,
    clients: usize,
    work: F,
) -> Result<Vec<T>, LoadError>
where
    F: Fn(std::ops::Range<usize>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<T, LoadError>>,
    T: Send + 'static,
{
    let threads = threads.clamp(1, clients.max(1));
    let work = Arc::new(work);
    let mut handles = Vec::with_capacity(threads);
    for thread in 0..threads {
        let range = (clients * thread / threads)..(clients * (thread + 1) / threads);
        let work = work.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("rapport-bench-{thread}"))
                .spawn(move || -> Result<T, LoadError> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(work(range))
                })?,
        );
    }
    // Joined off the caller's runtime: the threads run for the whole measured window.
    tokio::task::spawn_blocking(move || {
        handles
            .into_iter()
            .map(|handle| handle.join().map_err(|_| LoadError::ThreadPanicked)?)
            .collect()
    })
    .await
    .map_err(|_| LoadError::ThreadPanicked)?
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

/// A customer event of the same size as [`sample_event`] whose body is personal data
/// (an `InteractionLogged` with a ~200-byte subject and summary): what the encryption
/// cost is measured with. Deterministic in `serial`.
pub fn sample_personal_event(customer_id: Uuid, serial: u64) -> pb::Event {
    let Some(pb::event::Kind::Custom(custom)) = sample_event(serial).kind else {
        unreachable!("sample_event is a custom event")
    };
    let pad = custom
        .data
        .and_then(|d| d.fields.get("new").cloned())
        .and_then(|v| match v.kind {
            Some(prost_types::value::Kind::StringValue(s)) => Some(s),
            _ => None,
        })
        .unwrap_or_default();
    pb::Event {
        kind: Some(pb::event::Kind::InteractionLogged(pb::InteractionLogged {
            customer_id: customer_id.to_string(),
            channel: pb::Channel::Email as i32,
            direction: pb::Direction::Inbound as i32,
            kind: pb::InteractionKind::Email as i32,
            subject: "Change of email address".into(),
            summary: pad,
            agent: "agent-7".into(),
            duration_seconds: 0,
        })),
    }
}

/// The customer a personal-data load client owns in `slot`: the same across runs, so a
/// warm-up run creates the keys and the measured run pays only for encryption.
pub fn bench_customer(client_index: usize, slot: usize) -> Uuid {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rapport bench customer");
    hasher.update(&(client_index as u64).to_be_bytes());
    hasher.update(&(slot as u64).to_be_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
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
) -> Result<LoadReport, LoadError> {
    run_append_with(
        server,
        clients,
        events_per_request,
        duration,
        requests_per_client,
        AppendKind::Custom,
        ClientSetup::default(),
    )
    .await
}

/// What an append load run appends, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendKind {
    /// Custom events to fresh `bench-*` streams, exact expected revisions.
    Custom,
    /// Custom events of the same size to the callers' fixed customer streams
    /// (`customer-<id>`, expected `any`): the baseline of [`AppendKind::Personal`].
    CustomOnCustomerStreams,
    /// Personal-data events ([`sample_personal_event`], sealed by the server) to the
    /// same customer streams.
    Personal,
}

/// [`run_append`] with a choice of events and streams ([`AppendKind`]), of client
/// threads ([`on_client_threads`]) and of transport ([`ClientSetup`]). The customer streams outlive one run (the same ids
/// every time, so a warm-up run creates the keys), hence expected revision `any` on them.
pub async fn run_append_with(
    server: &str,
    clients: usize,
    events_per_request: usize,
    duration: Duration,
    requests_per_client: Option<u64>,
    kind: AppendKind,
    setup: ClientSetup,
) -> Result<LoadReport, LoadError> {
    let personal = kind == AppendKind::Personal;
    let customer_streams = kind != AppendKind::Custom;
    let calls_max = requests_per_client.unwrap_or(u64::MAX);
    // Bodies are encoded once, before the clock starts, as pgbench binds one prepared
    // payload: the calls then cost the client little more than HTTP/2 (building and
    // encoding a `Struct` per event was a fifth of the machine in batches of 100). The
    // pool's bodies all differ, so the server compresses nothing it would not otherwise.
    let pool: Vec<Bytes> = if personal {
        Vec::new()
    } else {
        (0..SAMPLE_POOL as u64)
            .map(|n| Bytes::from(prost::Message::encode_to_vec(&sample_event(n))))
            .collect()
    };
    let start = Instant::now();
    let run = Arc::new(AppendRun {
        events_per_request,
        deadline: deadline_after(start, duration),
        calls_max,
        personal,
        customer_streams,
        run_id: Uuid::new_v4().simple().to_string(),
        serial: std::sync::atomic::AtomicU64::new(0),
        pool,
    });
    let tallies = run_clients(server, clients, setup, move |client_index, caller| {
        append_client(run.clone(), caller, client_index)
    })
    .await?;
    Ok(LoadReport::merged(tallies, start.elapsed()))
}

/// What every append client of a run shares.
struct AppendRun {
    events_per_request: usize,
    deadline: Instant,
    calls_max: u64,
    personal: bool,
    customer_streams: bool,
    run_id: String,
    /// The next event's serial, over all clients.
    serial: std::sync::atomic::AtomicU64,
    /// Bodies encoded once (empty for personal events, which are made per customer).
    pool: Vec<Bytes>,
}

/// One append client (the `client_index`th, calling through `caller`): calls until the
/// deadline or its call budget; returns its latency histogram and its (requests, events,
/// errors).
async fn append_client(run: Arc<AppendRun>, mut caller: Caller, client_index: usize) -> Tally {
    // Like the peer's known-revision client: each caller owns STREAMS_PER_CLIENT
    // fresh streams and cycles over them, knowing each one's revision.
    let customers: Vec<Uuid> = (0..STREAMS_PER_CLIENT)
        .map(|k| bench_customer(client_index, k))
        .collect();
    let streams: Vec<String> = (0..STREAMS_PER_CLIENT)
        .map(|k| {
            if run.customer_streams {
                format!("customer-{}", customers[k])
            } else {
                format!("bench-{}-{client_index}-{k}", run.run_id)
            }
        })
        .collect();
    let mut ids = EventIds::new(client_index as u64);
    let mut tally = new_tally();
    let mut revisions: Vec<Option<u64>> = vec![None; STREAMS_PER_CLIENT];
    let mut call = 0usize;
    while Instant::now() < run.deadline && tally.1 + tally.3 < run.calls_max {
        let slot = call % STREAMS_PER_CLIENT;
        call += 1;
        let batch: Vec<WireProposedEvent> = (0..run.events_per_request)
            .map(|_| {
                let n = run
                    .serial
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let body = if run.personal {
                    let event = sample_personal_event(customers[slot], n);
                    Bytes::from(prost::Message::encode_to_vec(&event))
                } else {
                    run.pool[(n % SAMPLE_POOL as u64) as usize].clone()
                };
                WireProposedEvent {
                    envelope: pb::ProposedEvent {
                        event_id: ids.next(),
                        ..Default::default()
                    },
                    body: Some(body),
                }
            })
            .collect();
        let expected = Some(match (run.customer_streams, revisions[slot]) {
            (true, _) => pb::append_request::Expected::Any(()),
            (false, None) => pb::append_request::Expected::NoStream(()),
            (false, Some(r)) => pb::append_request::Expected::Exact(r),
        });
        let request = WireAppendRequest {
            request: pb::AppendRequest {
                stream: streams[slot].clone(),
                expected,
                events: Vec::new(),
            },
            events: batch,
        };
        let (micros, result) = caller
            .timed_unary::<_, pb::AppendResponse>(APPEND_PATH, request)
            .await;
        let outcome = result
            .map(|response| {
                revisions[slot] = Some(response.last_revision);
                run.events_per_request as u64
            })
            .map_err(|status| status.to_string());
        count_call(&mut tally, micros, outcome, "append");
    }
    tally
}

/// The gRPC ceiling of this machine: `clients` callers doing `GetHead` (no log work,
/// a few bytes each way) for `duration`, set up as `setup` says; returns (calls, elapsed).
pub async fn run_get_head(
    server: &str,
    clients: usize,
    duration: Duration,
    setup: ClientSetup,
) -> Result<(u64, Duration), LoadError> {
    let start = Instant::now();
    let deadline = deadline_after(start, duration);
    let calls = run_clients(server, clients, setup, move |_, mut caller| async move {
        let mut calls = 0u64;
        while Instant::now() < deadline {
            let (_, result) = caller
                .timed_unary::<_, pb::LogHead>(GET_HEAD_PATH, ())
                .await;
            if result.is_ok() {
                calls += 1;
            }
        }
        calls
    })
    .await?;
    Ok((calls.into_iter().sum(), start.elapsed()))
}

/// A `ReadResponse` as the read-stream load generator receives it: each event kept as its
/// undecoded bytes (a receive-only client, as pgbench stores rows without interpreting
/// them); the same wire bytes as `pb::ReadResponse`.
#[derive(Clone, PartialEq, prost::Message)]
struct RawReadResponse {
    /// The encoded `RecordedEvent`s.
    #[prost(bytes = "bytes", repeated, tag = "1")]
    events: Vec<Bytes>,
    /// As `pb::ReadResponse::end_reached`.
    #[prost(bool, tag = "2")]
    end_reached: bool,
    /// As `pb::ReadResponse::next_cursor`.
    #[prost(uint64, tag = "3")]
    next_cursor: u64,
}

const READ_STREAM_PATH: &str = "/rapport.v1.EventStore/ReadStream";

const GET_HEAD_PATH: &str = "/rapport.v1.EventStore/GetHead";

/// Reads whole streams with `clients` callers for `duration`, set up as `setup` says, as the peer's `read_stream.sql`: each call one `ReadStream`
/// from revision 0 of a stream picked at random (seeded per client) among
/// `customer-0 .. customer-{streams - 1}`, the streams `rapport bench fill --streams`
/// writes. The client keeps each event's bytes without decoding them. A call that finds
/// no event, or a stream that does not end within its first page, counts as an error.
/// The report's events are events read, its requests the calls.
pub async fn run_read_stream(
    server: &str,
    clients: usize,
    streams: u64,
    duration: Duration,
    setup: ClientSetup,
) -> Result<LoadReport, LoadError> {
    let streams = streams.max(1);
    let start = Instant::now();
    let deadline = deadline_after(start, duration);
    let tallies = run_clients(server, clients, setup, move |client_index, caller| {
        read_stream_client(caller, client_index, streams, deadline)
    })
    .await?;
    Ok(LoadReport::merged(tallies, start.elapsed()))
}

/// One read-stream client: calls until the deadline; returns its latency histogram and
/// its (requests, events, errors).
async fn read_stream_client(
    mut caller: Caller,
    client_index: usize,
    streams: u64,
    deadline: Instant,
) -> Tally {
    let mut picks = EventIds::new(client_index as u64);
    let mut tally = new_tally();
    while Instant::now() < deadline {
        let request = pb::ReadStreamRequest {
            stream: format!("customer-{}", picks.next_u64() % streams),
            from_revision: 0,
            backwards: false,
            max_count: 0,
        };
        let (micros, result) = caller
            .timed_unary::<_, RawReadResponse>(READ_STREAM_PATH, request)
            .await;
        let outcome = match result {
            Ok(page) if !page.events.is_empty() && page.end_reached => Ok(page.events.len() as u64),
            Ok(page) => Err(format!(
                "{} events, end reached {}",
                page.events.len(),
                page.end_reached
            )),
            Err(status) => Err(status.to_string()),
        };
        count_call(&mut tally, micros, outcome, "read stream");
    }
    tally
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

/// Replays the whole log with one `Subscribe` whose client only receives: each event
/// arrives as its raw protobuf message and only its `position` (field 1, written first) is
/// read, to check that positions come dense and in order. The client side of
/// `psql \copy ... TO /dev/null`, which receives rows without parsing them into values;
/// [`run_subscribe_all`] is the same replay decoded into `RecordedEvent`s. Over
/// `transport`: tonic's streaming client, or a bare HTTP/2 stream ([`H2Messages`]).
pub async fn run_subscribe_raw(
    server: &str,
    transport: Transport,
) -> Result<(u64, Duration), Box<dyn std::error::Error>> {
    if transport == Transport::H2 {
        return subscribe_raw_h2(server).await;
    }
    use tokio_stream::StreamExt;
    let channel = connect(server, 1).await?.remove(0);
    let head = EventStoreClient::new(channel.clone())
        .get_head(())
        .await?
        .into_inner()
        .position;
    let start = Instant::now();
    let mut events = 0u64;
    if head > 0 {
        let mut grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(crate::limits::MESSAGE_BYTES_MAX);
        grpc.ready().await?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/rapport.v1.EventStore/Subscribe",
        );
        let request = tonic::Request::new(pb::SubscribeRequest {
            after_position: 0,
            filter: None,
        });
        let mut stream = grpc
            .server_streaming(request, path, RawCodec)
            .await?
            .into_inner();
        let mut replay = DenseReplay { events: 0, head };
        while let Some(message) = stream.next().await {
            if replay.take(message?)? {
                break;
            }
        }
        events = replay.events;
    }
    Ok((events, start.elapsed()))
}

/// [`run_subscribe_raw`] over a bare HTTP/2 stream.
async fn subscribe_raw_h2(server: &str) -> Result<(u64, Duration), Box<dyn std::error::Error>> {
    let connection = H2Connection::connect(server).await?;
    let head = connection
        .unary::<_, pb::LogHead>(GET_HEAD_PATH, &())
        .await?
        .position;
    let start = Instant::now();
    let mut events = 0u64;
    if head > 0 {
        let request = pb::SubscribeRequest {
            after_position: 0,
            filter: None,
        };
        let mut messages = connection
            .server_streaming("/rapport.v1.EventStore/Subscribe", &request)
            .await?;
        let mut replay = DenseReplay { events: 0, head };
        while let Some(message) = messages.message().await? {
            if replay.take(message)? {
                break;
            }
        }
        events = replay.events;
    }
    Ok((events, start.elapsed()))
}

/// A receive-only replay's count: positions must come dense from 1, up to the head known
/// when it started.
struct DenseReplay {
    events: u64,
    head: u64,
}

impl DenseReplay {
    /// Takes the next raw `RecordedEvent` message; `true` once the head is reached.
    fn take(&mut self, message: Bytes) -> Result<bool, Box<dyn std::error::Error>> {
        let position = leading_position(message)?;
        self.events += 1;
        if position != self.events {
            let events = self.events;
            return Err(format!("event {events} of the replay has position {position}").into());
        }
        Ok(position >= self.head)
    }
}

/// The `position` of a raw `RecordedEvent` message (prost writes field 1 first).
fn leading_position(mut message: prost::bytes::Bytes) -> Result<u64, Box<dyn std::error::Error>> {
    use prost::bytes::Buf;
    if message.is_empty() || message.get_u8() != 0x08 {
        return Err("a replayed message does not start with its position".into());
    }
    Ok(prost::encoding::decode_varint(&mut message)?)
}

/// Encodes the `SubscribeRequest` with prost; hands each response message over as bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

/// The response side of [`RawCodec`].
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = pb::SubscribeRequest;
    type Decode = prost::bytes::Bytes;
    type Encoder = tonic_prost::ProstEncoder<pb::SubscribeRequest>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Self::Item>, Self::Error> {
        use prost::bytes::Buf;
        let len = buf.remaining();
        Ok(Some(buf.copy_to_bytes(len)))
    }
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

/// What a fixed-rate read run measured.
#[derive(Clone, Debug)]
pub struct RateReport {
    /// Calls answered OK.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Median call latency (send to answer), microseconds.
    pub p50_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// 99.9th percentile, microseconds.
    pub p999_us: u64,
    /// Worst, microseconds.
    pub max_us: u64,
    /// 99th percentile measured from the scheduled start instead of the send: includes
    /// the client's own timer lateness (tokio's timer has a 1 ms resolution), and shows
    /// a stalled server even when few calls were in flight.
    pub p99_from_schedule_us: u64,
}

impl std::fmt::Display for RateReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "calls/s {:.0}  p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.2} ms  (p99 from schedule {:.3} ms)  calls {}  errors {}  over {:.1} s",
            self.calls as f64 / self.elapsed.as_secs_f64(),
            self.p50_us as f64 / 1000.0,
            self.p99_us as f64 / 1000.0,
            self.p999_us as f64 / 1000.0,
            self.max_us as f64 / 1000.0,
            self.p99_from_schedule_us as f64 / 1000.0,
            self.calls,
            self.errors,
            self.elapsed.as_secs_f64()
        )
    }
}

/// `GetCustomer` at a fixed rate (open loop): calls are scheduled every `1/rate` and
/// spread over `clients` callers, so a stalled server does not slow the load down.
/// Latency is measured from the send; the p99 from the scheduled start is reported too
/// (it adds the client timer's lateness). Customer ids are sampled from the first
/// `ids_max` of `ListCustomers`.
pub async fn run_get_customer(
    server: &str,
    clients: usize,
    rate_per_second: u64,
    duration: Duration,
    ids_max: usize,
) -> Result<RateReport, Box<dyn std::error::Error + Send + Sync>> {
    use crate::grpc::pb::customers_client::CustomersClient;
    let channels = connect(server, clients.clamp(1, 8)).await?;
    let mut lister = CustomersClient::new(channels[0].clone());
    let mut ids = Vec::new();
    let mut token = String::new();
    while ids.len() < ids_max {
        let page = lister
            .list_customers(pb::ListCustomersRequest {
                page_size: crate::limits::LIST_PAGE_MAX as u32,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        ids.extend(page.customers.into_iter().map(|c| c.customer_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if ids.is_empty() {
        return Err("no customers to read: seed the server first (rapport seed)".into());
    }
    let ids = Arc::new(ids);
    let clients = clients.max(1);
    let interval = Duration::from_secs_f64(clients as f64 / rate_per_second.max(1) as f64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for client_index in 0..clients {
        let mut client = CustomersClient::new(channels[client_index % channels.len()].clone());
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3).expect("valid precision");
            let mut from_schedule = Histogram::<u64>::new(3).expect("valid precision");
            let (mut calls, mut errors) = (0u64, 0u64);
            // Callers are staggered so the calls are evenly spaced overall.
            let offset = interval.mul_f64(client_index as f64 / clients as f64);
            let mut n = 0u64;
            loop {
                let scheduled = start + offset + interval.mul_f64(n as f64);
                if scheduled.duration_since(start) >= duration {
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                let index = (n as usize * 7919 + client_index * 104_729) % ids.len();
                n += 1;
                let sent = Instant::now();
                let result = client
                    .get_customer(pb::GetCustomerRequest {
                        customer_id: ids[index].clone(),
                        min_position: 0,
                    })
                    .await;
                let micros = sent.elapsed().as_micros() as u64;
                let late = scheduled.elapsed().as_micros() as u64;
                match result {
                    Ok(_) => {
                        calls += 1;
                        let _ = histogram.record(micros.max(1));
                        let _ = from_schedule.record(late.max(1));
                    }
                    Err(status) => {
                        errors += 1;
                        if errors <= 3 {
                            eprintln!("get customer failed: {status}");
                        }
                    }
                }
            }
            (histogram, from_schedule, calls, errors)
        }));
    }
    let mut histogram = Histogram::<u64>::new(3).expect("valid precision");
    let mut from_schedule = Histogram::<u64>::new(3).expect("valid precision");
    let (mut calls, mut errors) = (0, 0);
    for task in tasks {
        let (h, s, c, e) = task.await.expect("client task panicked");
        histogram.add(h).expect("same precision");
        from_schedule.add(s).expect("same precision");
        calls += c;
        errors += e;
    }
    Ok(RateReport {
        calls,
        errors,
        elapsed: start.elapsed(),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        max_us: histogram.max(),
        p99_from_schedule_us: from_schedule.value_at_quantile(0.99),
    })
}

//! The `rapport` binary: flags, then a call into the library (`rapport::cli`).

/// mimalloc instead of glibc's malloc: folding the log allocates many small, short-lived
/// strings per event (decoded envelopes and payloads), where glibc spent ~45% of a
/// projection rebuild in malloc/free and consolidation (measured with perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rapport",
    version,
    about = "Event-sourced CRM backend: a hash-chained event log on sled, served over gRPC"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The reads `rapport bench read --only` picks from.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ReadBenchArg {
    /// ReadAll pages of 1 000.
    Pages,
    /// A decoded Subscribe replay.
    Decoded,
    /// A receive-only Subscribe replay.
    Raw,
}

impl From<ReadBenchArg> for rapport::cli::ReadBench {
    fn from(arg: ReadBenchArg) -> Self {
        match arg {
            ReadBenchArg::Pages => Self::Pages,
            ReadBenchArg::Decoded => Self::Decoded,
            ReadBenchArg::Raw => Self::Raw,
        }
    }
}

/// How a load generator's clients run (`rapport bench append|head|read-stream`).
#[derive(clap::Args)]
struct ClientSetupArgs {
    /// Client threads, each one event loop driving its share of the clients (as
    /// pgbench -j).
    #[arg(long, default_value_t = rapport::loadgen::CLIENT_THREADS_DEFAULT)]
    threads: usize,
    /// How calls reach the server: a bare HTTP/2 stream per call (h2, the lightest
    /// client) or tonic's client (what a Rust service would use; more CPU per call).
    #[arg(long, value_enum, default_value = "h2")]
    transport: TransportArg,
    /// HTTP/2 connections the clients share, over all threads (each thread at least one).
    #[arg(long, default_value_t = rapport::loadgen::CONNECTIONS_DEFAULT)]
    connections: usize,
}

/// The load generator's transports.
#[derive(Clone, Copy, clap::ValueEnum)]
enum TransportArg {
    /// A bare HTTP/2 stream per call.
    H2,
    /// tonic's client.
    Tonic,
}

impl From<TransportArg> for rapport::loadgen::Transport {
    fn from(arg: TransportArg) -> Self {
        match arg {
            TransportArg::H2 => Self::H2,
            TransportArg::Tonic => Self::Tonic,
        }
    }
}

impl From<ClientSetupArgs> for rapport::loadgen::ClientSetup {
    fn from(args: ClientSetupArgs) -> Self {
        Self {
            threads: args.threads,
            transport: args.transport.into(),
            connections: args.connections,
        }
    }
}

/// The kinds of file `rapport import` reads.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ImportKindArg {
    /// Order lines (CSV).
    Purchases,
    /// Customers (CSV).
    Customers,
    /// Typed events (JSON lines).
    Events,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the log over gRPC (EventStore, Customers, Analytics, Pipeline, Loyalty, Admin, health, reflection) until
    /// SIGINT/SIGTERM.
    Serve {
        /// Data directory (created if missing).
        #[arg(long, env = "RAPPORT_DATA_DIR", default_value = "./rapport-data")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "RAPPORT_LISTEN", default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Master key file (64 hex characters). Default: `<data dir>.master-key` beside the
        /// data directory, created on the first start.
        #[arg(long, env = "RAPPORT_MASTER_KEY_FILE")]
        master_key_file: Option<PathBuf>,
        /// Testing only: the event id index's shape as TAIL,FANOUT,BLOCK (default
        /// 32768,8,128). Crash tests make it tiny so that kills cut seals and merges.
        #[arg(long, hide = true)]
        id_index_shape: Option<rapport::log::id_index::IdIndexShape>,
        /// Testing only: stream index runs held in memory before a checkpoint (default and
        /// most 262144). Crash tests make it tiny so that kills cut checkpoints and the
        /// moves of the runs they freeze.
        #[arg(long, hide = true)]
        checkpoint_runs: Option<usize>,
    },
    /// Offline audit: recompute the hash chain and check every index; exits 1 on a fault.
    Verify {
        /// Data directory of a stopped server (or an offline copy).
        #[arg(long)]
        data_dir: PathBuf,
        /// A head pinned earlier (`GetHead`, or a verify's summary) as POSITION:HASH (hex):
        /// the log must still lead to it, the event at POSITION having chain hash HASH.
        /// Repeatable.
        #[arg(long = "pin", value_name = "POSITION:HASH")]
        pins: Vec<String>,
    },
    /// Print events as JSON lines through the gRPC API.
    Tail {
        /// Server URL.
        #[arg(long, env = "RAPPORT_SERVER", default_value = "http://127.0.0.1:50051")]
        server: String,
        /// Print events after this position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep following new events.
        #[arg(long)]
        follow: bool,
        /// Only streams starting with this prefix (repeatable; OR-ed).
        #[arg(long = "stream-prefix")]
        stream_prefixes: Vec<String>,
        /// Only this event type (repeatable; OR-ed).
        #[arg(long = "type")]
        event_types: Vec<String>,
    },
    /// Rebuild projections into a new generation: offline over a stopped server's data
    /// directory (--data-dir), or online through a running server's Admin service
    /// (--server), with a progress bar.
    Rebuild {
        /// Data directory of a stopped server: rebuild offline.
        #[arg(long, conflicts_with = "server", required_unless_present = "server")]
        data_dir: Option<PathBuf>,
        /// URL of a running server: rebuild online, without downtime.
        #[arg(long)]
        server: Option<String>,
        /// Only this projection (default: all).
        #[arg(long)]
        projection: Option<String>,
    },
    /// Write a deterministic retail history (customers, consents, visits, purchases,
    /// refunds, feedback, merged duplicates): the same --customers and --seed always give
    /// the same events, and seeding again appends nothing new.
    Seed {
        /// Data directory of a stopped server: seed offline (fastest).
        #[arg(long, conflicts_with = "server", required_unless_present = "server")]
        data_dir: Option<PathBuf>,
        /// URL of a running server: seed through its Customers RPCs.
        #[arg(long)]
        server: Option<String>,
        /// Number of customers (about 30 events each).
        #[arg(long)]
        customers: u64,
        /// Seed of the generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Master key file (offline only). Default: `<data dir>.master-key`, created for a
        /// new data directory.
        #[arg(long, env = "RAPPORT_MASTER_KEY_FILE", conflicts_with = "server")]
        master_key_file: Option<PathBuf>,
    },
    /// Bulk import from a file, offline into a stopped server's data directory
    /// (--data-dir, fastest) or through a running server (--server, slower). Idempotent:
    /// importing the same file again changes nothing. Bad rows are reported by line and
    /// skipped (summary at the end), or stop the import with --strict.
    ///
    /// purchases FILE.csv: header row; required columns customer_external_id, order_id,
    /// occurred_at, total_minor, currency; optional sku, name, category, quantity,
    /// unit_price_minor, channel, store_id (any order). The rows of one order share its
    /// order_id and must be adjacent; they are one PurchaseCompleted. occurred_at is RFC
    /// 3339 or YYYY-MM-DD (midnight UTC). customer_external_id is system:value (no ':'
    /// means system "external"); unknown customers are registered with it.
    ///
    /// customers FILE.csv: external_id (required), given_name, family_name, emails,
    /// phones (';'-separated), birth_date, locale, consents (e.g.
    /// marketing_email;profiling). Known customers are skipped.
    ///
    /// events FILE.jsonl: {"stream", "event_id", "occurred_at", "event": {"TypeName":
    /// {...}}} per line, personal fields in clear.
    Import {
        /// What the file holds.
        #[arg(value_enum)]
        kind: ImportKindArg,
        /// The file.
        file: PathBuf,
        /// Data directory of a stopped server: import offline (fastest).
        #[arg(long, conflicts_with = "server", required_unless_present = "server")]
        data_dir: Option<PathBuf>,
        /// URL of a running server: import through its RPCs.
        #[arg(long)]
        server: Option<String>,
        /// Stop at the first bad row (exit status 2) instead of skipping it.
        #[arg(long)]
        strict: bool,
        /// Master key file (offline only). Default: `<data dir>.master-key`.
        #[arg(long, env = "RAPPORT_MASTER_KEY_FILE", conflicts_with = "server")]
        master_key_file: Option<PathBuf>,
    },
    /// Print events as JSON lines (one per line, with position, chain hash and the body,
    /// personal fields decrypted when the key exists or marked erased), offline or through
    /// a server.
    Replay {
        /// Data directory of a stopped server: replay offline.
        #[arg(long, conflicts_with = "server", required_unless_present = "server")]
        data_dir: Option<PathBuf>,
        /// URL of a running server: replay through EventStore.ReadAll.
        #[arg(long)]
        server: Option<String>,
        /// First position (inclusive).
        #[arg(long, default_value_t = 1)]
        from_position: u64,
        /// Last position (inclusive; default: the head when the replay starts).
        #[arg(long)]
        to_position: Option<u64>,
        /// Only events recorded at or after this RFC 3339 time (on recorded_at, the log's
        /// clock, not the business time occurred_at).
        #[arg(long, value_parser = rapport::replay::parse_rfc3339)]
        from_time: Option<i64>,
        /// Only events recorded at or before this RFC 3339 time (on recorded_at).
        #[arg(long, value_parser = rapport::replay::parse_rfc3339)]
        to_time: Option<i64>,
        /// Only streams starting with this prefix (repeatable; OR-ed).
        #[arg(long = "stream-prefix")]
        stream_prefixes: Vec<String>,
        /// Only this event type (repeatable; OR-ed).
        #[arg(long = "type")]
        event_types: Vec<String>,
        /// Master key file (offline only). Default: `<data dir>.master-key`.
        #[arg(long, env = "RAPPORT_MASTER_KEY_FILE", conflicts_with = "server")]
        master_key_file: Option<PathBuf>,
    },
    /// Loyalty programme operations (issue 5).
    Loyalty {
        #[command(subcommand)]
        loyalty: LoyaltyCommand,
    },
    /// Key management of a stopped server's data directory.
    Keys {
        #[command(subcommand)]
        keys: Keys,
    },
    /// Benchmarks and load generation (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum LoyaltyCommand {
    /// Offline (the server must be stopped): let the earning policy catch up with the
    /// log, then append the expiry and tier changes due at --as-of (business time).
    /// A running server does this itself on a schedule; `Loyalty.RunTick` asks it now.
    Tick {
        /// The time to evaluate at, RFC 3339 (e.g. 2025-03-10T12:00:00Z).
        #[arg(long, value_parser = rapport::replay::parse_rfc3339)]
        as_of: i64,
        /// Data directory of a stopped server.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum Keys {
    /// Re-wrap every data key and the index key under a new master key (offline: the
    /// server must be stopped). No event changes; afterwards only the new key opens the
    /// store.
    Rotate {
        /// Data directory of a stopped server.
        #[arg(long)]
        data_dir: PathBuf,
        /// The current master key file.
        #[arg(long)]
        master_key_file: PathBuf,
        /// The new master key file (must exist, unless --create-new).
        #[arg(long)]
        new_master_key_file: PathBuf,
        /// Create the new master key file (refused if it exists).
        #[arg(long)]
        create_new: bool,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Concurrent appends over gRPC against a running server; prints events/s and p50/p99.
    Append {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 1)]
        events_per_request: usize,
        /// Duration such as 20s or 500ms.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        /// Stop each client after this many calls (fixed work instead of fixed time).
        #[arg(long)]
        requests_per_client: Option<u64>,
        /// Append personal-data customer events (sealed by the server) instead of custom
        /// events of the same size, to the clients' fixed customer streams.
        #[arg(long)]
        personal: bool,
        /// Custom events, but to the same fixed customer streams as --personal: the
        /// baseline that isolates the cost of sealing.
        #[arg(long, conflicts_with = "personal")]
        customer_streams: bool,
        #[command(flatten)]
        setup: ClientSetupArgs,
    },
    /// GetCustomer at a fixed rate (open loop) over seeded customers; prints p50/p99/p99.9.
    GetCustomer {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Calls per second, spread evenly over the clients.
        #[arg(long, default_value_t = 5000)]
        rate: u64,
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        /// Customers sampled (read from ListCustomers first).
        #[arg(long, default_value_t = 20_000)]
        customers: usize,
    },
    /// The bare gRPC call rate: concurrent GetHead calls (no log work); prints calls/s.
    Head {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[command(flatten)]
        setup: ClientSetupArgs,
    },
    /// Concurrent ReadStream calls, each reading one whole stream picked at random among
    /// the `customer-N` streams of `bench fill` (as the peer's read_stream.sql); prints
    /// events/s, calls/s and p50/p99.
    ReadStream {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Streams to pick from: customer-0 .. customer-(N-1), the --streams of the fill.
        #[arg(long, default_value_t = 100_000)]
        streams: u64,
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        #[command(flatten)]
        setup: ClientSetupArgs,
    },
    /// Read the whole log over gRPC (ReadAll pages of 1000, one decoded Subscribe, one receive-only Subscribe); prints events/s.
    Read {
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        server: String,
        /// Time only this read (default: all three, in this order).
        #[arg(long, value_enum)]
        only: Option<ReadBenchArg>,
        /// How the receive-only replay reaches the server (the other two use tonic's
        /// client).
        #[arg(long, value_enum, default_value = "h2")]
        transport: TransportArg,
    },
    /// Fill a data directory offline with bench events (for verify, read and size figures).
    Fill {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        #[arg(long, default_value_t = 100)]
        batch: usize,
        #[arg(long, default_value_t = 100_000)]
        streams: u64,
    },
    /// The raw sled ceiling: plain 200-byte inserts, `batch` per flush + fdatasync.
    Sled {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        #[arg(long, default_value_t = 1)]
        batch: u64,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let value: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(value)),
        "s" => Ok(Duration::from_secs(value)),
        "m" => value
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("duration {text:?} is too long")),
        _ => Err(format!("bad duration unit in {text:?} (use ms, s or m)")),
    }
}

/// Turns transparent huge pages off for this process, before anything else runs.
///
/// mimalloc advises its arenas as huge-page memory, and with the usual `madvise` setting
/// the kernel then backs them with 2 MiB pages: every page mimalloc frees back (or sled's
/// I/O buffers, allocated per segment) comes back on the next touch as a fresh huge page
/// the kernel zeroes whole. Under batched appends that zeroing was ~7 % of the machine's
/// samples (perf, `clear_page_erms`; 0.3 % without); the server's CPU per event was
/// 0.79–1.10× in 19 A/B pairs, median 0.92× (BENCHMARKS.md). The flag covers mappings
/// made before it too, as the kernel checks it at fault time. Best effort: a kernel that refuses leaves the
/// process as it was.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and no pointers; it only changes
    // how this process's anonymous memory is backed.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                data_dir,
                listen,
                master_key_file,
                id_index_shape,
                checkpoint_runs,
            } => rapport::cli::serve(
                data_dir,
                listen,
                master_key_file,
                id_index_shape.unwrap_or_default(),
                checkpoint_runs,
            )
            .await
            .map(|()| true),
            Command::Verify { data_dir, pins } => rapport::cli::verify(&data_dir, &pins),
            Command::Tail {
                server,
                after,
                follow,
                stream_prefixes,
                event_types,
            } => rapport::cli::tail(server, after, follow, stream_prefixes, event_types)
                .await
                .map(|()| true),
            Command::Rebuild {
                data_dir,
                server,
                projection,
            } => match (data_dir, server) {
                (Some(data_dir), _) => rapport::cli::rebuild_offline(data_dir, projection).await,
                (None, Some(server)) => rapport::cli::rebuild_online(server, projection).await,
                (None, None) => Err("give --data-dir or --server".into()),
            }
            .map(|()| true),
            Command::Seed {
                data_dir,
                server,
                customers,
                seed,
                master_key_file,
            } => {
                let target = match (data_dir, server) {
                    (Some(dir), _) => rapport::seed::SeedTarget::DataDir {
                        dir,
                        master_key_file,
                    },
                    (None, Some(url)) => rapport::seed::SeedTarget::Server(url),
                    (None, None) => return Err("give --data-dir or --server".into()),
                };
                rapport::seed::run(target, customers, seed)
                    .await
                    .map(|_| true)
            }
            Command::Import {
                kind,
                file,
                data_dir,
                server,
                strict,
                master_key_file,
            } => {
                let target = match (data_dir, server) {
                    (Some(dir), _) => rapport::import::ImportTarget::DataDir {
                        dir,
                        master_key_file,
                    },
                    (None, Some(url)) => rapport::import::ImportTarget::Server(url),
                    (None, None) => return Err("give --data-dir or --server".into()),
                };
                let kind = match kind {
                    ImportKindArg::Purchases => rapport::import::ImportKind::Purchases,
                    ImportKindArg::Customers => rapport::import::ImportKind::Customers,
                    ImportKindArg::Events => rapport::import::ImportKind::Events,
                };
                let options = rapport::import::ImportOptions { strict };
                rapport::import::run(kind, file, target, options)
                    .await
                    .map(|_| true)
            }
            Command::Replay {
                data_dir,
                server,
                from_position,
                to_position,
                from_time,
                to_time,
                stream_prefixes,
                event_types,
                master_key_file,
            } => {
                let options = rapport::replay::ReplayOptions {
                    from_position,
                    to_position,
                    from_time_us: from_time,
                    to_time_us: to_time,
                    stream_prefixes,
                    event_types,
                };
                match (data_dir, server) {
                    (Some(dir), _) => {
                        rapport::replay::replay_data_dir(dir, master_key_file, options).await
                    }
                    (None, Some(url)) => rapport::replay::replay_server(url, options).await,
                    (None, None) => Err("give --data-dir or --server".into()),
                }
                .map(|_| true)
            }
            Command::Loyalty {
                loyalty: LoyaltyCommand::Tick { as_of, data_dir },
            } => rapport::cli::loyalty_tick(data_dir, as_of)
                .await
                .map(|()| true),
            Command::Keys {
                keys:
                    Keys::Rotate {
                        data_dir,
                        master_key_file,
                        new_master_key_file,
                        create_new,
                    },
            } => rapport::cli::keys_rotate(
                &data_dir,
                &master_key_file,
                &new_master_key_file,
                create_new,
            )
            .map(|()| true),
            Command::Bench { bench } => match bench {
                Bench::Append {
                    server,
                    clients,
                    events_per_request,
                    duration,
                    requests_per_client,
                    personal,
                    customer_streams,
                    setup,
                } => rapport::cli::bench_append(
                    server,
                    clients,
                    events_per_request,
                    duration,
                    requests_per_client,
                    match (personal, customer_streams) {
                        (true, _) => rapport::loadgen::AppendKind::Personal,
                        (false, true) => rapport::loadgen::AppendKind::CustomOnCustomerStreams,
                        (false, false) => rapport::loadgen::AppendKind::Custom,
                    },
                    setup.into(),
                )
                .await
                .map(|()| true),
                Bench::GetCustomer {
                    server,
                    clients,
                    rate,
                    duration,
                    customers,
                } => {
                    rapport::loadgen::run_get_customer(&server, clients, rate, duration, customers)
                        .await
                        .map(|report| {
                            println!("get-customer clients={clients} rate={rate}/s: {report}");
                            true
                        })
                }
                Bench::Head {
                    server,
                    clients,
                    duration,
                    setup,
                } => rapport::cli::bench_head(server, clients, duration, setup.into())
                    .await
                    .map(|()| true),
                Bench::ReadStream {
                    server,
                    clients,
                    streams,
                    duration,
                    setup,
                } => rapport::cli::bench_read_stream(
                    server,
                    clients,
                    streams,
                    duration,
                    setup.into(),
                )
                .await
                .map(|()| true),
                Bench::Read {
                    server,
                    only,
                    transport,
                } => rapport::cli::bench_read(server, only.map(Into::into), transport.into())
                    .await
                    .map(|()| true),
                Bench::Fill {
                    data_dir,
                    events,
                    batch,
                    streams,
                } => rapport::cli::bench_fill(data_dir, events, batch, streams)
                    .await
                    .map(|()| true),
                Bench::Sled {
                    data_dir,
                    events,
                    batch,
                } => rapport::cli::bench_sled(&data_dir, events, batch).map(|()| true),
            },
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

//! The operator and auditor commands behind `src/main.rs`: each takes parsed flags and
//! does its work through the library.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_stream::StreamExt;

use crate::domain::{DomainEvent, Violations};
use crate::grpc::convert::event_from_proto;
use crate::grpc::pb;
use crate::grpc::pb::event_store_client::EventStoreClient;
use crate::log::{ExpectedRevision, Log, LogConfig, StreamAppend, StreamName, verify};

/// Boxed error for command results.
pub type CliError = Box<dyn std::error::Error + Send + Sync>;

/// `rapport serve`: opens the key store (refusing a wrong master key before anything is
/// touched), the log and the projections, and serves them until SIGINT/SIGTERM, then
/// drains the writer and flushes.
pub async fn serve(
    data_dir: PathBuf,
    listen: std::net::SocketAddr,
    master_key_file: Option<PathBuf>,
    id_index: crate::log::id_index::IdIndexShape,
    checkpoint_runs: Option<usize>,
) -> Result<(), CliError> {
    let keys = crate::grpc::server::open_keys(data_dir.clone(), master_key_file).await?;
    let dir = data_dir.clone();
    let defaults = LogConfig::new(dir);
    let config = LogConfig {
        id_index,
        checkpoint_runs: checkpoint_runs.unwrap_or(defaults.checkpoint_runs),
        ..defaults
    };
    let log = tokio::task::spawn_blocking(move || Log::open(config)).await??;
    let head = log.head();
    let started = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || {
            crate::projections::Projections::start(log, crate::projections::builtin())
        })
        .await?
    };
    let projections = match started {
        Ok(projections) => projections,
        Err(error) => {
            tokio::task::spawn_blocking(move || log.shutdown()).await?;
            return Err(error.into());
        }
    };
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        data_dir = %data_dir.display(),
        head_position = head.position,
        "rapport serving (gRPC EventStore, Customers, Analytics, Pipeline, Loyalty, Admin, health, reflection)"
    );
    let served = crate::grpc::serve_log(
        log.clone(),
        crate::privacy::Privacy::new(keys),
        projections.clone(),
        std::sync::Arc::new(crate::clock::SystemClock),
        listener,
        shutdown_signal(),
    )
    .await;
    tokio::task::spawn_blocking(move || {
        projections.shutdown();
        log.shutdown();
    })
    .await?;
    served?;
    tracing::info!("stopped; the log is flushed");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `rapport verify`: the offline audit, with heads an auditor pinned earlier given as
/// `POSITION:HASH` (hex). Returns whether the log is sound and leads to every pin.
pub fn verify(data_dir: &Path, pins: &[String]) -> Result<bool, CliError> {
    let pins = pins
        .iter()
        .map(|pin| parse_pin(pin))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now();
    let report = verify::verify_dir_pinned(data_dir, &pins)?;
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "events {}  streams {}  chunks {}  head {} {}",
        report.events,
        report.streams,
        report.chunks,
        report.head_position,
        hex::encode(report.head_hash)
    );
    println!(
        "checked in {elapsed:.2} s ({:.0} events/s)",
        report.events as f64 / elapsed.max(1e-9)
    );
    // Opening the directory finishes a crash's recovery first, as a server start does:
    // what it did is part of the audit.
    let recovered = report.recovered;
    if !recovered.is_empty() {
        println!(
            "recovered on open: {} journaled events written to sled; {} events past the \
             last checkpoint checked against the stream index, {} entries re-derived",
            recovered.journal_events, recovered.reindexed_events, recovered.index_entries_repaired
        );
    }
    if report.is_ok() {
        println!("OK: hash chain, positions, revisions and indices verify");
    } else {
        for fault in &report.faults {
            println!("FAULT: {fault}");
        }
    }
    Ok(report.is_ok())
}

/// A pinned head, `POSITION:HASH` with the hash as 64 hex digits.
fn parse_pin(pin: &str) -> Result<(u64, crate::log::Hash), CliError> {
    let bad =
        || -> CliError { format!("--pin {pin}: expected POSITION:HASH (64 hex digits)").into() };
    let (position, hash) = pin.split_once(':').ok_or_else(bad)?;
    let position = position.parse::<u64>().map_err(|_| bad())?;
    let hash: crate::log::Hash = hex::decode(hash)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(bad)?;
    Ok((position, hash))
}

/// Formats UTC microseconds as RFC 3339 (`2026-11-23T12:00:00.000001Z`).
pub fn rfc3339(us: i64) -> String {
    let seconds = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

fn ts_us(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1_000))
}

/// One recorded event as a JSON object (the line format of `tail`).
pub fn event_json(event: pb::RecordedEvent) -> serde_json::Value {
    let erased = event.personal_data == pb::PersonalData::Erased as i32;
    let data = event.event.clone().and_then(|body| {
        let mut v = Violations::new("");
        let mut domain = event_from_proto(body, &mut v)?;
        if erased {
            // The wire form carries empty strings for erased parts: show them as null.
            domain.seal(&mut |_, _| Vec::new());
            domain.open(&mut |_, _| None);
        }
        Some(domain)
    });
    let data = match data {
        Some(DomainEvent::Custom(custom)) => serde_json::Value::Object(
            custom
                .data
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
        ),
        Some(other) => serde_json::to_value(&other)
            .ok()
            .and_then(|v| v.as_object().and_then(|o| o.values().next().cloned()))
            .unwrap_or(serde_json::Value::Null),
        None => serde_json::Value::Null,
    };
    let metadata: serde_json::Map<String, serde_json::Value> = event
        .metadata
        .iter()
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::json!({
        "position": event.position,
        "stream": event.stream,
        "revision": event.revision,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "schema_version": event.schema_version,
        "recorded_at": rfc3339(ts_us(event.recorded_at.as_ref())),
        "occurred_at": rfc3339(ts_us(event.occurred_at.as_ref())),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "actor": event.actor,
        "source_channel": event.source_channel,
        "metadata": metadata,
        "hash": hex::encode(&event.hash),
        "personal_data": match pb::PersonalData::try_from(event.personal_data) {
            Ok(pb::PersonalData::Clear) => "clear",
            Ok(pb::PersonalData::Erased) => "erased",
            _ => "none",
        },
        "data": data,
    })
}

/// Writes one JSON line to stdout; false once the reader has gone (`rapport tail | head`
/// closes the pipe: that ends the command quietly, it is not an error).
fn emit(line: &serde_json::Value) -> Result<bool, CliError> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `rapport tail`: events as JSON lines through the gRPC API; with `follow`, stays
/// subscribed and prints new events as they are appended.
pub async fn tail(
    server: String,
    after: u64,
    follow: bool,
    stream_prefixes: Vec<String>,
    event_types: Vec<String>,
) -> Result<(), CliError> {
    let mut client = EventStoreClient::connect(server)
        .await?
        .max_decoding_message_size(crate::limits::MESSAGE_BYTES_MAX);
    let filter = Some(pb::Filter {
        stream_prefixes,
        event_types,
    });
    if follow {
        let mut stream = client
            .subscribe(pb::SubscribeRequest {
                after_position: after,
                filter,
            })
            .await?
            .into_inner();
        while let Some(event) = stream.next().await {
            if !emit(&event_json(event?))? {
                return Ok(());
            }
        }
        return Ok(());
    }
    // Nothing lies after the last position there can be.
    let Some(mut cursor) = after.checked_add(1) else {
        return Ok(());
    };
    loop {
        let page = client
            .read_all(pb::ReadAllRequest {
                from_position: cursor,
                backwards: false,
                max_count: crate::limits::READ_PAGE_MAX,
                filter: filter.clone(),
            })
            .await?
            .into_inner();
        for event in page.events {
            if !emit(&event_json(event))? {
                return Ok(());
            }
        }
        cursor = page.next_cursor;
        if page.end_reached {
            return Ok(());
        }
    }
}

/// `rapport bench fill`: writes `events` bench events offline (in process, through the
/// log's writer, `batch` per append over `streams` streams), for verify, read and size
/// figures. Reports appends/s and bytes on disk per event.
pub async fn bench_fill(
    data_dir: PathBuf,
    events: u64,
    batch: usize,
    streams: u64,
) -> Result<(), CliError> {
    let dir = data_dir.clone();
    let log = tokio::task::spawn_blocking(move || Log::open(LogConfig::new(dir))).await??;
    let start = Instant::now();
    let mut written = 0u64;
    let mut serial = 0u64;
    let mut appends = 0u64;
    let concurrency = 16usize;
    let mut in_flight = tokio::task::JoinSet::new();
    while written < events {
        let count = (batch as u64).min(events - written) as usize;
        let stream = StreamName::parse(&format!("customer-{}", appends % streams.max(1)))?;
        appends += 1;
        let mut proposed = Vec::with_capacity(count);
        for _ in 0..count {
            proposed.push(crate::loadgen::sample_proposed(serial));
            serial += 1;
        }
        written += count as u64;
        let log = log.clone();
        in_flight.spawn(async move {
            log.append(StreamAppend {
                stream,
                expected: ExpectedRevision::Any,
                events: proposed,
            })
            .await
        });
        while in_flight.len() >= concurrency {
            in_flight.join_next().await.expect("non-empty")??;
        }
    }
    while let Some(result) = in_flight.join_next().await {
        result??;
    }
    let elapsed = start.elapsed();
    let head = log.head();
    tokio::task::spawn_blocking(move || log.shutdown()).await?;
    let bytes = dir_size(&data_dir)?;
    println!(
        "wrote {events} events in {:.1} s ({:.0} events/s); head {}; {} bytes on disk = {:.0} B/event",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        head.position,
        bytes,
        bytes as f64 / head.position.max(1) as f64
    );
    Ok(())
}

/// Total size of the files under `dir`, in bytes.
pub fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// `rapport bench append`: the load generator, its clients set up as `setup` says.
pub async fn bench_append(
    server: String,
    clients: usize,
    events_per_request: usize,
    duration: Duration,
    requests_per_client: Option<u64>,
    kind: crate::loadgen::AppendKind,
    setup: crate::loadgen::ClientSetup,
) -> Result<(), CliError> {
    let report = crate::loadgen::run_append_with(
        &server,
        clients,
        events_per_request,
        duration,
        requests_per_client,
        kind,
        setup,
    )
    .await?;
    let kind = match kind {
        crate::loadgen::AppendKind::Custom => "",
        crate::loadgen::AppendKind::CustomOnCustomerStreams => " (customer streams)",
        crate::loadgen::AppendKind::Personal => " personal",
    };
    println!("append{kind} clients={clients} events/request={events_per_request}: {report}");
    Ok(())
}

/// `rapport bench head`: the bare gRPC call rate (GetHead) with `clients` callers set up
/// as `setup` says.
pub async fn bench_head(
    server: String,
    clients: usize,
    duration: Duration,
    setup: crate::loadgen::ClientSetup,
) -> Result<(), CliError> {
    let (calls, elapsed) = crate::loadgen::run_get_head(&server, clients, duration, setup).await?;
    println!(
        "GetHead clients={clients}: {:.0} calls/s ({calls} calls in {:.1} s)",
        calls as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// `rapport bench read-stream`: `clients` callers reading whole random streams of a fill.
pub async fn bench_read_stream(
    server: String,
    clients: usize,
    streams: u64,
    duration: Duration,
    setup: crate::loadgen::ClientSetup,
) -> Result<(), CliError> {
    let report =
        crate::loadgen::run_read_stream(&server, clients, streams, duration, setup).await?;
    println!("read-stream clients={clients} streams={streams}: {report}");
    Ok(())
}

/// One of the reads `rapport bench read` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadBench {
    /// `ReadAll` pages of 1 000, decoded.
    Pages,
    /// A `Subscribe` replay from 0 to the head, decoded into `RecordedEvent`s.
    Decoded,
    /// The same replay received as raw messages (positions checked, nothing decoded).
    Raw,
}

/// `rapport bench read`: reads the whole log over gRPC: ReadAll pages, a decoded
/// Subscribe replay, and a receive-only one (the client side of the peer's `\copy`); with
/// `only`, just that one (to time a single read, or profile the server during it). The
/// receive-only replay goes over `transport`.
pub async fn bench_read(
    server: String,
    only: Option<ReadBench>,
    transport: crate::loadgen::Transport,
) -> Result<(), CliError> {
    use crate::loadgen::{on_own_thread, run_read_all, run_subscribe_all, run_subscribe_raw};
    for which in [ReadBench::Pages, ReadBench::Decoded, ReadBench::Raw] {
        if only.is_some_and(|only| only != which) {
            continue;
        }
        let server = server.clone();
        let (what, timed) = match which {
            ReadBench::Pages => (
                "read all (ReadAll pages of 1000)",
                on_own_thread(move || async move { run_read_all(&server).await }).await,
            ),
            ReadBench::Decoded => (
                "replay (Subscribe from 0 to the head)",
                on_own_thread(move || async move { run_subscribe_all(&server).await }).await,
            ),
            ReadBench::Raw => (
                "replay, receive only (Subscribe, raw messages, positions checked)",
                on_own_thread(move || async move { run_subscribe_raw(&server, transport).await })
                    .await,
            ),
        };
        let (events, elapsed) = timed?;
        println!(
            "{what}: {events} events in {:.2} s = {:.0} events/s",
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64()
        );
    }
    Ok(())
}

/// `rapport bench sled`: the raw sled ceiling.
pub fn bench_sled(data_dir: &Path, events: u64, batch: u64) -> Result<(), CliError> {
    let rate =
        crate::loadgen::run_sled_ceiling(data_dir, events, batch).map_err(|e| e.to_string())?;
    println!(
        "raw sled: {events} inserts of 200 B, {batch} per flush+fdatasync: {rate:.0} inserts/s"
    );
    Ok(())
}

fn progress_bar(name: &str, head: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(head);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_owned());
    bar
}

fn eta_text(eta_seconds: f64) -> String {
    if eta_seconds.is_finite() {
        format!("ETA {:.0} s", eta_seconds.ceil())
    } else {
        "ETA -".to_owned()
    }
}

/// `rapport rebuild --data-dir`: rebuilds projections offline (the server must be
/// stopped: the directory's lock says so otherwise), one after the other, each into a
/// new generation that replaces the old one at the end, with a progress bar.
pub async fn rebuild_offline(
    data_dir: PathBuf,
    projection: Option<String>,
) -> Result<(), CliError> {
    let chosen = choose_projections(projection)?;
    tokio::task::spawn_blocking(move || -> Result<(), CliError> {
        let log = Log::open(LogConfig::new(&data_dir))?;
        let result = (|| -> Result<(), CliError> {
            for projection in chosen {
                let name = projection.name();
                let head = log.head().position;
                let bar = progress_bar(name, head);
                let start = Instant::now();
                crate::projections::rebuild_offline(&log, projection, &mut |p| {
                    bar.set_length(p.head);
                    bar.set_position(p.position);
                    bar.set_message(format!(
                        "{:.0} events/s {}",
                        p.events_per_second,
                        eta_text(p.eta_seconds)
                    ));
                })?;
                bar.finish_and_clear();
                let seconds = start.elapsed().as_secs_f64();
                println!(
                    "rebuilt {name}: {head} events in {seconds:.2} s ({:.0} events/s)",
                    head as f64 / seconds.max(1e-9)
                );
            }
            Ok(())
        })();
        log.shutdown();
        result
    })
    .await?
}

fn choose_projections(
    projection: Option<String>,
) -> Result<Vec<std::sync::Arc<dyn crate::projections::Projection>>, CliError> {
    let all = crate::projections::builtin();
    match projection {
        None => Ok(all),
        Some(name) => {
            let known: Vec<&str> = all.iter().map(|p| p.name()).collect();
            let chosen: Vec<_> = all.iter().filter(|p| p.name() == name).cloned().collect();
            if chosen.is_empty() {
                return Err(
                    format!("no projection named {name:?} (known: {})", known.join(", ")).into(),
                );
            }
            Ok(chosen)
        }
    }
}

/// `rapport rebuild --server`: asks a running server to rebuild projections (without
/// downtime: the old generation serves until the new one has caught up) and shows each
/// one's progress until it is live again.
pub async fn rebuild_online(server: String, projection: Option<String>) -> Result<(), CliError> {
    let mut admin = crate::grpc::pb::admin_client::AdminClient::connect(server).await?;
    let names = match projection {
        Some(name) => vec![name],
        None => admin
            .list_projections(pb::ListProjectionsRequest {})
            .await?
            .into_inner()
            .projections
            .into_iter()
            .map(|p| p.name)
            .collect(),
    };
    for name in names {
        let start = Instant::now();
        admin
            .rebuild_projection(pb::RebuildProjectionRequest { name: name.clone() })
            .await?;
        let mut watch = admin
            .watch_projection(pb::WatchProjectionRequest { name: name.clone() })
            .await?
            .into_inner();
        let bar = progress_bar(&name, 0);
        let mut last = None;
        while let Some(status) = watch.next().await {
            let status = status?;
            if let Some(pb::projection_status::State::Rebuilding(p)) = &status.state {
                bar.set_length(p.head);
                bar.set_position(p.position);
                bar.set_message(format!(
                    "{:.0} events/s {}",
                    p.events_per_second,
                    eta_text(p.eta_seconds.unwrap_or(f64::INFINITY))
                ));
            }
            last = Some(status);
        }
        bar.finish_and_clear();
        match last.and_then(|s| s.state.map(|state| (s.checkpoint, state))) {
            Some((checkpoint, pb::projection_status::State::Live(_))) => println!(
                "rebuilt {name}: live at position {checkpoint} after {:.2} s",
                start.elapsed().as_secs_f64()
            ),
            Some((_, pb::projection_status::State::Failed(failed))) => {
                return Err(format!(
                    "{name} failed at position {}: {}",
                    failed.position, failed.error
                )
                .into());
            }
            _ => return Err(format!("the progress stream of {name} ended early").into()),
        }
    }
    Ok(())
}

/// `rapport keys rotate`: re-wraps every data key and the index key of a stopped
/// server's key store under a new master key ([`crate::keys::rotate_master_key`]; no
/// event changes). The new key file must exist, or is created with `create_new`.
/// Prints what was re-wrapped.
pub fn keys_rotate(
    data_dir: &Path,
    master_key_file: &Path,
    new_master_key_file: &Path,
    create_new: bool,
) -> Result<(), CliError> {
    use crate::keys::{KeyError, KeyStore, MasterKey};
    if !crate::keys::KeyStore::exists(data_dir) {
        return Err(format!("{} has no key store to rotate", data_dir.display()).into());
    }
    let same_file = match (
        std::fs::canonicalize(master_key_file),
        std::fs::canonicalize(new_master_key_file),
    ) {
        (Ok(old), Ok(new)) => old == new,
        _ => false,
    };
    if same_file {
        return Err("--new-master-key-file is the current master key file".into());
    }
    let old = MasterKey::load(master_key_file)?;
    let new = if create_new {
        MasterKey::create(new_master_key_file)?
    } else {
        MasterKey::load(new_master_key_file).map_err(|error| match error {
            KeyError::MissingKeyFile { path } => format!(
                "{} does not exist; pass --create-new to create it",
                path.display()
            )
            .into(),
            other => CliError::from(other),
        })?
    };
    if old == new {
        return Err("the new master key is the current one".into());
    }
    crate::keys::rotate_master_key(data_dir, &old, &new).map_err(|error| match error {
        KeyError::Locked(_) => CliError::from(format!(
            "{error} (a running server holds the key store: stop it first)"
        )),
        other => other.into(),
    })?;
    // Reopened with the new key: proves the rotation took and gives the counts.
    let (live, erased) = KeyStore::open(data_dir, &new)?.counts();
    println!(
        "rotated the master key of {}: re-wrapped {live} data keys and the index key under {} \
         ({erased} erased customers stay erased); the old key no longer opens the store",
        data_dir.display(),
        new_master_key_file.display()
    );
    Ok(())
}

/// `rapport loyalty tick --as-of T --data-dir D` (offline): the earning policy catches up
/// with the log (awarding what it has not yet, exactly once), then the tick appends the
/// expiry and tier changes due at `as_of_us` for every enrolled member.
pub async fn loyalty_tick(data_dir: PathBuf, as_of_us: i64) -> Result<(), CliError> {
    // Birth dates are sealed: the default master key beside the data directory opens them
    // (no key store: birthday bonuses wait for the server's tick).
    let privacy = crate::replay::open_privacy(&data_dir, None)?;
    let log = tokio::task::spawn_blocking(move || Log::open(LogConfig::new(data_dir))).await??;
    let result = async {
        let mut policy = crate::loyalty_job::Policy::open(&log)?;
        let followed = crate::loyalty_job::follow(&log, &mut policy).await?;
        let birthdays = crate::loyalty_job::birthdays_from_log(log.clone(), privacy);
        let ticked =
            crate::loyalty_job::tick(&log, policy.members().clone(), as_of_us, &birthdays)
                .await?;
        println!(
            "policy: {} sources, {} awards (through position {}); tick: {} members, {} points expired, {} tier changes",
            followed.sources,
            followed.awards,
            followed.through,
            ticked.members,
            ticked.expired_points,
            ticked.tier_changes
        );
        Ok::<(), String>(())
    }
    .await;
    tokio::task::spawn_blocking(move || log.shutdown()).await?;
    result.map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999Z");
    }
}

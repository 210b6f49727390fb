//! Server assembly: the EventStore and Admin services, health, reflection, message
//! limits, and graceful shutdown (subscriptions end, in-flight requests finish, the
//! projection runners stop, the writer drains and flushes).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::http;
use tonic::server::NamedService;

use std::sync::Arc;

use super::admin::AdminService;
use super::analytics::AnalyticsService;
use super::customers::CustomersService;
use super::event_store::EventStoreService;
use super::pb;
use super::pipeline::PipelineService;
use crate::keys::{KeyError, KeyStore, MasterKey};
use crate::limits;
use crate::log::{Log, LogConfig, LogError};
use crate::privacy::Privacy;
use crate::projections::{self, ProjectionError, Projections};

/// How a server is started: the log and where the master key is.
#[derive(Clone)]
pub struct ServerConfig {
    /// The log (data directory, clock, queue bounds).
    pub log: LogConfig,
    /// The master key file; `None` uses (or on first start creates) the default file
    /// beside the data directory ([`MasterKey::default_path`]).
    pub master_key_file: Option<PathBuf>,
}

impl From<LogConfig> for ServerConfig {
    fn from(log: LogConfig) -> Self {
        Self {
            log,
            master_key_file: None,
        }
    }
}

/// Resolves the master key and opens the key store, before anything else is touched:
/// a wrong master key refuses the start and changes nothing. A key store this process
/// just closed may still be locked for a moment (a handle held by a finishing task):
/// retried briefly, like sled's lock.
pub async fn open_keys(
    data_dir: PathBuf,
    master_key_file: Option<PathBuf>,
) -> Result<Arc<KeyStore>, ServeError> {
    let (master, path, created) = {
        let (dir, file) = (data_dir.clone(), master_key_file.clone());
        tokio::task::spawn_blocking(move || MasterKey::resolve(&dir, file.as_deref()))
            .await
            .map_err(|e| LogError::Unavailable(format!("key task failed: {e}")))??
    };
    if created {
        tracing::warn!(
            path = %path.display(),
            "created a new master key beside the data directory; it unlocks all personal \
             data: production keeps it elsewhere (a secret store) and passes --master-key-file"
        );
    } else {
        tracing::info!(path = %path.display(), "master key loaded");
    }
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(limits::REOPEN_WAIT_MS_MAX);
    loop {
        let (dir, key) = (data_dir.clone(), master.clone());
        let opened = tokio::task::spawn_blocking(move || KeyStore::open(&dir, &key))
            .await
            .map_err(|e| LogError::Unavailable(format!("key task failed: {e}")))?;
        match opened {
            Err(KeyError::Locked(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => return Ok(Arc::new(other?)),
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The log could not be opened.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The master key or the key store could not be used.
    #[error(transparent)]
    Keys(#[from] KeyError),
    /// Binding or serving failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The listen socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The projections could not start.
    #[error("projections: {0}")]
    Projections(#[from] ProjectionError),
    /// Reflection could not be built from the descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// HTTP/2 flow-control window per stream, in bytes: one read page fits in a few windows.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
/// HTTP/2 flow-control window per connection, in bytes (shared by its streams).
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// tonic reports a request over the decoding limit as `OUT_OF_RANGE`; the contract
/// (DESIGN §5) says a message over the transport limit is `RESOURCE_EXHAUSTED`, as the
/// gRPC spec does. This rewrites exactly that status and nothing else.
fn oversize_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let is_oversize = response
        .headers()
        .get("grpc-status")
        .is_some_and(|s| s.as_bytes() == b"11")
        && response.headers().get("grpc-message").is_some_and(|m| {
            String::from_utf8_lossy(m.as_bytes()).contains("message%20length%20too%20large")
                || String::from_utf8_lossy(m.as_bytes()).contains("message length too large")
        });
    if is_oversize {
        response
            .headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

/// Serves the log and its projections on `listener` until `shutdown` completes, then
/// drains: open subscriptions and progress streams end, in-flight requests finish, and
/// the caller shuts the projections and then the log down.
pub async fn serve_log(
    log: Log,
    privacy: Privacy,
    projections: Projections,
    clock: Arc<dyn crate::clock::Clock>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // Segment membership follows events and the passing of time (the clock given here).
    let segment_job = tokio::spawn(crate::segment_job::run(
        log.clone(),
        projections.clone(),
        clock.clone(),
        stop_tx.subscribe(),
    ));
    // The read RPCs answer with bytes written straight from the stored events.
    let event_store = super::encoded::EventStoreEdge::new(EventStoreService::new(
        log.clone(),
        privacy.clone(),
        stop_rx,
    ));
    let customers = pb::customers_server::CustomersServer::new(CustomersService::new(
        log.clone(),
        privacy.clone(),
        projections.clone(),
    ))
    .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
    .max_encoding_message_size(limits::MESSAGE_BYTES_MAX);
    // The default `as_of` of an analytics request is the server's now (`clock`).
    let analytics = pb::analytics_server::AnalyticsServer::new(AnalyticsService::new(
        log.clone(),
        projections.clone(),
        privacy.clone(),
        clock.clone(),
    ))
    .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
    .max_encoding_message_size(limits::MESSAGE_BYTES_MAX);
    // Sales pipelines (issue 4): the clock is the default "now" of overdue tasks.
    let pipeline = pb::pipeline_server::PipelineServer::new(PipelineService::new(
        log.clone(),
        privacy.clone(),
        projections.clone(),
        clock.clone(),
    ))
    .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
    .max_encoding_message_size(limits::MESSAGE_BYTES_MAX);
    // Loyalty (issue 5): the service, and the policy + tick job on the injected clock.
    let loyalty =
        pb::loyalty_server::LoyaltyServer::new(crate::grpc::loyalty::LoyaltyService::new(
            log.clone(),
            projections.clone(),
            privacy.clone(),
            clock.clone(),
        ))
        .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
        .max_encoding_message_size(limits::MESSAGE_BYTES_MAX);
    let loyalty_job = tokio::spawn(crate::loyalty_job::run(
        log.clone(),
        projections.clone(),
        privacy.clone(),
        clock.clone(),
        stop_tx.subscribe(),
    ));
    let admin =
        pb::admin_server::AdminServer::new(AdminService::new(projections, stop_tx.subscribe()))
            .max_decoding_message_size(limits::MESSAGE_BYTES_MAX)
            .max_encoding_message_size(limits::MESSAGE_BYTES_MAX);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // The server as a whole ("") and each service by name: SERVING now, NOT_SERVING from
    // the start of a shutdown (a probe of one service must see the drain too).
    let health_names: Vec<&'static str> = vec![
        "",
        <pb::event_store_server::EventStoreServer<EventStoreService> as NamedService>::NAME,
        <pb::admin_server::AdminServer<AdminService> as NamedService>::NAME,
        <pb::customers_server::CustomersServer<CustomersService> as NamedService>::NAME,
        <pb::analytics_server::AnalyticsServer<AnalyticsService> as NamedService>::NAME,
        <pb::loyalty_server::LoyaltyServer<crate::grpc::loyalty::LoyaltyService> as NamedService>::NAME,
        <pb::pipeline_server::PipelineServer<PipelineService> as NamedService>::NAME,
    ];
    for name in &health_names {
        health_reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mut stopping = stop_tx.subscribe();
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: ending subscriptions, draining requests");
        let _ = stop_tx.send(true);
        for name in health_names {
            health_reporter
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
    };
    // The drain waits for every open response to finish. A subscriber that stopped
    // reading keeps its stream's last frames unsent forever, so the drain is bounded:
    // past the limit the remaining connections are dropped.
    let drain_deadline = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
        tokio::time::sleep(std::time::Duration::from_millis(
            limits::SHUTDOWN_DRAIN_MS_MAX,
        ))
        .await;
    };
    // Without TCP_NODELAY a small response waits behind Nagle's algorithm for the
    // client's delayed ACK (~40 ms on Linux); larger HTTP/2 windows let a full read page
    // (up to 4 MiB) flow without stalling on window updates.
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        stream.and_then(|s| {
            s.set_nodelay(true)?;
            Ok(s)
        })
    });
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits::HTTP2_STREAMS_PER_CONNECTION_MAX))
        .initial_stream_window_size(Some(HTTP2_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(HTTP2_CONNECTION_WINDOW_BYTES))
        .layer(tower::util::MapResponseLayer::new(
            oversize_is_resource_exhausted,
        ))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(event_store)
        .add_service(customers)
        .add_service(analytics)
        .add_service(pipeline)
        .add_service(admin)
        .add_service(loyalty)
        .serve_with_incoming_shutdown(incoming, signal);
    let result = tokio::select! {
        served = server => served.map_err(ServeError::from),
        () = drain_deadline => {
            tracing::warn!(
                drain_ms = limits::SHUTDOWN_DRAIN_MS_MAX,
                "drain took too long (a client stopped reading); closing its connection"
            );
            Ok(())
        }
    };
    // The job ends on the stop signal; after a transport error there was none: abort it.
    segment_job.abort();
    let _ = segment_job.await;
    loyalty_job.abort();
    let _ = loyalty_job.await;
    result
}

/// A server running in this process (tests, embedding): its address and a handle to stop it.
pub struct RunningServer {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The log it serves.
    pub log: Log,
    /// The projections it runs over the log.
    pub projections: Projections,
    /// The key store of personal data keys.
    pub keys: Arc<KeyStore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl RunningServer {
    /// `http://addr`, for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving, waits for the drain, stops the projection runners, then shuts the
    /// log down (writer drained, flushed).
    pub async fn stop(mut self) -> Result<(), ServeError> {
        self.stop_inner().await
    }

    async fn stop_inner(&mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        };
        // Projections first: their runners read the log until they stop.
        let projections = self.projections.clone();
        let _ = tokio::task::spawn_blocking(move || projections.shutdown()).await;
        let log = self.log.clone();
        let _ = tokio::task::spawn_blocking(move || log.shutdown()).await;
        // Subscription tasks and blocking reads hold handles to the log; they end on the
        // stop signal but asynchronously. sled keeps its file lock until the last handle
        // is gone, so wait (bounded) for them: a caller that reopens the directory right
        // after `stop` must find it free.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.log.handles() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        result
    }
}

/// Opens the log in `data_dir` and serves it on `listen` (port 0 picks a free port).
pub async fn start(data_dir: PathBuf, listen: SocketAddr) -> Result<RunningServer, ServeError> {
    start_with(LogConfig::new(data_dir), listen).await
}

/// Like [`start`], with a full configuration (an injected clock, a master key file).
pub async fn start_with(
    config: impl Into<ServerConfig>,
    listen: SocketAddr,
) -> Result<RunningServer, ServeError> {
    let ServerConfig {
        log: config,
        master_key_file,
    } = config.into();
    let keys = open_keys(config.dir.clone(), master_key_file).await?;
    // sled releases its file lock only when its last internal handle is gone, and some
    // belong to its background I/O threads: a directory this process just closed can
    // read as locked for a few milliseconds. Retry that case briefly; another process
    // holding the lock still gets the clear `Locked` error after the wait.
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_millis(limits::REOPEN_WAIT_MS_MAX);
    let log = loop {
        let attempt = config.clone();
        let opened = tokio::task::spawn_blocking(move || Log::open(attempt))
            .await
            .map_err(|e| LogError::Unavailable(format!("open task failed: {e}")))?;
        match opened {
            Err(LogError::Locked(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            other => break other?,
        }
    };
    let started = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || Projections::start(log, projections::builtin()))
            .await
            .map_err(|e| LogError::Unavailable(format!("projection start task failed: {e}")))?
    };
    let projections = match started {
        Ok(projections) => projections,
        Err(error) => {
            let log = log.clone();
            let _ = tokio::task::spawn_blocking(move || log.shutdown()).await;
            return Err(error.into());
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            let (log, running) = (log.clone(), projections.clone());
            let _ = tokio::task::spawn_blocking(move || {
                running.shutdown();
                log.shutdown();
            })
            .await;
            return Err(error.into());
        }
    };
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = log.clone();
    let running = projections.clone();
    let privacy = Privacy::new(keys.clone());
    let clock = config.clock.clone();
    let task = tokio::spawn(async move {
        serve_log(served, privacy, running, clock, listener, async move {
            let _ = stop_rx.await;
        })
        .await
    });
    Ok(RunningServer {
        addr,
        log,
        projections,
        keys,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

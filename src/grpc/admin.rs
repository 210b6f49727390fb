//! The `rapport.v1.Admin` service: projection status, rebuilds and their progress, and
//! the built-in log statistics. Conversion only; the engine does the work.

use std::pin::Pin;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::timestamp_from_us;
use super::pb;
use super::status::invalid_field;
use crate::limits;
use crate::projections::{ProjectionState, ProjectionStatus, Projections, log_stats};

/// The Admin service over the running projections.
#[derive(Clone)]
pub struct AdminService {
    projections: Projections,
    shutdown: watch::Receiver<bool>,
}

impl AdminService {
    /// A service over `projections`; progress streams end when `shutdown` turns true.
    pub fn new(projections: Projections, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            projections,
            shutdown,
        }
    }
}

/// A projection status as the wire message.
pub fn status_to_proto(status: ProjectionStatus) -> pb::ProjectionStatus {
    let state = match status.state {
        ProjectionState::Live => pb::projection_status::State::Live(pb::Live {}),
        ProjectionState::Rebuilding {
            target_version,
            position,
            head,
            events_per_second,
            eta_seconds,
        } => pb::projection_status::State::Rebuilding(pb::Rebuilding {
            target_version,
            position,
            head,
            events_per_second,
            eta_seconds: eta_seconds.is_finite().then_some(eta_seconds),
        }),
        ProjectionState::Failed { position, error } => {
            pb::projection_status::State::Failed(pb::Failed { position, error })
        }
    };
    pb::ProjectionStatus {
        name: status.name,
        version: status.version,
        checkpoint: status.checkpoint,
        head: status.head,
        lag: status.lag,
        state: Some(state),
    }
}

fn stat_to_proto(stat: log_stats::Stat) -> pb::LogStat {
    pb::LogStat {
        key: stat.key,
        count: stat.count,
        first_position: stat.first_position,
        last_position: stat.last_position,
        min_occurred_at: Some(timestamp_from_us(stat.min_occurred_at_us)),
        max_occurred_at: Some(timestamp_from_us(stat.max_occurred_at_us)),
    }
}

fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid_field("name", "a projection name is required"));
    }
    Ok(())
}

type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::ProjectionStatus, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_projections(
        &self,
        _request: Request<pb::ListProjectionsRequest>,
    ) -> Result<Response<pb::ListProjectionsResponse>, Status> {
        Ok(Response::new(pb::ListProjectionsResponse {
            projections: self
                .projections
                .status()
                .into_iter()
                .map(status_to_proto)
                .collect(),
        }))
    }

    async fn rebuild_projection(
        &self,
        request: Request<pb::RebuildProjectionRequest>,
    ) -> Result<Response<pb::RebuildProjectionResponse>, Status> {
        let name = request.into_inner().name;
        check_name(&name)?;
        let projections = self.projections.clone();
        let status = tokio::task::spawn_blocking(move || {
            projections.rebuild(&name)?;
            projections.status_of(&name)
        })
        .await
        .map_err(|e| Status::internal(format!("rebuild task failed: {e}")))??;
        Ok(Response::new(pb::RebuildProjectionResponse {
            status: Some(status_to_proto(status)),
        }))
    }

    type WatchProjectionStream = StatusStream;

    async fn watch_projection(
        &self,
        request: Request<pb::WatchProjectionRequest>,
    ) -> Result<Response<Self::WatchProjectionStream>, Status> {
        let name = request.into_inner().name;
        check_name(&name)?;
        // Unknown names fail the call itself, not the first message.
        self.projections.status_of(&name)?;
        let (sender, receiver) = mpsc::channel(limits::PROJECTION_WATCH_BUFFER);
        let projections = self.projections.clone();
        let mut shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(Duration::from_millis(limits::PROJECTION_WATCH_INTERVAL_MS));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let status = match projections.status_of(&name) {
                    Ok(status) => status,
                    Err(error) => {
                        let _ = sender.send(Err(error.into())).await;
                        return;
                    }
                };
                let finished = !matches!(status.state, ProjectionState::Rebuilding { .. });
                // The channel is bounded: a client that stops reading holds only this task.
                if sender.send(Ok(status_to_proto(status))).await.is_err() || finished {
                    return;
                }
                tokio::select! {
                    _ = tick.tick() => {}
                    // The guard `wait_for` returns is not `Send`: drop it inside.
                    () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                        let _ = sender
                            .send(Err(Status::unavailable("the server is shutting down")))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn get_log_stats(
        &self,
        request: Request<pb::GetLogStatsRequest>,
    ) -> Result<Response<pb::LogStats>, Status> {
        let budget = super::deadline::wait_budget(
            request.metadata(),
            Duration::from_millis(limits::PROJECTION_WAIT_MS_MAX),
        );
        let min_position = request.into_inner().min_position;
        let view = self
            .projections
            .wait_for(log_stats::NAME, min_position, budget)
            .await?;
        let applied = view.applied;
        let stats = tokio::task::spawn_blocking(move || {
            log_stats::read(&view.tree, limits::LOG_STATS_ROWS_MAX)
        })
        .await
        .map_err(|e| Status::internal(format!("read task failed: {e}")))??;
        Ok(Response::new(pb::LogStats {
            applied_position: applied,
            by_event_type: stats.by_event_type.into_iter().map(stat_to_proto).collect(),
            by_category: stats.by_category.into_iter().map(stat_to_proto).collect(),
            truncated: stats.truncated,
        }))
    }
}

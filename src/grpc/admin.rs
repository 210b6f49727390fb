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

/// How long a read-your-writes query may wait: the limit, or less when the client's
/// deadline (`grpc-timeout`) is nearer, so the answer is our clear `DEADLINE_EXCEEDED`
/// with the applied position rather than the transport cutting the call.
pub fn wait_budget(metadata: &tonic::metadata::MetadataMap) -> Duration {
    let limit = Duration::from_millis(limits::PROJECTION_WAIT_MS_MAX);
    let Some(deadline) = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
    else {
        return limit;
    };
    // Leave the reply time to travel: a tenth of the deadline, at most 100 ms.
    let margin = (deadline / 10).min(Duration::from_millis(100));
    deadline.saturating_sub(margin).min(limit)
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.checked_mul(3600)?),
        "M" => Duration::from_secs(value.checked_mul(60)?),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
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
        let budget = wait_budget(request.metadata());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
    }
}

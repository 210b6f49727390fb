//! The segment job: keeps segment membership current as events arrive **and as time
//! passes** (a recency rule changes its answer with no new event). It follows the log's
//! head and a timer, evaluates every live segment's rule over the customer read model as
//! of the clock's time it is given, and appends `CustomerEnteredSegment` /
//! `CustomerLeftSegment` events to the segment's stream for the differences with the
//! current membership (the `segments` read model). The folds never read the clock: the
//! time is in the events this job writes.
//!
//! Exactly once: each append expects the segment stream's revision the job read, so a
//! second evaluation racing the first fails its expectation and re-reads instead of
//! writing the same change twice; event ids are derived from (segment, customer,
//! revision).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use crate::clock::Clock;
use crate::domain::DomainEvent;
use crate::domain::events::{CustomerEnteredSegment, CustomerLeftSegment};
use crate::domain::profile::{Profile, ProfileStatus};
use crate::domain::rfm::{self, SegmentGrid};
use crate::domain::segment::{EvalContext, Rule};
use crate::limits;
use crate::log::{AppendError, ExpectedRevision, Log, ProposedEvent, StreamAppend, StreamName};
use crate::projections::{Projections, customers, segments};

/// What one evaluation changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evaluation {
    /// Segments evaluated.
    pub segments: usize,
    /// Customers who entered a segment.
    pub entered: usize,
    /// Customers who left one.
    pub left: usize,
}

fn event_id(segment: Uuid, customer: Uuid, revision: Option<u64>) -> Uuid {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rapport segment membership");
    hasher.update(segment.as_bytes());
    hasher.update(customer.as_bytes());
    hasher.update(&revision.map_or(u64::MAX, |r| r).to_be_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Evaluates every live segment as of `as_of_us` and appends the membership changes.
/// Waits (bounded) for both read models to reach the log's head first, so it compares
/// with a membership that includes its own earlier changes.
pub async fn evaluate(
    log: &Log,
    projections: &Projections,
    as_of_us: i64,
) -> Result<Evaluation, String> {
    let head = log.head().position;
    let wait = Duration::from_millis(limits::READ_WAIT_MS_MAX);
    let segments_view = projections
        .wait_for(segments::NAME, head, wait)
        .await
        .map_err(|e| e.to_string())?;
    let definitions: Vec<_> = segments::definitions(&segments_view.tree)?
        .into_iter()
        .filter(|d| !d.archived)
        .collect();
    if definitions.is_empty() {
        return Ok(Evaluation::default());
    }
    let customers_view = projections
        .wait_for(customers::NAME, head, wait)
        .await
        .map_err(|e| e.to_string())?;
    let (log2, tree, seg_tree) = (
        log.clone(),
        customers_view.tree.clone(),
        segments_view.tree.clone(),
    );
    // Deciding is CPU work over every profile: off the async workers.
    let plans =
        tokio::task::spawn_blocking(move || plan(&log2, &tree, &seg_tree, &definitions, as_of_us))
            .await
            .map_err(|e| format!("segment evaluation task failed: {e}"))??;
    drop((customers_view, segments_view));
    let mut total = Evaluation::default();
    for (segment, revision, changes) in plans {
        total.segments += 1;
        let stream = StreamName::parse(&format!("segment-{segment}")).map_err(|e| e.to_string())?;
        let mut expected = revision;
        for chunk in changes.chunks(limits::EVENTS_PER_APPEND_MAX) {
            let events = chunk
                .iter()
                .enumerate()
                .map(|(i, (customer, entered))| {
                    let event = if *entered {
                        DomainEvent::CustomerEnteredSegment(CustomerEnteredSegment {
                            segment_id: segment,
                            customer_id: *customer,
                            as_of_us,
                        })
                    } else {
                        DomainEvent::CustomerLeftSegment(CustomerLeftSegment {
                            segment_id: segment,
                            customer_id: *customer,
                            as_of_us,
                        })
                    };
                    let at = expected.map_or(i as u64, |r| r + 1 + i as u64);
                    ProposedEvent {
                        event_id: Some(event_id(segment, *customer, Some(at))),
                        event_type: event.event_type().to_owned(),
                        schema_version: event.schema_version(),
                        payload: event.encode().expect("membership events are plain"),
                        occurred_at_us: Some(as_of_us),
                        actor: "rapport segment job".into(),
                        ..Default::default()
                    }
                })
                .collect();
            let append = StreamAppend {
                stream: stream.clone(),
                expected: expected.map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact),
                events,
            };
            match log.append(append).await {
                Ok(outcome) => expected = Some(outcome.last_revision),
                // Another evaluation wrote first: the next round compares again.
                Err(AppendError::WrongExpectedRevision { .. }) => break,
                Err(error) => return Err(error.to_string()),
            }
            for (_, entered) in chunk {
                if *entered {
                    total.entered += 1;
                } else {
                    total.left += 1;
                }
            }
        }
    }
    Ok(total)
}

type Plan = Vec<(Uuid, Option<u64>, Vec<(Uuid, bool)>)>;

fn plan(
    log: &Log,
    customers_tree: &sled::Tree,
    segments_tree: &sled::Tree,
    definitions: &[segments::SegmentDef],
    as_of_us: i64,
) -> Result<Plan, String> {
    let mut profiles: Vec<Profile> = Vec::new();
    for profile in customers::scan(customers_tree, None) {
        let profile = profile?;
        if profile.registered.is_some() && !matches!(profile.status, ProfileStatus::Merged { .. }) {
            profiles.push(profile);
        }
    }
    let rules: Vec<(Uuid, Rule)> = definitions
        .iter()
        .filter_map(|d| match Rule::parse(&d.rule) {
            Ok(rule) => Some((d.segment_id, rule)),
            Err(error) => {
                tracing::warn!(segment = %d.segment_id, %error, "segment rule does not parse; skipped");
                None
            }
        })
        .collect();
    let rfm_segments: Option<BTreeMap<Uuid, String>> =
        rules.iter().any(|(_, r)| r.uses_rfm()).then(|| {
            let mut orders: BTreeMap<&str, u64> = BTreeMap::new();
            for fact in profiles.iter().flat_map(|p| &p.purchases.money) {
                if fact.order && fact.at_us <= as_of_us {
                    *orders.entry(fact.currency.as_str()).or_default() += 1;
                }
            }
            let currency = orders
                .into_iter()
                .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
                .map_or("EUR".to_owned(), |(c, _)| c.to_owned());
            rfm::rfm(&profiles, &currency, as_of_us, &SegmentGrid::default())
                .into_iter()
                .map(|row| (row.customer_id, row.segment))
                .collect()
        });
    let cx = EvalContext {
        as_of_us,
        rfm: rfm_segments.as_ref(),
    };
    let mut out = Vec::new();
    for (segment, rule) in rules {
        let matching: BTreeSet<Uuid> = profiles
            .iter()
            .filter(|p| rule.matches(p, &cx))
            .map(|p| p.customer_id)
            .collect();
        let mut current = BTreeSet::new();
        let mut after = None;
        loop {
            let page = segments::members(segments_tree, segment, after, 10_000)?;
            let Some(last) = page.last().map(|(c, _)| *c) else {
                break;
            };
            current.extend(page.into_iter().map(|(c, _)| c));
            after = Some(last);
        }
        let mut changes: Vec<(Uuid, bool)> = matching
            .difference(&current)
            .map(|c| (*c, true))
            .chain(current.difference(&matching).map(|c| (*c, false)))
            .collect();
        changes.sort();
        if changes.is_empty() {
            continue;
        }
        let stream = StreamName::parse(&format!("segment-{segment}")).map_err(|e| e.to_string())?;
        let revision = log
            .stream_head(&stream)
            .map_err(|e| e.to_string())?
            .map(|h| h.revision);
        out.push((segment, revision, changes));
    }
    Ok(out)
}

/// Runs the job until `stop` turns true: after every move of the log's head (batched: at
/// most one evaluation per [`limits::SEGMENT_EVALUATION_MIN_MS`]) and every
/// [`limits::SEGMENT_TICK_MS`] for the passing of time.
pub async fn run(
    log: Log,
    projections: Projections,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    let mut heads = log.watch_head();
    loop {
        if *stop.borrow() {
            return;
        }
        heads.borrow_and_update();
        // Our own appends move the head too: the next round then finds nothing to change.
        match evaluate(&log, &projections, clock.now_us()).await {
            Ok(done) if done.entered + done.left > 0 => {
                tracing::debug!(?done, "segment membership updated");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "segment evaluation failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(limits::SEGMENT_EVALUATION_MIN_MS)) => {}
            _ = stop.changed() => continue,
        }
        tokio::select! {
            _ = heads.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(limits::SEGMENT_TICK_MS)) => {}
            _ = stop.changed() => {}
        }
    }
}

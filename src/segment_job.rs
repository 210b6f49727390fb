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
use crate::log::{
    AppendError, ExpectedRevision, Log, ProposedEvent, ReadFilter, StreamAppend, StreamName,
};
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

/// What the job remembers between rounds, to evaluate only what may have changed.
#[derive(Clone, Debug, Default)]
pub struct JobState {
    /// Log position the last round evaluated through (0: never).
    pub evaluated_through: u64,
    /// Segment → position of the definition (or change) last evaluated in full.
    pub evaluated_definitions: BTreeMap<Uuid, u64>,
    /// Clock time of the last full sweep of time-dependent rules (None: never).
    pub last_time_sweep_us: Option<i64>,
}

/// Evaluates every live segment as of `as_of_us` and appends the membership changes:
/// in full for new or changed segments, RFM rules (ranks move with everyone), and
/// time-dependent rules when [`limits::SEGMENT_TIME_SWEEP_US`] of clock time has passed;
/// otherwise only for the customers whose streams received events since the last round.
/// Waits (bounded) for both read models to reach the log's head first, so it compares
/// with a membership that includes its own earlier changes.
pub async fn evaluate(
    log: &Log,
    projections: &Projections,
    as_of_us: i64,
) -> Result<Evaluation, String> {
    evaluate_with(log, projections, as_of_us, &mut JobState::default()).await
}

/// [`evaluate`], remembering what was evaluated in `state` (the job's rounds).
pub async fn evaluate_with(
    log: &Log,
    projections: &Projections,
    as_of_us: i64,
    state: &mut JobState,
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
        state.evaluated_through = head;
        return Ok(Evaluation::default());
    }
    let sweep_time = state
        .last_time_sweep_us
        .is_none_or(|last| as_of_us.saturating_sub(last) >= limits::SEGMENT_TIME_SWEEP_US);
    let scope = Scope {
        since: state.evaluated_through,
        sweep_time,
        known: state.evaluated_definitions.clone(),
    };
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
    let evaluated: BTreeMap<Uuid, u64> = definitions
        .iter()
        .map(|d| (d.segment_id, d.changed_at_position))
        .collect();
    let plans = tokio::task::spawn_blocking(move || {
        plan(
            &log2,
            &tree,
            &seg_tree,
            &definitions,
            as_of_us,
            head,
            &scope,
        )
    })
    .await
    .map_err(|e| format!("segment evaluation task failed: {e}"))??;
    state.evaluated_through = head;
    state.evaluated_definitions = evaluated;
    if sweep_time {
        state.last_time_sweep_us = Some(as_of_us);
    }
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

/// Which segments a round evaluates in full, and since when customers changed.
struct Scope {
    /// Customers with events after this position are re-evaluated (0: everyone).
    since: u64,
    /// Time-dependent rules get a full sweep this round.
    sweep_time: bool,
    /// Segments evaluated before, with the definition position they were evaluated at.
    known: BTreeMap<Uuid, u64>,
}

/// The customers whose streams received events in `(since, head]`, or `None` when that
/// is too many to be worth it (the round then evaluates everyone).
fn changed_customers(log: &Log, since: u64, head: u64) -> Result<Option<BTreeSet<Uuid>>, String> {
    if since == 0 {
        return Ok(None);
    }
    let filter = ReadFilter {
        stream_prefixes: vec![format!("{}-", crate::domain::profile::CUSTOMER_CATEGORY)],
        event_types: Vec::new(),
    };
    let mut changed = BTreeSet::new();
    let mut cursor = since + 1;
    while cursor <= head {
        let page = log
            .read_all(cursor, false, limits::READ_PAGE_MAX as usize, &filter)
            .map_err(|e| e.to_string())?;
        for event in &page.events {
            if event.event.position > head {
                break;
            }
            if let Some(id) = crate::domain::profile::customer_of_stream(&event.event.stream) {
                changed.insert(id);
            }
        }
        if changed.len() > limits::SEGMENT_INCREMENTAL_CUSTOMERS_MAX {
            return Ok(None);
        }
        if page.end_reached || page.next_cursor <= cursor {
            break;
        }
        cursor = page.next_cursor;
    }
    Ok(Some(changed))
}

fn plan(
    log: &Log,
    customers_tree: &sled::Tree,
    segments_tree: &sled::Tree,
    definitions: &[segments::SegmentDef],
    as_of_us: i64,
    head: u64,
    scope: &Scope,
) -> Result<Plan, String> {
    let rules: Vec<(Uuid, u64, Rule)> = definitions
        .iter()
        .filter_map(|d| match Rule::parse(&d.rule) {
            Ok(rule) => Some((d.segment_id, d.changed_at_position, rule)),
            Err(error) => {
                tracing::warn!(segment = %d.segment_id, %error, "segment rule does not parse; skipped");
                None
            }
        })
        .collect();
    let changed = changed_customers(log, scope.since, head)?;
    let needs_full = |segment: Uuid, at: u64, rule: &Rule| {
        changed.is_none()
            || scope.known.get(&segment) != Some(&at)
            || rule.uses_rfm()
            || (scope.sweep_time && rule.depends_on_time())
    };
    let any_full = rules.iter().any(|(s, at, r)| needs_full(*s, *at, r));
    let any_partial = rules.iter().any(|(s, at, r)| !needs_full(*s, *at, r));
    if !any_full && changed.as_ref().is_some_and(BTreeSet::is_empty) {
        return Ok(Vec::new());
    }
    // Every live profile, when some segment is evaluated in full.
    let mut profiles: Vec<Profile> = Vec::new();
    if any_full {
        profiles = customers::live_profiles(customers_tree)?;
    }
    // The changed customers' profiles (a merged duplicate resolves to its survivor; the
    // duplicate itself matches nothing any more).
    let mut touched: BTreeMap<Uuid, Option<Profile>> = BTreeMap::new();
    if any_partial && let Some(changed) = &changed {
        for id in changed {
            let own = customers::read(customers_tree, *id)?;
            let live = |p: &Profile| {
                p.registered.is_some() && !matches!(p.status, ProfileStatus::Merged { .. })
            };
            match own {
                Some(p) if live(&p) => {
                    touched.insert(*id, Some(p));
                }
                Some(_) => {
                    touched.insert(*id, None);
                    if let Some(survivor) =
                        customers::read_resolved(customers_tree, *id)?.filter(live)
                    {
                        touched.insert(survivor.customer_id, Some(survivor));
                    }
                }
                None => {}
            }
        }
    }
    let rfm_segments: Option<BTreeMap<Uuid, String>> =
        rules.iter().any(|(_, _, r)| r.uses_rfm()).then(|| {
            let currency =
                rfm::busiest_currency(&profiles, as_of_us).unwrap_or_else(|| "EUR".to_owned());
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
    for (segment, at, rule) in rules {
        let mut changes: Vec<(Uuid, bool)> = if needs_full(segment, at, &rule) {
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
            matching
                .difference(&current)
                .map(|c| (*c, true))
                .chain(current.difference(&matching).map(|c| (*c, false)))
                .collect()
        } else {
            let mut changes = Vec::new();
            for (id, profile) in &touched {
                let matches = profile.as_ref().is_some_and(|p| rule.matches(p, &cx));
                let member = segments_tree
                    .get(segments::member_key(segment, *id))
                    .map_err(|e| e.to_string())?
                    .is_some();
                if matches != member {
                    changes.push((*id, matches));
                }
            }
            changes
        };
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
    let mut state = JobState::default();
    loop {
        if *stop.borrow() {
            return;
        }
        heads.borrow_and_update();
        // Our own appends move the head too: the next round then finds nothing to change.
        match evaluate_with(&log, &projections, clock.now_us(), &mut state).await {
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

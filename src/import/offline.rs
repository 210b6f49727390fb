//! Offline import into a stopped server's data directory: the file is read on its own
//! thread in bounded batches; each batch is resolved against the log (who holds which
//! external id, email, phone), sealed with one key-store call, and appended as many
//! atomic multi-stream appends in flight at once, so the log's writer commits large
//! groups with one fsync each. A batch's appends all finish before the next batch's
//! start, so each customer's stream gets its events in file order; the next batch is
//! read and prepared meanwhile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use uuid::Uuid;

use super::customers::{self, CONSENT_SOURCE, CustomerRecord};
use super::events::{self, EventRecord};
use super::purchases::{self, OrderRecord};
use super::{BATCHES_AHEAD, BadRow, Batch, ExternalId, ImportKind, ImportOptions, ImportReport};
use crate::cli::CliError;
use crate::domain::DomainEvent;
use crate::domain::common::PostalAddress;
use crate::domain::customer::{Customer, Identifier, contact_identifiers, identity_identifiers};
use crate::domain::events::{
    ConsentGiven, ContactDetails, ContactDetailsChanged, CustomerIdentity, CustomerRegistered,
    IdentifierClaimed, IdentifierKind, IdentifierReleased,
};
use crate::domain::personal::Personal;
use crate::domain::profile::customer_stream;
use crate::limits;
use crate::log::{AppendError, ExpectedRevision, Log, LogConfig, ProposedEvent, StreamAppend};
use crate::log::{AppendOutcome, StreamName};
use crate::privacy::Privacy;
use crate::projections::customers::{decode_event, read_stream_all};
use crate::seed::command_event_id;

/// The actor of every imported event.
pub(crate) const IMPORT_ACTOR: &str = "rapport-import";

/// Opens the data directory (keys first, then the log, as the server does), imports,
/// and closes the log cleanly.
pub(super) async fn run(
    kind: ImportKind,
    path: &Path,
    dir: PathBuf,
    master_key_file: Option<PathBuf>,
    options: ImportOptions,
    bar: &indicatif::ProgressBar,
) -> Result<ImportReport, CliError> {
    let keys = crate::grpc::server::open_keys(dir.clone(), master_key_file)
        .await
        .map_err(|error| match error {
            crate::grpc::server::ServeError::Keys(crate::keys::KeyError::Locked(_)) => {
                locked_hint(error.to_string())
            }
            other => other.into(),
        })?;
    let privacy = Privacy::new(keys);
    let log = tokio::task::spawn_blocking(move || Log::open(LogConfig::new(dir)))
        .await?
        .map_err(|error| match error {
            crate::log::LogError::Locked(_) => locked_hint(error.to_string()),
            other => other.into(),
        })?;
    let result = import_into(&log, &privacy, kind, path, options, bar).await;
    let closing = log.clone();
    tokio::task::spawn_blocking(move || closing.shutdown()).await?;
    result
}

/// A locked directory is almost always a running server: say what to do instead.
fn locked_hint(error: String) -> CliError {
    format!("{error}; to import while it runs, use --server").into()
}

/// Imports `path` into an open log (offline; also usable by benches over an in-process
/// log). Progress goes to `bar`.
pub async fn import_into(
    log: &Log,
    privacy: &Privacy,
    kind: ImportKind,
    path: &Path,
    options: ImportOptions,
    bar: &indicatif::ProgressBar,
) -> Result<ImportReport, CliError> {
    let mut importer = Importer {
        strict: options.strict,
        log: log.clone(),
        privacy: privacy.clone(),
        report: ImportReport::default(),
        reservations: HashMap::new(),
        start: Instant::now(),
        pending: None,
        head_before: log.head().position,
    };
    let result = match kind {
        ImportKind::Purchases => {
            let batches = spawn_reader(path, options, limits::IMPORT_BATCH_ORDERS, purchases::read);
            importer
                .drive(batches, bar, Importer::prepare_orders, true)
                .await
        }
        ImportKind::Customers => {
            let batches = spawn_reader(path, options, limits::IMPORT_BATCH_ROWS, customers::read);
            // Not pipelined: a batch's reservations must be in the log before the next
            // batch checks its emails and phones against them.
            importer
                .drive(batches, bar, Importer::prepare_customers, false)
                .await
        }
        ImportKind::Events => {
            let batches = spawn_reader(path, options, limits::IMPORT_BATCH_ROWS, events::read);
            importer
                .drive(batches, bar, Importer::prepare_events, false)
                .await
        }
    };
    let finished = importer.finish_pending().await;
    result?;
    finished?;
    let mut report = importer.report;
    report.events_appended = log.head().position - importer.head_before;
    Ok(report)
}

/// A file reader: `(path, strict, batch size, sender)`, run on its own thread.
pub(super) type Reader<T> =
    fn(&Path, bool, usize, tokio::sync::mpsc::Sender<Batch<T>>) -> Result<(), CliError>;

/// The reader thread and the receiving end of its batches.
struct Batches<T> {
    rx: tokio::sync::mpsc::Receiver<Batch<T>>,
    reader: tokio::task::JoinHandle<Result<(), CliError>>,
}

fn spawn_reader<T: Send + 'static>(
    path: &Path,
    options: ImportOptions,
    batch: usize,
    read: Reader<T>,
) -> Batches<T> {
    let (tx, rx) = tokio::sync::mpsc::channel(BATCHES_AHEAD);
    let path = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || read(&path, options.strict, batch, tx));
    Batches { rx, reader }
}

/// Who holds an identifier's reservation stream now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Reservation {
    /// The live holder (merges followed); `None` when free.
    holder: Option<Uuid>,
    /// The stream's last revision; `None` when there is no stream.
    revision: Option<u64>,
    /// The holder was registered by this import (it has no orders from before it, so
    /// its stream need not be read for them).
    created: bool,
}

impl Reservation {
    fn expected(&self) -> ExpectedRevision {
        self.revision
            .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact)
    }
}

/// One row (order, customer, event) as far as error reporting goes.
#[derive(Clone, Debug)]
struct RowRef {
    line: u64,
    rows: u64,
    /// What the row is, for messages (`order "o-1"`).
    label: String,
}

/// Appends that succeed or fail together, with the rows they carry.
struct Piece {
    appends: Vec<StreamAppend>,
    rows: Vec<RowRef>,
    /// Registers a customer: when it fails, the unit's later pieces cannot succeed.
    registers: bool,
    /// What its rows are.
    kind: RowKind,
}

/// What a piece's rows are, for the counts of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowKind {
    Order,
    Customer,
    /// A known customer's contact change (not a registration: a refusal is a bad row,
    /// not one customer fewer).
    Change,
    Event,
}

/// One customer's (or one event's) appends: written atomically when possible, else
/// piece by piece to find the bad row.
struct Unit {
    pieces: Vec<Piece>,
}

impl Unit {
    fn appends(&self) -> usize {
        self.pieces.iter().map(|p| p.appends.len()).sum()
    }
}

/// What one prepared batch is: units to write and rows already found bad.
struct Prepared {
    units: Vec<Unit>,
    bad: Vec<(BadRow, u64)>,
    reservations: HashMap<String, Reservation>,
    new_customers: u64,
    known_customers: u64,
    orders: u64,
}

/// What writing a batch found.
#[derive(Default)]
struct Written {
    bad: Vec<(BadRow, u64)>,
    /// Orders refused.
    failed_orders: u64,
    /// Customers whose registration was refused.
    unregistered: u64,
}

impl Written {
    fn add(&mut self, other: Written) {
        self.bad.extend(other.bad);
        self.failed_orders += other.failed_orders;
        self.unregistered += other.unregistered;
    }
}

struct Importer {
    strict: bool,
    log: Log,
    privacy: Privacy,
    report: ImportReport,
    /// Reservation holders by identifier (`kind:value`), bounded by
    /// [`limits::IMPORT_CACHE_MAX`]; includes the customers this import registered.
    reservations: HashMap<String, Reservation>,
    start: Instant,
    pending: Option<tokio::task::JoinHandle<Result<Written, CliError>>>,
    head_before: u64,
}

type Prepare<T> =
    fn(&Log, &Privacy, HashMap<String, Reservation>, Vec<T>) -> Result<Prepared, CliError>;

impl Importer {
    /// Receives batches, prepares each (blocking), and writes it once the previous
    /// batch is written (`pipelined`: prepared while the previous one is written).
    async fn drive<T: Send + 'static>(
        &mut self,
        mut batches: Batches<T>,
        bar: &indicatif::ProgressBar,
        prepare: Prepare<T>,
        pipelined: bool,
    ) -> Result<(), CliError> {
        let mut stopped = false;
        while let Some(batch) = batches.rx.recv().await {
            self.report.rows += batch.rows;
            let parse_bad = batch.bad;
            if !pipelined || self.reservations.len() > limits::IMPORT_CACHE_MAX {
                // The log must be current before it is read for what this batch needs
                // (and before forgetting what the cache knew of the previous batch).
                self.finish_pending().await?;
                if self.reservations.len() > limits::IMPORT_CACHE_MAX {
                    self.reservations.clear();
                }
            }
            let (log, privacy) = (self.log.clone(), self.privacy.clone());
            let reservations = std::mem::take(&mut self.reservations);
            let items = batch.items;
            let prepared =
                tokio::task::spawn_blocking(move || prepare(&log, &privacy, reservations, items))
                    .await??;
            self.reservations = prepared.reservations;
            self.report.new_customers += prepared.new_customers;
            self.report.known_customers += prepared.known_customers;
            self.report.orders += prepared.orders;
            // Parse errors come first in the report: they are earlier in the file than
            // what the batch's writes may find.
            for (bad, rows) in parse_bad.into_iter().chain(prepared.bad) {
                self.report.bad(bad, rows);
            }
            self.finish_pending().await?;
            if self.strict && self.report.rows_skipped > 0 && !batch.stop {
                // A write of the previous batch found a bad row: nothing more is written.
                stopped = true;
                break;
            }
            let log = self.log.clone();
            let units = prepared.units;
            self.pending = Some(tokio::spawn(write_units(log, units)));
            super::show_progress(bar, batch.byte, self.report.rows, self.start);
            if batch.stop || (self.strict && self.report.rows_skipped > 0) {
                // In strict mode, the batch's rows before the bad one are still written.
                stopped = true;
                break;
            }
        }
        drop(batches.rx);
        batches.reader.await??;
        self.finish_pending().await?;
        self.report.stopped = stopped || (self.strict && self.report.rows_skipped > 0);
        Ok(())
    }

    /// Waits for the writes of the previous batch and records what they found.
    async fn finish_pending(&mut self) -> Result<(), CliError> {
        if let Some(pending) = self.pending.take() {
            let written = pending.await??;
            self.report.orders = self.report.orders.saturating_sub(written.failed_orders);
            self.report.new_customers = self
                .report
                .new_customers
                .saturating_sub(written.unregistered);
            for (bad, rows) in written.bad {
                self.report.bad(bad, rows);
            }
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Preparing batches (blocking)
    // -----------------------------------------------------------------------------------

    fn prepare_orders(
        log: &Log,
        privacy: &Privacy,
        mut reservations: HashMap<String, Reservation>,
        orders: Vec<OrderRecord>,
    ) -> Result<Prepared, CliError> {
        let mut prepared = Prepared::new();
        // The batch's orders by customer, in order of first appearance.
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut groups: Vec<(ExternalId, Vec<OrderRecord>)> = Vec::new();
        for order in orders {
            match index.get(&order.customer.normalised) {
                Some(&i) => groups[i].1.push(order),
                None => {
                    index.insert(order.customer.normalised.clone(), groups.len());
                    groups.push((order.customer.clone(), vec![order]));
                }
            }
        }
        let mut registrations: Vec<(Uuid, Uuid, i64, DomainEvent, Reservation)> = Vec::new();
        let mut customers: Vec<(Option<usize>, Uuid, Vec<OrderRecord>)> = Vec::new();
        for (external, orders) in groups {
            let identifier = external.identifier();
            let (reservation, cached) = lookup(log, privacy, &mut reservations, &identifier)?;
            if let Some(holder) = reservation.holder {
                if !cached {
                    prepared.known_customers += 1;
                }
                let orders = if reservation.created {
                    orders
                } else {
                    refuse_recorded_orders(log, holder, orders, &mut prepared)?
                };
                if !orders.is_empty() {
                    customers.push((None, holder, orders));
                }
                continue;
            }
            let id = super::customer_id_for(&external.normalised);
            if privacy.keys().is_erased(id) {
                for order in orders {
                    prepared.bad.push((
                        BadRow {
                            line: order.line,
                            reason: format!(
                                "customer_external_id: {} belonged to customer {id}, who was \
                                 erased; an erased customer is not registered again",
                                external.normalised
                            ),
                        },
                        order.rows,
                    ));
                }
                continue;
            }
            let first_at = orders
                .iter()
                .map(|o| o.occurred_at_us)
                .min()
                .unwrap_or_default();
            let registered = DomainEvent::CustomerRegistered(CustomerRegistered {
                customer_id: id,
                identity: Personal::Clear(CustomerIdentity {
                    external_ids: [(external.system.clone(), external.value.clone())].into(),
                    ..CustomerIdentity::default()
                }),
                locale: String::new(),
                acquisition_channel: crate::domain::common::Channel::Unspecified,
            });
            reservations.insert(
                key(&identifier),
                Reservation {
                    holder: Some(id),
                    revision: Some(0),
                    created: true,
                },
            );
            prepared.new_customers += 1;
            customers.push((Some(registrations.len()), id, orders));
            registrations.push((
                id,
                super::registration_event_id(id),
                first_at,
                registered,
                reservation,
            ));
        }
        seal(privacy, &mut registrations)?;
        let mut registrations: Vec<Option<_>> = registrations.into_iter().map(Some).collect();
        for (registration, id, orders) in customers {
            let stream = StreamName::parse(&customer_stream(id))?;
            let mut pieces = Vec::new();
            if let Some((_, event_id, at, event, reservation)) =
                registration.and_then(|i| registrations.get_mut(i).and_then(Option::take))
            {
                let claim = DomainEvent::IdentifierClaimed(IdentifierClaimed {
                    customer_id: id,
                    kind: IdentifierKind::ExternalId,
                });
                let external = &orders[0].customer;
                pieces.push(Piece {
                    appends: vec![
                        StreamAppend {
                            stream: stream.clone(),
                            expected: ExpectedRevision::NoStream,
                            events: vec![proposed(event_id, at, &event)?],
                        },
                        StreamAppend {
                            stream: StreamName::parse(
                                &privacy.identity_stream(&external.identifier()),
                            )?,
                            expected: reservation.expected(),
                            events: vec![proposed(command_event_id(event_id, 1), at, &claim)?],
                        },
                    ],
                    rows: vec![RowRef {
                        line: orders[0].line,
                        rows: 0,
                        label: format!("customer {}", external.normalised),
                    }],
                    registers: true,
                    kind: RowKind::Customer,
                });
            }
            // The customer's orders of this batch as one stream append (less work for
            // the log's writer than one each); split again only if it is refused.
            let mut events = Vec::with_capacity(orders.len());
            let mut rows = Vec::with_capacity(orders.len());
            for mut order in orders {
                order.purchase.customer_id = id;
                rows.push(RowRef {
                    line: order.line,
                    rows: order.rows,
                    label: format!("order {:?}", order.purchase.order_id),
                });
                let event = DomainEvent::PurchaseCompleted(order.purchase);
                events.push(proposed(order.event_id, order.occurred_at_us, &event)?);
                prepared.orders += 1;
            }
            pieces.push(Piece {
                appends: vec![StreamAppend {
                    stream,
                    expected: ExpectedRevision::StreamExists,
                    events,
                }],
                rows,
                registers: false,
                kind: RowKind::Order,
            });
            prepared.units.push(Unit { pieces });
        }
        prepared.reservations = reservations;
        Ok(prepared)
    }

    fn prepare_customers(
        log: &Log,
        privacy: &Privacy,
        mut reservations: HashMap<String, Reservation>,
        rows: Vec<CustomerRecord>,
    ) -> Result<Prepared, CliError> {
        let mut prepared = Prepared::new();
        // Identifiers claimed by earlier rows of this batch, with their line.
        let mut claimed: HashMap<Identifier, u64> = HashMap::new();
        let mut staged: Vec<(CustomerRecord, Vec<(Identifier, Reservation)>)> = Vec::new();
        let mut changes: Vec<ContactChange> = Vec::new();
        'rows: for row in rows {
            let external = row.external.identifier();
            if claimed.contains_key(&external) {
                // The same customer twice in the file: the first row registers it.
                prepared.known_customers += 1;
                continue;
            }
            let (reservation, _) = lookup(log, privacy, &mut reservations, &external)?;
            if let Some(holder) = reservation.holder {
                prepared.known_customers += 1;
                match plan_contact_change(log, privacy, &mut reservations, &claimed, holder, &row)?
                {
                    Ok(None) => {}
                    Ok(Some(change)) => {
                        claimed.insert(external, row.line);
                        for (identifier, _) in &change.claims {
                            claimed.insert(identifier.clone(), row.line);
                        }
                        changes.push(change);
                    }
                    Err(reason) => prepared.bad.push((
                        BadRow {
                            line: row.line,
                            reason,
                        },
                        1,
                    )),
                }
                continue;
            }
            let bad = |reason: String| {
                (
                    BadRow {
                        line: row.line,
                        reason,
                    },
                    1,
                )
            };
            if privacy.keys().is_erased(row.id) {
                prepared.bad.push(bad(format!(
                    "external_id: {} belonged to customer {}, who was erased; an erased \
                     customer is not registered again",
                    row.external.normalised, row.id
                )));
                continue;
            }
            let wanted = match &row.registered.identity {
                Personal::Clear(identity) => identity_identifiers(identity),
                _ => Vec::new(),
            };
            let mut claims = Vec::with_capacity(wanted.len());
            for identifier in wanted {
                let column = column_of(identifier.kind);
                if let Some(line) = claimed.get(&identifier) {
                    prepared.bad.push(bad(format!(
                        "{column}: {} is also claimed by line {line}",
                        identifier.value
                    )));
                    continue 'rows;
                }
                let reservation = if identifier == external {
                    reservation
                } else {
                    lookup(log, privacy, &mut reservations, &identifier)?.0
                };
                if let Some(holder) = reservation.holder {
                    prepared.bad.push(bad(format!(
                        "{column}: {} is already used by customer {holder}",
                        identifier.value
                    )));
                    continue 'rows;
                }
                claims.push((identifier, reservation));
            }
            for (identifier, _) in &claims {
                claimed.insert(identifier.clone(), row.line);
            }
            staged.push((row, claims));
        }
        write_contact_changes(privacy, &mut reservations, changes, &mut prepared)?;
        let mut registrations: Vec<(Uuid, Uuid, i64, DomainEvent, Reservation)> = staged
            .iter()
            .map(|(row, _)| {
                (
                    row.id,
                    super::registration_event_id(row.id),
                    0,
                    DomainEvent::CustomerRegistered(row.registered.clone()),
                    Reservation {
                        holder: None,
                        revision: None,
                        created: false,
                    },
                )
            })
            .collect();
        seal(privacy, &mut registrations)?;
        for ((row, claims), (id, event_id, _, event, _)) in staged.into_iter().zip(registrations) {
            let stream = StreamName::parse(&customer_stream(id))?;
            // No business time in the file: the registration and its consents get the
            // time of the append, as a registration through the service without one.
            let mut body = vec![proposed_at(event_id, None, &event)?];
            for purpose in &row.consents {
                let consent = DomainEvent::ConsentGiven(ConsentGiven {
                    customer_id: id,
                    purpose: *purpose,
                    source: CONSENT_SOURCE.to_owned(),
                });
                body.push(proposed_at(
                    super::consent_event_id(id, *purpose),
                    None,
                    &consent,
                )?);
            }
            let mut appends = vec![StreamAppend {
                stream,
                expected: ExpectedRevision::NoStream,
                events: body,
            }];
            for (i, (identifier, reservation)) in claims.iter().enumerate() {
                let claim = DomainEvent::IdentifierClaimed(IdentifierClaimed {
                    customer_id: id,
                    kind: identifier.kind,
                });
                appends.push(StreamAppend {
                    stream: StreamName::parse(&privacy.identity_stream(identifier))?,
                    expected: reservation.expected(),
                    events: vec![proposed_at(
                        command_event_id(event_id, i + 1),
                        None,
                        &claim,
                    )?],
                });
                reservations.insert(
                    key(identifier),
                    Reservation {
                        holder: Some(id),
                        revision: Some(0),
                        created: true,
                    },
                );
            }
            prepared.new_customers += 1;
            prepared.units.push(Unit {
                pieces: vec![Piece {
                    appends,
                    rows: vec![RowRef {
                        line: row.line,
                        rows: 1,
                        label: format!("customer {}", row.external.normalised),
                    }],
                    registers: false,
                    kind: RowKind::Customer,
                }],
            });
        }
        prepared.reservations = reservations;
        Ok(prepared)
    }

    fn prepare_events(
        log: &Log,
        privacy: &Privacy,
        mut reservations: HashMap<String, Reservation>,
        records: Vec<EventRecord>,
    ) -> Result<Prepared, CliError> {
        let mut prepared = Prepared::new();
        let mut claimed: HashMap<Identifier, u64> = HashMap::new();
        let mut staged: Vec<(EventRecord, Vec<(Identifier, Reservation)>)> = Vec::new();
        'records: for record in records {
            let bad = |reason: String| {
                (
                    BadRow {
                        line: record.line,
                        reason,
                    },
                    1,
                )
            };
            if let Some(owner) = record.event.personal_owner()
                && record.event.has_personal_parts()
            {
                // Sealing is randomised: a re-sent event would not match its stored
                // bytes, so one already in the log is skipped by id.
                if log.event_by_id(record.event_id)?.is_some() {
                    continue;
                }
                if privacy.keys().is_erased(owner) {
                    prepared.bad.push(bad(format!(
                        "customer {owner} was erased; personal data cannot be recorded for them"
                    )));
                    continue;
                }
            }
            let mut claims = Vec::new();
            if let DomainEvent::CustomerRegistered(registered) = &record.event
                && let Personal::Clear(identity) = &registered.identity
            {
                // A registration claims its identifiers, as the service's does, so the
                // customer can be found and nobody else takes them.
                for identifier in identity_identifiers(identity) {
                    let column = column_of(identifier.kind);
                    if let Some(line) = claimed.get(&identifier) {
                        prepared.bad.push(bad(format!(
                            "{column}: {} is also claimed by line {line}",
                            identifier.value
                        )));
                        continue 'records;
                    }
                    let (reservation, _) = lookup(log, privacy, &mut reservations, &identifier)?;
                    match reservation.holder {
                        Some(holder) if holder == registered.customer_id => {}
                        Some(holder) => {
                            prepared.bad.push(bad(format!(
                                "{column}: {} is already used by customer {holder}",
                                identifier.value
                            )));
                            continue 'records;
                        }
                        None => claims.push((identifier, reservation)),
                    }
                }
                for (identifier, _) in &claims {
                    claimed.insert(identifier.clone(), record.line);
                }
            }
            staged.push((record, claims));
        }
        // Every personal part of the batch sealed with one key-store call.
        {
            let mut refs: Vec<(&str, Uuid, &mut DomainEvent)> = staged
                .iter_mut()
                .map(|(r, _)| (r.stream.as_str(), r.event_id, &mut r.event))
                .collect();
            privacy.seal_events(&mut refs)?;
        }
        for (record, claims) in staged {
            let mut appends = vec![StreamAppend {
                stream: StreamName::parse(&record.stream)?,
                expected: ExpectedRevision::Any,
                events: vec![proposed(
                    record.event_id,
                    record.occurred_at_us,
                    &record.event,
                )?],
            }];
            if let DomainEvent::CustomerRegistered(registered) = &record.event {
                for (i, (identifier, reservation)) in claims.iter().enumerate() {
                    let claim = DomainEvent::IdentifierClaimed(IdentifierClaimed {
                        customer_id: registered.customer_id,
                        kind: identifier.kind,
                    });
                    appends.push(StreamAppend {
                        stream: StreamName::parse(&privacy.identity_stream(identifier))?,
                        expected: reservation.expected(),
                        events: vec![proposed(
                            command_event_id(record.event_id, i + 1),
                            record.occurred_at_us,
                            &claim,
                        )?],
                    });
                    reservations.insert(
                        key(identifier),
                        Reservation {
                            holder: Some(registered.customer_id),
                            revision: Some(0),
                            // An event file may hold its orders too: not "created".
                            created: false,
                        },
                    );
                }
            }
            prepared.units.push(Unit {
                pieces: vec![Piece {
                    appends,
                    rows: vec![RowRef {
                        line: record.line,
                        rows: 1,
                        label: format!("event {}", record.event_id),
                    }],
                    registers: false,
                    kind: RowKind::Event,
                }],
            });
        }
        prepared.reservations = reservations;
        Ok(prepared)
    }
}

/// A known customer's contact change planned from a customers row.
struct ContactChange {
    line: u64,
    label: String,
    customer: Uuid,
    event_id: Uuid,
    /// The customer stream's revision it was planned at.
    revision: Option<u64>,
    event: DomainEvent,
    claims: Vec<(Identifier, Reservation)>,
    releases: Vec<(Identifier, Reservation)>,
}

/// A customer's current contact identifiers (emails and phones, normalised), address and
/// stream revision, folded from its stream with the personal parts opened, as the
/// Customers service's `load` does.
fn current_contact(
    log: &Log,
    privacy: &Privacy,
    id: Uuid,
) -> Result<(Customer, PostalAddress, Option<u64>), CliError> {
    let stream = customer_stream(id);
    let mut state = Customer::default();
    let mut address = PostalAddress::default();
    let mut revision = None;
    for logged in read_stream_all(log, &stream)? {
        revision = Some(logged.event.revision);
        // Only what changes the identifiers is decoded: the rest cannot.
        if !matches!(
            logged.event.event_type.as_str(),
            "CustomerRegistered" | "ContactDetailsChanged" | "CustomersMerged" | "CustomerErased"
        ) {
            continue;
        }
        let mut event = decode_event(&logged)?;
        privacy.open_event(&stream, logged.event.id(), &mut event);
        match &event {
            DomainEvent::CustomerRegistered(e) => {
                if let Some(identity) = e.identity.clear() {
                    address = identity.address.clone();
                }
            }
            DomainEvent::ContactDetailsChanged(e) => {
                if let Some(details) = e.details.clear() {
                    address = details.address.clone();
                }
            }
            _ => {}
        }
        state.apply(id, &event);
    }
    Ok((state, address, revision))
}

/// Plans the contact change a customers row makes to its known customer `holder`:
/// `Ok(None)` when its emails and phones are the customer's already, `Err` (the reason
/// of a bad row) when one is held by another live customer or claimed by an earlier row
/// of the batch. Claims and releases as the service's UpdateContactDetails plans them.
fn plan_contact_change(
    log: &Log,
    privacy: &Privacy,
    reservations: &mut HashMap<String, Reservation>,
    claimed: &HashMap<Identifier, u64>,
    holder: Uuid,
    row: &CustomerRecord,
) -> Result<Result<Option<ContactChange>, String>, CliError> {
    let Personal::Clear(identity) = &row.registered.identity else {
        return Ok(Ok(None));
    };
    let details = ContactDetails {
        emails: identity.emails.clone(),
        phones: identity.phones.clone(),
        address: PostalAddress::default(),
    };
    let wanted = contact_identifiers(&details);
    let (state, address, revision) = current_contact(log, privacy, holder)?;
    let held: Vec<Identifier> = state
        .identifiers
        .iter()
        .filter(|i| i.kind != IdentifierKind::ExternalId)
        .cloned()
        .collect();
    if held == wanted {
        return Ok(Ok(None));
    }
    let mut claims = Vec::new();
    for identifier in wanted.iter().filter(|i| !held.contains(i)) {
        let column = column_of(identifier.kind);
        if let Some(line) = claimed.get(identifier) {
            return Ok(Err(format!(
                "{column}: {} is also claimed by line {line}",
                identifier.value
            )));
        }
        let (reservation, _) = lookup(log, privacy, reservations, identifier)?;
        match reservation.holder {
            // Already ours, or a duplicate's merged into us: nothing to claim.
            Some(other) if other == holder || state.merged_from.contains(&other) => {}
            Some(other) => {
                return Ok(Err(format!(
                    "{column}: {} is already used by customer {other}",
                    identifier.value
                )));
            }
            None => claims.push((identifier.clone(), reservation)),
        }
    }
    let mut releases = Vec::new();
    for identifier in held.iter().filter(|i| !wanted.contains(i)) {
        let (reservation, _) = lookup(log, privacy, reservations, identifier)?;
        if reservation.holder == Some(holder) && reservation.revision.is_some() {
            releases.push((identifier.clone(), reservation));
        }
    }
    let event_id = super::contact_event_id(&row.external.normalised, &held, &wanted);
    let event = DomainEvent::ContactDetailsChanged(ContactDetailsChanged {
        customer_id: holder,
        details: Personal::Clear(ContactDetails { address, ..details }),
    });
    Ok(Ok(Some(ContactChange {
        line: row.line,
        label: format!("customer {}", row.external.normalised),
        customer: holder,
        event_id,
        revision,
        event,
        claims,
        releases,
    })))
}

/// Seals a batch's contact changes with one key-store call and adds them as units: the
/// change and its reservation moves succeed or fail together.
fn write_contact_changes(
    privacy: &Privacy,
    reservations: &mut HashMap<String, Reservation>,
    mut changes: Vec<ContactChange>,
    prepared: &mut Prepared,
) -> Result<(), CliError> {
    if changes.is_empty() {
        return Ok(());
    }
    let streams: Vec<String> = changes
        .iter()
        .map(|c| customer_stream(c.customer))
        .collect();
    {
        let mut refs: Vec<(&str, Uuid, &mut DomainEvent)> = changes
            .iter_mut()
            .zip(&streams)
            .map(|(c, stream)| (stream.as_str(), c.event_id, &mut c.event))
            .collect();
        privacy.seal_events(&mut refs)?;
    }
    for (change, stream) in changes.into_iter().zip(streams) {
        let mut appends = vec![StreamAppend {
            stream: StreamName::parse(&stream)?,
            // Planned from this revision: a write meanwhile is refused, not overwritten.
            expected: change
                .revision
                .map_or(ExpectedRevision::NoStream, ExpectedRevision::Exact),
            events: vec![proposed_at(change.event_id, None, &change.event)?],
        }];
        let moves = change
            .claims
            .iter()
            .map(|c| (c, true))
            .chain(change.releases.iter().map(|r| (r, false)));
        for (i, ((identifier, reservation), claim)) in moves.enumerate() {
            let event = if claim {
                DomainEvent::IdentifierClaimed(IdentifierClaimed {
                    customer_id: change.customer,
                    kind: identifier.kind,
                })
            } else {
                DomainEvent::IdentifierReleased(IdentifierReleased {
                    customer_id: change.customer,
                    kind: identifier.kind,
                })
            };
            appends.push(StreamAppend {
                stream: StreamName::parse(&privacy.identity_stream(identifier))?,
                expected: reservation.expected(),
                events: vec![proposed_at(
                    command_event_id(change.event_id, i + 1),
                    None,
                    &event,
                )?],
            });
            reservations.insert(
                key(identifier),
                Reservation {
                    holder: claim.then_some(change.customer),
                    revision: Some(reservation.revision.map_or(0, |r| r + 1)),
                    created: false,
                },
            );
        }
        prepared.units.push(Unit {
            pieces: vec![Piece {
                appends,
                rows: vec![RowRef {
                    line: change.line,
                    rows: 1,
                    label: change.label,
                }],
                registers: false,
                kind: RowKind::Change,
            }],
        });
    }
    Ok(())
}

/// Keeps the orders `customer` does not have yet under another event id, reporting the
/// others as bad rows (the rule RecordPurchase applies: one event per order id). Its
/// stream is read once for the batch; an order already there with the same event id is
/// a re-import, left to the log's idempotency.
fn refuse_recorded_orders(
    log: &Log,
    customer: Uuid,
    orders: Vec<OrderRecord>,
    prepared: &mut Prepared,
) -> Result<Vec<OrderRecord>, CliError> {
    let mut recorded: HashMap<String, Uuid> = HashMap::new();
    for logged in read_stream_all(log, &customer_stream(customer))? {
        // Only purchases matter here: the rest is not decoded.
        if logged.event.event_type != "PurchaseCompleted" {
            continue;
        }
        if let DomainEvent::PurchaseCompleted(purchase) = decode_event(&logged)? {
            recorded
                .entry(purchase.order_id)
                .or_insert(logged.event.id());
        }
    }
    if recorded.is_empty() {
        return Ok(orders);
    }
    let mut kept = Vec::with_capacity(orders.len());
    for order in orders {
        match recorded.get(&order.purchase.order_id) {
            Some(id) if *id != order.event_id => prepared.bad.push((
                BadRow {
                    line: order.line,
                    reason: crate::domain::customer::RuleError::DuplicateOrder(
                        order.purchase.order_id.clone(),
                    )
                    .to_string(),
                },
                order.rows,
            )),
            _ => kept.push(order),
        }
    }
    Ok(kept)
}

impl Prepared {
    fn new() -> Self {
        Self {
            units: Vec::new(),
            bad: Vec::new(),
            reservations: HashMap::new(),
            new_customers: 0,
            known_customers: 0,
            orders: 0,
        }
    }
}

fn column_of(kind: IdentifierKind) -> &'static str {
    match kind {
        IdentifierKind::Email => "emails",
        IdentifierKind::Phone => "phones",
        IdentifierKind::ExternalId => "external_id",
        IdentifierKind::Unspecified => "identifier",
    }
}

fn key(identifier: &Identifier) -> String {
    format!("{:?}:{}", identifier.kind, identifier.value)
}

/// Seals the registrations of a batch with one key-store call (one write per key
/// shard for all the new customers' keys, instead of one per customer).
fn seal(
    privacy: &Privacy,
    registrations: &mut [(Uuid, Uuid, i64, DomainEvent, Reservation)],
) -> Result<(), CliError> {
    let streams: Vec<String> = registrations
        .iter()
        .map(|(id, ..)| customer_stream(*id))
        .collect();
    let mut refs: Vec<(&str, Uuid, &mut DomainEvent)> = registrations
        .iter_mut()
        .zip(&streams)
        .map(|((_, event_id, _, event, _), stream)| (stream.as_str(), *event_id, event))
        .collect();
    privacy.seal_events(&mut refs)?;
    Ok(())
}

/// The reservation of `identifier`, from the cache or the log; `true` when cached.
fn lookup(
    log: &Log,
    privacy: &Privacy,
    cache: &mut HashMap<String, Reservation>,
    identifier: &Identifier,
) -> Result<(Reservation, bool), CliError> {
    let k = key(identifier);
    if let Some(found) = cache.get(&k) {
        return Ok((*found, true));
    }
    let found = reservation(log, privacy, identifier)?;
    cache.insert(k, found);
    Ok((found, false))
}

/// Reads an identifier's reservation stream: its last event names the holder (a
/// release names nobody); merges are followed to the survivor and an erased holder holds
/// nothing — the Customers service's `holder`, offline.
fn reservation(
    log: &Log,
    privacy: &Privacy,
    identifier: &Identifier,
) -> Result<Reservation, CliError> {
    let name = StreamName::parse(&privacy.identity_stream(identifier))?;
    let page = match log.read_stream(&name, 0, true, 1) {
        Ok(page) => page,
        Err(crate::log::ReadError::StreamNotFound(_)) => {
            return Ok(Reservation {
                holder: None,
                revision: None,
                created: false,
            });
        }
        Err(error) => return Err(error.into()),
    };
    let Some(last) = page.events.first() else {
        return Ok(Reservation {
            holder: None,
            revision: None,
            created: false,
        });
    };
    let revision = Some(last.event.revision);
    let holder = match decode_event(last)? {
        DomainEvent::IdentifierClaimed(claim) => live_holder(log, privacy, claim.customer_id)?,
        _ => None,
    };
    Ok(Reservation {
        holder,
        revision,
        created: false,
    })
}

/// The live customer `id` resolves to: itself, or the survivor it was merged into;
/// `None` when erased.
fn live_holder(log: &Log, privacy: &Privacy, id: Uuid) -> Result<Option<Uuid>, CliError> {
    let mut id = id;
    for _ in 0..limits::MERGE_DEPTH_MAX {
        if privacy.keys().is_erased(id) {
            return Ok(None);
        }
        let mut merged_into = None;
        for logged in read_stream_all(log, &customer_stream(id))? {
            // Only merges and erasures matter here: the rest is not decoded.
            if !matches!(
                logged.event.event_type.as_str(),
                "CustomersMerged" | "CustomerErased"
            ) {
                continue;
            }
            match decode_event(&logged)? {
                DomainEvent::CustomersMerged(merge) if merge.duplicate_id == id => {
                    merged_into = Some(merge.survivor_id);
                }
                DomainEvent::CustomerErased(_) => return Ok(None),
                _ => {}
            }
        }
        match merged_into {
            Some(survivor) => id = survivor,
            None => return Ok(Some(id)),
        }
    }
    Err(format!("the merge chain from customer {id} is too long").into())
}

fn proposed(id: Uuid, occurred_at_us: i64, event: &DomainEvent) -> Result<ProposedEvent, CliError> {
    proposed_at(id, Some(occurred_at_us), event)
}

fn proposed_at(
    id: Uuid,
    occurred_at_us: Option<i64>,
    event: &DomainEvent,
) -> Result<ProposedEvent, CliError> {
    let payload = event.encode()?;
    if payload.len() > limits::PAYLOAD_BYTES_MAX {
        return Err(format!(
            "a {} event is {} bytes encoded; the limit is {}",
            event.event_type(),
            payload.len(),
            limits::PAYLOAD_BYTES_MAX
        )
        .into());
    }
    Ok(ProposedEvent {
        event_id: Some(id),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        payload,
        occurred_at_us,
        metadata: Vec::new(),
        correlation_id: String::new(),
        causation_id: String::new(),
        actor: IMPORT_ACTOR.to_owned(),
        source_channel: String::new(),
    })
}

// ---------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------

/// Writes a batch's units: packed into multi-stream appends of up to
/// [`limits::IMPORT_APPENDS_PER_WRITE`] stream appends, [`limits::IMPORT_WRITES_IN_FLIGHT`]
/// at once. A failed pack is written again unit by unit, and a failed unit piece by
/// piece, so one bad row costs only itself.
async fn write_units(log: Log, units: Vec<Unit>) -> Result<Written, CliError> {
    let mut written = Written::default();
    let mut in_flight: tokio::task::JoinSet<Result<Written, CliError>> =
        tokio::task::JoinSet::new();
    let mut pack: Vec<Unit> = Vec::new();
    let mut size = 0;
    let mut units = units.into_iter().peekable();
    while let Some(unit) = units.next() {
        size += unit.appends();
        pack.push(unit);
        let full = size >= limits::IMPORT_APPENDS_PER_WRITE;
        if full || units.peek().is_none() {
            while in_flight.len() >= limits::IMPORT_WRITES_IN_FLIGHT {
                if let Some(done) = in_flight.join_next().await {
                    written.add(done??);
                }
            }
            let log = log.clone();
            let pack = std::mem::take(&mut pack);
            size = 0;
            in_flight.spawn(async move { write_pack(&log, pack).await });
        }
    }
    while let Some(done) = in_flight.join_next().await {
        written.add(done??);
    }
    Ok(written)
}

async fn write_pack(log: &Log, pack: Vec<Unit>) -> Result<Written, CliError> {
    let mut written = Written::default();
    let all: Vec<StreamAppend> = pack
        .iter()
        .flat_map(|u| u.pieces.iter().flat_map(|p| p.appends.iter().cloned()))
        .collect();
    if append(log, all).await?.is_ok() {
        return Ok(written);
    }
    for unit in pack {
        if unit.pieces.len() > 1 {
            let all: Vec<StreamAppend> = unit
                .pieces
                .iter()
                .flat_map(|p| p.appends.iter().cloned())
                .collect();
            if append(log, all).await?.is_ok() {
                continue;
            }
        }
        let mut registration_failed: Option<String> = None;
        for piece in unit.pieces.into_iter().flat_map(split_orders) {
            let failure = match &registration_failed {
                Some(reason) => Some(reason.clone()),
                None => append(log, piece.appends)
                    .await?
                    .err()
                    .map(|e| reason_of(&e, &piece.rows)),
            };
            let Some(reason) = failure else { continue };
            if piece.registers || piece.kind == RowKind::Customer {
                written.unregistered += 1;
            }
            if piece.registers {
                registration_failed = Some(format!(
                    "{}: cannot be registered: {reason}",
                    piece.rows.first().map_or("", |r| r.label.as_str())
                ));
                continue;
            }
            if piece.kind == RowKind::Order {
                written.failed_orders += piece.rows.len() as u64;
            }
            for row in piece.rows {
                written.bad.push((
                    BadRow {
                        line: row.line,
                        reason: reason.clone(),
                    },
                    row.rows,
                ));
            }
        }
    }
    Ok(written)
}

/// A piece of several orders as one piece per order, so each is accepted or refused on
/// its own (a re-sent order is the log's idempotency, a conflicting one a bad row).
fn split_orders(piece: Piece) -> Vec<Piece> {
    let splittable = piece.kind == RowKind::Order
        && piece.appends.len() == 1
        && piece.rows.len() > 1
        && piece.appends[0].events.len() == piece.rows.len();
    if !splittable {
        return vec![piece];
    }
    let Piece { appends, rows, .. } = piece;
    let mut out = Vec::with_capacity(rows.len());
    for append in appends {
        let StreamAppend {
            stream,
            expected,
            events,
        } = append;
        for (event, row) in events.into_iter().zip(rows.iter().cloned()) {
            out.push(Piece {
                appends: vec![StreamAppend {
                    stream: stream.clone(),
                    expected,
                    events: vec![event],
                }],
                rows: vec![row],
                registers: false,
                kind: RowKind::Order,
            });
        }
    }
    out
}

/// One append: `Ok(Err(_))` is a refusal a row caused, `Err(_)` a failure of the log
/// that ends the import. A full queue is waited out.
async fn append(
    log: &Log,
    appends: Vec<StreamAppend>,
) -> Result<Result<Vec<AppendOutcome>, AppendError>, CliError> {
    let mut waits = 0;
    loop {
        match log.append_multi(appends.clone()).await {
            Ok(outcomes) => return Ok(Ok(outcomes)),
            Err(AppendError::Overloaded) if waits < limits::IMPORT_OVERLOAD_RETRIES => {
                waits += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Err(
                error @ (AppendError::WrongExpectedRevision { .. }
                | AppendError::EventIdConflict { .. }
                | AppendError::DuplicateIdInBatch(_)),
            ) => return Ok(Err(error)),
            Err(error) => return Err(error.into()),
        }
    }
}

/// Why a piece was refused, in the words of the file.
fn reason_of(error: &AppendError, rows: &[RowRef]) -> String {
    let label = rows.first().map_or("", |r| r.label.as_str());
    match error {
        AppendError::EventIdConflict { .. } | AppendError::DuplicateIdInBatch(_) => format!(
            "{label} is already in the log with other content (the rows of one order must be \
             adjacent in the file; or the file changed since it was imported)"
        ),
        AppendError::WrongExpectedRevision {
            stream, expected, ..
        } if stream.starts_with("customer-") && *expected == ExpectedRevision::StreamExists => {
            format!("{label}: its customer is not registered")
        }
        AppendError::WrongExpectedRevision { stream, .. } if stream.starts_with("identity-") => {
            format!("{label}: an identifier it claims was taken meanwhile")
        }
        other => format!("{label}: {other}"),
    }
}

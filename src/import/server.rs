//! Import through a running server: purchases and customers through the Customers RPCs
//! (FindCustomer by external id, RegisterCustomer, RecordPurchase, RecordConsent), event
//! files through EventStore.Append. The server decides, seals and appends exactly as
//! for any client, so this is slower than offline (one RPC and one append per order)
//! but safe on a live system. Rows are spread over
//! [`crate::limits::IMPORT_SERVER_IN_FLIGHT`] workers by customer (by stream for event
//! files), so one customer's writes stay in file order.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use super::customers::{self, CONSENT_SOURCE, CustomerRecord};
use super::events::{self, EventRecord};
use super::offline::{IMPORT_ACTOR, Reader};
use super::purchases::{self, OrderRecord};
use super::{BATCHES_AHEAD, BadRow, ImportKind, ImportOptions, ImportReport};
use crate::cli::CliError;
use crate::domain::personal::Personal;
use crate::grpc::{convert, pb};
use crate::limits;

type CustomersClient = pb::customers_client::CustomersClient<Channel>;
type EventStoreClient = pb::event_store_client::EventStoreClient<Channel>;

/// What the workers share: the report, the customers resolved so far, the stop flag.
struct Shared {
    report: Mutex<ImportReport>,
    customers: Mutex<HashMap<String, Uuid>>,
    stop: AtomicBool,
    strict: bool,
}

impl Shared {
    fn bad(&self, bad: BadRow, rows: u64) {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bad(bad, rows);
        if self.strict {
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    fn count(&self, f: impl FnOnce(&mut ImportReport)) {
        f(&mut self.report.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

#[derive(Clone)]
struct Clients {
    customers: CustomersClient,
    events: EventStoreClient,
}

type Work<T> =
    fn(Clients, T, Arc<Shared>) -> Pin<Box<dyn Future<Output = Result<(), CliError>> + Send>>;

pub(super) async fn run(
    kind: ImportKind,
    path: &Path,
    url: String,
    options: ImportOptions,
    bar: &indicatif::ProgressBar,
) -> Result<ImportReport, CliError> {
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad server URL {url}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let clients = Clients {
        customers: pb::customers_client::CustomersClient::new(channel.clone()),
        events: pb::event_store_client::EventStoreClient::new(channel),
    };
    let shared = Arc::new(Shared {
        report: Mutex::new(ImportReport::default()),
        customers: Mutex::new(HashMap::new()),
        stop: AtomicBool::new(false),
        strict: options.strict,
    });
    match kind {
        ImportKind::Purchases => {
            fan_out(
                path,
                options,
                purchases::read,
                |o: &OrderRecord| o.customer.normalised.clone(),
                |c, o, s| Box::pin(purchase(c, o, s)),
                clients,
                shared.clone(),
                bar,
            )
            .await?
        }
        ImportKind::Customers => {
            fan_out(
                path,
                options,
                customers::read,
                |c: &CustomerRecord| c.external.normalised.clone(),
                |c, r, s| Box::pin(customer(c, r, s)),
                clients,
                shared.clone(),
                bar,
            )
            .await?
        }
        ImportKind::Events => {
            fan_out(
                path,
                options,
                events::read,
                |e: &EventRecord| e.stream.clone(),
                |c, e, s| Box::pin(event(c, e, s)),
                clients,
                shared.clone(),
                bar,
            )
            .await?
        }
    }
    let mut report =
        std::mem::take(&mut *shared.report.lock().unwrap_or_else(PoisonError::into_inner));
    report.stopped = options.strict && report.rows_skipped > 0;
    Ok(report)
}

/// Reads the file (own thread) and hands each record to the worker its key hashes to.
#[allow(clippy::too_many_arguments)]
async fn fan_out<T: Send + 'static>(
    path: &Path,
    options: ImportOptions,
    read: Reader<T>,
    key: fn(&T) -> String,
    work: Work<T>,
    clients: Clients,
    shared: Arc<Shared>,
    bar: &indicatif::ProgressBar,
) -> Result<(), CliError> {
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel(BATCHES_AHEAD);
    let owned = path.to_owned();
    let strict = options.strict;
    let reader =
        tokio::task::spawn_blocking(move || read(&owned, strict, limits::IMPORT_BATCH_ROWS, tx));
    let mut senders = Vec::with_capacity(limits::IMPORT_SERVER_IN_FLIGHT);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..limits::IMPORT_SERVER_IN_FLIGHT {
        let (send, mut receive) = tokio::sync::mpsc::channel::<T>(64);
        senders.push(send);
        let (clients, shared) = (clients.clone(), shared.clone());
        workers.spawn(async move {
            while let Some(item) = receive.recv().await {
                if shared.stop.load(Ordering::SeqCst) {
                    continue; // Drain: nothing more is written after a strict stop.
                }
                work(clients.clone(), item, shared.clone()).await?;
            }
            Ok::<(), CliError>(())
        });
    }
    let mut rows = 0;
    'batches: while let Some(batch) = rx.recv().await {
        rows += batch.rows;
        shared.count(|r| r.rows += batch.rows);
        for (bad, count) in batch.bad {
            shared.bad(bad, count);
        }
        for item in batch.items {
            if shared.stop.load(Ordering::SeqCst) {
                break 'batches;
            }
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            key(&item).hash(&mut hasher);
            let index = (hasher.finish() % senders.len() as u64) as usize;
            if senders[index].send(item).await.is_err() {
                break 'batches; // A worker failed; joining it below reports why.
            }
        }
        super::show_progress(bar, batch.byte, rows, start);
        if batch.stop {
            break;
        }
    }
    drop(rx);
    drop(senders);
    while let Some(done) = workers.join_next().await {
        done??;
    }
    reader.await??;
    Ok(())
}

fn context(id: Uuid, occurred_at_us: Option<i64>) -> Option<pb::WriteContext> {
    Some(pb::WriteContext {
        event_id: id.to_string(),
        occurred_at: occurred_at_us.map(convert::timestamp_from_us),
        actor: IMPORT_ACTOR.to_owned(),
        correlation_id: String::new(),
        causation_id: String::new(),
        source_channel: String::new(),
    })
}

/// A refusal the row caused (reported), or a failure that ends the import.
fn refusal(status: tonic::Status) -> Result<String, CliError> {
    match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists | Code::NotFound => {
            Ok(status.message().to_owned())
        }
        _ => Err(format!("{}: {}", status.code(), status.message()).into()),
    }
}

/// The live customer holding an external id, if any.
async fn find(clients: &mut Clients, external: &str) -> Result<Option<Uuid>, CliError> {
    Ok(find_profile(clients, external)
        .await?
        .and_then(|found| Uuid::parse_str(&found.customer_id).ok()))
}

/// The profile of the live customer holding an external id, if any.
async fn find_profile(
    clients: &mut Clients,
    external: &str,
) -> Result<Option<pb::Customer>, CliError> {
    match clients
        .customers
        .find_customer(pb::FindCustomerRequest {
            by: Some(pb::find_customer_request::By::ExternalId(
                external.to_owned(),
            )),
            min_position: 0,
        })
        .await
    {
        Ok(found) => Ok(Some(found.into_inner())),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(format!("FindCustomer: {}: {}", status.code(), status.message()).into()),
    }
}

async fn purchase(
    mut clients: Clients,
    order: OrderRecord,
    shared: Arc<Shared>,
) -> Result<(), CliError> {
    let external = order.customer.normalised.clone();
    let cached = shared
        .customers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&external)
        .copied();
    let customer = match cached {
        Some(id) => id,
        None => match find(&mut clients, &external).await? {
            Some(id) => {
                shared.count(|r| r.known_customers += 1);
                id
            }
            None => {
                let id = super::customer_id_for(&external);
                let registered = clients
                    .customers
                    .register_customer(pb::RegisterCustomerRequest {
                        customer_id: id.to_string(),
                        external_ids: [(
                            order.customer.system.clone(),
                            order.customer.value.clone(),
                        )]
                        .into(),
                        context: context(
                            super::registration_event_id(id),
                            Some(order.occurred_at_us),
                        ),
                        ..Default::default()
                    })
                    .await;
                match registered {
                    Ok(_) => shared.count(|r| {
                        r.new_customers += 1;
                        r.events_appended += 2;
                    }),
                    Err(status) => {
                        let reason = refusal(status)?;
                        shared.bad(
                            BadRow {
                                line: order.line,
                                reason: format!(
                                    "customer {external} cannot be registered: {reason}"
                                ),
                            },
                            order.rows,
                        );
                        return Ok(());
                    }
                }
                id
            }
        },
    };
    shared
        .customers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(external, customer);
    let p = order.purchase;
    let result = clients
        .customers
        .record_purchase(pb::RecordPurchaseRequest {
            customer_id: customer.to_string(),
            order_id: p.order_id,
            lines: p
                .lines
                .into_iter()
                .map(|l| pb::PurchaseLine {
                    sku: l.sku,
                    name: l.name,
                    category: l.category,
                    quantity: l.quantity,
                    unit_price_minor: l.unit_price_minor,
                })
                .collect(),
            total_minor: p.total_minor,
            currency: p.currency,
            channel: convert::channel_to(p.channel),
            store_id: p.store_id,
            context: context(order.event_id, Some(order.occurred_at_us)),
        })
        .await;
    match result {
        Ok(_) => shared.count(|r| {
            r.orders += 1;
            r.events_appended += 1;
        }),
        Err(status) => {
            let reason = refusal(status)?;
            shared.bad(
                BadRow {
                    line: order.line,
                    reason,
                },
                order.rows,
            );
        }
    }
    Ok(())
}

async fn customer(
    mut clients: Clients,
    row: CustomerRecord,
    shared: Arc<Shared>,
) -> Result<(), CliError> {
    let identity = match row.registered.identity {
        Personal::Clear(identity) => identity,
        _ => return Err("an imported identity is always in clear".into()),
    };
    if let Some(known) = find_profile(&mut clients, &row.external.normalised).await? {
        shared.count(|r| r.known_customers += 1);
        return change_contact(
            clients,
            known,
            &row.external.normalised,
            row.line,
            identity,
            &shared,
        )
        .await;
    }
    let claims = crate::domain::customer::identity_identifiers(&identity).len() as u64;
    let result = clients
        .customers
        .register_customer(pb::RegisterCustomerRequest {
            customer_id: row.id.to_string(),
            given_name: identity.given_name,
            family_name: identity.family_name,
            emails: identity.emails,
            phones: identity.phones,
            birth_date: identity
                .birth_date
                .map(|d| d.to_string())
                .unwrap_or_default(),
            address: None,
            locale: row.registered.locale,
            external_ids: identity.external_ids.into_iter().collect(),
            acquisition_channel: convert::channel_to(row.registered.acquisition_channel),
            context: context(super::registration_event_id(row.id), None),
        })
        .await;
    if let Err(status) = result {
        let reason = refusal(status)?;
        shared.bad(
            BadRow {
                line: row.line,
                reason,
            },
            1,
        );
        return Ok(());
    }
    shared.count(|r| {
        r.new_customers += 1;
        r.events_appended += 1 + claims;
    });
    for purpose in row.consents {
        let result = clients
            .customers
            .record_consent(pb::RecordConsentRequest {
                customer_id: row.id.to_string(),
                purpose: convert::consent_purpose_to(purpose),
                granted: true,
                source: CONSENT_SOURCE.to_owned(),
                context: context(super::consent_event_id(row.id, purpose), None),
            })
            .await;
        match result {
            Ok(_) => shared.count(|r| r.events_appended += 1),
            Err(status) => {
                let reason = refusal(status)?;
                shared.bad(
                    BadRow {
                        line: row.line,
                        reason: format!("consents: {reason}"),
                    },
                    0,
                );
            }
        }
    }
    Ok(())
}

/// A known customer's row: when its emails or phones differ from the customer's, they
/// replace them through UpdateContactDetails (which moves the reservations and refuses
/// an identifier held by another customer); the address is kept.
async fn change_contact(
    mut clients: Clients,
    known: pb::Customer,
    external: &str,
    line: u64,
    identity: crate::domain::events::CustomerIdentity,
    shared: &Shared,
) -> Result<(), CliError> {
    let contact = |emails: &[String], phones: &[String]| {
        crate::domain::customer::contact_identifiers(&crate::domain::events::ContactDetails {
            emails: emails.to_vec(),
            phones: phones.to_vec(),
            address: Default::default(),
        })
    };
    let held = contact(&known.emails, &known.phones);
    let wanted = contact(&identity.emails, &identity.phones);
    if held == wanted {
        return Ok(());
    }
    let moves = wanted.iter().filter(|i| !held.contains(i)).count()
        + held.iter().filter(|i| !wanted.contains(i)).count();
    let event_id = super::contact_event_id(external, &held, &wanted);
    let result = clients
        .customers
        .update_contact_details(pb::UpdateContactDetailsRequest {
            customer_id: known.customer_id,
            emails: identity.emails,
            phones: identity.phones,
            address: known.address,
            context: context(event_id, None),
        })
        .await;
    match result {
        Ok(_) => shared.count(|r| r.events_appended += 1 + moves as u64),
        Err(status) => {
            let reason = refusal(status)?;
            shared.bad(BadRow { line, reason }, 1);
        }
    }
    Ok(())
}

async fn event(
    mut clients: Clients,
    record: EventRecord,
    shared: Arc<Shared>,
) -> Result<(), CliError> {
    let result = clients
        .events
        .append(pb::AppendRequest {
            stream: record.stream,
            expected: None,
            events: vec![pb::ProposedEvent {
                event_id: record.event_id.to_string(),
                event: Some(convert::event_to_proto(record.event)),
                occurred_at: Some(convert::timestamp_from_us(record.occurred_at_us)),
                metadata: HashMap::new(),
                correlation_id: String::new(),
                causation_id: String::new(),
                actor: IMPORT_ACTOR.to_owned(),
                source_channel: String::new(),
            }],
        })
        .await;
    match result {
        Ok(_) => shared.count(|r| r.events_appended += 1),
        // A re-sent event with personal parts is sealed anew, so its bytes differ from
        // the stored ones: the id being there already is what a re-import expects.
        Err(status) if status.code() == Code::AlreadyExists => {}
        Err(status) => {
            let reason = refusal(status)?;
            shared.bad(
                BadRow {
                    line: record.line,
                    reason,
                },
                1,
            );
        }
    }
    Ok(())
}

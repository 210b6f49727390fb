//! The purchases CSV: rows → orders (adjacent rows of one `order_id` are one order).

use std::path::Path;

use uuid::Uuid;

use super::{
    BadRow, Batch, Columns, ExternalId, csv_reader, csv_row_error, field_count, parse_channel,
};
use crate::cli::CliError;
use crate::domain::DomainEvent;
use crate::domain::common::Channel;
use crate::domain::events::{PurchaseCompleted, PurchaseLine};

/// The known columns; the first [`REQUIRED`] are required.
pub(crate) const COLUMNS: &[&str] = &[
    "customer_external_id",
    "order_id",
    "occurred_at",
    "total_minor",
    "currency",
    "sku",
    "name",
    "category",
    "quantity",
    "unit_price_minor",
    "channel",
    "store_id",
];
const REQUIRED: usize = 5;

const CUSTOMER: usize = 0;
const ORDER_ID: usize = 1;
const OCCURRED_AT: usize = 2;
const TOTAL: usize = 3;
const CURRENCY: usize = 4;
const SKU: usize = 5;
const NAME: usize = 6;
const CATEGORY: usize = 7;
const QUANTITY: usize = 8;
const UNIT_PRICE: usize = 9;
const CHANNEL: usize = 10;
const STORE_ID: usize = 11;

/// One order of the file, ready to be recorded for its customer.
#[derive(Clone, Debug)]
pub(crate) struct OrderRecord {
    /// Line of its first row.
    pub line: u64,
    /// Rows it was made of.
    pub rows: u64,
    /// Who bought it.
    pub customer: ExternalId,
    /// Its event id (from the order id).
    pub event_id: Uuid,
    /// Business time, UTC microseconds.
    pub occurred_at_us: i64,
    /// The event; `customer_id` is set once the customer is resolved.
    pub purchase: PurchaseCompleted,
}

/// One parsed row.
struct Row {
    line: u64,
    customer: ExternalId,
    order_id: String,
    occurred_at_us: i64,
    total_minor: i64,
    currency: String,
    item: Option<PurchaseLine>,
    channel: Channel,
    store_id: String,
}

fn parse_row(columns: &Columns, record: &csv::StringRecord, line: u64) -> Result<Row, BadRow> {
    let bad = |column: &str, reason: String| BadRow {
        line,
        reason: format!("{column}: {reason}"),
    };
    let required = |k: usize| -> Result<&str, BadRow> {
        let value = columns.get(record, k);
        if value.is_empty() {
            Err(bad(COLUMNS[k], "missing value".into()))
        } else {
            Ok(value)
        }
    };
    let customer = ExternalId::parse(required(CUSTOMER)?).map_err(|e| bad(COLUMNS[CUSTOMER], e))?;
    let order_id = required(ORDER_ID)?.to_owned();
    let occurred_at_us = crate::replay::parse_rfc3339(required(OCCURRED_AT)?).map_err(|_| {
        bad(
            "occurred_at",
            "not an RFC 3339 time or a YYYY-MM-DD date".into(),
        )
    })?;
    let total_minor: i64 = required(TOTAL)?
        .parse()
        .map_err(|_| bad("total_minor", "not an integer".into()))?;
    let currency = required(CURRENCY)?.to_ascii_uppercase();
    let sku = columns.get(record, SKU);
    let integer = |k: usize, default: i64| -> Result<i64, BadRow> {
        let value = columns.get(record, k);
        if value.is_empty() {
            return Ok(default);
        }
        value
            .parse()
            .map_err(|_| bad(COLUMNS[k], "not an integer".into()))
    };
    // A row without a SKU carries the order's totals only (no line): the lines of an
    // order are optional, its total is not.
    let item = if sku.is_empty() {
        None
    } else {
        let quantity = u32::try_from(integer(QUANTITY, 1)?)
            .map_err(|_| bad("quantity", "must be 0 to 4294967295".into()))?;
        Some(PurchaseLine {
            sku: sku.to_owned(),
            name: columns.get(record, NAME).to_owned(),
            category: columns.get(record, CATEGORY).to_owned(),
            quantity,
            unit_price_minor: integer(UNIT_PRICE, 0)?,
        })
    };
    let channel =
        parse_channel(columns.get(record, CHANNEL)).map_err(|e| bad(COLUMNS[CHANNEL], e))?;
    Ok(Row {
        line,
        customer,
        order_id,
        occurred_at_us,
        total_minor,
        currency,
        item,
        channel,
        store_id: columns.get(record, STORE_ID).to_owned(),
    })
}

/// The order being collected: its first row's facts and the lines so far.
struct Open {
    first: Row,
    lines: Vec<PurchaseLine>,
    rows: u64,
}

impl Open {
    fn start(mut row: Row) -> Self {
        let lines = row.item.take().into_iter().collect();
        Self {
            first: row,
            lines,
            rows: 1,
        }
    }

    /// Adds a row of the same order, if it agrees with the first one.
    fn add(&mut self, mut row: Row) -> Result<(), BadRow> {
        let first = &self.first;
        let disagree = if row.customer != first.customer {
            Some("customer_external_id")
        } else if row.occurred_at_us != first.occurred_at_us {
            Some("occurred_at")
        } else if row.total_minor != first.total_minor {
            Some("total_minor")
        } else if row.currency != first.currency {
            Some("currency")
        } else {
            None
        };
        if let Some(column) = disagree {
            return Err(BadRow {
                line: row.line,
                reason: format!(
                    "{column}: differs from line {} of the same order {:?} (the rows of an \
                     order must agree on customer, occurred_at, total and currency)",
                    first.line, first.order_id
                ),
            });
        }
        self.rows += 1;
        self.lines.extend(row.item.take());
        Ok(())
    }

    /// The finished order, validated as the event it becomes.
    fn close(self) -> Result<OrderRecord, (BadRow, u64)> {
        let Open { first, lines, rows } = self;
        let purchase = PurchaseCompleted {
            // Set once the customer is resolved; any non-nil id validates the same.
            customer_id: Uuid::max(),
            order_id: first.order_id,
            lines,
            total_minor: first.total_minor,
            currency: first.currency,
            channel: first.channel,
            store_id: first.store_id,
        };
        let event = DomainEvent::PurchaseCompleted(purchase);
        let problem = super::violations_reason(&event);
        let (DomainEvent::PurchaseCompleted(purchase), None) = (event, problem.clone()) else {
            return Err((
                BadRow {
                    line: first.line,
                    reason: problem.unwrap_or_default(),
                },
                rows,
            ));
        };
        Ok(OrderRecord {
            line: first.line,
            rows,
            customer: first.customer,
            event_id: super::purchase_event_id(&purchase.order_id),
            occurred_at_us: first.occurred_at_us,
            purchase,
        })
    }
}

/// Reads the purchases file on the calling (blocking) thread and sends batches of at
/// most `batch_orders` orders. The header is checked before anything is sent.
pub(crate) fn read(
    path: &Path,
    strict: bool,
    batch_orders: usize,
    tx: tokio::sync::mpsc::Sender<Batch<OrderRecord>>,
) -> Result<(), CliError> {
    let mut reader = csv_reader(path)?;
    let header = reader
        .headers()
        .map_err(|e| format!("cannot read the header of {}: {e}", path.display()))?
        .clone();
    let columns = Columns::from_header(&header, COLUMNS, REQUIRED)?;
    let mut record = csv::StringRecord::new();
    let mut batch = Batch::new();
    let mut open: Option<Open> = None;
    let mut line = 1u64;
    loop {
        let read = reader.read_record(&mut record);
        let position = reader.position();
        batch.byte = position.byte();
        let row = match read {
            Ok(false) => break,
            Ok(true) => {
                line = record.position().map_or(line + 1, |p| p.line());
                batch.rows += 1;
                if record.len() == header.len() {
                    parse_row(&columns, &record, line)
                } else {
                    Err(field_count(&record, &header, line))
                }
            }
            Err(error) => {
                batch.rows += 1;
                line += 1;
                Err(csv_row_error(error, line)?)
            }
        };
        let outcome = match row {
            Ok(row) => match open.as_mut() {
                Some(current) if current.first.order_id == row.order_id => current.add(row),
                _ => {
                    if let Some(done) = open.replace(Open::start(row)) {
                        match done.close() {
                            Ok(order) => batch.items.push(order),
                            Err((bad, rows)) => {
                                batch.bad.push((bad, rows));
                                if strict {
                                    // The bad order ended before this row: stop here.
                                    batch.stop = true;
                                    let _ = tx.blocking_send(batch);
                                    return Ok(());
                                }
                            }
                        }
                    }
                    Ok(())
                }
            },
            Err(bad) => Err(bad),
        };
        if let Err(bad) = outcome {
            batch.bad.push((bad, 1));
            if strict {
                // Nothing at or after the bad row is imported, not even the open order
                // (its rows may continue after it).
                batch.stop = true;
                let _ = tx.blocking_send(batch);
                return Ok(());
            }
        }
        if batch.items.len() >= batch_orders
            && tx
                .blocking_send(std::mem::replace(&mut batch, Batch::new()))
                .is_err()
        {
            return Ok(()); // The writer stopped; it reports why.
        }
    }
    if let Some(done) = open.take() {
        match done.close() {
            Ok(order) => batch.items.push(order),
            Err((bad, rows)) => {
                batch.bad.push((bad, rows));
                batch.stop = strict;
            }
        }
    }
    let _ = tx.blocking_send(batch);
    Ok(())
}

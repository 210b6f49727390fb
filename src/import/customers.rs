//! The customers CSV: one row per customer to register (or, for a known customer, whose
//! emails and phones to bring up to date).

use std::collections::BTreeMap;
use std::path::Path;

use uuid::Uuid;

use super::{
    BadRow, Batch, Columns, ExternalId, csv_reader, csv_row_error, field_count, parse_purpose,
};
use crate::cli::CliError;
use crate::domain::DomainEvent;
use crate::domain::common::{CalendarDate, Channel, ConsentPurpose};
use crate::domain::events::{CustomerIdentity, CustomerRegistered};
use crate::domain::personal::Personal;

/// The known columns; the first [`REQUIRED`] are required.
pub(crate) const COLUMNS: &[&str] = &[
    "external_id",
    "given_name",
    "family_name",
    "emails",
    "phones",
    "birth_date",
    "locale",
    "consents",
];
const REQUIRED: usize = 1;

const EXTERNAL_ID: usize = 0;
const GIVEN_NAME: usize = 1;
const FAMILY_NAME: usize = 2;
const EMAILS: usize = 3;
const PHONES: usize = 4;
const BIRTH_DATE: usize = 5;
const LOCALE: usize = 6;
const CONSENTS: usize = 7;

/// Where imported consents say they were collected.
pub(crate) const CONSENT_SOURCE: &str = "import";

/// One customer of the file.
#[derive(Clone, Debug)]
pub(crate) struct CustomerRecord {
    /// Its line.
    pub line: u64,
    /// Its external id.
    pub external: ExternalId,
    /// The id it is registered with.
    pub id: Uuid,
    /// The registration (identity in clear).
    pub registered: CustomerRegistered,
    /// Consents given, in file order, without repeats.
    pub consents: Vec<ConsentPurpose>,
}

fn list(text: &str) -> Vec<String> {
    text.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_row(
    columns: &Columns,
    record: &csv::StringRecord,
    line: u64,
) -> Result<CustomerRecord, BadRow> {
    let bad = |column: &str, reason: String| BadRow {
        line,
        reason: format!("{column}: {reason}"),
    };
    let external = ExternalId::parse(columns.get(record, EXTERNAL_ID))
        .map_err(|e| bad(COLUMNS[EXTERNAL_ID], e))?;
    let emails = list(columns.get(record, EMAILS));
    let phones = list(columns.get(record, PHONES));
    for email in &emails {
        if crate::keys::normalise_email(email).is_none() {
            return Err(bad("emails", format!("{email:?} is not an email address")));
        }
    }
    for phone in &phones {
        if crate::keys::normalise_phone(phone).is_none() {
            return Err(bad(
                "phones",
                format!("{phone:?} is not a phone number (4 to 15 digits, optional leading +)"),
            ));
        }
    }
    let birth_text = columns.get(record, BIRTH_DATE);
    let birth_date = if birth_text.is_empty() {
        None
    } else {
        Some(
            CalendarDate::parse(birth_text)
                .ok_or_else(|| bad("birth_date", "not a date YYYY-MM-DD".into()))?,
        )
    };
    let mut consents = Vec::new();
    for purpose in list(columns.get(record, CONSENTS)) {
        let purpose = parse_purpose(&purpose).map_err(|e| bad("consents", e))?;
        if !consents.contains(&purpose) {
            consents.push(purpose);
        }
    }
    let id = super::customer_id_for(&external.normalised);
    let registered = CustomerRegistered {
        customer_id: id,
        identity: Personal::Clear(CustomerIdentity {
            given_name: columns.get(record, GIVEN_NAME).to_owned(),
            family_name: columns.get(record, FAMILY_NAME).to_owned(),
            emails,
            phones,
            birth_date,
            address: Default::default(),
            external_ids: BTreeMap::from([(external.system.clone(), external.value.clone())]),
        }),
        locale: columns.get(record, LOCALE).to_owned(),
        acquisition_channel: Channel::Unspecified,
    };
    if let Some(reason) =
        super::violations_reason(&DomainEvent::CustomerRegistered(registered.clone()))
    {
        return Err(BadRow { line, reason });
    }
    Ok(CustomerRecord {
        line,
        external,
        id,
        registered,
        consents,
    })
}

/// Reads the customers file on the calling (blocking) thread and sends batches of at
/// most `batch_rows` customers.
pub(crate) fn read(
    path: &Path,
    strict: bool,
    batch_rows: usize,
    tx: tokio::sync::mpsc::Sender<Batch<CustomerRecord>>,
) -> Result<(), CliError> {
    let mut reader = csv_reader(path)?;
    let header = reader
        .headers()
        .map_err(|e| format!("cannot read the header of {}: {e}", path.display()))?
        .clone();
    let columns = Columns::from_header(&header, COLUMNS, REQUIRED)?;
    let mut record = csv::StringRecord::new();
    let mut batch = Batch::new();
    let mut line = 1u64;
    loop {
        let read = reader.read_record(&mut record);
        batch.byte = reader.position().byte();
        let row = match read {
            Ok(false) => break,
            Ok(true) => {
                line = record.position().map_or(line + 1, |p| p.line());
                if record.len() == header.len() {
                    parse_row(&columns, &record, line)
                } else {
                    Err(field_count(&record, &header, line))
                }
            }
            Err(error) => {
                line += 1;
                Err(csv_row_error(error, line)?)
            }
        };
        batch.rows += 1;
        match row {
            Ok(customer) => batch.items.push(customer),
            Err(bad) => {
                batch.bad.push((bad, 1));
                if strict {
                    batch.stop = true;
                    let _ = tx.blocking_send(batch);
                    return Ok(());
                }
            }
        }
        if batch.items.len() >= batch_rows
            && tx
                .blocking_send(std::mem::replace(&mut batch, Batch::new()))
                .is_err()
        {
            return Ok(()); // The writer stopped; it reports why.
        }
    }
    let _ = tx.blocking_send(batch);
    Ok(())
}

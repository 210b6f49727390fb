//! `rapport import`: bulk import of purchase history, customers and typed events from
//! files, offline into a stopped server's data directory (fast) or through a running
//! server's RPCs (slower, for a live system).
//!
//! Three kinds of file:
//! - **purchases** (CSV): one row per order line; the rows of one order share its
//!   `order_id` and must be **adjacent** (the importer streams the file and closes an
//!   order when the next row names another one, so memory stays bounded whatever the
//!   file's size). An order is one `PurchaseCompleted` event. Customers are named by
//!   `customer_external_id` (`system:value`; without a `:` the system is `external`):
//!   a known one is the live holder of that external id's reservation (merges
//!   followed), an unknown one is registered with the external id.
//! - **customers** (CSV): one row per customer, registered with reservations for every
//!   email, phone and the external id; for a customer already known by its external id,
//!   a row whose emails or phones differ from the customer's records the change
//!   (`ContactDetailsChanged`, reservations claimed and released as UpdateContactDetails
//!   does), an unchanged row is skipped; both are counted as known.
//! - **events** (JSON lines): typed events in the serde shape of [`DomainEvent`], each
//!   with its stream, event id and business time.
//!
//! **Idempotent.** Importing the same file twice changes nothing: customer ids derive
//! from the external id and event ids from the file kind and the row's identity (the
//! order id, the customer), so a re-sent order is recognised by the log's idempotency
//! and a known customer is matched by its reservation instead of registered again.
//! Events with personal parts cannot rely on the log's content comparison (sealing uses
//! fresh nonces, so the bytes differ each time): they are skipped when their id is in
//! the log already, as `rapport seed` does.
//!
//! **Bad rows** are reported with their line number and reason; by default they are
//! skipped and counted, with `--strict` the import stops at the first one (what came
//! before it is imported; re-running after the fix is safe, see above).

mod customers;
mod events;
mod offline;
mod purchases;
mod sample;
mod server;

use std::path::{Path, PathBuf};
use std::time::Instant;

use uuid::Uuid;

use crate::cli::CliError;
use crate::domain::DomainEvent;
use crate::domain::common::{Channel, ConsentPurpose};

pub use offline::import_into;
pub use sample::write_sample_purchases;

/// What kind of file is imported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportKind {
    /// Order lines (CSV).
    Purchases,
    /// Customers (CSV).
    Customers,
    /// Typed events (JSON lines).
    Events,
}

impl ImportKind {
    fn name(self) -> &'static str {
        match self {
            Self::Purchases => "purchases",
            Self::Customers => "customers",
            Self::Events => "events",
        }
    }
}

/// Where `rapport import` writes.
#[derive(Clone, Debug)]
pub enum ImportTarget {
    /// Offline into a stopped server's data directory (fastest).
    DataDir {
        /// The data directory.
        dir: PathBuf,
        /// The master key file (default: beside the data directory).
        master_key_file: Option<PathBuf>,
    },
    /// Through a running server's RPCs (Customers; EventStore for event files).
    Server(String),
}

/// How an import behaves.
#[derive(Clone, Copy, Debug, Default)]
pub struct ImportOptions {
    /// Stop at the first bad row with an error instead of skipping it.
    pub strict: bool,
}

/// A row that could not be imported, with its line in the file (1 is the header of a
/// CSV file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    /// Line number in the file.
    pub line: u64,
    /// What is wrong, starting with the column or field when there is one.
    pub reason: String,
}

impl std::fmt::Display for BadRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Data rows read (CSV rows after the header, or JSON lines).
    pub rows: u64,
    /// Orders imported or found already imported (purchases).
    pub orders: u64,
    /// Customers registered now.
    pub new_customers: u64,
    /// Customers that were known already (matched by their external id).
    pub known_customers: u64,
    /// Events appended to the log now (re-sent ones that were there already excluded
    /// offline; through a server, the writes the server accepted).
    pub events_appended: u64,
    /// Rows skipped as bad.
    pub rows_skipped: u64,
    /// The first bad rows (at most [`crate::limits::IMPORT_REASONS_MAX`]).
    pub bad_rows: Vec<BadRow>,
    /// True when `--strict` stopped the import at a bad row.
    pub stopped: bool,
}

impl ImportReport {
    /// Counts a bad row of `rows` rows, keeping its reason if there is room.
    pub(crate) fn bad(&mut self, bad: BadRow, rows: u64) {
        self.rows_skipped += rows;
        if self.bad_rows.len() < crate::limits::IMPORT_REASONS_MAX {
            self.bad_rows.push(bad);
        }
    }
}

/// A bounded piece of a file, parsed: what the reader thread hands to the writer.
pub(crate) struct Batch<T> {
    /// Parsed records, in file order.
    pub items: Vec<T>,
    /// Bad rows met while parsing, with how many rows each stands for.
    pub bad: Vec<(BadRow, u64)>,
    /// Data rows read for this batch.
    pub rows: u64,
    /// Bytes of the file read so far (for the progress bar).
    pub byte: u64,
    /// `--strict` met a bad row: this is the last batch.
    pub stop: bool,
}

impl<T> Batch<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            bad: Vec::new(),
            rows: 0,
            byte: 0,
            stop: false,
        }
    }
}

/// Batches in flight between the reader thread and the writer: the reader stays at
/// most this far ahead, so memory is bounded whatever the file's size.
const BATCHES_AHEAD: usize = 2;

/// Checks that the file can be read before anything is opened.
fn check_file(path: &Path) -> Result<u64, CliError> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()).into());
    }
    Ok(meta.len())
}

/// `rapport import KIND FILE`: imports the file into the target, with a progress bar
/// (hidden when stderr is not a terminal), and prints a summary. With `--strict`, the
/// first bad row is an error (after what came before it was imported).
pub async fn run(
    kind: ImportKind,
    path: PathBuf,
    target: ImportTarget,
    options: ImportOptions,
) -> Result<ImportReport, CliError> {
    let bytes = check_file(&path)?;
    let start = Instant::now();
    let bar = progress_bar(bytes, kind);
    let report = match target {
        ImportTarget::DataDir {
            dir,
            master_key_file,
        } => offline::run(kind, &path, dir, master_key_file, options, &bar).await,
        ImportTarget::Server(url) => server::run(kind, &path, url, options, &bar).await,
    };
    bar.finish_and_clear();
    let report = report?;
    print_summary(kind, &path, &report, start.elapsed().as_secs_f64());
    if options.strict
        && report.stopped
        && let Some(first) = report.bad_rows.first()
    {
        return Err(format!("{first} (--strict: stopped there)").into());
    }
    Ok(report)
}

fn print_summary(kind: ImportKind, path: &Path, report: &ImportReport, seconds: f64) {
    let seconds = seconds.max(1e-9);
    let mut line = format!(
        "imported {} {}: {} rows ({:.0} rows/s)",
        kind.name(),
        path.display(),
        report.rows,
        report.rows as f64 / seconds
    );
    if kind == ImportKind::Purchases {
        line.push_str(&format!(", {} orders", report.orders));
    }
    line.push_str(&format!(
        ", {} new customers, {} known, {} events appended ({:.0} events/s), {} rows skipped; \
         {seconds:.2} s",
        report.new_customers,
        report.known_customers,
        report.events_appended,
        report.events_appended as f64 / seconds,
        report.rows_skipped,
    ));
    println!("{line}");
    for bad in &report.bad_rows {
        println!("  {bad}");
    }
    if report.rows_skipped > 0 && report.bad_rows.len() >= crate::limits::IMPORT_REASONS_MAX {
        println!(
            "  (only the first {} reasons are shown)",
            report.bad_rows.len()
        );
    }
}

fn progress_bar(bytes: u64, kind: ImportKind) -> indicatif::ProgressBar {
    // indicatif draws to stderr and stays hidden when it is not a terminal, so logs and
    // tests get the summary only.
    let bar = indicatif::ProgressBar::new(bytes);
    if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
        "import {} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{msg}} ETA {{eta}}",
        kind.name()
    )) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn show_progress(bar: &indicatif::ProgressBar, byte: u64, rows: u64, start: Instant) {
    bar.set_position(byte);
    bar.set_message(format!(
        "{rows} rows, {:.0} rows/s",
        rows as f64 / start.elapsed().as_secs_f64().max(1e-9)
    ));
}

// ---------------------------------------------------------------------------------------
// Deterministic ids
// ---------------------------------------------------------------------------------------

/// A version-8 UUID from BLAKE3 of `(tag, key)`: the same row of the same kind of file
/// always gets the same id.
fn import_uuid(tag: &str, key: &str) -> Uuid {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rapport-import/v1\0");
    hasher.update(tag.as_bytes());
    hasher.update(&[0]);
    hasher.update(key.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The id an import gives the customer it registers for a normalised external id
/// (`system:value`).
pub fn customer_id_for(external_id: &str) -> Uuid {
    import_uuid("customer", external_id)
}

/// The event id of an imported customer's registration.
pub fn registration_event_id(customer: Uuid) -> Uuid {
    import_uuid("registered", &customer.to_string())
}

/// The event id of an imported order (one order is one event, whoever bought it).
pub fn purchase_event_id(order_id: &str) -> Uuid {
    import_uuid("purchase", order_id)
}

/// The event id of a contact change an imported customer's row makes: from the external
/// id and the identifiers (sorted, normalised) before and after, so the same change of
/// the same customer always gets the same id, while a later change back is a new event.
pub fn contact_event_id(
    external_id: &str,
    before: &[crate::domain::customer::Identifier],
    after: &[crate::domain::customer::Identifier],
) -> Uuid {
    let list = |ids: &[crate::domain::customer::Identifier]| {
        let mut ids: Vec<String> = ids
            .iter()
            .map(|i| format!("{:?}={}", i.kind, i.value))
            .collect();
        ids.sort();
        ids.join(",")
    };
    import_uuid(
        "contact",
        &format!("{external_id}\0{}\0{}", list(before), list(after)),
    )
}

/// The event id of a consent given by an imported customer's row.
pub fn consent_event_id(customer: Uuid, purpose: ConsentPurpose) -> Uuid {
    import_uuid("consent", &format!("{customer}:{purpose:?}"))
}

// ---------------------------------------------------------------------------------------
// Shared parsing
// ---------------------------------------------------------------------------------------

/// An external id as the import names customers: `system:value`, a value without `:`
/// being of the system `external`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ExternalId {
    /// Normalised `system:value` (the reservation's value).
    pub normalised: String,
    /// The system part.
    pub system: String,
    /// The value part.
    pub value: String,
}

impl ExternalId {
    /// Parses and normalises; the error names what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("missing value".into());
        }
        let full = if text.contains(':') {
            text.to_owned()
        } else {
            format!("external:{text}")
        };
        let normalised = crate::keys::normalise_external_id(&full)
            .ok_or_else(|| format!("{text:?} is not an external id system:value"))?;
        let (system, value) = normalised
            .split_once(':')
            .ok_or_else(|| format!("{text:?} is not an external id system:value"))?;
        Ok(Self {
            system: system.to_owned(),
            value: value.to_owned(),
            normalised: normalised.clone(),
        })
    }

    /// The identifier reserved for it.
    pub fn identifier(&self) -> crate::domain::customer::Identifier {
        crate::domain::customer::Identifier {
            kind: crate::domain::events::IdentifierKind::ExternalId,
            value: self.normalised.clone(),
        }
    }
}

/// A channel by name, case-insensitive (`store`, `web`, `mobile_app`, …); empty is
/// unspecified.
pub(crate) fn parse_channel(text: &str) -> Result<Channel, String> {
    let lowered = text.trim().to_ascii_lowercase().replace('-', "_");
    Ok(match lowered.as_str() {
        "" | "unspecified" => Channel::Unspecified,
        "store" => Channel::Store,
        "web" => Channel::Web,
        "mobile_app" | "mobileapp" | "app" => Channel::MobileApp,
        "email" => Channel::Email,
        "phone" => Channel::Phone,
        "chat" => Channel::Chat,
        "social" => Channel::Social,
        "messaging" => Channel::Messaging,
        _ => {
            return Err(format!(
                "{text:?} is not a channel (store, web, mobile_app, email, phone, chat, social, \
                 messaging)"
            ));
        }
    })
}

/// A consent purpose by name, case-insensitive (`marketing_email`, `profiling`, …).
pub(crate) fn parse_purpose(text: &str) -> Result<ConsentPurpose, String> {
    let lowered = text.trim().to_ascii_lowercase().replace('-', "_");
    Ok(match lowered.as_str() {
        "marketing_email" => ConsentPurpose::MarketingEmail,
        "marketing_sms" => ConsentPurpose::MarketingSms,
        "marketing_phone" => ConsentPurpose::MarketingPhone,
        "profiling" => ConsentPurpose::Profiling,
        "third_party_sharing" => ConsentPurpose::ThirdPartySharing,
        _ => {
            return Err(format!(
                "{text:?} is not a consent purpose (marketing_email, marketing_sms, \
                 marketing_phone, profiling, third_party_sharing)"
            ));
        }
    })
}

/// The columns of a CSV file's header: which index holds which known column. Unknown,
/// duplicate and missing required columns are errors naming them.
pub(crate) struct Columns {
    indices: Vec<Option<usize>>,
}

impl Columns {
    /// Matches `header` (names trimmed, case-insensitive) against `known`, of which the
    /// first `required` must be present.
    pub fn from_header(
        header: &csv::StringRecord,
        known: &[&str],
        required: usize,
    ) -> Result<Self, CliError> {
        let mut indices = vec![None; known.len()];
        let mut unknown = Vec::new();
        for (index, name) in header.iter().enumerate() {
            let name = name
                .trim()
                .trim_start_matches('\u{feff}')
                .to_ascii_lowercase();
            match known.iter().position(|k| *k == name) {
                Some(k) if indices[k].is_some() => {
                    return Err(format!("column {name:?} appears twice in the header").into());
                }
                Some(k) => indices[k] = Some(index),
                None => unknown.push(name),
            }
        }
        if !unknown.is_empty() {
            return Err(format!(
                "unknown column(s) in the header: {}; known columns are {}",
                unknown.join(", "),
                known.join(", ")
            )
            .into());
        }
        let missing: Vec<&str> = known[..required]
            .iter()
            .zip(&indices)
            .filter(|(_, index)| index.is_none())
            .map(|(name, _)| *name)
            .collect();
        if !missing.is_empty() {
            return Err(format!("missing required column(s): {}", missing.join(", ")).into());
        }
        Ok(Self { indices })
    }

    /// The trimmed value of known column `k` in `record` ("" when the column is absent).
    pub fn get<'r>(&self, record: &'r csv::StringRecord, k: usize) -> &'r str {
        self.indices[k]
            .and_then(|index| record.get(index))
            .map_or("", str::trim)
    }
}

/// A CSV reader over `path` that reports rows with a different field count as bad rows
/// instead of failing the file.
pub(crate) fn csv_reader(path: &Path) -> Result<csv::Reader<std::fs::File>, CliError> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(file))
}

/// A row with another number of fields than the header: most often an unquoted comma
/// in a value, which would shift every later column, so the row is refused whole.
pub(crate) fn field_count(
    record: &csv::StringRecord,
    header: &csv::StringRecord,
    line: u64,
) -> BadRow {
    BadRow {
        line,
        reason: format!(
            "has {} fields, the header has {} (quote values that contain a comma)",
            record.len(),
            header.len()
        ),
    }
}

/// What a CSV read error means for the import: a bad row to report, or the end.
pub(crate) fn csv_row_error(error: csv::Error, line: u64) -> Result<BadRow, CliError> {
    let line = error
        .position()
        .map_or(line, |position| position.line().max(1));
    match error.kind() {
        csv::ErrorKind::Utf8 { .. } => Ok(BadRow {
            line,
            reason: "not valid UTF-8".into(),
        }),
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => Ok(BadRow {
            line,
            reason: format!("has {len} fields, the header has {expected_len}"),
        }),
        _ => Err(format!("cannot read the file at line {line}: {error}").into()),
    }
}

/// Refuses the customer model's own events (merges, erasures, reservations): only the
/// Customers service writes them, after checking its rules, as at the EventStore edge.
pub(crate) fn service_only(event: &DomainEvent) -> Option<&'static str> {
    match event {
        DomainEvent::CustomersMerged(_) => Some("MergeCustomers"),
        DomainEvent::CustomerErased(_) => Some("EraseCustomer"),
        DomainEvent::IdentifierClaimed(_) | DomainEvent::IdentifierReleased(_) => {
            Some("RegisterCustomer / UpdateContactDetails")
        }
        _ => None,
    }
}

/// Validation problems of an event as one reason, field paths first.
pub(crate) fn violations_reason(event: &DomainEvent) -> Option<String> {
    event.validate("").err().map(|found| {
        found
            .iter()
            .map(|v| format!("{}: {}", v.field, v.description))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_ids_default_to_the_external_system() {
        let plain = ExternalId::parse(" 4711 ").unwrap();
        assert_eq!(plain.normalised, "external:4711");
        let pos = ExternalId::parse("pos_card: 4711").unwrap();
        assert_eq!(
            (pos.system.as_str(), pos.value.as_str()),
            ("pos_card", "4711")
        );
        assert_eq!(pos.normalised, "pos_card:4711");
        assert!(ExternalId::parse("").is_err());
        assert!(ExternalId::parse("pos_card:").is_err());
    }

    #[test]
    fn channels_and_purposes_by_name() {
        assert_eq!(parse_channel("Mobile_App"), Ok(Channel::MobileApp));
        assert_eq!(parse_channel(""), Ok(Channel::Unspecified));
        assert!(parse_channel("fax").is_err());
        assert_eq!(parse_purpose("Profiling"), Ok(ConsentPurpose::Profiling));
        assert!(parse_purpose("spam").is_err());
    }

    #[test]
    fn ids_are_deterministic_and_distinct_per_kind() {
        assert_eq!(purchase_event_id("o-1"), purchase_event_id("o-1"));
        assert_ne!(purchase_event_id("o-1"), purchase_event_id("o-2"));
        let c = customer_id_for("pos_card:1");
        assert_eq!(c, customer_id_for("pos_card:1"));
        assert_ne!(registration_event_id(c), c);
    }

    #[test]
    fn headers_name_unknown_and_missing_columns() {
        let known = ["a", "b", "c"];
        let header = csv::StringRecord::from(vec!["B", " a ", "c"]);
        let columns = Columns::from_header(&header, &known, 2).unwrap();
        let row = csv::StringRecord::from(vec!["2", " 1 ", "3"]);
        assert_eq!(columns.get(&row, 0), "1");
        let unknown = csv::StringRecord::from(vec!["a", "b", "zz"]);
        let error = Columns::from_header(&unknown, &known, 2).err().unwrap();
        assert!(error.to_string().contains("zz"), "{error}");
        let missing = csv::StringRecord::from(vec!["a", "c"]);
        let error = Columns::from_header(&missing, &known, 2).err().unwrap();
        assert!(error.to_string().contains("missing required column(s): b"));
    }
}

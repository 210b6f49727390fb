//! The events file: JSON lines of typed events,
//! `{"stream": "customer-…", "event_id": "…", "occurred_at": "2024-03-01T12:00:00Z",
//! "event": {"PurchaseCompleted": {…}}}`, the event in the serde shape of
//! [`DomainEvent`] (externally tagged) with personal parts in clear.

use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use uuid::Uuid;

use super::{BadRow, Batch};
use crate::cli::CliError;
use crate::domain::DomainEvent;
use crate::domain::events as ev;
use crate::domain::profile::customer_stream;
use crate::log::StreamName;

/// One event of the file.
#[derive(Clone, Debug)]
pub(crate) struct EventRecord {
    /// Its line.
    pub line: u64,
    /// Target stream (valid).
    pub stream: String,
    /// Its id (the idempotency key).
    pub event_id: Uuid,
    /// Business time, UTC microseconds.
    pub occurred_at_us: i64,
    /// The event, personal parts in clear.
    pub event: DomainEvent,
}

/// A line as written; other fields (an export's position or hash) are ignored.
#[derive(Deserialize)]
struct RawLine {
    stream: String,
    event_id: String,
    occurred_at: String,
    event: serde_json::Value,
}

/// The typed event named by the single key of `value`.
fn typed(value: serde_json::Value) -> Result<DomainEvent, String> {
    let serde_json::Value::Object(map) = value else {
        return Err("event: must be an object with one key, the event type".into());
    };
    let mut entries = map.into_iter();
    let (Some((name, body)), None) = (entries.next(), entries.next()) else {
        return Err("event: must be an object with one key, the event type".into());
    };
    macro_rules! by_name {
        ($($variant:ident),* $(,)?) => {
            match name.as_str() {
                $(stringify!($variant) => serde_json::from_value::<ev::$variant>(body)
                    .map(DomainEvent::$variant)
                    .map_err(|e| format!("event.{name}: {e}")),)*
                "Custom" => Err("event: custom events are imported through EventStore.Append, \
                                 not from a file".into()),
                _ => Err(format!("event: {name:?} is not a typed event")),
            }
        };
    }
    by_name!(
        CustomerRegistered,
        ContactDetailsChanged,
        InteractionLogged,
        PurchaseCompleted,
        PreferenceSet,
        PreferenceCleared,
        ConsentGiven,
        ConsentWithdrawn,
        TagAdded,
        TagRemoved,
        CustomFieldSet,
        PurchaseRefunded,
        FeedbackGiven,
        CustomersMerged,
        CustomerErased,
        IdentifierClaimed,
        IdentifierReleased,
    )
}

/// Parses and checks one line.
pub(crate) fn parse_line(text: &str, line: u64) -> Result<EventRecord, BadRow> {
    let bad = |reason: String| BadRow { line, reason };
    let raw: RawLine = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    StreamName::parse(&raw.stream).map_err(|e| bad(format!("stream: {e}")))?;
    let event_id = Uuid::parse_str(raw.event_id.trim())
        .ok()
        .filter(|id| !id.is_nil())
        .ok_or_else(|| bad("event_id: must be a UUID (not nil)".into()))?;
    let occurred_at_us = crate::replay::parse_rfc3339(&raw.occurred_at)
        .map_err(|_| bad("occurred_at: not an RFC 3339 time or a YYYY-MM-DD date".into()))?;
    let event = typed(raw.event).map_err(bad)?;
    if let Some(rpc) = super::service_only(&event) {
        return Err(bad(format!(
            "event: {} is written by the Customers service only ({rpc}), which checks its rules",
            event.event_type()
        )));
    }
    if let Some(reason) = super::violations_reason(&event) {
        return Err(bad(reason));
    }
    if event.has_personal_parts()
        && let Some(owner) = event.personal_owner()
    {
        if event_has_erased_part(&event) {
            return Err(bad(
                "event: a personal part is null (an export's sealed or erased part cannot be \
                 imported)"
                    .into(),
            ));
        }
        let own = customer_stream(owner);
        if raw.stream != own {
            return Err(bad(format!(
                "stream: events with personal data of customer {owner} belong in stream {own}"
            )));
        }
    }
    Ok(EventRecord {
        line,
        stream: raw.stream,
        event_id,
        occurred_at_us,
        event,
    })
}

/// True when a personal part read as `null` (erased): sealing a copy with a stand-in
/// sealer leaves only such parts unsealed, and they fail to encode.
fn event_has_erased_part(event: &DomainEvent) -> bool {
    let mut copy = event.clone();
    copy.seal(&mut |_, plain| plain.to_vec());
    copy.encode().is_err()
}

/// Reads the events file on the calling (blocking) thread and sends batches of at most
/// `batch_rows` events.
pub(crate) fn read(
    path: &Path,
    strict: bool,
    batch_rows: usize,
    tx: tokio::sync::mpsc::Sender<Batch<EventRecord>>,
) -> Result<(), CliError> {
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut batch = Batch::new();
    let mut text = String::new();
    let mut line = 0u64;
    let mut byte = 0u64;
    loop {
        text.clear();
        let read = match reader.read_line(&mut text) {
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                // Not UTF-8: `read_line` consumed the line and left `text` empty.
                line += 1;
                batch.rows += 1;
                batch.bad.push((
                    BadRow {
                        line,
                        reason: "not valid UTF-8".into(),
                    },
                    1,
                ));
                if strict {
                    batch.stop = true;
                    break;
                }
                continue;
            }
            Err(error) => return Err(format!("cannot read {}: {error}", path.display()).into()),
        };
        if read == 0 {
            break;
        }
        line += 1;
        byte += read as u64;
        batch.byte = byte;
        if text.trim().is_empty() {
            continue;
        }
        if text.len() > crate::limits::IMPORT_LINE_BYTES_MAX {
            batch.rows += 1;
            batch.bad.push((
                BadRow {
                    line,
                    reason: format!("longer than {} bytes", crate::limits::IMPORT_LINE_BYTES_MAX),
                },
                1,
            ));
            if strict {
                batch.stop = true;
                break;
            }
            continue;
        }
        batch.rows += 1;
        match parse_line(&text, line) {
            Ok(record) => batch.items.push(record),
            Err(bad) => {
                batch.bad.push((bad, 1));
                if strict {
                    batch.stop = true;
                    break;
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

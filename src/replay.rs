//! `rapport replay`: the log as JSON lines, one event per line, for auditors and for
//! piping into other tools: offline over a stopped server's data directory, or through a
//! running server's `EventStore.ReadAll`.
//!
//! Each line is the `tail` format ([`crate::cli::event_json`]: position, stream,
//! revision, ids, type, schema version, both clocks, metadata, correlation/causation,
//! actor, the chain hash in hex, the decoded body) with `personal_data`: `clear` when the
//! personal fields were opened with the customer's key, `erased` when that key is gone
//! (the fields are then `null`), `none` for an event without personal data.
//!
//! Bounds: `--from-position`/`--to-position` (inclusive) and `--from-time`/`--to-time`
//! (inclusive, on `recorded_at`, the log's own clock; it never goes backwards, so a time
//! bound is a position bound, found by binary search).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::cli::CliError;
use crate::grpc::convert::recorded_event;
use crate::grpc::pb;
use crate::keys::{KeyStore, MasterKey};
use crate::log::{Log, LogConfig, LoggedEvent, ReadFilter};
use crate::privacy::Privacy;

/// Which events to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    /// First position (inclusive; 0 and 1 both mean the start).
    pub from_position: u64,
    /// Last position (inclusive); `None` is the head when the replay starts.
    pub to_position: Option<u64>,
    /// Only events recorded at or after this time (UTC microseconds).
    pub from_time_us: Option<i64>,
    /// Only events recorded at or before this time (UTC microseconds).
    pub to_time_us: Option<i64>,
    /// Stream prefixes, OR-ed; empty constrains nothing.
    pub stream_prefixes: Vec<String>,
    /// Event types, OR-ed; empty constrains nothing.
    pub event_types: Vec<String>,
}

impl ReplayOptions {
    fn filter(&self) -> ReadFilter {
        ReadFilter {
            stream_prefixes: self.stream_prefixes.clone(),
            event_types: self.event_types.clone(),
        }
    }

    fn check(&self) -> Result<(), CliError> {
        if self.stream_prefixes.len() > crate::limits::FILTER_ITEMS_MAX
            || self.event_types.len() > crate::limits::FILTER_ITEMS_MAX
        {
            return Err(format!(
                "at most {} --stream-prefix and {} --type",
                crate::limits::FILTER_ITEMS_MAX,
                crate::limits::FILTER_ITEMS_MAX
            )
            .into());
        }
        Ok(())
    }
}

/// Parses an RFC 3339 time (`2024-03-01T12:00:00Z`, `2024-03-01T13:00:00.5+01:00`) or a
/// bare date (`2024-03-01`, midnight UTC) into UTC microseconds.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 time such as 2024-03-01T12:00:00Z");
    let b = text.trim().as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let part = b.get(range).ok_or_else(bad)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1..=days_in_month).contains(&day) {
        return Err(bad());
    }
    let mut seconds = days_from_civil(year, month, day) * 86_400;
    let mut micros = 0i64;
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
            return Err(bad());
        }
        let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
        if hour > 23 || minute > 59 || second > 60 {
            return Err(bad());
        }
        seconds += hour * 3_600 + minute * 60 + second;
        let mut at = 19;
        if b.get(at) == Some(&b'.') {
            let start = at + 1;
            at = start;
            while b.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            if at == start {
                return Err(bad());
            }
            // Microseconds: the first six fraction digits, padded.
            let fraction = &b[start..at.min(start + 6)];
            micros = fraction
                .iter()
                .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))
                * 10i64.pow(6 - fraction.len() as u32);
        }
        match b.get(at) {
            Some(b'Z' | b'z') if at + 1 == b.len() => {}
            Some(&sign @ (b'+' | b'-')) if at + 6 == b.len() && b[at + 3] == b':' => {
                let (oh, om) = (digits(at + 1..at + 3)?, digits(at + 4..at + 6)?);
                if oh > 23 || om > 59 {
                    return Err(bad());
                }
                let offset = oh * 3_600 + om * 60;
                seconds -= if sign == b'+' { offset } else { -offset };
            }
            _ => return Err(bad()),
        }
    }
    Ok(seconds * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------------------
// The line format
// ---------------------------------------------------------------------------------------

/// One replayed event as a JSON object: the `tail` line ([`crate::cli::event_json`]),
/// which carries the body with its personal fields opened (or `null` when erased) and
/// the `personal_data` marker (`clear`, `erased` or `none`).
pub fn event_line(recorded: pb::RecordedEvent) -> Value {
    let state = match pb::PersonalData::try_from(recorded.personal_data) {
        Ok(pb::PersonalData::Clear) => "clear",
        Ok(pb::PersonalData::Erased) => "erased",
        _ => "none",
    };
    let mut line = crate::cli::event_json(recorded);
    if let Some(object) = line.as_object_mut() {
        // The marker is the auditor's only way to tell "erased" from "empty".
        object
            .entry("personal_data")
            .or_insert_with(|| Value::from(state));
    }
    line
}

/// Writes one line; `false` when stdout is closed (`| head`): the replay ends quietly.
fn write_line(out: &mut impl Write, line: &Value) -> Result<bool, CliError> {
    let written = serde_json::to_writer(&mut *out, line)
        .map_err(std::io::Error::from)
        .and_then(|()| out.write_all(b"\n"));
    match written {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error.into()),
    }
}

fn finish(out: &mut impl Write) -> Result<(), CliError> {
    match out.flush() {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------
// Offline
// ---------------------------------------------------------------------------------------

/// Opens the key store of `dir` for reading personal data, without ever creating one or
/// a master key: a data directory without a key store has no sealed data to open.
pub(crate) fn open_privacy(
    dir: &Path,
    master_key_file: Option<&Path>,
) -> Result<Option<Privacy>, CliError> {
    if !KeyStore::exists(dir) {
        return Ok(None);
    }
    let path = master_key_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| MasterKey::default_path(dir));
    let master = MasterKey::load(&path)?;
    let keys = KeyStore::open(dir, &master).map_err(|error| match error {
        crate::keys::KeyError::Locked(_) => server_hint(error.to_string()),
        other => other.into(),
    })?;
    Ok(Some(Privacy::new(std::sync::Arc::new(keys))))
}

/// A locked directory is almost always a running server: say what to do instead.
fn server_hint(error: String) -> CliError {
    format!("{error}; to replay while it runs, use --server").into()
}

/// `rapport replay --data-dir`: replays a stopped server's log offline. Returns the
/// number of lines written.
pub async fn replay_data_dir(
    dir: PathBuf,
    master_key_file: Option<PathBuf>,
    options: ReplayOptions,
) -> Result<u64, CliError> {
    options.check()?;
    tokio::task::spawn_blocking(move || -> Result<u64, CliError> {
        if !dir.is_dir() {
            return Err(format!("no data directory at {}", dir.display()).into());
        }
        let privacy = open_privacy(&dir, master_key_file.as_deref())?;
        let log = Log::open(LogConfig::new(&dir)).map_err(|error| match error {
            crate::log::LogError::Locked(_) => server_hint(error.to_string()),
            other => other.into(),
        })?;
        let result = replay_log(&log, privacy.as_ref(), &options);
        log.shutdown();
        result
    })
    .await?
}

/// The recorded time of the event at `position` (which exists).
fn recorded_at(log: &Log, position: u64) -> Result<i64, CliError> {
    log.event_at(position)?
        .map(|e| e.event.recorded_at_us)
        .ok_or_else(|| format!("position {position} is missing from the log").into())
}

/// The first position in `lo..=hi+1` whose event was recorded after (or at, with
/// `inclusive`) `time`: a binary search, as `recorded_at` never decreases.
fn first_position_from(
    mut lo: u64,
    mut hi: u64,
    mut recorded: impl FnMut(u64) -> Result<i64, CliError>,
    time: i64,
    inclusive: bool,
) -> Result<u64, CliError> {
    hi += 1;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let at = recorded(mid)?;
        let before = if inclusive { at < time } else { at <= time };
        if before {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo)
}

/// Replays an open log to stdout.
pub fn replay_log(
    log: &Log,
    privacy: Option<&Privacy>,
    options: &ReplayOptions,
) -> Result<u64, CliError> {
    let head = log.head().position;
    let (from, to) = position_bounds(options, head, &mut |p| recorded_at(log, p))?;
    let filter = options.filter();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut cursor = from;
    let mut written = 0;
    'pages: while cursor <= to {
        let page = log.read_all(
            cursor,
            false,
            crate::limits::READ_PAGE_MAX as usize,
            &filter,
        )?;
        for logged in page.events {
            if logged.event.position > to {
                break 'pages;
            }
            if !write_line(&mut out, &line_of(logged, privacy)?)? {
                return Ok(written);
            }
            written += 1;
        }
        if page.end_reached || page.next_cursor <= cursor {
            break;
        }
        cursor = page.next_cursor;
    }
    finish(&mut out)?;
    Ok(written)
}

fn line_of(logged: LoggedEvent, privacy: Option<&Privacy>) -> Result<Value, CliError> {
    Ok(event_line(recorded_event(logged, privacy)?))
}

/// The inclusive position range the options select in a log with `head` events.
fn position_bounds(
    options: &ReplayOptions,
    head: u64,
    recorded: &mut dyn FnMut(u64) -> Result<i64, CliError>,
) -> Result<(u64, u64), CliError> {
    let mut from = options.from_position.max(1);
    let mut to = options.to_position.unwrap_or(head).min(head);
    if let Some(time) = options.from_time_us
        && from <= to
    {
        from = first_position_from(from, to, &mut *recorded, time, true)?;
    }
    if let Some(time) = options.to_time_us
        && from <= to
    {
        to = first_position_from(from, to, &mut *recorded, time, false)? - 1;
    }
    Ok((from, to))
}

// ---------------------------------------------------------------------------------------
// Through a server
// ---------------------------------------------------------------------------------------

type EventStoreClient = pb::event_store_client::EventStoreClient<tonic::transport::Channel>;

/// The recorded time of the event at `position`, read through the server.
async fn probe_recorded_at(client: &mut EventStoreClient, position: u64) -> Result<i64, CliError> {
    let page = client
        .read_all(pb::ReadAllRequest {
            from_position: position,
            backwards: false,
            max_count: 1,
            filter: None,
        })
        .await?
        .into_inner();
    let event = page
        .events
        .into_iter()
        .find(|e| e.position == position)
        .ok_or_else(|| format!("position {position} is missing from the log"))?;
    Ok(event
        .recorded_at
        .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos / 1_000)))
}

/// [`position_bounds`] through a server: the same binary searches, each probe one
/// single-event read (about 2·log2(head) reads).
async fn server_bounds(
    client: &mut EventStoreClient,
    options: &ReplayOptions,
    head: u64,
) -> Result<(u64, u64), CliError> {
    let mut from = options.from_position.max(1);
    let mut to = options.to_position.unwrap_or(head).min(head);
    for (time, inclusive) in [(options.from_time_us, true), (options.to_time_us, false)] {
        let Some(time) = time else { continue };
        if from > to {
            break;
        }
        let (mut lo, mut hi) = (from, to + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = probe_recorded_at(client, mid).await?;
            let before = if inclusive { at < time } else { at <= time };
            if before {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if inclusive {
            from = lo;
        } else {
            to = lo - 1;
        }
    }
    Ok((from, to))
}

/// `rapport replay --server`: pages through `EventStore.ReadAll`. Returns the number of
/// lines written.
pub async fn replay_server(url: String, options: ReplayOptions) -> Result<u64, CliError> {
    options.check()?;
    let mut client = pb::event_store_client::EventStoreClient::connect(url.clone())
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?
        .max_decoding_message_size(crate::limits::MESSAGE_BYTES_MAX);
    let head = client.get_head(()).await?.into_inner().position;
    let (from, to) = server_bounds(&mut client, &options, head).await?;
    let filter = Some(pb::Filter {
        stream_prefixes: options.stream_prefixes.clone(),
        event_types: options.event_types.clone(),
    });
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut cursor = from;
    let mut written = 0;
    'pages: while cursor <= to {
        let page = client
            .read_all(pb::ReadAllRequest {
                from_position: cursor,
                backwards: false,
                max_count: crate::limits::READ_PAGE_MAX,
                filter: filter.clone(),
            })
            .await?
            .into_inner();
        for event in page.events {
            if event.position > to {
                break 'pages;
            }
            if !write_line(&mut out, &event_line(event))? {
                return Ok(written);
            }
            written += 1;
        }
        if page.end_reached || page.next_cursor <= cursor {
            break;
        }
        cursor = page.next_cursor;
    }
    finish(&mut out)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339("2023-01-01T00:00:00Z"),
            Ok(crate::seed::HISTORY_START_US)
        );
        assert_eq!(
            parse_rfc3339("2023-01-01"),
            Ok(crate::seed::HISTORY_START_US)
        );
        assert_eq!(
            parse_rfc3339("2023-01-01T01:00:00.5+01:00"),
            Ok(crate::seed::HISTORY_START_US + 500_000)
        );
        assert_eq!(
            crate::cli::rfc3339(parse_rfc3339("2000-02-29T12:34:56.000001Z").unwrap()),
            "2000-02-29T12:34:56.000001Z"
        );
        for bad in [
            "",
            "2023-02-30",
            "2023-01-01T25:00:00Z",
            "2023-01-01T00:00:00",
            "yesterday",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn time_bounds_are_positions() {
        // Recorded times 10, 20, 20, 30 at positions 1..=4.
        let times = [10, 20, 20, 30];
        let mut recorded = |p: u64| Ok(times[(p - 1) as usize]);
        let options = ReplayOptions {
            from_time_us: Some(20),
            to_time_us: Some(20),
            ..ReplayOptions::default()
        };
        assert_eq!(position_bounds(&options, 4, &mut recorded).unwrap(), (2, 3));
        let options = ReplayOptions {
            from_time_us: Some(31),
            ..ReplayOptions::default()
        };
        let (from, to) = position_bounds(&options, 4, &mut recorded).unwrap();
        assert!(from > to);
    }
}

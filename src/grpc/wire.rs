//! `RecordedEvent` and `ReadResponse` written straight to protobuf bytes from the stored
//! event, for the read RPCs (see [`super::encoded`]).
//!
//! Building the prost message first cost a replay most of its server time: every string
//! of the envelope and every key and value of custom data became an allocation (a
//! `BTreeMap` node per field), and then prost walked the tree twice more (lengths, then
//! bytes). Here one pass writes the fields in field-number order — prost's order — and a
//! custom event's data goes from its stored bincode to protobuf `Struct` bytes without
//! an allocation per value. Built-in events, whose personal parts must be opened, still
//! go through [`convert::built_in_body`] and prost for the `event` field alone.
//!
//! The bytes decode to exactly what [`convert::recorded_event`] builds (unit and property
//! tests below): a client cannot tell the paths apart.

use tonic::Status;
use uuid::Uuid;

use super::convert::{self, timestamp_from_us};
use crate::domain::events::CustomEvent;
use crate::limits::CUSTOM_DATA_DEPTH_MAX;
#[cfg(test)]
use crate::log::LoggedEvent;
use crate::log::{Hash, StoredEvent, StoredEventView};
use crate::privacy::{PersonalState, Privacy};

/// Protobuf wire types used here.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LENGTH_DELIMITED: u32 = 2;

/// The protobuf varint of `value`: its bytes and how many are used.
fn varint(mut value: u64) -> ([u8; 10], usize) {
    let mut bytes = [0u8; 10];
    let mut n = 0;
    while value >= 0x80 {
        bytes[n] = (value as u8) | 0x80;
        value >>= 7;
        n += 1;
    }
    bytes[n] = value as u8;
    (bytes, n + 1)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    // Byte by byte: most varints here (keys, small lengths) are one or two bytes, and a
    // copy of a variable-length slice is a call to memcpy (~4 % of a replay's samples).
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u32) {
    put_varint(out, u64::from(field << 3 | wire_type));
}

/// A `uint64`/`uint32`/enum field, left out when zero (proto3 default).
fn put_uint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_key(out, field, VARINT);
        put_varint(out, value);
    }
}

/// A `string`/`bytes` field, left out when empty (proto3 default).
fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    if !bytes.is_empty() {
        put_length_delimited(out, field, bytes);
    }
}

/// A length-delimited field written whole (also when empty).
fn put_length_delimited(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, LENGTH_DELIMITED);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Opens a nested message (field key, then a one-byte length placeholder); its content
/// follows; [`end_nested`] fixes the length up.
fn begin_nested(out: &mut Vec<u8>, field: u32) -> usize {
    put_key(out, field, LENGTH_DELIMITED);
    out.push(0);
    out.len()
}

/// Opens a nested message whose content is likely 128 bytes to 16 KiB long (a whole
/// event, a custom body): as [`begin_nested`] with a two-byte length placeholder, so
/// [`end_nested_wide`] seldom moves the content. Moving a whole event right by one byte,
/// for every event of a page, was ~2 % of a replay's server samples.
fn begin_nested_wide(out: &mut Vec<u8>, field: u32) -> usize {
    put_key(out, field, LENGTH_DELIMITED);
    out.extend_from_slice(&[0, 0]);
    out.len()
}

/// Closes the nested message opened at `start` by [`begin_nested`]: short content (most)
/// keeps the one-byte length; longer content moves right to make room for its varint.
#[inline]
fn end_nested(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    if len < 0x80 {
        out[start - 1] = len as u8;
    } else {
        move_to_fit(out, start, 1);
    }
}

/// Closes the nested message opened at `start` by [`begin_nested_wide`].
#[inline]
fn end_nested_wide(out: &mut Vec<u8>, start: usize) {
    let len = out.len() - start;
    if (0x80..0x4000).contains(&len) {
        out[start - 2] = (len as u8) | 0x80;
        out[start - 1] = (len >> 7) as u8;
    } else {
        move_to_fit(out, start, 2);
    }
}

/// Writes the length of the content from `start` to the end of `out` when its varint
/// does not take the `reserved` bytes before it: moves the content to fit the varint, as
/// protobuf lengths are written in their shortest form (as prost writes them).
#[cold]
#[inline(never)]
fn move_to_fit(out: &mut Vec<u8>, start: usize, reserved: usize) {
    let len = out.len() - start;
    let (bytes, n) = varint(len as u64);
    let at = start - reserved;
    if n > reserved {
        out.resize(out.len() + n - reserved, 0);
    }
    out.copy_within(start..start + len, at + n);
    out.truncate(at + n + len);
    out[at..at + n].copy_from_slice(&bytes[..n]);
}

/// `google.protobuf.Timestamp` as field `field` (always present, as the message sets it).
fn put_timestamp(out: &mut Vec<u8>, field: u32, us: i64) {
    let ts = timestamp_from_us(us);
    let start = begin_nested(out, field);
    // int64 and int32 go on the wire as their two's complement, sign-extended to 64 bits.
    put_uint_field(out, 1, ts.seconds as u64);
    put_uint_field(out, 2, i64::from(ts.nanos) as u64);
    end_nested(out, start);
}

/// Appends the protobuf bytes of the `RecordedEvent` of `logged` to `out` (see the
/// module doc). On error `out` may hold part of the message: the caller drops it.
#[cfg(test)]
fn put_recorded_event(
    out: &mut Vec<u8>,
    logged: &LoggedEvent,
    privacy: Option<&Privacy>,
) -> Result<(), Status> {
    put_recorded_view(
        out,
        &logged.event.view(),
        &logged.hash,
        Some(&logged.event),
        privacy,
    )
}

/// Appends the protobuf bytes of the `RecordedEvent` of an event borrowed from its
/// chunk ([`StoredEventView`]), with its chain hash, to `out` (see the module doc). On
/// error `out` may hold part of the message: the caller drops it. A built-in body is decoded from the owned event when the caller
/// has it (`owned`), else from a copy.
pub fn put_recorded_view(
    out: &mut Vec<u8>,
    event: &StoredEventView<'_>,
    hash: &Hash,
    owned: Option<&StoredEvent>,
    privacy: Option<&Privacy>,
) -> Result<(), Status> {
    let mut id = Uuid::encode_buffer();
    let id = Uuid::from_bytes(event.event_id)
        .hyphenated()
        .encode_lower(&mut id);
    put_uint_field(out, 1, event.position);
    put_bytes_field(out, 2, event.stream.as_bytes());
    put_uint_field(out, 3, event.revision);
    put_bytes_field(out, 4, id.as_bytes());
    put_bytes_field(out, 5, event.event_type.as_bytes());
    let personal = if CustomEvent::is_custom_type(event.event_type) {
        put_custom_body(out, event)?;
        PersonalState::None
    } else {
        let copy;
        let owned = match owned {
            Some(owned) => owned,
            None => {
                copy = event.to_owned_event();
                &copy
            }
        };
        let (body, personal) = convert::built_in_body(owned, privacy)?;
        put_length_delimited(out, 6, &prost::Message::encode_to_vec(&body));
        personal
    };
    put_timestamp(out, 7, event.recorded_at_us);
    put_timestamp(out, 8, event.occurred_at_us);
    for &(key, value) in &event.metadata {
        let start = begin_nested(out, 9);
        put_bytes_field(out, 1, key.as_bytes());
        put_bytes_field(out, 2, value.as_bytes());
        end_nested(out, start);
    }
    put_bytes_field(out, 10, hash);
    put_bytes_field(out, 11, event.correlation_id.as_bytes());
    put_bytes_field(out, 12, event.causation_id.as_bytes());
    put_bytes_field(out, 13, event.actor.as_bytes());
    put_bytes_field(out, 14, event.source_channel.as_bytes());
    put_uint_field(out, 15, u64::from(event.schema_version));
    put_uint_field(out, 16, convert::personal_data(personal) as u64);
    Ok(())
}

/// Appends the protobuf bytes of a `ReadResponse` holding `events` to `out`.
#[cfg(test)]
fn put_read_response(
    out: &mut Vec<u8>,
    events: &[LoggedEvent],
    end_reached: bool,
    next_cursor: u64,
    privacy: Option<&Privacy>,
) -> Result<(), Status> {
    for logged in events {
        put_read_response_event(out, logged, privacy)?;
    }
    put_read_response_end(out, end_reached, next_cursor);
    Ok(())
}

/// Appends one event of a `ReadResponse` (field 1) to `out`.
#[cfg(test)]
fn put_read_response_event(
    out: &mut Vec<u8>,
    logged: &LoggedEvent,
    privacy: Option<&Privacy>,
) -> Result<(), Status> {
    put_read_response_view(
        out,
        &logged.event.view(),
        &logged.hash,
        Some(&logged.event),
        privacy,
    )
}

/// Appends one event of a `ReadResponse` (field 1), borrowed from its chunk (see
/// [`put_recorded_view`]), to `out`.
pub fn put_read_response_view(
    out: &mut Vec<u8>,
    event: &StoredEventView<'_>,
    hash: &Hash,
    owned: Option<&StoredEvent>,
    privacy: Option<&Privacy>,
) -> Result<(), Status> {
    let start = begin_nested_wide(out, 1);
    put_recorded_view(out, event, hash, owned, privacy)?;
    end_nested_wide(out, start);
    Ok(())
}

/// Appends the end of a `ReadResponse` (fields 2 and 3) after its events.
pub fn put_read_response_end(out: &mut Vec<u8>, end_reached: bool, next_cursor: u64) {
    put_uint_field(out, 2, u64::from(end_reached));
    put_uint_field(out, 3, next_cursor);
}

/// Field 6, `Event { custom: CustomEvent { type, data: Struct } }`, from the stored data.
fn put_custom_body(out: &mut Vec<u8>, event: &StoredEventView<'_>) -> Result<(), Status> {
    if event.schema_version != CustomEvent::SCHEMA_VERSION {
        return Err(convert::undecodable_at(
            event.position,
            format!(
                "unknown schema version {} of custom event {}",
                event.schema_version, event.event_type
            ),
        ));
    }
    let body = begin_nested_wide(out, 6);
    let custom = begin_nested_wide(out, 1);
    put_bytes_field(out, 1, event.event_type.as_bytes());
    let data = begin_nested_wide(out, 2);
    let mut stored = Bincode {
        bytes: event.payload,
    };
    stored
        .put_struct_fields(out, 1)
        .and_then(|()| match stored.bytes.len() {
            0 => Ok(()),
            n => Err(format!("{n} trailing bytes")),
        })
        .map_err(|reason| {
            convert::undecodable_at(
                event.position,
                format!(
                    "malformed {} v{}: {reason}",
                    event.event_type, event.schema_version
                ),
            )
        })?;
    end_nested_wide(out, data);
    end_nested_wide(out, custom);
    end_nested_wide(out, body);
    Ok(())
}

/// A reader of the bincode (standard configuration: little-endian, variable-length
/// integers) of the domain's custom data, `BTreeMap<String, custom::Value>`.
struct Bincode<'a> {
    bytes: &'a [u8],
}

impl<'a> Bincode<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    /// bincode's variable-length integer: one byte below 251, else a marker byte and a
    /// little-endian u16/u32/u64.
    fn varint(&mut self) -> Result<u64, String> {
        let le = |bytes: &[u8]| {
            let mut buf = [0u8; 8];
            buf[..bytes.len()].copy_from_slice(bytes);
            u64::from_le_bytes(buf)
        };
        match self.byte()? {
            small @ 0..=250 => Ok(u64::from(small)),
            251 => Ok(le(self.take(2)?)),
            252 => Ok(le(self.take(4)?)),
            253 => Ok(le(self.take(8)?)),
            marker => Err(format!("unsupported integer marker {marker}")),
        }
    }

    fn len(&mut self) -> Result<usize, String> {
        let len = self.varint()?;
        // Every entry takes at least one byte: a longer count is corrupt, not a hint.
        usize::try_from(len)
            .ok()
            .filter(|&len| len <= self.bytes.len())
            .ok_or_else(|| format!("length {len} runs past the data"))
    }

    fn str(&mut self) -> Result<&'a [u8], String> {
        let len = self.len()?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        Ok(bytes)
    }

    /// A map of values as the entries (field `field`) of a protobuf `Struct`.
    fn put_struct_fields(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
        for _ in 0..self.len()? {
            let entry = begin_nested(out, 1);
            put_bytes_field(out, 1, self.str()?);
            let value = begin_nested(out, 2);
            self.put_value(out, depth)?;
            end_nested(out, value);
            end_nested(out, entry);
        }
        Ok(())
    }

    /// One `custom::Value` (variant index, then its content) as the fields of a
    /// protobuf `Value`. `depth` counts the enclosing objects and lists.
    fn put_value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
        match self.varint()? {
            0 => {
                put_key(out, 1, VARINT);
                out.push(0);
            }
            1 => {
                put_key(out, 4, VARINT);
                match self.byte()? {
                    b @ (0 | 1) => out.push(b),
                    other => return Err(format!("bool byte {other}")),
                }
            }
            2 => {
                // f64 little-endian in both encodings.
                put_key(out, 2, FIXED64);
                out.extend_from_slice(self.take(8)?);
            }
            3 => {
                let text = self.str()?;
                put_length_delimited(out, 3, text);
            }
            4 | 5 if depth >= CUSTOM_DATA_DEPTH_MAX => {
                return Err(format!("nests deeper than {CUSTOM_DATA_DEPTH_MAX} levels"));
            }
            4 => {
                let list = begin_nested(out, 6);
                for _ in 0..self.len()? {
                    let item = begin_nested(out, 1);
                    self.put_value(out, depth + 1)?;
                    end_nested(out, item);
                }
                end_nested(out, list);
            }
            5 => {
                let object = begin_nested(out, 5);
                self.put_struct_fields(out, depth + 1)?;
                end_nested(out, object);
            }
            other => return Err(format!("value variant {other}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message;

    use super::*;
    use crate::domain::events::{Value, encode};
    use crate::grpc::pb;

    fn logged(event_type: &str, payload: Vec<u8>, metadata: Vec<(String, String)>) -> LoggedEvent {
        LoggedEvent {
            event: StoredEvent {
                position: 300,
                stream: "order-1".into(),
                revision: 129,
                event_id: *Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001).as_bytes(),
                event_type: event_type.into(),
                schema_version: CustomEvent::SCHEMA_VERSION,
                recorded_at_us: 1_700_000_000_123_456,
                occurred_at_us: -1_234_567,
                correlation_id: "corr".into(),
                causation_id: String::new(),
                actor: "pos".into(),
                source_channel: String::new(),
                metadata,
                payload,
            },
            hash: [7; 32],
        }
    }

    fn check(logged: &LoggedEvent) {
        let mut out = Vec::new();
        put_recorded_event(&mut out, logged, None).unwrap();
        let expected = convert::recorded_event(logged.clone(), None).unwrap();
        let decoded = pb::RecordedEvent::decode(out.as_slice()).unwrap();
        assert_eq!(decoded, expected);
        // Metadata (and maps in built-in bodies) are hash maps in prost, whose order
        // varies; a custom event with at most one metadata entry has the very bytes.
        if logged.event.metadata.len() <= 1 && CustomEvent::is_custom_type(&logged.event.event_type)
        {
            assert_eq!(out, expected.encode_to_vec());
        }
    }

    fn long(n: usize) -> String {
        "x".repeat(n)
    }

    #[test]
    fn custom_events_encode_as_the_message_does() {
        let data: BTreeMap<String, Value> = [
            (String::new(), Value::Null),
            ("b".into(), Value::Bool(true)),
            ("f".into(), Value::Bool(false)),
            ("n".into(), Value::Number(-0.0)),
            ("s".into(), Value::String(long(300))),
            ("e".into(), Value::String(String::new())),
            (
                "l".into(),
                Value::List(vec![Value::Null, Value::Object(BTreeMap::new())]),
            ),
            (long(200), Value::List(Vec::new())),
            (
                "o".into(),
                Value::Object([("deep".into(), Value::String(long(20_000)))].into()),
            ),
        ]
        .into();
        check(&logged("review.written", encode(&data), Vec::new()));
        check(&logged(
            "x",
            encode(&BTreeMap::<String, Value>::new()),
            Vec::new(),
        ));
        let metadata = vec![
            (String::new(), "v".into()),
            ("k".into(), String::new()),
            ("z".into(), long(130)),
        ];
        check(&logged("review.written", encode(&data), metadata));
    }

    #[test]
    fn every_built_in_event_encodes_as_the_message_does() {
        // The golden payloads of every built-in type and version (tests/fixtures).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            let mut parts = name.split('.');
            let (Some(event_type), Some(version)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Some(version) = version.strip_prefix('v').and_then(|v| v.parse().ok()) else {
                continue;
            };
            if !path.is_file() || event_type == "CustomEvent" {
                continue;
            }
            let mut event = logged(event_type, std::fs::read(&path).unwrap(), Vec::new());
            event.event.schema_version = version;
            check(&event);
            seen += 1;
        }
        assert!(seen >= 20, "only {seen} fixtures");
    }

    #[test]
    fn a_read_response_encodes_as_the_message_does() {
        let data: BTreeMap<String, Value> = [("a".into(), Value::Number(1.5))].into();
        // Events whose lengths take one, two and three varint bytes: the two-byte
        // placeholder of each event is kept, shrunk and grown.
        let big: BTreeMap<String, Value> = [("a".into(), Value::String(long(20_000)))].into();
        let mut tiny = logged("a", encode(&BTreeMap::<String, Value>::new()), Vec::new());
        tiny.event.stream = "a-1".into();
        tiny.event.revision = 0;
        tiny.event.recorded_at_us = 0;
        tiny.event.occurred_at_us = 0;
        tiny.event.correlation_id = String::new();
        tiny.event.actor = String::new();
        let events = vec![
            logged("a.b", encode(&data), Vec::new()),
            tiny,
            logged("c.d", encode(&big), Vec::new()),
            logged("c.d", encode(&data), Vec::new()),
        ];
        let mut out = Vec::new();
        put_read_response(&mut out, &events, true, 302, None).unwrap();
        let expected = pb::ReadResponse {
            events: events
                .iter()
                .map(|e| convert::recorded_event(e.clone(), None).unwrap())
                .collect(),
            end_reached: true,
            next_cursor: 302,
        };
        assert_eq!(out, expected.encode_to_vec());
        let lengths: Vec<usize> = expected.events.iter().map(|e| e.encoded_len()).collect();
        assert!(
            lengths[0] >= 0x80 && lengths[1] < 0x80 && lengths[2] >= 0x4000,
            "{lengths:?}"
        );
        out.clear();
        put_read_response(&mut out, &[], false, 0, None).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn corrupt_custom_data_is_an_error_not_a_panic() {
        let data: BTreeMap<String, Value> = [
            ("k".into(), Value::List(vec![Value::String("v".into())])),
            ("n".into(), Value::Number(2.0)),
        ]
        .into();
        let payload = encode(&data);
        let mut out = Vec::new();
        for cut in 0..payload.len() {
            let event = logged("x", payload[..cut].to_vec(), Vec::new());
            assert!(
                put_recorded_event(&mut out, &event, None).is_err(),
                "cut {cut}"
            );
        }
        let mut trailing = payload.clone();
        trailing.push(0);
        let event = logged("x", trailing, Vec::new());
        assert!(put_recorded_event(&mut out, &event, None).is_err());
        // A value of variant 9; a bool byte of 2; invalid UTF-8 in a key; a huge count.
        for bad in [
            &[1u8, 1, b'k', 9][..],
            &[1, 1, b'k', 1, 2],
            &[1, 1, 0xff, 0],
            &[253, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
        ] {
            let event = logged("x", bad.to_vec(), Vec::new());
            assert!(put_recorded_event(&mut out, &event, None).is_err());
        }
        // Nesting past the bound is refused rather than recursed into.
        let mut value = Value::Null;
        for _ in 0..CUSTOM_DATA_DEPTH_MAX + 2 {
            value = Value::List(vec![value]);
        }
        let deep: BTreeMap<String, Value> = [("k".into(), value)].into();
        let event = logged("x", encode(&deep), Vec::new());
        assert!(put_recorded_event(&mut out, &event, None).is_err());
        // A version this build does not know.
        let mut event = logged("x", payload, Vec::new());
        event.event.schema_version = 99;
        assert!(put_recorded_event(&mut out, &event, None).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_custom_event_encodes_as_the_message_does(
            data in proptest::collection::btree_map(
                ".{0,8}",
                crate::grpc::custom_data::tests::value(),
                0..10,
            ),
            metadata in proptest::collection::btree_map(".{0,4}", ".{0,150}", 0..3),
        ) {
            check(&logged("any.type", encode(&data), metadata.into_iter().collect()));
        }
    }
}

//! Append requests as the server decodes them: every field by the generated prost code
//! except each event's body, which stays protobuf bytes until the event is converted.
//! A custom event's `Struct` data then goes from those bytes straight to its stored
//! bincode ([`custom_to_stored`]), the mirror of [`super::custom_data`] on the read
//! side: no `Struct` tree, no domain `Value` tree, one output buffer. Building both
//! trees and walking them again was most of a batch append's request handling.
//!
//! The fast path takes only input it can answer exactly as the general path would: one
//! `custom` case, each field at most once and no unknown fields, finite numbers, unique keys, depth within the limit, a valid custom type. Anything else (rare, or
//! invalid) returns `None` and the caller decodes the body with prost and converts it as
//! before, so every violation and every edge case of the protobuf rules keeps the
//! general path's answer. The unit tests check both paths give the same stored bytes.

use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{DecodeContext, WireType};

use super::pb;
use crate::domain::events::{CustomEvent, is_valid_custom_type};
use crate::limits::CUSTOM_DATA_DEPTH_MAX;

/// An `AppendRequest` whose events keep their bodies as bytes ([`WireProposedEvent`]).
/// Decodes from exactly the bytes of `pb::AppendRequest`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireAppendRequest {
    /// Every field but `events` (which stays empty here).
    pub request: pb::AppendRequest,
    /// The events, in order.
    pub events: Vec<WireProposedEvent>,
}

/// A `ProposedEvent` whose `event` (field 2) is kept as its encoded `Event` message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WireProposedEvent {
    /// Every field but `event` (which stays `None` here).
    pub envelope: pb::ProposedEvent,
    /// The encoded `Event`; `None` when the field is absent. A field sent twice is
    /// concatenated, which is how protobuf merges a repeated message field.
    pub body: Option<Bytes>,
}

const EVENTS_TAG: u32 = 6;
const BODY_TAG: u32 = 2;

impl prost::Message for WireAppendRequest {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.request.encode_raw(buf);
        prost::encoding::message::encode_repeated(EVENTS_TAG, &self.events, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag == EVENTS_TAG {
            prost::encoding::message::merge_repeated(wire_type, &mut self.events, buf, ctx)
        } else {
            self.request.merge_field(tag, wire_type, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        self.request.encoded_len()
            + prost::encoding::message::encoded_len_repeated(EVENTS_TAG, &self.events)
    }

    fn clear(&mut self) {
        self.request.clear();
        self.events.clear();
    }
}

impl prost::Message for WireProposedEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        self.envelope.encode_raw(buf);
        if let Some(body) = &self.body {
            prost::encoding::bytes::encode(BODY_TAG, body, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag != BODY_TAG {
            return self.envelope.merge_field(tag, wire_type, buf, ctx);
        }
        let mut more = Bytes::new();
        prost::encoding::bytes::merge(wire_type, &mut more, buf, ctx)?;
        self.body = Some(match self.body.take() {
            None => more,
            Some(first) => {
                let mut both = BytesMut::with_capacity(first.len() + more.len());
                both.extend_from_slice(&first);
                both.extend_from_slice(&more);
                both.freeze()
            }
        });
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.envelope.encoded_len()
            + self.body.as_ref().map_or(0, |body| {
                prost::encoding::bytes::encoded_len(BODY_TAG, body)
            })
    }

    fn clear(&mut self) {
        self.envelope.clear();
        self.body = None;
    }
}

impl From<pb::AppendRequest> for WireAppendRequest {
    /// Encodes each event's body (for callers that hold decoded messages).
    fn from(mut request: pb::AppendRequest) -> Self {
        let events = std::mem::take(&mut request.events)
            .into_iter()
            .map(|mut envelope| {
                let body = envelope
                    .event
                    .take()
                    .map(|event| Bytes::from(prost::Message::encode_to_vec(&event)));
                WireProposedEvent { envelope, body }
            })
            .collect();
        Self { request, events }
    }
}

/// A custom event's type and stored payload, straight from its encoded `Event`; `None`
/// when the body is not a custom event the fast path takes (see the module doc).
pub fn custom_to_stored(body: &[u8]) -> Option<(String, Vec<u8>)> {
    // Event: exactly one field, `custom` (1), and nothing else.
    let mut event = Reader(body);
    let custom = event.only_len_field(1)?;
    let (event_type, data) = fields_1_and_2(custom)?;
    let event_type = std::str::from_utf8(event_type.unwrap_or_default()).ok()?;
    if !is_valid_custom_type(event_type) {
        return None;
    }
    let data = data.unwrap_or_default();
    let mut out = Vec::with_capacity(data.len() + 16);
    let depth = write_struct(data, 1, &mut out)?;
    // As `CustomEvent::validate` counts: the data object plus its deepest value.
    if depth > CUSTOM_DATA_DEPTH_MAX {
        return None;
    }
    debug_assert_eq!(CustomEvent::SCHEMA_VERSION, 1);
    Some((event_type.to_owned(), out))
}

/// Writes a `Struct` as bincode of `BTreeMap<String, Value>` (entries sorted by key) and
/// returns its depth as `Value::depth` counts it (1 + its deepest value). `level` is the
/// nesting of its values as the general path counts it, to refuse too deep input early.
fn write_struct(bytes: &[u8], level: usize, out: &mut Vec<u8>) -> Option<usize> {
    let mut reader = Reader(bytes);
    let mut entries: Vec<(&str, &[u8])> = Vec::new();
    while !reader.is_empty() {
        match reader.key()? {
            (1, WireType::LengthDelimited) => entries.push(map_entry(reader.len_delimited()?)?),
            _ => return None,
        }
    }
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    if entries.windows(2).any(|pair| pair[0].0 == pair[1].0) {
        // Protobuf keeps the last of equal keys: the general path knows which that is.
        return None;
    }
    put_len(out, entries.len());
    let mut deepest = 0;
    for (key, value) in entries {
        put_len(out, key.len());
        out.extend_from_slice(key.as_bytes());
        deepest = deepest.max(write_value(value, level, out)?);
    }
    Some(1 + deepest)
}

/// One `Struct.fields` entry: its key and its encoded `Value`. Either may be absent, as
/// prost leaves out a default one (`""`, a `Value` with no kind): absent is the default.
fn map_entry(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (key, value) = fields_1_and_2(bytes)?;
    let key = std::str::from_utf8(key.unwrap_or_default()).ok()?;
    Some((key, value.unwrap_or_default()))
}

/// Fields 1 and 2 of a message, each absent or its bytes ([`fields_1_and_2`]).
type FieldPair<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// The length-delimited fields 1 and 2 of a message that has no other field, each sent at
/// most once; `None` for anything else (a field sent twice is merged by protobuf's rules,
/// which the general path applies). Both `CustomEvent` (type, data) and a `Struct` map
/// entry (key, value) have this shape.
fn fields_1_and_2(bytes: &[u8]) -> Option<FieldPair<'_>> {
    let mut reader = Reader(bytes);
    let (mut first, mut second) = (None, None);
    while !reader.is_empty() {
        match reader.key()? {
            (1, WireType::LengthDelimited) if first.is_none() => {
                first = Some(reader.len_delimited()?);
            }
            (2, WireType::LengthDelimited) if second.is_none() => {
                second = Some(reader.len_delimited()?);
            }
            _ => return None,
        }
    }
    Some((first, second))
}

/// Writes a `Value` as bincode of the domain's `Value` (variant index, then its content)
/// and returns its depth as `Value::depth` counts it.
fn write_value(bytes: &[u8], level: usize, out: &mut Vec<u8>) -> Option<usize> {
    if level > CUSTOM_DATA_DEPTH_MAX {
        return None;
    }
    let mut reader = Reader(bytes);
    if reader.is_empty() {
        // No kind set: the general path reads it as null.
        out.push(0);
        return Some(1);
    }
    let key = reader.key()?;
    let depth = match key {
        // null_value: any enum number is null.
        (1, WireType::Varint) => {
            reader.varint()?;
            out.push(0);
            1
        }
        (2, WireType::SixtyFourBit) => {
            let number = f64::from_le_bytes(reader.take(8)?.try_into().ok()?);
            if !number.is_finite() {
                return None;
            }
            out.push(2);
            out.extend_from_slice(&number.to_le_bytes());
            1
        }
        (3, WireType::LengthDelimited) => {
            let text = std::str::from_utf8(reader.len_delimited()?).ok()?;
            out.push(3);
            put_len(out, text.len());
            out.extend_from_slice(text.as_bytes());
            1
        }
        (4, WireType::Varint) => {
            let flag = reader.varint()?;
            if flag > 1 {
                return None;
            }
            out.push(1);
            out.push(flag as u8);
            1
        }
        (5, WireType::LengthDelimited) => {
            out.push(5);
            write_struct(reader.len_delimited()?, level + 1, out)?
        }
        (6, WireType::LengthDelimited) => {
            out.push(4);
            write_list(reader.len_delimited()?, level + 1, out)?
        }
        _ => return None,
    };
    // One kind only: a second field (prost keeps the last) goes the general way.
    reader.is_empty().then_some(depth)
}

/// Writes a `ListValue` as bincode of `Vec<Value>` and returns its depth.
fn write_list(bytes: &[u8], level: usize, out: &mut Vec<u8>) -> Option<usize> {
    let mut reader = Reader(bytes);
    let mut items = Vec::new();
    while !reader.is_empty() {
        match reader.key()? {
            (1, WireType::LengthDelimited) => items.push(reader.len_delimited()?),
            _ => return None,
        }
    }
    put_len(out, items.len());
    let mut deepest = 0;
    for item in items {
        deepest = deepest.max(write_value(item, level, out)?);
    }
    Some(1 + deepest)
}

/// bincode's standard (variable-length) encoding of a length.
fn put_len(out: &mut Vec<u8>, len: usize) {
    let len = len as u64;
    if len < 251 {
        out.push(len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(251);
        out.extend_from_slice(&(len as u16).to_le_bytes());
    } else if len <= u64::from(u32::MAX) {
        out.push(252);
        out.extend_from_slice(&(len as u32).to_le_bytes());
    } else {
        out.push(253);
        out.extend_from_slice(&len.to_le_bytes());
    }
}

/// A cursor over protobuf bytes; every read is bounds-checked and `None` when short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            if shift == 63 && byte > 1 {
                return None;
            }
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }

    fn key(&mut self) -> Option<(u64, WireType)> {
        let key = self.varint()?;
        let wire_type = WireType::try_from(key & 7).ok()?;
        Some((key >> 3, wire_type))
    }

    fn len_delimited(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        self.take(len)
    }

    /// The content of the only field of a message, which must be field `tag`, length-delimited.
    fn only_len_field(&mut self, tag: u64) -> Option<&'a [u8]> {
        if self.key()? != (tag, WireType::LengthDelimited) {
            return None;
        }
        let content = self.len_delimited()?;
        self.is_empty().then_some(content)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prost::Message;
    use prost_types::{ListValue, Struct, Value, value::Kind};

    use super::*;
    use crate::domain::Violations;
    use crate::domain::events::DomainEvent;

    /// The general path: prost decode, convert, validate, encode; `None` on any violation.
    fn general(body: &[u8]) -> Option<(String, Vec<u8>)> {
        let event = pb::Event::decode(body).ok()?;
        let mut v = Violations::new("");
        let domain = crate::grpc::convert::event_from_proto(event, &mut v)?;
        if !v.is_empty() || domain.validate("").is_err() {
            return None;
        }
        let DomainEvent::Custom(_) = &domain else {
            return None;
        };
        Some((domain.event_type().to_owned(), domain.encode().ok()?))
    }

    fn custom(event_type: &str, data: Option<Struct>) -> Vec<u8> {
        pb::Event {
            kind: Some(pb::event::Kind::Custom(pb::CustomEvent {
                r#type: event_type.into(),
                data,
            })),
        }
        .encode_to_vec()
    }

    fn value(kind: Kind) -> Value {
        Value { kind: Some(kind) }
    }

    fn object(fields: &[(&str, Value)]) -> Struct {
        Struct {
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn every_kind_of_value_stores_as_the_general_path_stores_it() {
        let long = "x".repeat(300);
        let nested = object(&[
            ("n", value(Kind::NumberValue(-0.0))),
            ("e", value(Kind::StructValue(Struct::default()))),
        ]);
        let data = object(&[
            ("null", value(Kind::NullValue(0))),
            ("none", Value { kind: None }),
            ("yes", value(Kind::BoolValue(true))),
            ("no", value(Kind::BoolValue(false))),
            ("pi", value(Kind::NumberValue(std::f64::consts::PI))),
            ("text", value(Kind::StringValue("h\u{e9}llo".into()))),
            ("long", value(Kind::StringValue(long))),
            ("empty", value(Kind::StringValue(String::new()))),
            (
                "list",
                value(Kind::ListValue(ListValue {
                    values: vec![
                        value(Kind::NumberValue(1.0)),
                        value(Kind::StructValue(nested.clone())),
                        value(Kind::ListValue(ListValue::default())),
                    ],
                })),
            ),
            ("obj", value(Kind::StructValue(nested))),
            // prost leaves an empty key and a kind-less value out of the entry.
            ("", Value { kind: None }),
        ]);
        for body in [
            custom("review.written", Some(data)),
            custom("a", None),
            custom("a", Some(Struct::default())),
        ] {
            let fast = custom_to_stored(&body);
            assert!(fast.is_some());
            assert_eq!(fast, general(&body));
        }
    }

    #[test]
    fn many_fields_use_bincode_long_lengths() {
        let fields: BTreeMap<String, Value> = (0..300)
            .map(|i| (format!("k{i:04}"), value(Kind::BoolValue(i % 2 == 0))))
            .collect();
        let body = custom("many", Some(Struct { fields }));
        let fast = custom_to_stored(&body);
        assert!(fast.is_some());
        assert_eq!(fast, general(&body));
    }

    #[test]
    fn what_the_fast_path_declines_goes_the_general_way() {
        let nan = object(&[("x", value(Kind::NumberValue(f64::NAN)))]);
        let mut deep = value(Kind::NullValue(0));
        for _ in 0..CUSTOM_DATA_DEPTH_MAX {
            deep = value(Kind::ListValue(ListValue { values: vec![deep] }));
        }
        let too_deep = object(&[("d", deep)]);
        let declined = [
            custom("x", Some(nan)),
            custom("x", Some(too_deep)),
            custom("CustomerRegistered", None),
            custom("", None),
            custom("1bad", None),
            // Not a custom event, or no case at all.
            pb::Event::default().encode_to_vec(),
            pb::Event {
                kind: Some(pb::event::Kind::CustomerRegistered(Default::default())),
            }
            .encode_to_vec(),
        ];
        for body in declined {
            assert_eq!(custom_to_stored(&body), None, "{body:?}");
        }
        // A field sent twice: protobuf keeps the last value, the fast path declines.
        let mut twice = custom("x", None);
        twice.extend_from_slice(&custom("y", None));
        assert_eq!(custom_to_stored(&twice), None);
        // Duplicate keys on the wire (a hand-built Struct): the general path keeps the last.
        let entry = |flag: bool| {
            let mut entry = Vec::new();
            prost::encoding::string::encode(1, &"k".to_owned(), &mut entry);
            prost::encoding::message::encode(2, &value(Kind::BoolValue(flag)), &mut entry);
            entry
        };
        let mut data = Vec::new();
        for flag in [true, false] {
            prost::encoding::bytes::encode(1, &entry(flag), &mut data);
        }
        let mut custom_bytes = Vec::new();
        prost::encoding::string::encode(1, &"x".to_owned(), &mut custom_bytes);
        prost::encoding::bytes::encode(2, &data, &mut custom_bytes);
        let mut body = Vec::new();
        prost::encoding::bytes::encode(1, &custom_bytes, &mut body);
        assert_eq!(custom_to_stored(&body), None);
        let (_, stored) = general(&body).expect("the general path takes it");
        let kept: BTreeMap<String, crate::domain::events::Value> =
            crate::domain::events::decode_exact("x", 1, &stored).unwrap();
        assert_eq!(kept["k"], crate::domain::events::Value::Bool(false));
    }

    #[test]
    fn wire_requests_decode_from_the_bytes_of_an_append_request() {
        let request = pb::AppendRequest {
            stream: "order-1".into(),
            expected: Some(pb::append_request::Expected::Exact(4)),
            events: vec![
                pb::ProposedEvent {
                    event_id: "0190b0a8-5f2e-7c3a-9d4e-1a2b3c4d5e6f".into(),
                    event: Some(pb::Event {
                        kind: Some(pb::event::Kind::Custom(pb::CustomEvent {
                            r#type: "a.b".into(),
                            data: Some(object(&[("k", value(Kind::NumberValue(2.0)))])),
                        })),
                    }),
                    metadata: [("m".to_owned(), "v".to_owned())].into(),
                    correlation_id: "c".into(),
                    actor: "me".into(),
                    ..Default::default()
                },
                pb::ProposedEvent::default(),
            ],
        };
        let bytes = request.encode_to_vec();
        let wire = WireAppendRequest::decode(&bytes[..]).unwrap();
        assert_eq!(wire, WireAppendRequest::from(request.clone()));
        assert_eq!(wire.request.stream, "order-1");
        assert_eq!(wire.events.len(), 2);
        assert_eq!(wire.events[0].envelope.actor, "me");
        assert_eq!(wire.events[1].body, None);
        // Encoding the wire form gives back a request prost decodes to the original.
        assert_eq!(
            pb::AppendRequest::decode(&wire.encode_to_vec()[..]).unwrap(),
            request
        );
        // A body sent in two parts is merged, as protobuf merges a message field.
        let mut split = pb::ProposedEvent::default().encode_to_vec();
        prost::encoding::bytes::encode(2, &custom("a.b", None), &mut split);
        prost::encoding::bytes::encode(2, &custom("c.d", None), &mut split);
        let event = WireProposedEvent::decode(&split[..]).unwrap();
        let merged = pb::ProposedEvent::decode(&split[..]).unwrap();
        assert_eq!(
            pb::Event::decode(event.body.unwrap()).unwrap(),
            merged.event.unwrap()
        );
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value { kind: None }),
            (0..3i32).prop_map(|n| value(Kind::NullValue(n))),
            any::<bool>().prop_map(|b| value(Kind::BoolValue(b))),
            any::<f64>().prop_map(|n| value(Kind::NumberValue(n))),
            ".{0,20}".prop_map(|s| value(Kind::StringValue(s))),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6)
                    .prop_map(|values| value(Kind::ListValue(ListValue { values }))),
                proptest::collection::btree_map(".{0,4}", inner, 0..6)
                    .prop_map(|fields| value(Kind::StructValue(Struct { fields }))),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever the fast path takes, it stores exactly as the general path does; and
        /// it takes every valid event prost encodes.
        #[test]
        fn the_fast_path_agrees_with_the_general_path(
            event_type in "[a-z][a-z0-9._:/-]{0,12}|CustomerRegistered|",
            fields in proptest::collection::btree_map(".{0,6}", any_value(), 0..8),
        ) {
            let body = custom(&event_type, Some(Struct { fields }));
            let fast = custom_to_stored(&body);
            let general = general(&body);
            if fast.is_some() {
                proptest::prop_assert_eq!(&fast, &general);
            }
            if general.is_some() {
                proptest::prop_assert!(fast.is_some(), "valid input declined");
            }
        }

        /// A valid body with one byte changed, or cut short, is declined or stored as
        /// the general path stores it; never a panic.
        #[test]
        fn damaged_bodies_are_declined_or_agree(
            fields in proptest::collection::btree_map(".{0,6}", any_value(), 1..6),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
            cut in proptest::prelude::any::<bool>(),
        ) {
            let mut body = custom("a.b", Some(Struct { fields }));
            let i = at.index(body.len());
            if cut {
                body.truncate(i);
            } else {
                body[i] = byte;
            }
            if let Some(fast) = custom_to_stored(&body) {
                proptest::prop_assert_eq!(Some(fast), general(&body));
            }
        }

        /// Arbitrary bytes never panic the fast path, and what it takes, the general
        /// path takes the same way.
        #[test]
        fn arbitrary_bytes_are_declined_or_agree(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Some(fast) = custom_to_stored(&body) {
                proptest::prop_assert_eq!(Some(fast), general(&body));
            }
        }
    }
}

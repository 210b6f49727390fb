//! Custom event data read straight from its stored bytes into protobuf's `Struct`.
//!
//! The stored data is bincode of the domain's `BTreeMap<String, custom::Value>`; these
//! types deserialize the same shape (the derived enum `Value`: variant index, then its
//! content) into `prost_types` values, so a read does one pass and one set of
//! allocations instead of building the domain value and converting it. The unit tests
//! check both paths agree on every kind of value.

use std::fmt;

use prost_types::{ListValue, Struct, value::Kind as ValueKind};
use serde::de::{
    self, Deserialize, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// The variants of `domain::events::custom::Value`, in declaration order.
const VARIANTS: &[&str] = &["Null", "Bool", "Number", "String", "List", "Object"];

/// Stored custom data (an object) as protobuf's `Struct`.
pub struct StoredStruct(pub Struct);

/// One stored custom value as a protobuf `Value`.
struct StoredValue(prost_types::Value);

/// A stored list as protobuf values.
struct StoredList(Vec<prost_types::Value>);

impl<'de> Deserialize<'de> for StoredStruct {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = StoredStruct;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of custom values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StoredStruct, A::Error> {
                let mut fields = std::collections::BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, StoredValue>()? {
                    fields.insert(key, value.0);
                }
                Ok(StoredStruct(Struct { fields }))
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

impl<'de> Deserialize<'de> for StoredList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Items;
        impl<'de> Visitor<'de> for Items {
            type Value = StoredList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of custom values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StoredList, A::Error> {
                // The hint comes from stored bytes: bounded, not trusted for capacity.
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(item) = seq.next_element::<StoredValue>()? {
                    items.push(item.0);
                }
                Ok(StoredList(items))
            }
        }
        deserializer.deserialize_seq(Items)
    }
}

impl<'de> Deserialize<'de> for StoredValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Variant;
        impl<'de> Visitor<'de> for Variant {
            type Value = StoredValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a custom value")
            }
            fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<StoredValue, A::Error> {
                let (index, content): (u32, _) = data.variant()?;
                let kind = match index {
                    0 => {
                        content.unit_variant()?;
                        ValueKind::NullValue(0)
                    }
                    1 => ValueKind::BoolValue(content.newtype_variant()?),
                    2 => ValueKind::NumberValue(content.newtype_variant()?),
                    3 => ValueKind::StringValue(content.newtype_variant()?),
                    4 => ValueKind::ListValue(ListValue {
                        values: content.newtype_variant::<StoredList>()?.0,
                    }),
                    5 => ValueKind::StructValue(content.newtype_variant::<StoredStruct>()?.0),
                    other => {
                        return Err(de::Error::invalid_value(
                            de::Unexpected::Unsigned(u64::from(other)),
                            &"a variant index 0..=5",
                        ));
                    }
                };
                Ok(StoredValue(prost_types::Value { kind: Some(kind) }))
            }
        }
        deserializer.deserialize_enum("Value", VARIANTS, Variant)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::events::{CustomEvent, Value, encode};

    fn sample() -> BTreeMap<String, Value> {
        let nested: BTreeMap<String, Value> = [
            (
                "deep".to_owned(),
                Value::List(vec![Value::Null, Value::Bool(false)]),
            ),
            ("empty".to_owned(), Value::Object(BTreeMap::new())),
        ]
        .into();
        [
            ("null".to_owned(), Value::Null),
            ("yes".to_owned(), Value::Bool(true)),
            ("n".to_owned(), Value::Number(-12.5)),
            ("big".to_owned(), Value::Number(1e300)),
            (
                "text".to_owned(),
                Value::String("h\u{e9}llo \u{1f600}".into()),
            ),
            ("none".to_owned(), Value::List(Vec::new())),
            (
                "list".to_owned(),
                Value::List(vec![
                    Value::Number(1.0),
                    Value::String(String::new()),
                    Value::Object(nested.clone()),
                ]),
            ),
            ("obj".to_owned(), Value::Object(nested)),
        ]
        .into()
    }

    #[test]
    fn stored_data_decodes_to_what_the_domain_path_converts_to() {
        let data = sample();
        let payload = encode(&data);
        let direct: StoredStruct =
            CustomEvent::decode_data_as("review.written", CustomEvent::SCHEMA_VERSION, &payload)
                .unwrap();
        let via_domain = crate::grpc::convert::struct_to(data);
        assert_eq!(direct.0, via_domain);
    }

    #[test]
    fn a_bad_variant_or_trailing_bytes_are_errors_not_panics() {
        let payload = encode(&sample());
        let mut trailing = payload.clone();
        trailing.push(0);
        assert!(CustomEvent::decode_data_as::<StoredStruct>("x", 1, &trailing).is_err());
        // One entry whose value has variant index 9.
        let bad = [1u8, 1, b'k', 9];
        assert!(CustomEvent::decode_data_as::<StoredStruct>("x", 1, &bad).is_err());
        for cut in 0..payload.len() {
            let _ = CustomEvent::decode_data_as::<StoredStruct>("x", 1, &payload[..cut]);
        }
    }

    /// Any custom value, up to four levels deep. Numbers are finite, as stored numbers
    /// are (appends refuse others), so decoded messages also compare equal.
    pub(in crate::grpc) fn value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-1e300..1e300f64).prop_map(Value::Number),
            ".{0,40}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
                proptest::collection::btree_map(".{0,6}", inner, 0..8).prop_map(Value::Object),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn any_stored_data_decodes_like_the_domain_path(
            data in proptest::collection::btree_map(".{0,8}", value(), 0..8)
        ) {
            let payload = encode(&data);
            let direct: StoredStruct = CustomEvent::decode_data_as("x", 1, &payload).unwrap();
            let via_domain = crate::grpc::convert::struct_to(data);
            proptest::prop_assert_eq!(
                prost::Message::encode_to_vec(&direct.0),
                prost::Message::encode_to_vec(&via_domain)
            );
        }
    }
}

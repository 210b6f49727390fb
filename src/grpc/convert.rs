//! Proto ⇄ domain conversion, in one place. Proto messages are destructured field by
//! field so that a new proto field fails to compile until someone maps it.

use std::collections::BTreeMap;

use prost_types::{ListValue, Struct, Timestamp, value::Kind as ValueKind};
use uuid::Uuid;

use super::convert_loyalty as loyalty;
use super::convert_pipeline::Wire;
use super::custom_data::StoredStruct;
use super::pb;
use crate::domain::common::{
    CalendarDate, Channel, ConsentPurpose, Decimal, Direction, InteractionKind, PostalAddress,
};
use crate::domain::events::{
    ConsentGiven, ConsentWithdrawn, ContactDetails, ContactDetailsChanged, CustomEvent,
    CustomFieldSet, CustomFieldValue, CustomerErased, CustomerIdentity, CustomerRegistered,
    CustomersMerged, FeedbackGiven, FeedbackMetric, FieldValue, IdentifierClaimed, IdentifierKind,
    IdentifierReleased, InteractionLogged, InteractionText, PreferenceCleared, PreferenceSet,
    PurchaseCompleted, PurchaseLine, PurchaseRefunded, RefundLine, TagAdded, TagRemoved, Value,
};
use crate::domain::events::{
    CustomerEnteredSegment, CustomerLeftSegment, SegmentArchived, SegmentChanged, SegmentDefined,
};
use crate::domain::personal::Personal;
use crate::domain::{DomainEvent, Violations};
use crate::limits::CUSTOM_DATA_DEPTH_MAX;
use crate::log::{LoggedEvent, StoredEvent};
use crate::privacy::{PersonalState, Privacy};

/// Earliest and latest instants a timestamp may carry (0001-01-01 .. 9999-12-31, as
/// in `google.protobuf.Timestamp`), in seconds since the Unix epoch.
const TIMESTAMP_SECONDS_MIN: i64 = -62_135_596_800;
const TIMESTAMP_SECONDS_MAX: i64 = 253_402_300_799;

/// Microseconds since the epoch → `Timestamp`.
pub fn timestamp_from_us(us: i64) -> Timestamp {
    Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: i32::try_from(us.rem_euclid(1_000_000) * 1_000).expect("below 1e9"),
    }
}

/// `Timestamp` → microseconds since the epoch (sub-microsecond digits are dropped).
pub fn timestamp_to_us(field: &str, ts: &Timestamp, v: &mut Violations) -> Option<i64> {
    if !(TIMESTAMP_SECONDS_MIN..=TIMESTAMP_SECONDS_MAX).contains(&ts.seconds)
        || !(0..1_000_000_000).contains(&ts.nanos)
    {
        v.add(
            field,
            "must be a valid timestamp between 0001-01-01 and 9999-12-31",
        );
        return None;
    }
    Some(ts.seconds * 1_000_000 + i64::from(ts.nanos / 1_000))
}

/// Parses a UUID field (required).
pub fn uuid_field(field: &str, text: &str, v: &mut Violations) -> Uuid {
    match Uuid::parse_str(text) {
        Ok(id) => id,
        Err(_) if text.is_empty() => {
            v.add(field, "is required (a UUID)");
            Uuid::nil()
        }
        Err(_) => {
            v.add(
                field,
                "must be a UUID such as 0190a3b2-7c4e-7def-8000-000000000001",
            );
            Uuid::nil()
        }
    }
}

/// Proto channel → domain.
pub fn channel_from(field: &str, raw: i32, v: &mut Violations) -> Channel {
    match pb::Channel::try_from(raw) {
        Ok(pb::Channel::Unspecified) => Channel::Unspecified,
        Ok(pb::Channel::Store) => Channel::Store,
        Ok(pb::Channel::Web) => Channel::Web,
        Ok(pb::Channel::MobileApp) => Channel::MobileApp,
        Ok(pb::Channel::Email) => Channel::Email,
        Ok(pb::Channel::Phone) => Channel::Phone,
        Ok(pb::Channel::Chat) => Channel::Chat,
        Ok(pb::Channel::Social) => Channel::Social,
        Ok(pb::Channel::Messaging) => Channel::Messaging,
        Err(_) => {
            v.add(field, format!("{raw} is not a Channel"));
            Channel::Unspecified
        }
    }
}

/// Domain channel → proto.
pub fn channel_to(channel: Channel) -> i32 {
    (match channel {
        Channel::Unspecified => pb::Channel::Unspecified,
        Channel::Store => pb::Channel::Store,
        Channel::Web => pb::Channel::Web,
        Channel::MobileApp => pb::Channel::MobileApp,
        Channel::Email => pb::Channel::Email,
        Channel::Phone => pb::Channel::Phone,
        Channel::Chat => pb::Channel::Chat,
        Channel::Social => pb::Channel::Social,
        Channel::Messaging => pb::Channel::Messaging,
    }) as i32
}

/// Proto direction → domain.
pub fn direction_from(field: &str, raw: i32, v: &mut Violations) -> Direction {
    match pb::Direction::try_from(raw) {
        Ok(pb::Direction::Unspecified) => Direction::Unspecified,
        Ok(pb::Direction::Inbound) => Direction::Inbound,
        Ok(pb::Direction::Outbound) => Direction::Outbound,
        Err(_) => {
            v.add(field, format!("{raw} is not a Direction"));
            Direction::Unspecified
        }
    }
}

/// Domain direction → proto.
pub fn direction_to(direction: Direction) -> i32 {
    (match direction {
        Direction::Unspecified => pb::Direction::Unspecified,
        Direction::Inbound => pb::Direction::Inbound,
        Direction::Outbound => pb::Direction::Outbound,
    }) as i32
}

/// Proto interaction kind → domain.
pub fn kind_from(field: &str, raw: i32, v: &mut Violations) -> InteractionKind {
    use pb::InteractionKind as P;
    match P::try_from(raw) {
        Ok(P::Unspecified) => InteractionKind::Unspecified,
        Ok(P::Visit) => InteractionKind::Visit,
        Ok(P::Call) => InteractionKind::Call,
        Ok(P::Email) => InteractionKind::Email,
        Ok(P::Chat) => InteractionKind::Chat,
        Ok(P::PageView) => InteractionKind::PageView,
        Ok(P::CartAbandoned) => InteractionKind::CartAbandoned,
        Ok(P::Complaint) => InteractionKind::Complaint,
        Ok(P::Message) => InteractionKind::Message,
        Ok(P::Other) => InteractionKind::Other,
        Err(_) => {
            v.add(field, format!("{raw} is not an InteractionKind"));
            InteractionKind::Unspecified
        }
    }
}

/// Domain interaction kind → proto.
pub fn kind_to(kind: InteractionKind) -> i32 {
    use pb::InteractionKind as P;
    (match kind {
        InteractionKind::Unspecified => P::Unspecified,
        InteractionKind::Visit => P::Visit,
        InteractionKind::Call => P::Call,
        InteractionKind::Email => P::Email,
        InteractionKind::Chat => P::Chat,
        InteractionKind::PageView => P::PageView,
        InteractionKind::CartAbandoned => P::CartAbandoned,
        InteractionKind::Complaint => P::Complaint,
        InteractionKind::Message => P::Message,
        InteractionKind::Other => P::Other,
    }) as i32
}

/// Proto address → domain (absent is empty).
pub fn address_from(address: Option<pb::PostalAddress>) -> PostalAddress {
    let pb::PostalAddress {
        lines,
        city,
        region,
        postal_code,
        country_code,
    } = address.unwrap_or_default();
    PostalAddress {
        lines,
        city,
        region,
        postal_code,
        country_code,
    }
}

/// Domain address → proto.
pub fn address_to(address: PostalAddress) -> Option<pb::PostalAddress> {
    let PostalAddress {
        lines,
        city,
        region,
        postal_code,
        country_code,
    } = address;
    Some(pb::PostalAddress {
        lines,
        city,
        region,
        postal_code,
        country_code,
    })
}

/// Where a value sits inside custom data (`custom.data.items[2].sku`), formatted only
/// when a violation names it: formatting every key's path of every event was ~2.5 % of a
/// batched append's server CPU.
#[derive(Clone, Copy)]
enum DataPath<'a> {
    Root(&'a str),
    Key(&'a DataPath<'a>, &'a str),
    Index(&'a DataPath<'a>, usize),
}

impl std::fmt::Display for DataPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Root(field) => f.write_str(field),
            Self::Key(parent, key) => write!(f, "{parent}.{key}"),
            Self::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

fn value_from(
    path: DataPath<'_>,
    value: prost_types::Value,
    depth: usize,
    v: &mut Violations,
) -> Value {
    if depth > CUSTOM_DATA_DEPTH_MAX {
        v.add(
            &path.to_string(),
            format!("nests deeper than {CUSTOM_DATA_DEPTH_MAX} levels"),
        );
        return Value::Null;
    }
    match value.kind {
        None | Some(ValueKind::NullValue(_)) => Value::Null,
        Some(ValueKind::BoolValue(b)) => Value::Bool(b),
        Some(ValueKind::NumberValue(n)) => {
            if !n.is_finite() {
                v.add(&path.to_string(), "numbers must be finite");
            }
            Value::Number(n)
        }
        Some(ValueKind::StringValue(s)) => Value::String(s),
        Some(ValueKind::ListValue(list)) => Value::List(
            list.values
                .into_iter()
                .enumerate()
                .map(|(i, item)| value_from(DataPath::Index(&path, i), item, depth + 1, v))
                .collect(),
        ),
        Some(ValueKind::StructValue(s)) => Value::Object(struct_from(path, s, depth + 1, v)),
    }
}

fn struct_from(
    path: DataPath<'_>,
    s: Struct,
    depth: usize,
    v: &mut Violations,
) -> BTreeMap<String, Value> {
    s.fields
        .into_iter()
        .map(|(key, value)| {
            let value = value_from(DataPath::Key(&path, &key), value, depth, v);
            (key, value)
        })
        .collect()
}

fn value_to(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => ValueKind::NullValue(0),
        Value::Bool(b) => ValueKind::BoolValue(b),
        Value::Number(n) => ValueKind::NumberValue(n),
        Value::String(s) => ValueKind::StringValue(s),
        Value::List(items) => ValueKind::ListValue(ListValue {
            values: items.into_iter().map(value_to).collect(),
        }),
        Value::Object(fields) => ValueKind::StructValue(struct_to(fields)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Domain custom data → protobuf `Struct`.
pub(super) fn struct_to(fields: BTreeMap<String, Value>) -> Struct {
    Struct {
        fields: fields.into_iter().map(|(k, v)| (k, value_to(v))).collect(),
    }
}

fn enum_from<T: Copy>(
    field: &str,
    raw: i32,
    table: &[(i32, T)],
    name: &str,
    v: &mut Violations,
) -> Option<T> {
    let found = table
        .iter()
        .find(|(code, _)| *code == raw)
        .map(|(_, value)| *value);
    if found.is_none() {
        v.add(field, format!("{raw} is not a {name}"));
    }
    found
}

fn enum_to<T: Copy + PartialEq>(value: T, table: &[(i32, T)]) -> i32 {
    table
        .iter()
        .find(|(_, v)| *v == value)
        .map_or(0, |(code, _)| *code)
}

const CONSENT_PURPOSES: &[(i32, ConsentPurpose)] = &[
    (
        pb::ConsentPurpose::Unspecified as i32,
        ConsentPurpose::Unspecified,
    ),
    (
        pb::ConsentPurpose::MarketingEmail as i32,
        ConsentPurpose::MarketingEmail,
    ),
    (
        pb::ConsentPurpose::MarketingSms as i32,
        ConsentPurpose::MarketingSms,
    ),
    (
        pb::ConsentPurpose::MarketingPhone as i32,
        ConsentPurpose::MarketingPhone,
    ),
    (
        pb::ConsentPurpose::Profiling as i32,
        ConsentPurpose::Profiling,
    ),
    (
        pb::ConsentPurpose::ThirdPartySharing as i32,
        ConsentPurpose::ThirdPartySharing,
    ),
];

const FEEDBACK_METRICS: &[(i32, FeedbackMetric)] = &[
    (
        pb::FeedbackMetric::Unspecified as i32,
        FeedbackMetric::Unspecified,
    ),
    (pb::FeedbackMetric::Nps as i32, FeedbackMetric::Nps),
    (pb::FeedbackMetric::Csat as i32, FeedbackMetric::Csat),
];

const IDENTIFIER_KINDS: &[(i32, IdentifierKind)] = &[
    (
        pb::IdentifierKind::Unspecified as i32,
        IdentifierKind::Unspecified,
    ),
    (pb::IdentifierKind::Email as i32, IdentifierKind::Email),
    (pb::IdentifierKind::Phone as i32, IdentifierKind::Phone),
    (
        pb::IdentifierKind::ExternalId as i32,
        IdentifierKind::ExternalId,
    ),
];

/// Proto consent purpose → domain.
pub fn consent_purpose_from(field: &str, raw: i32, v: &mut Violations) -> ConsentPurpose {
    enum_from(field, raw, CONSENT_PURPOSES, "ConsentPurpose", v).unwrap_or_default()
}

/// Domain consent purpose → proto.
pub fn consent_purpose_to(purpose: ConsentPurpose) -> i32 {
    enum_to(purpose, CONSENT_PURPOSES)
}

/// Proto feedback metric → domain.
pub fn feedback_metric_from(field: &str, raw: i32, v: &mut Violations) -> FeedbackMetric {
    enum_from(field, raw, FEEDBACK_METRICS, "FeedbackMetric", v).unwrap_or_default()
}

/// Domain feedback metric → proto.
pub fn feedback_metric_to(metric: FeedbackMetric) -> i32 {
    enum_to(metric, FEEDBACK_METRICS)
}

fn optional_date(field: &str, text: &str, v: &mut Violations) -> Option<CalendarDate> {
    if text.is_empty() {
        return None;
    }
    let parsed = CalendarDate::parse(text);
    if parsed.is_none() {
        v.add(field, "must be a date YYYY-MM-DD");
    }
    parsed
}

/// Proto field value → domain (a decimal string for numbers, `YYYY-MM-DD` for dates).
pub fn field_value_from(
    field: &str,
    value: Option<pb::FieldValue>,
    v: &mut Violations,
) -> FieldValue {
    use pb::field_value::Value as P;
    match value.and_then(|value| value.value) {
        None => {
            v.add(field, "is required: set text, number, flag or date");
            FieldValue::Text(String::new())
        }
        Some(P::Text(text)) => FieldValue::Text(text),
        Some(P::Number(text)) => FieldValue::Number(Decimal::parse(&text).unwrap_or_else(|| {
            v.add(
                &format!("{field}.number"),
                "must be a decimal such as -12.50 (at most 18 digits)",
            );
            Decimal {
                mantissa: 0,
                scale: 0,
            }
        })),
        Some(P::Flag(flag)) => FieldValue::Bool(flag),
        Some(P::Date(text)) => FieldValue::Date(CalendarDate::parse(&text).unwrap_or_else(|| {
            v.add(&format!("{field}.date"), "must be a date YYYY-MM-DD");
            CalendarDate {
                year: 1970,
                month: 1,
                day: 1,
            }
        })),
    }
}

/// Domain field value → proto.
pub fn field_value_to(value: FieldValue) -> pb::FieldValue {
    use pb::field_value::Value as P;
    pb::FieldValue {
        value: Some(match value {
            FieldValue::Text(text) => P::Text(text),
            FieldValue::Number(n) => P::Number(n.to_string()),
            FieldValue::Bool(flag) => P::Flag(flag),
            FieldValue::Date(date) => P::Date(date.to_string()),
        }),
    }
}

fn uuid_list(field: &str, ids: Vec<String>, v: &mut Violations) -> Vec<Uuid> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| uuid_field(&format!("{field}[{i}]"), id, v))
        .collect()
}

/// Proto order lines → domain.
pub fn purchase_lines_from(lines: Vec<pb::PurchaseLine>) -> Vec<PurchaseLine> {
    lines
        .into_iter()
        .map(
            |pb::PurchaseLine {
                 sku,
                 name,
                 category,
                 quantity,
                 unit_price_minor,
             }| PurchaseLine {
                sku,
                name,
                category,
                quantity,
                unit_price_minor,
            },
        )
        .collect()
}

/// Proto refund lines → domain.
pub fn refund_lines_from(lines: Vec<pb::RefundLine>) -> Vec<RefundLine> {
    lines
        .into_iter()
        .map(
            |pb::RefundLine {
                 sku,
                 quantity,
                 amount_minor,
             }| RefundLine {
                sku,
                quantity,
                amount_minor,
            },
        )
        .collect()
}

/// Converts a proto event body into a domain event, recording every problem in `v`
/// (under `v`'s prefix, e.g. `events[3].event`). Returns `None` when the body is unusable.
/// Personal parts come out clear; the caller seals them before appending.
pub fn event_from_proto(event: pb::Event, v: &mut Violations) -> Option<DomainEvent> {
    use pb::event::Kind;
    let Some(kind) = event.kind else {
        v.add("", "is required: set exactly one event case");
        return None;
    };
    Some(match kind {
        Kind::Custom(pb::CustomEvent { r#type, data }) => DomainEvent::Custom(CustomEvent {
            event_type: r#type,
            data: struct_from(
                DataPath::Root("custom.data"),
                data.unwrap_or_default(),
                1,
                v,
            ),
        }),
        Kind::CustomerRegistered(pb::CustomerRegistered {
            customer_id,
            given_name,
            family_name,
            emails,
            phones,
            birth_date,
            address,
            locale,
            external_ids,
            acquisition_channel,
        }) => {
            let f = "customer_registered";
            DomainEvent::CustomerRegistered(CustomerRegistered {
                customer_id: uuid_field(&format!("{f}.customer_id"), &customer_id, v),
                identity: Personal::Clear(CustomerIdentity {
                    given_name,
                    family_name,
                    emails,
                    phones,
                    birth_date: optional_date(&format!("{f}.birth_date"), &birth_date, v),
                    address: address_from(address),
                    external_ids: external_ids.into_iter().collect(),
                }),
                locale,
                acquisition_channel: channel_from(
                    &format!("{f}.acquisition_channel"),
                    acquisition_channel,
                    v,
                ),
            })
        }
        Kind::ContactDetailsChanged(pb::ContactDetailsChanged {
            customer_id,
            emails,
            phones,
            address,
        }) => DomainEvent::ContactDetailsChanged(ContactDetailsChanged {
            customer_id: uuid_field("contact_details_changed.customer_id", &customer_id, v),
            details: Personal::Clear(ContactDetails {
                emails,
                phones,
                address: address_from(address),
            }),
        }),
        Kind::InteractionLogged(pb::InteractionLogged {
            customer_id,
            channel,
            direction,
            kind,
            subject,
            summary,
            agent,
            duration_seconds,
        }) => {
            let f = "interaction_logged";
            DomainEvent::InteractionLogged(InteractionLogged {
                customer_id: uuid_field(&format!("{f}.customer_id"), &customer_id, v),
                channel: channel_from(&format!("{f}.channel"), channel, v),
                direction: direction_from(&format!("{f}.direction"), direction, v),
                kind: kind_from(&format!("{f}.kind"), kind, v),
                text: Personal::Clear(InteractionText { subject, summary }),
                agent,
                duration_seconds,
            })
        }
        Kind::PurchaseCompleted(pb::PurchaseCompleted {
            customer_id,
            order_id,
            lines,
            total_minor,
            currency,
            channel,
            store_id,
        }) => {
            let f = "purchase_completed";
            DomainEvent::PurchaseCompleted(PurchaseCompleted {
                customer_id: uuid_field(&format!("{f}.customer_id"), &customer_id, v),
                order_id,
                lines: purchase_lines_from(lines),
                total_minor,
                currency,
                channel: channel_from(&format!("{f}.channel"), channel, v),
                store_id,
            })
        }
        Kind::PreferenceSet(pb::PreferenceSet {
            customer_id,
            key,
            value,
        }) => DomainEvent::PreferenceSet(PreferenceSet {
            customer_id: uuid_field("preference_set.customer_id", &customer_id, v),
            key,
            value,
        }),
        Kind::PreferenceCleared(pb::PreferenceCleared { customer_id, key }) => {
            DomainEvent::PreferenceCleared(PreferenceCleared {
                customer_id: uuid_field("preference_cleared.customer_id", &customer_id, v),
                key,
            })
        }
        Kind::ConsentGiven(pb::ConsentGiven {
            customer_id,
            purpose,
            source,
        }) => DomainEvent::ConsentGiven(ConsentGiven {
            customer_id: uuid_field("consent_given.customer_id", &customer_id, v),
            purpose: consent_purpose_from("consent_given.purpose", purpose, v),
            source,
        }),
        Kind::ConsentWithdrawn(pb::ConsentWithdrawn {
            customer_id,
            purpose,
            source,
        }) => DomainEvent::ConsentWithdrawn(ConsentWithdrawn {
            customer_id: uuid_field("consent_withdrawn.customer_id", &customer_id, v),
            purpose: consent_purpose_from("consent_withdrawn.purpose", purpose, v),
            source,
        }),
        Kind::TagAdded(pb::TagAdded { customer_id, tag }) => DomainEvent::TagAdded(TagAdded {
            customer_id: uuid_field("tag_added.customer_id", &customer_id, v),
            tag,
        }),
        Kind::TagRemoved(pb::TagRemoved { customer_id, tag }) => {
            DomainEvent::TagRemoved(TagRemoved {
                customer_id: uuid_field("tag_removed.customer_id", &customer_id, v),
                tag,
            })
        }
        Kind::CustomFieldSet(pb::CustomFieldSet {
            customer_id,
            key,
            value,
            personal,
        }) => {
            let value = field_value_from("custom_field_set.value", value, v);
            DomainEvent::CustomFieldSet(CustomFieldSet {
                customer_id: uuid_field("custom_field_set.customer_id", &customer_id, v),
                key,
                value: if personal {
                    CustomFieldValue::Personal(Personal::Clear(value))
                } else {
                    CustomFieldValue::Plain(value)
                },
            })
        }
        Kind::PurchaseRefunded(pb::PurchaseRefunded {
            customer_id,
            order_id,
            refund_id,
            lines,
            amount_minor,
            currency,
            reason,
        }) => DomainEvent::PurchaseRefunded(PurchaseRefunded {
            customer_id: uuid_field("purchase_refunded.customer_id", &customer_id, v),
            order_id,
            refund_id,
            lines: refund_lines_from(lines),
            amount_minor,
            currency,
            reason,
        }),
        Kind::FeedbackGiven(pb::FeedbackGiven {
            customer_id,
            metric,
            score,
            comment,
            channel,
            subject_ref,
        }) => {
            let f = "feedback_given";
            DomainEvent::FeedbackGiven(FeedbackGiven {
                customer_id: uuid_field(&format!("{f}.customer_id"), &customer_id, v),
                metric: feedback_metric_from(&format!("{f}.metric"), metric, v),
                score: u8::try_from(score).unwrap_or_else(|_| {
                    v.add(&format!("{f}.score"), "is out of range");
                    0
                }),
                comment: Personal::Clear(comment),
                channel: channel_from(&format!("{f}.channel"), channel, v),
                subject_ref,
            })
        }
        Kind::CustomersMerged(pb::CustomersMerged {
            survivor_id,
            duplicate_id,
        }) => DomainEvent::CustomersMerged(CustomersMerged {
            survivor_id: uuid_field("customers_merged.survivor_id", &survivor_id, v),
            duplicate_id: uuid_field("customers_merged.duplicate_id", &duplicate_id, v),
        }),
        Kind::CustomerErased(pb::CustomerErased {
            customer_id,
            erased_ids,
            reason,
            requested_by,
        }) => DomainEvent::CustomerErased(CustomerErased {
            customer_id: uuid_field("customer_erased.customer_id", &customer_id, v),
            erased_ids: uuid_list("customer_erased.erased_ids", erased_ids, v),
            reason,
            requested_by,
        }),
        Kind::IdentifierClaimed(pb::IdentifierClaimed { customer_id, kind }) => {
            DomainEvent::IdentifierClaimed(IdentifierClaimed {
                customer_id: uuid_field("identifier_claimed.customer_id", &customer_id, v),
                kind: enum_from(
                    "identifier_claimed.kind",
                    kind,
                    IDENTIFIER_KINDS,
                    "IdentifierKind",
                    v,
                )
                .unwrap_or_default(),
            })
        }
        Kind::IdentifierReleased(pb::IdentifierReleased { customer_id, kind }) => {
            DomainEvent::IdentifierReleased(IdentifierReleased {
                customer_id: uuid_field("identifier_released.customer_id", &customer_id, v),
                kind: enum_from(
                    "identifier_released.kind",
                    kind,
                    IDENTIFIER_KINDS,
                    "IdentifierKind",
                    v,
                )
                .unwrap_or_default(),
            })
        }
        Kind::SegmentDefined(pb::SegmentDefined {
            segment_id,
            name,
            rule,
        }) => DomainEvent::SegmentDefined(SegmentDefined {
            segment_id: uuid_field("segment_defined.segment_id", &segment_id, v),
            name,
            rule,
        }),
        Kind::SegmentChanged(pb::SegmentChanged {
            segment_id,
            name,
            rule,
        }) => DomainEvent::SegmentChanged(SegmentChanged {
            segment_id: uuid_field("segment_changed.segment_id", &segment_id, v),
            name,
            rule,
        }),
        Kind::SegmentArchived(pb::SegmentArchived { segment_id }) => {
            DomainEvent::SegmentArchived(SegmentArchived {
                segment_id: uuid_field("segment_archived.segment_id", &segment_id, v),
            })
        }
        Kind::CustomerEnteredSegment(pb::CustomerEnteredSegment {
            segment_id,
            customer_id,
            as_of,
        }) => {
            let f = "customer_entered_segment";
            DomainEvent::CustomerEnteredSegment(CustomerEnteredSegment {
                segment_id: uuid_field(&format!("{f}.segment_id"), &segment_id, v),
                customer_id: uuid_field(&format!("{f}.customer_id"), &customer_id, v),
                as_of_us: as_of
                    .and_then(|ts| timestamp_to_us(&format!("{f}.as_of"), &ts, v))
                    .unwrap_or(0),
            })
        }
        Kind::CustomerLeftSegment(pb::CustomerLeftSegment {
            segment_id,
            customer_id,
            as_of,
        }) => {
            let f = "customer_left_segment";
            DomainEvent::CustomerLeftSegment(CustomerLeftSegment {
                segment_id: uuid_field(&format!("{f}.segment_id"), &segment_id, v),
                customer_id: uuid_field(&format!("{f}.customer_id"), &customer_id, v),
                as_of_us: as_of
                    .and_then(|ts| timestamp_to_us(&format!("{f}.as_of"), &ts, v))
                    .unwrap_or(0),
            })
        }
        // Loyalty (issue 5).
        Kind::ProgrammeDefined(e) => {
            DomainEvent::ProgrammeDefined(loyalty::programme_defined_from(e, v))
        }
        Kind::ProgrammeChanged(e) => {
            DomainEvent::ProgrammeChanged(loyalty::programme_changed_from(e, v))
        }
        Kind::RewardDefined(e) => DomainEvent::RewardDefined(loyalty::reward_defined_from(e, v)),
        Kind::RewardRetired(e) => DomainEvent::RewardRetired(loyalty::reward_retired_from(e, v)),
        Kind::RewardClaimed(e) => DomainEvent::RewardClaimed(loyalty::reward_claimed_from(e, v)),
        Kind::MemberEnrolled(e) => DomainEvent::MemberEnrolled(loyalty::member_enrolled_from(e, v)),
        Kind::MemberLeft(e) => DomainEvent::MemberLeft(loyalty::member_left_from(e, v)),
        Kind::TierChanged(e) => DomainEvent::TierChanged(loyalty::tier_changed_from(e, v)),
        Kind::PointsEarned(e) => DomainEvent::PointsEarned(loyalty::points_earned_from(e, v)),
        Kind::PointsCancelled(e) => {
            DomainEvent::PointsCancelled(loyalty::points_cancelled_from(e, v))
        }
        Kind::PointsSpent(e) => DomainEvent::PointsSpent(loyalty::points_spent_from(e, v)),
        Kind::PointsExpired(e) => DomainEvent::PointsExpired(loyalty::points_expired_from(e, v)),
        Kind::PointsAdjusted(e) => DomainEvent::PointsAdjusted(loyalty::points_adjusted_from(e, v)),
        Kind::PointsTransferred(e) => {
            DomainEvent::PointsTransferred(loyalty::points_transferred_from(e, v))
        }
        Kind::LedgerMerged(e) => DomainEvent::LedgerMerged(loyalty::ledger_merged_from(e, v)),
        // Sales pipelines (issue 4): conversions in convert_pipeline.rs.
        Kind::AccountCreated(e) => DomainEvent::AccountCreated(Wire::from_wire(e, v)),
        Kind::AccountUpdated(e) => DomainEvent::AccountUpdated(Wire::from_wire(e, v)),
        Kind::AccountContactLinked(e) => DomainEvent::AccountContactLinked(Wire::from_wire(e, v)),
        Kind::AccountContactUnlinked(e) => {
            DomainEvent::AccountContactUnlinked(Wire::from_wire(e, v))
        }
        Kind::AccountOwnerAssigned(e) => DomainEvent::AccountOwnerAssigned(Wire::from_wire(e, v)),
        Kind::PipelineDefined(e) => DomainEvent::PipelineDefined(Wire::from_wire(e, v)),
        Kind::PipelineChanged(e) => DomainEvent::PipelineChanged(Wire::from_wire(e, v)),
        Kind::LeadCaptured(e) => DomainEvent::LeadCaptured(Wire::from_wire(e, v)),
        Kind::LeadAssigned(e) => DomainEvent::LeadAssigned(Wire::from_wire(e, v)),
        Kind::LeadQualified(e) => DomainEvent::LeadQualified(Wire::from_wire(e, v)),
        Kind::LeadDisqualified(e) => DomainEvent::LeadDisqualified(Wire::from_wire(e, v)),
        Kind::DealOpened(e) => DomainEvent::DealOpened(Wire::from_wire(e, v)),
        Kind::DealStageMoved(e) => DomainEvent::DealStageMoved(Wire::from_wire(e, v)),
        Kind::DealChanged(e) => DomainEvent::DealChanged(Wire::from_wire(e, v)),
        Kind::DealWon(e) => DomainEvent::DealWon(Wire::from_wire(e, v)),
        Kind::DealLost(e) => DomainEvent::DealLost(Wire::from_wire(e, v)),
        Kind::DealReopened(e) => DomainEvent::DealReopened(Wire::from_wire(e, v)),
        Kind::TaskCreated(e) => DomainEvent::TaskCreated(Wire::from_wire(e, v)),
        Kind::TaskCompleted(e) => DomainEvent::TaskCompleted(Wire::from_wire(e, v)),
        Kind::TaskCancelled(e) => DomainEvent::TaskCancelled(Wire::from_wire(e, v)),
    })
}

/// A personal part's clear value, or the default when it is sealed or erased (the
/// event's `personal_data` marker tells the reader which).
fn clear_or_default<T: Default>(personal: Personal<T>) -> T {
    match personal {
        Personal::Clear(value) => value,
        Personal::Sealed(_) | Personal::Erased => T::default(),
    }
}

/// Converts a domain event into its proto body. Personal parts that are not clear come
/// out empty.
pub fn event_to_proto(event: DomainEvent) -> pb::Event {
    use pb::event::Kind;
    let kind = match event {
        DomainEvent::Custom(CustomEvent { event_type, data }) => Kind::Custom(pb::CustomEvent {
            r#type: event_type,
            data: Some(struct_to(data)),
        }),
        DomainEvent::CustomerRegistered(CustomerRegistered {
            customer_id,
            identity,
            locale,
            acquisition_channel,
        }) => {
            let CustomerIdentity {
                given_name,
                family_name,
                emails,
                phones,
                birth_date,
                address,
                external_ids,
            } = clear_or_default(identity);
            Kind::CustomerRegistered(pb::CustomerRegistered {
                customer_id: customer_id.to_string(),
                given_name,
                family_name,
                emails,
                phones,
                birth_date: birth_date.map(|d| d.to_string()).unwrap_or_default(),
                address: address_to(address),
                locale,
                external_ids: external_ids.into_iter().collect(),
                acquisition_channel: channel_to(acquisition_channel),
            })
        }
        DomainEvent::ContactDetailsChanged(ContactDetailsChanged {
            customer_id,
            details,
        }) => {
            let ContactDetails {
                emails,
                phones,
                address,
            } = clear_or_default(details);
            Kind::ContactDetailsChanged(pb::ContactDetailsChanged {
                customer_id: customer_id.to_string(),
                emails,
                phones,
                address: address_to(address),
            })
        }
        DomainEvent::InteractionLogged(InteractionLogged {
            customer_id,
            channel,
            direction,
            kind,
            text,
            agent,
            duration_seconds,
        }) => {
            let InteractionText { subject, summary } = clear_or_default(text);
            Kind::InteractionLogged(pb::InteractionLogged {
                customer_id: customer_id.to_string(),
                channel: channel_to(channel),
                direction: direction_to(direction),
                kind: kind_to(kind),
                subject,
                summary,
                agent,
                duration_seconds,
            })
        }
        DomainEvent::PurchaseCompleted(PurchaseCompleted {
            customer_id,
            order_id,
            lines,
            total_minor,
            currency,
            channel,
            store_id,
        }) => Kind::PurchaseCompleted(pb::PurchaseCompleted {
            customer_id: customer_id.to_string(),
            order_id,
            lines: lines
                .into_iter()
                .map(
                    |PurchaseLine {
                         sku,
                         name,
                         category,
                         quantity,
                         unit_price_minor,
                     }| pb::PurchaseLine {
                        sku,
                        name,
                        category,
                        quantity,
                        unit_price_minor,
                    },
                )
                .collect(),
            total_minor,
            currency,
            channel: channel_to(channel),
            store_id,
        }),
        DomainEvent::PreferenceSet(PreferenceSet {
            customer_id,
            key,
            value,
        }) => Kind::PreferenceSet(pb::PreferenceSet {
            customer_id: customer_id.to_string(),
            key,
            value,
        }),
        DomainEvent::PreferenceCleared(PreferenceCleared { customer_id, key }) => {
            Kind::PreferenceCleared(pb::PreferenceCleared {
                customer_id: customer_id.to_string(),
                key,
            })
        }
        DomainEvent::ConsentGiven(ConsentGiven {
            customer_id,
            purpose,
            source,
        }) => Kind::ConsentGiven(pb::ConsentGiven {
            customer_id: customer_id.to_string(),
            purpose: consent_purpose_to(purpose),
            source,
        }),
        DomainEvent::ConsentWithdrawn(ConsentWithdrawn {
            customer_id,
            purpose,
            source,
        }) => Kind::ConsentWithdrawn(pb::ConsentWithdrawn {
            customer_id: customer_id.to_string(),
            purpose: consent_purpose_to(purpose),
            source,
        }),
        DomainEvent::TagAdded(TagAdded { customer_id, tag }) => Kind::TagAdded(pb::TagAdded {
            customer_id: customer_id.to_string(),
            tag,
        }),
        DomainEvent::TagRemoved(TagRemoved { customer_id, tag }) => {
            Kind::TagRemoved(pb::TagRemoved {
                customer_id: customer_id.to_string(),
                tag,
            })
        }
        DomainEvent::CustomFieldSet(CustomFieldSet {
            customer_id,
            key,
            value,
        }) => {
            let (value, personal) = match value {
                CustomFieldValue::Plain(value) => (Some(field_value_to(value)), false),
                CustomFieldValue::Personal(Personal::Clear(value)) => {
                    (Some(field_value_to(value)), true)
                }
                CustomFieldValue::Personal(_) => (None, true),
            };
            Kind::CustomFieldSet(pb::CustomFieldSet {
                customer_id: customer_id.to_string(),
                key,
                value,
                personal,
            })
        }
        DomainEvent::PurchaseRefunded(PurchaseRefunded {
            customer_id,
            order_id,
            refund_id,
            lines,
            amount_minor,
            currency,
            reason,
        }) => Kind::PurchaseRefunded(pb::PurchaseRefunded {
            customer_id: customer_id.to_string(),
            order_id,
            refund_id,
            lines: lines
                .into_iter()
                .map(
                    |RefundLine {
                         sku,
                         quantity,
                         amount_minor,
                     }| pb::RefundLine {
                        sku,
                        quantity,
                        amount_minor,
                    },
                )
                .collect(),
            amount_minor,
            currency,
            reason,
        }),
        DomainEvent::FeedbackGiven(FeedbackGiven {
            customer_id,
            metric,
            score,
            comment,
            channel,
            subject_ref,
        }) => Kind::FeedbackGiven(pb::FeedbackGiven {
            customer_id: customer_id.to_string(),
            metric: feedback_metric_to(metric),
            score: u32::from(score),
            comment: clear_or_default(comment),
            channel: channel_to(channel),
            subject_ref,
        }),
        DomainEvent::CustomersMerged(CustomersMerged {
            survivor_id,
            duplicate_id,
        }) => Kind::CustomersMerged(pb::CustomersMerged {
            survivor_id: survivor_id.to_string(),
            duplicate_id: duplicate_id.to_string(),
        }),
        DomainEvent::CustomerErased(CustomerErased {
            customer_id,
            erased_ids,
            reason,
            requested_by,
        }) => Kind::CustomerErased(pb::CustomerErased {
            customer_id: customer_id.to_string(),
            erased_ids: erased_ids.iter().map(Uuid::to_string).collect(),
            reason,
            requested_by,
        }),
        DomainEvent::IdentifierClaimed(IdentifierClaimed { customer_id, kind }) => {
            Kind::IdentifierClaimed(pb::IdentifierClaimed {
                customer_id: customer_id.to_string(),
                kind: enum_to(kind, IDENTIFIER_KINDS),
            })
        }
        DomainEvent::IdentifierReleased(IdentifierReleased { customer_id, kind }) => {
            Kind::IdentifierReleased(pb::IdentifierReleased {
                customer_id: customer_id.to_string(),
                kind: enum_to(kind, IDENTIFIER_KINDS),
            })
        }
        DomainEvent::SegmentDefined(SegmentDefined {
            segment_id,
            name,
            rule,
        }) => Kind::SegmentDefined(pb::SegmentDefined {
            segment_id: segment_id.to_string(),
            name,
            rule,
        }),
        DomainEvent::SegmentChanged(SegmentChanged {
            segment_id,
            name,
            rule,
        }) => Kind::SegmentChanged(pb::SegmentChanged {
            segment_id: segment_id.to_string(),
            name,
            rule,
        }),
        DomainEvent::SegmentArchived(SegmentArchived { segment_id }) => {
            Kind::SegmentArchived(pb::SegmentArchived {
                segment_id: segment_id.to_string(),
            })
        }
        DomainEvent::CustomerEnteredSegment(CustomerEnteredSegment {
            segment_id,
            customer_id,
            as_of_us,
        }) => Kind::CustomerEnteredSegment(pb::CustomerEnteredSegment {
            segment_id: segment_id.to_string(),
            customer_id: customer_id.to_string(),
            as_of: Some(timestamp_from_us(as_of_us)),
        }),
        DomainEvent::CustomerLeftSegment(CustomerLeftSegment {
            segment_id,
            customer_id,
            as_of_us,
        }) => Kind::CustomerLeftSegment(pb::CustomerLeftSegment {
            segment_id: segment_id.to_string(),
            customer_id: customer_id.to_string(),
            as_of: Some(timestamp_from_us(as_of_us)),
        }),
        // Loyalty (issue 5).
        DomainEvent::ProgrammeDefined(e) => {
            Kind::ProgrammeDefined(loyalty::programme_defined_to(e))
        }
        DomainEvent::ProgrammeChanged(e) => {
            Kind::ProgrammeChanged(loyalty::programme_changed_to(e))
        }
        DomainEvent::RewardDefined(e) => Kind::RewardDefined(loyalty::reward_defined_to(e)),
        DomainEvent::RewardRetired(e) => Kind::RewardRetired(loyalty::reward_retired_to(e)),
        DomainEvent::RewardClaimed(e) => Kind::RewardClaimed(loyalty::reward_claimed_to(e)),
        DomainEvent::MemberEnrolled(e) => Kind::MemberEnrolled(loyalty::member_enrolled_to(e)),
        DomainEvent::MemberLeft(e) => Kind::MemberLeft(loyalty::member_left_to(e)),
        DomainEvent::TierChanged(e) => Kind::TierChanged(loyalty::tier_changed_to(e)),
        DomainEvent::PointsEarned(e) => Kind::PointsEarned(loyalty::points_earned_to(e)),
        DomainEvent::PointsCancelled(e) => Kind::PointsCancelled(loyalty::points_cancelled_to(e)),
        DomainEvent::PointsSpent(e) => Kind::PointsSpent(loyalty::points_spent_to(e)),
        DomainEvent::PointsExpired(e) => Kind::PointsExpired(loyalty::points_expired_to(e)),
        DomainEvent::PointsAdjusted(e) => Kind::PointsAdjusted(loyalty::points_adjusted_to(e)),
        DomainEvent::PointsTransferred(e) => {
            Kind::PointsTransferred(loyalty::points_transferred_to(e))
        }
        DomainEvent::LedgerMerged(e) => Kind::LedgerMerged(loyalty::ledger_merged_to(e)),
        // Sales pipelines (issue 4): conversions in convert_pipeline.rs.
        DomainEvent::AccountCreated(e) => Kind::AccountCreated(e.to_wire()),
        DomainEvent::AccountUpdated(e) => Kind::AccountUpdated(e.to_wire()),
        DomainEvent::AccountContactLinked(e) => Kind::AccountContactLinked(e.to_wire()),
        DomainEvent::AccountContactUnlinked(e) => Kind::AccountContactUnlinked(e.to_wire()),
        DomainEvent::AccountOwnerAssigned(e) => Kind::AccountOwnerAssigned(e.to_wire()),
        DomainEvent::PipelineDefined(e) => Kind::PipelineDefined(e.to_wire()),
        DomainEvent::PipelineChanged(e) => Kind::PipelineChanged(e.to_wire()),
        DomainEvent::LeadCaptured(e) => Kind::LeadCaptured(e.to_wire()),
        DomainEvent::LeadAssigned(e) => Kind::LeadAssigned(e.to_wire()),
        DomainEvent::LeadQualified(e) => Kind::LeadQualified(e.to_wire()),
        DomainEvent::LeadDisqualified(e) => Kind::LeadDisqualified(e.to_wire()),
        DomainEvent::DealOpened(e) => Kind::DealOpened(e.to_wire()),
        DomainEvent::DealStageMoved(e) => Kind::DealStageMoved(e.to_wire()),
        DomainEvent::DealChanged(e) => Kind::DealChanged(e.to_wire()),
        DomainEvent::DealWon(e) => Kind::DealWon(e.to_wire()),
        DomainEvent::DealLost(e) => Kind::DealLost(e.to_wire()),
        DomainEvent::DealReopened(e) => Kind::DealReopened(e.to_wire()),
        DomainEvent::TaskCreated(e) => Kind::TaskCreated(e.to_wire()),
        DomainEvent::TaskCompleted(e) => Kind::TaskCompleted(e.to_wire()),
        DomainEvent::TaskCancelled(e) => Kind::TaskCancelled(e.to_wire()),
    };
    pb::Event { kind: Some(kind) }
}

/// Converts a logged event into the wire `RecordedEvent`, decoding its body and
/// opening its personal parts with `privacy` (without it, or without the customer's
/// key, they come out empty and marked erased). (The read RPCs write the same message
/// straight to bytes: [`super::wire`].)
pub fn recorded_event(
    logged: LoggedEvent,
    privacy: Option<&Privacy>,
) -> Result<pb::RecordedEvent, tonic::Status> {
    let LoggedEvent { event, hash } = logged;
    let (body, personal) = if CustomEvent::is_custom_type(&event.event_type) {
        // Custom data goes from its stored bytes to protobuf in one pass; it holds no
        // personal part.
        let data: StoredStruct =
            CustomEvent::decode_data_as(&event.event_type, event.schema_version, &event.payload)
                .map_err(|e| undecodable(&event, e))?;
        let body = pb::Event {
            kind: Some(pb::event::Kind::Custom(pb::CustomEvent {
                r#type: event.event_type.clone(),
                data: Some(data.0),
            })),
        };
        (body, PersonalState::None)
    } else {
        built_in_body(&event, privacy)?
    };
    Ok(pb::RecordedEvent {
        position: event.position,
        stream: event.stream,
        revision: event.revision,
        event_id: Uuid::from_bytes(event.event_id).to_string(),
        event_type: event.event_type,
        event: Some(body),
        recorded_at: Some(timestamp_from_us(event.recorded_at_us)),
        occurred_at: Some(timestamp_from_us(event.occurred_at_us)),
        metadata: event.metadata.into_iter().collect(),
        hash: hash.to_vec(),
        correlation_id: event.correlation_id,
        causation_id: event.causation_id,
        actor: event.actor,
        source_channel: event.source_channel,
        schema_version: u32::from(event.schema_version),
        personal_data: personal_data(personal) as i32,
    })
}

/// The status of a stored body that does not decode.
pub(super) fn undecodable(event: &StoredEvent, error: impl std::fmt::Display) -> tonic::Status {
    undecodable_at(event.position, error)
}

/// [`undecodable`] for the event at `position`.
pub(super) fn undecodable_at(position: u64, error: impl std::fmt::Display) -> tonic::Status {
    tonic::Status::internal(format!("event at position {position}: {error}"))
}

/// The body of a stored built-in (not custom) event as protobuf, its personal parts
/// opened with `privacy` (see [`recorded_event`]), and what became of them.
pub(super) fn built_in_body(
    event: &StoredEvent,
    privacy: Option<&Privacy>,
) -> Result<(pb::Event, PersonalState), tonic::Status> {
    let mut body = DomainEvent::decode(&event.event_type, event.schema_version, &event.payload)
        .map_err(|e| undecodable(event, e))?;
    let personal = match privacy {
        Some(privacy) => privacy.open_event(&event.stream, event.id(), &mut body),
        None if body.has_personal_parts() => {
            body.open(&mut |_, _| None);
            PersonalState::Erased
        }
        None => PersonalState::None,
    };
    Ok((event_to_proto(body), personal))
}

/// The wire value of what became of an event's personal parts.
pub(super) fn personal_data(personal: PersonalState) -> pb::PersonalData {
    match personal {
        PersonalState::None => pb::PersonalData::Unspecified,
        PersonalState::Clear => pb::PersonalData::Clear,
        PersonalState::Erased => pb::PersonalData::Erased,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_violation_deep_in_custom_data_names_its_whole_path() {
        let number = |n: f64| prost_types::Value {
            kind: Some(ValueKind::NumberValue(n)),
        };
        let inner = Struct {
            fields: [("b".to_owned(), number(f64::INFINITY))].into(),
        };
        let list = prost_types::Value {
            kind: Some(ValueKind::ListValue(ListValue {
                values: vec![
                    number(1.0),
                    prost_types::Value {
                        kind: Some(ValueKind::StructValue(inner)),
                    },
                ],
            })),
        };
        let data = Struct {
            fields: [("a".to_owned(), list), ("ok".to_owned(), number(2.0))].into(),
        };
        let mut v = Violations::new("events[3].event");
        let converted = struct_from(DataPath::Root("custom.data"), data, 1, &mut v);
        assert_eq!(converted.len(), 2);
        let fields: Vec<String> = v.into_vec().into_iter().map(|f| f.field).collect();
        assert_eq!(fields, ["events[3].event.custom.data.a[1].b"]);
    }

    #[test]
    fn timestamps_round_trip_and_are_bounded() {
        for us in [0, 1, -1, 1_700_000_000_123_456, -62_135_596_800_000_000] {
            let mut v = Violations::new("");
            assert_eq!(
                timestamp_to_us("t", &timestamp_from_us(us), &mut v),
                Some(us)
            );
        }
        let mut v = Violations::new("");
        let bad = Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(timestamp_to_us("t", &bad, &mut v), None);
        assert!(!v.is_empty());
    }

    #[test]
    fn custom_data_round_trips() {
        let data = Struct {
            fields: BTreeMap::from([
                ("stars".to_owned(), value_to(Value::Number(4.5))),
                (
                    "tags".to_owned(),
                    value_to(Value::List(vec![Value::String("a".into()), Value::Null])),
                ),
            ]),
        };
        let event = pb::Event {
            kind: Some(pb::event::Kind::Custom(pb::CustomEvent {
                r#type: "review.written".into(),
                data: Some(data),
            })),
        };
        let mut v = Violations::new("event");
        let domain = event_from_proto(event.clone(), &mut v).unwrap();
        assert!(v.is_empty());
        assert_eq!(event_to_proto(domain), event);
    }
}

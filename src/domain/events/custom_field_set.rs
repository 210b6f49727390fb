//! `CustomFieldSet`: a typed custom field of the customer was set; a field marked
//! personal is stored sealed.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use super::preference_set::validate_key;
use crate::domain::common::{CalendarDate, Decimal, validate_id};
use crate::domain::personal::{Personal, PersonalField};
use crate::domain::violations::Violations;
use crate::limits::FIELD_BYTES_MAX;

/// A typed custom field value. No floats: numbers are decimals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FieldValue {
    /// Text.
    Text(String),
    /// A decimal number.
    Number(Decimal),
    /// A boolean.
    Bool(bool),
    /// A calendar date.
    Date(CalendarDate),
}

/// A custom field's value as stored: plain, or personal and sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomFieldValue {
    /// Not personal: stored as is.
    Plain(FieldValue),
    /// Marked personal: sealed with the customer's key.
    Personal(Personal<FieldValue>),
}

/// A custom field was set (the latest value per key wins).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomFieldSet {
    /// The customer's id.
    pub customer_id: Uuid,
    /// Field key.
    pub key: String,
    /// Its value.
    pub value: CustomFieldValue,
}

impl TypedEvent for CustomFieldSet {
    const EVENT_TYPE: &'static str = "CustomFieldSet";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "custom_field_set";
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
        validate_key(&format!("{f}.key"), &self.key, v);
        let value = match &self.value {
            CustomFieldValue::Plain(value) => Some(value),
            CustomFieldValue::Personal(personal) => personal.clear(),
        };
        match value {
            Some(FieldValue::Text(text)) => {
                v.max_len(&format!("{f}.value.text"), text, FIELD_BYTES_MAX)
            }
            Some(FieldValue::Number(n)) if n.scale > 18 => v.add(
                &format!("{f}.value.number"),
                "has more than 18 fraction digits",
            ),
            Some(FieldValue::Date(d)) if !d.is_valid() => {
                v.add(&format!("{f}.value.date"), "is not a calendar date")
            }
            _ => {}
        }
    }

    fn personal_owner(&self) -> Option<Uuid> {
        Some(self.customer_id)
    }

    fn has_personal(&self) -> bool {
        matches!(self.value, CustomFieldValue::Personal(_))
    }

    fn personal_fields(&mut self, visit: &mut dyn FnMut(&'static str, &mut dyn PersonalField)) {
        if let CustomFieldValue::Personal(personal) = &mut self.value {
            visit("value", personal);
        }
    }
}

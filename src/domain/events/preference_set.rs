//! `PreferenceSet` / `PreferenceCleared`: a customer preference (favourite categories,
//! sizes, preferred channel, ...) was set or removed.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::TypedEvent;
use crate::domain::common::validate_id;
use crate::domain::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, KEY_BYTES_MAX};

/// A preference was set (the latest value per key wins).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceSet {
    /// The customer's id.
    pub customer_id: Uuid,
    /// Preference key, e.g. `favourite_category`.
    pub key: String,
    /// Its value.
    pub value: String,
}

impl TypedEvent for PreferenceSet {
    const EVENT_TYPE: &'static str = "PreferenceSet";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "preference_set";
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
        validate_key(&format!("{f}.key"), &self.key, v);
        v.max_len(&format!("{f}.value"), &self.value, FIELD_BYTES_MAX);
    }
}

/// A preference was removed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceCleared {
    /// The customer's id.
    pub customer_id: Uuid,
    /// Preference key.
    pub key: String,
}

impl TypedEvent for PreferenceCleared {
    const EVENT_TYPE: &'static str = "PreferenceCleared";
    const SCHEMA_VERSION: u16 = 1;

    fn validate(&self, v: &mut Violations) {
        let f = "preference_cleared";
        validate_id(&format!("{f}.customer_id"), &self.customer_id, v);
        validate_key(&format!("{f}.key"), &self.key, v);
    }
}

/// Keys (preferences, custom fields, tags): 1..=64 bytes of `[a-z0-9_.:-]`.
pub fn validate_key(field: &str, key: &str, v: &mut Violations) {
    let ok = !key.is_empty()
        && key.len() <= KEY_BYTES_MAX
        && key.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b':' | b'-')
        });
    if !ok {
        v.add(
            field,
            format!("must be 1 to {KEY_BYTES_MAX} bytes of lower-case letters, digits, '_', '.', ':' or '-'"),
        );
    }
}

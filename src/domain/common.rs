//! Value types shared by several events. Stored through bincode: enum variants and
//! struct fields may only be appended, never reordered or removed.

use serde::{Deserialize, Serialize};

use super::violations::Violations;
use crate::limits::{FIELD_BYTES_MAX, REPEATED_ITEMS_MAX};

/// The channel a customer was reached on or acted through.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum Channel {
    /// Not given.
    #[default]
    Unspecified,
    /// A physical store.
    Store,
    /// The web shop or site.
    Web,
    /// The mobile app.
    MobileApp,
    /// Email.
    Email,
    /// Phone.
    Phone,
    /// Live chat.
    Chat,
    /// Social networks.
    Social,
    /// Messaging apps.
    Messaging,
}

/// Who started an interaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Not given.
    #[default]
    Unspecified,
    /// The customer reached the business.
    Inbound,
    /// The business reached the customer.
    Outbound,
}

/// What kind of interaction it was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InteractionKind {
    /// Not given.
    #[default]
    Unspecified,
    /// A visit (store or site).
    Visit,
    /// A phone call.
    Call,
    /// An email.
    Email,
    /// A chat conversation.
    Chat,
    /// A page view.
    PageView,
    /// A cart left without buying.
    CartAbandoned,
    /// A complaint.
    Complaint,
    /// A message on a messaging channel.
    Message,
    /// Anything else.
    Other,
}

/// A postal address; every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostalAddress {
    /// Street lines.
    pub lines: Vec<String>,
    /// City.
    pub city: String,
    /// Region or state.
    pub region: String,
    /// Postal code.
    pub postal_code: String,
    /// ISO 3166-1 alpha-2 country code, empty when unknown.
    pub country_code: String,
}

impl PostalAddress {
    /// Checks lengths and the country code.
    pub fn validate(&self, field: &str, v: &mut Violations) {
        v.max_items(&format!("{field}.lines"), self.lines.len(), 8);
        for (i, line) in self.lines.iter().enumerate() {
            v.max_len(&format!("{field}.lines[{i}]"), line, FIELD_BYTES_MAX);
        }
        v.max_len(&format!("{field}.city"), &self.city, FIELD_BYTES_MAX);
        v.max_len(&format!("{field}.region"), &self.region, FIELD_BYTES_MAX);
        v.max_len(&format!("{field}.postal_code"), &self.postal_code, 32);
        let alpha2 = self.country_code.len() == 2
            && self.country_code.bytes().all(|b| b.is_ascii_uppercase());
        if !self.country_code.is_empty() && !alpha2 {
            v.add(
                &format!("{field}.country_code"),
                "must be an ISO 3166-1 alpha-2 code such as \"DE\"",
            );
        }
    }
}

/// A calendar date without a time (a birth date).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CalendarDate {
    /// Year, 1..=9999.
    pub year: u16,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of month, 1..=31 and valid for the month.
    pub day: u8,
}

impl CalendarDate {
    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return None;
        }
        let year: u16 = text[0..4].parse().ok()?;
        let month: u8 = text[5..7].parse().ok()?;
        let day: u8 = text[8..10].parse().ok()?;
        let date = Self { year, month, day };
        date.is_valid().then_some(date)
    }

    /// True for a real date of the proleptic Gregorian calendar.
    pub fn is_valid(&self) -> bool {
        let leap = (self.year.is_multiple_of(4) && !self.year.is_multiple_of(100))
            || self.year.is_multiple_of(400);
        let days = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return false,
        };
        self.year >= 1 && self.day >= 1 && self.day <= days
    }
}

impl std::fmt::Display for CalendarDate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Checks an ISO 4217 currency code: three upper-case ASCII letters.
pub fn validate_currency(field: &str, code: &str, v: &mut Violations) {
    if !(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())) {
        v.add(
            field,
            "must be an ISO 4217 code of three upper-case letters such as \"EUR\"",
        );
    }
}

/// Checks a list of short strings: count, non-empty items and lengths.
pub fn validate_list(field: &str, items: &[String], v: &mut Violations) {
    v.max_items(field, items.len(), REPEATED_ITEMS_MAX);
    for (i, item) in items.iter().enumerate() {
        v.required(&format!("{field}[{i}]"), item, FIELD_BYTES_MAX);
    }
}

/// Checks that an id is set (not the nil UUID).
pub fn validate_id(field: &str, id: &uuid::Uuid, v: &mut Violations) {
    if id.is_nil() {
        v.add(field, "must not be the nil UUID");
    }
}

/// A purpose a customer consents to (or withdraws consent from).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub enum ConsentPurpose {
    /// Not given.
    #[default]
    Unspecified,
    /// Marketing by email.
    MarketingEmail,
    /// Marketing by SMS.
    MarketingSms,
    /// Marketing by phone.
    MarketingPhone,
    /// Profiling (segmentation, recommendations).
    Profiling,
    /// Sharing with third parties.
    ThirdPartySharing,
}

impl ConsentPurpose {
    /// Every purpose, in a stable order.
    pub const ALL: [Self; 5] = [
        Self::MarketingEmail,
        Self::MarketingSms,
        Self::MarketingPhone,
        Self::Profiling,
        Self::ThirdPartySharing,
    ];

    /// The snake_case name used in JSON and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::MarketingEmail => "marketing_email",
            Self::MarketingSms => "marketing_sms",
            Self::MarketingPhone => "marketing_phone",
            Self::Profiling => "profiling",
            Self::ThirdPartySharing => "third_party_sharing",
        }
    }
}

/// A decimal number without floats: `mantissa × 10^-scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decimal {
    /// The digits.
    pub mantissa: i64,
    /// Digits after the decimal point, 0..=18.
    pub scale: u8,
}

impl Decimal {
    /// Parses `-12.50`, `3`, `0.001` (no exponent, at most 18 fraction digits).
    pub fn parse(text: &str) -> Option<Self> {
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty()
            || fraction.len() > 18
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
            || (digits.contains('.') && fraction.is_empty())
        {
            return None;
        }
        let mantissa: i64 = format!("{whole}{fraction}").parse().ok()?;
        Some(Self {
            mantissa: if negative { -mantissa } else { mantissa },
            scale: fraction.len() as u8,
        })
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.mantissa);
        }
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let digits = format!(
            "{:0>width$}",
            self.mantissa.unsigned_abs(),
            width = self.scale as usize + 1
        );
        let (whole, fraction) = digits.split_at(digits.len() - self.scale as usize);
        write!(f, "{sign}{whole}.{fraction}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_round_trip() {
        for text in ["0", "-12.50", "3", "0.001", "-0.5", "123456789.123456789"] {
            assert_eq!(Decimal::parse(text).unwrap().to_string(), text);
        }
        for bad in [
            "",
            "-",
            "1.",
            ".5",
            "1e5",
            "1.2.3",
            "abc",
            "99999999999999999999",
        ] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn calendar_dates() {
        assert_eq!(
            CalendarDate::parse("2024-02-29").map(|d| d.to_string()),
            Some("2024-02-29".to_owned())
        );
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-1-01",
            "abcd-01-01",
            "0000-01-01",
            "",
        ] {
            assert_eq!(CalendarDate::parse(bad), None, "{bad}");
        }
    }
}

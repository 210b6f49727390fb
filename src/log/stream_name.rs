//! Stream names: `<category>-<id>`, bounded ASCII (DESIGN §2).

use std::fmt;

use crate::limits::STREAM_NAME_BYTES_MAX;

/// A validated stream name. The category is lowercase letters, digits and `_`,
/// starting with a letter; the id is letters, digits and `-` `_` `.` `:`; the whole name
/// is at most [`STREAM_NAME_BYTES_MAX`] bytes. The name never contains a NUL byte, which
/// the stream index relies on as a separator.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

/// Why a stream name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamNameError {
    /// The name is empty.
    #[error("stream name is empty")]
    Empty,
    /// The name is longer than the limit.
    #[error("stream name is {0} bytes; the limit is {STREAM_NAME_BYTES_MAX}")]
    TooLong(usize),
    /// There is no `-` between category and id.
    #[error("stream name must be <category>-<id>")]
    NoSeparator,
    /// The category part is malformed.
    #[error("stream category must be lowercase letters, digits and '_', starting with a letter")]
    BadCategory,
    /// The id part is malformed.
    #[error("stream id must be non-empty letters, digits and '-', '_', '.', ':'")]
    BadId,
}

/// Checks that `name` is a valid stream name (what [`StreamName::parse`] accepts),
/// without allocating: `verify` checks every stored event's.
pub fn validate(name: &str) -> Result<(), StreamNameError> {
    if name.is_empty() {
        return Err(StreamNameError::Empty);
    }
    if name.len() > STREAM_NAME_BYTES_MAX {
        return Err(StreamNameError::TooLong(name.len()));
    }
    let (category, id) = name.split_once('-').ok_or(StreamNameError::NoSeparator)?;
    if !is_category(category) {
        return Err(StreamNameError::BadCategory);
    }
    let id_ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !id_ok {
        return Err(StreamNameError::BadId);
    }
    Ok(())
}

impl StreamName {
    /// Validates `name`.
    pub fn parse(name: &str) -> Result<Self, StreamNameError> {
        validate(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The whole name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the first `-`.
    pub fn category(&self) -> &str {
        category(&self.0)
    }
}

/// The category of a stream name: the part before its first `-` (the `<category>-<id>`
/// of DESIGN §2), the whole name when it has none.
pub fn category(stream: &str) -> &str {
    stream
        .split_once('-')
        .map_or(stream, |(category, _)| category)
}

/// True when `category` is a valid stream category.
pub fn is_category(category: &str) -> bool {
    let mut bytes = category.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_well_formed_names() {
        for name in [
            "customer-0190a3b2-7c4e-7def-8000-000000000001",
            "deal-42",
            "loyalty_v2-member:7.a_b",
            "a1-x",
        ] {
            assert_eq!(StreamName::parse(name).unwrap().as_str(), name);
        }
        assert_eq!(StreamName::parse("deal-42").unwrap().category(), "deal");
    }

    #[test]
    fn refuses_malformed_names() {
        let cases = [
            ("", StreamNameError::Empty),
            ("customer", StreamNameError::NoSeparator),
            ("-x", StreamNameError::BadCategory),
            ("Customer-1", StreamNameError::BadCategory),
            ("1abc-1", StreamNameError::BadCategory),
            ("customer-", StreamNameError::BadId),
            ("customer-a b", StreamNameError::BadId),
            ("customer-\u{e9}", StreamNameError::BadId),
            ("customer-a\0b", StreamNameError::BadId),
            ("customer-a\nb", StreamNameError::BadId),
        ];
        for (name, expected) in cases {
            assert_eq!(StreamName::parse(name), Err(expected), "{name:?}");
        }
        let long = format!("c-{}", "x".repeat(STREAM_NAME_BYTES_MAX));
        assert_eq!(
            StreamName::parse(&long),
            Err(StreamNameError::TooLong(long.len()))
        );
    }
}

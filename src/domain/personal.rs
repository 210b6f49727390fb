//! Personal data inside events: clear while the process handles it, sealed on disk.
//!
//! The domain never encrypts anything itself (it has no keys and no randomness). An
//! event's personal parts are [`Personal`] values; the edge seals them with the
//! customer's data key before the event is encoded, and opens them after decoding. A
//! [`Personal`] serialises **only** in its sealed form, so personal data cannot reach
//! the log in plaintext by mistake: encoding an event with a clear part fails.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Personal data: names, contact details, free text about or by a person.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Personal<T> {
    /// Readable: being written, or opened with the customer's key.
    Clear(T),
    /// Encrypted bytes as stored (`version ‖ nonce ‖ ciphertext ‖ tag`).
    Sealed(Vec<u8>),
    /// The customer's key is gone: the data can never be read again.
    Erased,
}

impl<T> Personal<T> {
    /// The clear value, if there is one.
    pub fn clear(&self) -> Option<&T> {
        match self {
            Self::Clear(value) => Some(value),
            _ => None,
        }
    }

    /// The sealed bytes, if sealed.
    pub fn sealed(&self) -> Option<&[u8]> {
        match self {
            Self::Sealed(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// True when erased.
    pub fn is_erased(&self) -> bool {
        matches!(self, Self::Erased)
    }
}

/// Seals one field's plaintext bytes: `(field name, plaintext) -> sealed bytes`.
pub type Sealer<'a> = dyn FnMut(&str, &[u8]) -> Vec<u8> + 'a;
/// Opens one field's sealed bytes: `(field name, sealed) -> plaintext`, `None` when the
/// key is gone or the bytes do not authenticate.
pub type Opener<'a> = dyn FnMut(&str, &[u8]) -> Option<Vec<u8>> + 'a;

/// A personal part of an event, sealed and opened without knowing its type.
pub trait PersonalField {
    /// Encrypts a clear value in place (sealed and erased values stay as they are).
    fn seal(&mut self, field: &str, sealer: &mut Sealer<'_>);
    /// Decrypts a sealed value in place; one that cannot be opened becomes `Erased`.
    fn open(&mut self, field: &str, opener: &mut Opener<'_>);
}

impl<T: Serialize + DeserializeOwned> PersonalField for Personal<T> {
    fn seal(&mut self, field: &str, sealer: &mut Sealer<'_>) {
        if let Self::Clear(value) = self {
            let plain = super::events::encode(value);
            *self = Self::Sealed(sealer(field, &plain));
        }
    }

    fn open(&mut self, field: &str, opener: &mut Opener<'_>) {
        if let Self::Sealed(bytes) = self {
            *self = opener(field, bytes)
                .and_then(|plain| {
                    bincode::serde::decode_from_slice::<T, _>(&plain, bincode::config::standard())
                        .ok()
                        .map(|(value, _)| value)
                })
                .map_or(Self::Erased, Self::Clear);
        }
    }
}

/// Stored (binary) encodings see only the sealed bytes. Human-readable output (JSON for
/// `tail`, `replay` and exports) shows a clear value as itself and a sealed or erased
/// one as `null` — the event's `personal_data` marker says which.
impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            return match self {
                Self::Clear(value) => value.serialize(serializer),
                Self::Sealed(_) | Self::Erased => serializer.serialize_none(),
            };
        }
        match self {
            Self::Sealed(bytes) => serializer.serialize_bytes(bytes),
            Self::Clear(_) => Err(serde::ser::Error::custom(
                "personal data must be sealed before it is stored",
            )),
            Self::Erased => Err(serde::ser::Error::custom(
                "erased personal data cannot be stored",
            )),
        }
    }
}

/// Stored (binary) encodings hold only the sealed bytes, read back as [`Personal::Sealed`]
/// exactly as written. Human-readable input (JSON lines of `rapport import events`) is
/// what a person or an export wrote: the clear value itself, which the importer seals
/// with the owner's key before anything is stored; `null` (how an export shows a sealed
/// or erased part) reads as [`Personal::Erased`], which cannot be stored, so such an
/// event is refused instead of silently losing the part.
impl<'de, T: Deserialize<'de>> Deserialize<'de> for Personal<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            return Ok(Option::<T>::deserialize(deserializer)?.map_or(Self::Erased, Self::Clear));
        }
        let bytes = serde_bytes::ByteBuf::deserialize(deserializer)?;
        Ok(Self::Sealed(bytes.into_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shows_clear_values_and_null_for_the_rest() {
        let clear: Personal<String> = Personal::Clear("Ada".into());
        assert_eq!(serde_json::to_string(&clear).unwrap(), "\"Ada\"");
        let erased: Personal<String> = Personal::Erased;
        assert_eq!(serde_json::to_string(&erased).unwrap(), "null");
        let sealed: Personal<String> = Personal::Sealed(vec![1, 2]);
        assert_eq!(serde_json::to_string(&sealed).unwrap(), "null");
    }

    #[test]
    fn json_reads_clear_values_and_null_as_erased() {
        let clear: Personal<String> = serde_json::from_str("\"Ada\"").unwrap();
        assert_eq!(clear, Personal::Clear("Ada".into()));
        let gone: Personal<String> = serde_json::from_str("null").unwrap();
        assert!(gone.is_erased());
    }

    #[test]
    fn only_the_sealed_form_serialises() {
        let clear: Personal<String> = Personal::Clear("Ada".into());
        assert!(bincode::serde::encode_to_vec(&clear, bincode::config::standard()).is_err());
        let mut sealed = clear.clone();
        sealed.seal("name", &mut |_, plain| {
            plain.iter().map(|b| b ^ 0x5a).collect()
        });
        let bytes = bincode::serde::encode_to_vec(&sealed, bincode::config::standard()).unwrap();
        assert!(!bytes.windows(3).any(|w| w == b"Ada"));
        let (mut back, _): (Personal<String>, _) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(back, sealed);
        back.open("name", &mut |_, s| {
            Some(s.iter().map(|b| b ^ 0x5a).collect())
        });
        assert_eq!(back, clear);
        let mut gone = sealed;
        gone.open("name", &mut |_, _| None);
        assert!(gone.is_erased());
    }
}

//! Personal data at the edges: events are sealed with their customer's data key before
//! they are encoded and appended, and opened after they are read. Nothing below this
//! layer (log, projections) ever sees personal data in clear.
//!
//! Each personal part is sealed with XChaCha20-Poly1305 under the owner's data key,
//! with associated data binding it to its event: `"rapport/v1" ‖ 0 ‖ stream ‖ 0 ‖ event
//! id (16 bytes) ‖ field name`. A sealed part copied to another event or field does not
//! open. Lookups use keyed hashes ([`Privacy::identity_stream`]), never plaintext.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::domain::DomainEvent;
use crate::domain::customer::Identifier;
use crate::domain::events::IdentifierKind;
use crate::domain::profile::SealedRef;
use crate::keys::{DataKey, KeyError, KeyStore, LookupKind};

/// The state of an event's (or a profile's) personal data after opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersonalState {
    /// It has none.
    None,
    /// Opened.
    Clear,
    /// The key is gone.
    Erased,
}

/// Why personal data could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    /// The customer was erased: no new personal data is accepted for them.
    #[error("customer {0} was erased; personal data cannot be recorded for them")]
    Erased(Uuid),
    /// An event with personal data in a stream that is not its owner's.
    #[error(
        "{field}: personal data of customer {owner} can only be written to stream customer-{owner}"
    )]
    WrongStream {
        /// Field path.
        field: String,
        /// The owner.
        owner: Uuid,
    },
    /// The key store failed.
    #[error("key store: {0}")]
    Keys(#[from] KeyError),
}

/// The associated data a personal part is sealed with.
pub fn associated_data(stream: &str, event_id: Uuid, field: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(12 + stream.len() + 16 + field.len());
    ad.extend_from_slice(b"rapport/v1\0");
    ad.extend_from_slice(stream.as_bytes());
    ad.push(0);
    ad.extend_from_slice(event_id.as_bytes());
    ad.extend_from_slice(field.as_bytes());
    ad
}

/// The customers whose personal data `events` hold in clear, sorted, each once.
fn owners_of(events: &mut [(&str, Uuid, &mut DomainEvent)]) -> Vec<Uuid> {
    let mut owners: Vec<Uuid> = events
        .iter_mut()
        .filter(|(_, _, event)| event.has_personal_parts())
        .filter_map(|(_, _, event)| event.personal_owner())
        .collect();
    owners.sort();
    owners.dedup();
    owners
}

/// Seals the personal parts of `events` with `keys[i]` for customer `owners[i]` (`owners`
/// sorted, every event's owner among them).
fn seal_with(events: &mut [(&str, Uuid, &mut DomainEvent)], owners: &[Uuid], keys: &[DataKey]) {
    for (stream, event_id, event) in events.iter_mut() {
        let Some(owner) = event.personal_owner() else {
            continue;
        };
        if !event.has_personal_parts() {
            continue;
        }
        let index = owners.binary_search(&owner).expect("owner collected above");
        let key = &keys[index];
        event.seal(&mut |field, plain| key.seal(&associated_data(stream, *event_id, field), plain));
    }
}

/// Seals and opens personal data with the key store's per-customer keys.
#[derive(Clone)]
pub struct Privacy {
    keys: Arc<KeyStore>,
}

impl Privacy {
    /// Over an opened key store.
    pub fn new(keys: Arc<KeyStore>) -> Self {
        Self { keys }
    }

    /// The key store.
    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Seals every clear personal part of `events`, each bound for `(stream, event id)`,
    /// with the key of the customer the event names (the Customers service writes to
    /// `customer-<id>`; the raw EventStore API may use other streams, the binding to the
    /// stream holds either way). Missing keys are created durably first, in one key-store
    /// write for the batch.
    pub fn seal_events(
        &self,
        events: &mut [(&str, Uuid, &mut DomainEvent)],
    ) -> Result<(), PrivacyError> {
        let owners = owners_of(events);
        if owners.is_empty() {
            return Ok(());
        }
        let keys = self.keys.ensure(&owners).map_err(|error| match error {
            KeyError::Erased(id) => PrivacyError::Erased(id),
            other => PrivacyError::Keys(other),
        })?;
        seal_with(events, &owners, &keys);
        Ok(())
    }

    /// Seals `events` as [`Privacy::seal_events`] does, but with a stand-in key for every
    /// customer and no key store touched: the sealed events have the sizes the real keys
    /// give (the ciphertext's length does not depend on the key), for checks that must
    /// come before a customer's key is created. Their bytes are worthless.
    pub fn seal_events_for_size(events: &mut [(&str, Uuid, &mut DomainEvent)]) {
        let owners = owners_of(events);
        let stand_in = vec![DataKey::from_bytes([0; crate::keys::KEY_BYTES]); owners.len()];
        seal_with(events, &owners, &stand_in);
    }

    /// Opens the personal parts of a decoded event read from `stream` with id `event_id`.
    pub fn open_event(
        &self,
        stream: &str,
        event_id: Uuid,
        event: &mut DomainEvent,
    ) -> PersonalState {
        if !event.has_personal_parts() {
            return PersonalState::None;
        }
        let key = event
            .personal_owner()
            .and_then(|owner| self.keys.data_key(owner));
        let mut erased = false;
        event.open(&mut |field, sealed| {
            let opened = key.as_ref().and_then(|key| {
                key.open(&associated_data(stream, event_id, field), sealed)
                    .ok()
            });
            erased |= opened.is_none();
            opened
        });
        if erased {
            PersonalState::Erased
        } else {
            PersonalState::Clear
        }
    }

    /// Opens a sealed part held by a read model.
    pub fn open_ref<T: DeserializeOwned>(&self, sealed: &SealedRef) -> Option<T> {
        let key = self.keys.data_key(sealed.owner)?;
        let plain = key
            .open(
                &associated_data(&sealed.stream, sealed.event_id, &sealed.field),
                &sealed.bytes,
            )
            .ok()?;
        bincode::serde::decode_from_slice(&plain, bincode::config::standard())
            .ok()
            .map(|(value, _)| value)
    }

    /// The reservation stream of an identifier: `identity-<kind>.<keyed hash>`. The hash
    /// is keyed with the store's index key, so the name does not reveal the value.
    pub fn identity_stream(&self, identifier: &Identifier) -> String {
        let (kind, tag) = match identifier.kind {
            IdentifierKind::Phone => (LookupKind::Phone, "phone"),
            IdentifierKind::ExternalId => (LookupKind::ExternalId, "external"),
            IdentifierKind::Email | IdentifierKind::Unspecified => (LookupKind::Email, "email"),
        };
        let token = self.keys.lookup_token(kind, &identifier.value);
        format!("identity-{tag}.{}", hex::encode(token))
    }
}

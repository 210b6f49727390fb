//! The customer 360 fold: customer events → [`Profile`]s. One implementation serves the
//! live projection, its rebuild, and as-of queries over single streams: each calls
//! [`apply`] with its own [`Profiles`] store (sled-backed in the projection, in memory
//! for as-of), so the answers cannot drift apart.
//!
//! Events are attributed to the customer of their *stream* (`customer-<uuid>`), never to
//! an id inside the payload, so the per-stream as-of fold and the projection agree on
//! any log. Personal parts are copied into the profile **sealed** ([`SealedRef`]) and
//! opened at query time; an erasure drops them from the profile too.
//!
//! Deterministic: no clock (times are the events' `occurred_at`), no randomness, only
//! ordered maps.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::common::{Channel, ConsentPurpose, Direction, InteractionKind};
use super::events::{CustomFieldValue, DomainEvent, FeedbackMetric, FieldValue};
use crate::limits::{CONSENT_HISTORY_MAX, MERGE_DEPTH_MAX};

/// The stream category of customer streams.
pub const CUSTOMER_CATEGORY: &str = "customer";

/// `customer-<uuid>` → the uuid; other streams → `None`.
pub fn customer_of_stream(stream: &str) -> Option<Uuid> {
    let id = stream.strip_prefix("customer-")?;
    Uuid::parse_str(id).ok()
}

/// The stream of a customer.
pub fn customer_stream(id: Uuid) -> String {
    format!("{CUSTOMER_CATEGORY}-{id}")
}

/// What the fold needs of an event's envelope.
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'a> {
    /// Global position.
    pub position: u64,
    /// The stream.
    pub stream: &'a str,
    /// The event id (bound into sealed parts).
    pub event_id: Uuid,
    /// Business time, UTC microseconds.
    pub occurred_at_us: i64,
}

/// A sealed personal part copied from an event: opened at query time with the owner's
/// key and the associated data of its source event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRef {
    /// Whose key sealed it.
    pub owner: Uuid,
    /// The source event's stream.
    pub stream: String,
    /// The source event's id.
    pub event_id: Uuid,
    /// The field name it was sealed under.
    pub field: String,
    /// The sealed bytes.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

/// Whether the profile is current, merged away or erased.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProfileStatus {
    /// Events seen but no registration (yet).
    #[default]
    Unregistered,
    /// A live customer.
    Active,
    /// Merged into another customer.
    Merged {
        /// The survivor.
        into: Uuid,
    },
    /// Erased: personal data gone.
    Erased,
}

/// One change of a consent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentChange {
    /// Given (true) or withdrawn.
    pub granted: bool,
    /// Where it was collected.
    pub source: String,
    /// When (occurred_at).
    pub at_us: i64,
    /// Log position of the change.
    pub position: u64,
}

/// A custom field as held in the profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredField {
    /// Plain value.
    Plain(FieldValue),
    /// Personal: sealed.
    Sealed(SealedRef),
    /// Personal and erased.
    Erased,
}

/// Money totals in one currency.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrencyTotals {
    /// Orders in this currency.
    pub orders: u64,
    /// Sum of order totals, minor units.
    pub spent_minor: i64,
    /// Sum of refunds, minor units.
    pub refunded_minor: i64,
}

/// Purchases of a customer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseSummary {
    /// Orders (one purchase event each).
    pub orders: u64,
    /// Units bought.
    pub units: u64,
    /// Totals per ISO 4217 currency: never summed across currencies.
    pub by_currency: BTreeMap<String, CurrencyTotals>,
    /// First purchase (occurred_at).
    pub first_at_us: Option<i64>,
    /// Last purchase (occurred_at).
    pub last_at_us: Option<i64>,
    /// Units bought per category.
    pub category_units: BTreeMap<String, u64>,
    /// Refund events.
    pub refunds: u64,
    /// Every order and refund with its business time, amount and currency, in log order:
    /// what analytics as of a past date fold (RFM, value). Orders are positive, refunds
    /// negative.
    pub money: Vec<MoneyFact>,
}

/// One order (positive) or refund (negative) amount at its business time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyFact {
    /// occurred_at, UTC microseconds.
    pub at_us: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Order total (> 0 is an order) or minus a refund.
    pub amount_minor: i64,
    /// True for an order, false for a refund.
    pub order: bool,
}

/// The last interaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastInteraction {
    /// When (occurred_at).
    pub at_us: i64,
    /// Log position.
    pub position: u64,
    /// Channel.
    pub channel: Channel,
    /// Direction.
    pub direction: Direction,
    /// Kind.
    pub kind: InteractionKind,
    /// Agent.
    pub agent: String,
    /// Subject and summary, sealed; `None` once erased.
    pub text: Option<SealedRef>,
}

/// Interactions of a customer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InteractionSummary {
    /// Interactions in total.
    pub total: u64,
    /// Per channel.
    pub by_channel: BTreeMap<Channel, u64>,
    /// The latest one (by occurred_at, then position).
    pub last: Option<LastInteraction>,
}

/// Scores of one feedback metric.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreSummary {
    /// Responses.
    pub count: u64,
    /// Sum of scores (the average is `sum / count`).
    pub sum: u64,
    /// The latest score and when it was given.
    pub latest: Option<(u8, i64, u64)>,
}

/// The customer 360 read model of one customer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    /// The customer's id.
    pub customer_id: Uuid,
    /// Status.
    pub status: ProfileStatus,
    /// When registered (occurred_at), and at which position.
    pub registered: Option<(i64, u64)>,
    /// Names, contact details, birth date, external ids from the registration, sealed.
    pub identity: Option<SealedRef>,
    /// The latest contact details change, sealed (overrides the registration's).
    pub contact: Option<SealedRef>,
    /// Locale.
    pub locale: String,
    /// Acquisition channel.
    pub acquisition_channel: Channel,
    /// Preferences.
    pub preferences: BTreeMap<String, String>,
    /// Consent history per purpose, oldest first (bounded); the latest by occurred_at,
    /// then position, is in force.
    pub consents: BTreeMap<ConsentPurpose, Vec<ConsentChange>>,
    /// Tags.
    pub tags: BTreeSet<String>,
    /// Custom fields.
    pub custom_fields: BTreeMap<String, StoredField>,
    /// Every customer merged into this one (transitively).
    pub merged_ids: BTreeSet<Uuid>,
    /// Purchases.
    pub purchases: PurchaseSummary,
    /// Interactions.
    pub interactions: InteractionSummary,
    /// Feedback per metric.
    pub feedback: BTreeMap<FeedbackMetric, ScoreSummary>,
    /// First activity of any kind (occurred_at).
    pub first_activity_us: Option<i64>,
    /// Last activity of any kind (occurred_at).
    pub last_activity_us: Option<i64>,
    /// Channels the customer was active on (purchases, interactions, acquisition).
    pub channels: BTreeSet<Channel>,
    /// Events folded into this profile (its own and its duplicates').
    pub events: u64,
    /// Position of the last event folded into it.
    pub last_position: u64,
    /// Position of the erasure, if erased.
    pub erased_at_position: Option<u64>,
}

impl Profile {
    /// An empty profile for `id`.
    pub fn new(id: Uuid) -> Self {
        Self {
            customer_id: id,
            ..Self::default()
        }
    }

    /// The consent in force for `purpose`: the latest change by occurred_at, then position.
    pub fn consent(&self, purpose: ConsentPurpose) -> Option<&ConsentChange> {
        self.consents
            .get(&purpose)?
            .iter()
            .max_by_key(|c| (c.at_us, c.position))
    }

    /// Net spent in `currency`: order totals minus refunds.
    pub fn net_spent(&self, currency: &str) -> i64 {
        self.purchases
            .by_currency
            .get(currency)
            .map_or(0, |t| t.spent_minor - t.refunded_minor)
    }

    fn touch(&mut self, env: &Envelope<'_>) {
        self.events += 1;
        self.last_position = env.position;
        self.first_activity_us = Some(
            self.first_activity_us
                .map_or(env.occurred_at_us, |t| t.min(env.occurred_at_us)),
        );
        self.last_activity_us = Some(
            self.last_activity_us
                .map_or(env.occurred_at_us, |t| t.max(env.occurred_at_us)),
        );
    }

    fn drop_personal(&mut self) {
        self.identity = None;
        self.contact = None;
        if let Some(last) = &mut self.interactions.last {
            last.text = None;
        }
        for field in self.custom_fields.values_mut() {
            if matches!(field, StoredField::Sealed(_)) {
                *field = StoredField::Erased;
            }
        }
    }

    /// Folds a duplicate's profile into this one (the survivor).
    fn absorb(&mut self, dup: &Profile) {
        let p = &mut self.purchases;
        let d = &dup.purchases;
        p.orders += d.orders;
        p.units += d.units;
        p.refunds += d.refunds;
        for (currency, totals) in &d.by_currency {
            let mine = p.by_currency.entry(currency.clone()).or_default();
            mine.orders += totals.orders;
            mine.spent_minor += totals.spent_minor;
            mine.refunded_minor += totals.refunded_minor;
        }
        p.first_at_us = min_opt(p.first_at_us, d.first_at_us);
        p.last_at_us = max_opt(p.last_at_us, d.last_at_us);
        for (category, units) in &d.category_units {
            *p.category_units.entry(category.clone()).or_default() += units;
        }
        p.money.extend(d.money.iter().cloned());
        let i = &mut self.interactions;
        i.total += dup.interactions.total;
        for (channel, n) in &dup.interactions.by_channel {
            *i.by_channel.entry(*channel).or_default() += n;
        }
        if let Some(theirs) = &dup.interactions.last
            && i.last
                .as_ref()
                .is_none_or(|mine| (theirs.at_us, theirs.position) > (mine.at_us, mine.position))
        {
            i.last = Some(theirs.clone());
        }
        for (metric, theirs) in &dup.feedback {
            let mine = self.feedback.entry(*metric).or_default();
            mine.count += theirs.count;
            mine.sum += theirs.sum;
            if let Some(t) = theirs.latest
                && mine.latest.is_none_or(|m| (t.1, t.2) > (m.1, m.2))
            {
                mine.latest = Some(t);
            }
        }
        for (purpose, changes) in &dup.consents {
            let mine = self.consents.entry(*purpose).or_default();
            mine.extend(changes.iter().cloned());
            mine.sort_by_key(|c| (c.at_us, c.position));
            trim_history(mine);
        }
        self.tags.extend(dup.tags.iter().cloned());
        for (key, value) in &dup.preferences {
            self.preferences
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        for (key, value) in &dup.custom_fields {
            self.custom_fields
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
        self.channels.extend(dup.channels.iter().copied());
        self.first_activity_us = min_opt(self.first_activity_us, dup.first_activity_us);
        self.last_activity_us = max_opt(self.last_activity_us, dup.last_activity_us);
        self.events += dup.events;
        self.merged_ids.insert(dup.customer_id);
        self.merged_ids.extend(dup.merged_ids.iter().copied());
    }
}

fn min_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

fn trim_history(changes: &mut Vec<ConsentChange>) {
    if changes.len() > CONSENT_HISTORY_MAX {
        let excess = changes.len() - CONSENT_HISTORY_MAX;
        changes.drain(..excess);
    }
}

/// Where the fold keeps profiles: the projection's write-back batch, or a map. The fold
/// works on profiles in place ([`Profiles::entry`]): a batch decodes each profile once
/// and encodes it once, however many of its events the batch holds.
pub trait Profiles {
    /// Storage error.
    type Error;
    /// The status of `id`'s profile, if it has one.
    fn status(&mut self, id: Uuid) -> Result<Option<ProfileStatus>, Self::Error>;
    /// `id`'s profile, created empty if it has none.
    fn entry(&mut self, id: Uuid) -> Result<&mut Profile, Self::Error>;
}

impl Profiles for BTreeMap<Uuid, Profile> {
    type Error = std::convert::Infallible;

    fn status(&mut self, id: Uuid) -> Result<Option<ProfileStatus>, Self::Error> {
        Ok(self.get(&id).map(|p| p.status))
    }

    fn entry(&mut self, id: Uuid) -> Result<&mut Profile, Self::Error> {
        Ok(BTreeMap::entry(self, id).or_insert_with(|| Profile::new(id)))
    }
}

/// Follows merges from `id` to the live survivor (bounded).
pub fn resolve<S: Profiles>(store: &mut S, id: Uuid) -> Result<Uuid, S::Error> {
    let mut current = id;
    for _ in 0..MERGE_DEPTH_MAX {
        match store.status(current)? {
            Some(ProfileStatus::Merged { into }) => current = into,
            _ => return Ok(current),
        }
    }
    Ok(current)
}

fn sealed_ref(env: &Envelope<'_>, owner: Uuid, field: &str, bytes: &[u8]) -> SealedRef {
    SealedRef {
        owner,
        stream: env.stream.to_owned(),
        event_id: env.event_id,
        field: field.to_owned(),
        bytes: bytes.to_vec(),
    }
}

/// Folds one event (as stored: personal parts sealed) into the profiles. Events outside
/// customer streams are ignored.
pub fn apply<S: Profiles>(
    store: &mut S,
    env: &Envelope<'_>,
    event: &DomainEvent,
) -> Result<(), S::Error> {
    let Some(owner) = customer_of_stream(env.stream) else {
        return Ok(());
    };
    // A merge is written to the duplicate's stream, then to the survivor's, in one atomic
    // append. The duplicate's copy redirects its id from then on; the survivor's copy
    // folds the duplicate's history in. Each copy is folded from its own stream, so a
    // fold over some streams only (as-of) and one over the whole log agree.
    if let DomainEvent::CustomersMerged(merged) = event {
        let dup_id = merged.duplicate_id;
        if owner == dup_id && owner != merged.survivor_id {
            if !matches!(store.status(dup_id)?, Some(ProfileStatus::Merged { .. })) {
                let dup = store.entry(dup_id)?;
                dup.status = ProfileStatus::Merged {
                    into: merged.survivor_id,
                };
                dup.last_position = env.position;
            }
        } else if owner == merged.survivor_id {
            let survivor_id = resolve(store, merged.survivor_id)?;
            // A duplicate merged elsewhere before is not merged again (the service
            // refuses that; a raw log might hold it).
            if let Some(ProfileStatus::Merged { into }) = store.status(dup_id)?
                && into != merged.survivor_id
            {
                return Ok(());
            }
            if survivor_id == dup_id || store.entry(survivor_id)?.merged_ids.contains(&dup_id) {
                return Ok(());
            }
            // Merges are rare: copying the duplicate keeps the borrows simple.
            let dup = store.entry(dup_id)?.clone();
            let survivor = store.entry(survivor_id)?;
            survivor.absorb(&dup);
            survivor.touch(env);
            let dup = store.entry(dup_id)?;
            dup.status = ProfileStatus::Merged { into: survivor_id };
            dup.last_position = env.position;
        }
        return Ok(());
    }
    let target = resolve(store, owner)?;
    let mut also_erased: &[Uuid] = &[];
    let profile = store.entry(target)?;
    profile.touch(env);
    let at = env.occurred_at_us;
    match event {
        DomainEvent::CustomerRegistered(e) => {
            if profile.registered.is_none() {
                profile.registered = Some((at, env.position));
                if profile.status == ProfileStatus::Unregistered {
                    profile.status = ProfileStatus::Active;
                }
                profile.locale = e.locale.clone();
                profile.acquisition_channel = e.acquisition_channel;
                if e.acquisition_channel != Channel::Unspecified {
                    profile.channels.insert(e.acquisition_channel);
                }
                if target == owner {
                    profile.identity = e
                        .identity
                        .sealed()
                        .map(|bytes| sealed_ref(env, owner, "identity", bytes));
                }
            }
        }
        DomainEvent::ContactDetailsChanged(e) => {
            if profile.status != ProfileStatus::Erased {
                profile.contact = e
                    .details
                    .sealed()
                    .map(|bytes| sealed_ref(env, owner, "details", bytes));
            }
        }
        DomainEvent::PreferenceSet(e) => {
            profile.preferences.insert(e.key.clone(), e.value.clone());
        }
        DomainEvent::PreferenceCleared(e) => {
            profile.preferences.remove(&e.key);
        }
        DomainEvent::ConsentGiven(e) => push_consent(profile, e.purpose, true, &e.source, env),
        DomainEvent::ConsentWithdrawn(e) => push_consent(profile, e.purpose, false, &e.source, env),
        DomainEvent::TagAdded(e) => {
            profile.tags.insert(e.tag.clone());
        }
        DomainEvent::TagRemoved(e) => {
            profile.tags.remove(&e.tag);
        }
        DomainEvent::CustomFieldSet(e) => {
            let stored = match &e.value {
                CustomFieldValue::Plain(value) => StoredField::Plain(value.clone()),
                CustomFieldValue::Personal(personal) => match personal.sealed() {
                    Some(bytes) if profile.status != ProfileStatus::Erased => {
                        StoredField::Sealed(sealed_ref(env, owner, "value", bytes))
                    }
                    _ => StoredField::Erased,
                },
            };
            profile.custom_fields.insert(e.key.clone(), stored);
        }
        DomainEvent::InteractionLogged(e) => {
            let i = &mut profile.interactions;
            i.total += 1;
            *i.by_channel.entry(e.channel).or_default() += 1;
            profile.channels.insert(e.channel);
            if i.last
                .as_ref()
                .is_none_or(|last| (at, env.position) > (last.at_us, last.position))
            {
                let erased = profile.status == ProfileStatus::Erased;
                i.last = Some(LastInteraction {
                    at_us: at,
                    position: env.position,
                    channel: e.channel,
                    direction: e.direction,
                    kind: e.kind,
                    agent: e.agent.clone(),
                    text: e
                        .text
                        .sealed()
                        .filter(|_| !erased)
                        .map(|bytes| sealed_ref(env, owner, "text", bytes)),
                });
            }
        }
        DomainEvent::PurchaseCompleted(e) => {
            let p = &mut profile.purchases;
            p.orders += 1;
            let totals = p.by_currency.entry(e.currency.clone()).or_default();
            totals.orders += 1;
            totals.spent_minor += e.total_minor;
            for line in &e.lines {
                p.units += u64::from(line.quantity);
                if !line.category.is_empty() {
                    *p.category_units.entry(line.category.clone()).or_default() +=
                        u64::from(line.quantity);
                }
            }
            p.first_at_us = min_opt(p.first_at_us, Some(at));
            p.last_at_us = max_opt(p.last_at_us, Some(at));
            p.money.push(MoneyFact {
                at_us: at,
                currency: e.currency.clone(),
                amount_minor: e.total_minor,
                order: true,
            });
            if e.channel != Channel::Unspecified {
                profile.channels.insert(e.channel);
            }
        }
        DomainEvent::PurchaseRefunded(e) => {
            let p = &mut profile.purchases;
            p.refunds += 1;
            p.by_currency
                .entry(e.currency.clone())
                .or_default()
                .refunded_minor += e.amount_minor;
            p.money.push(MoneyFact {
                at_us: at,
                currency: e.currency.clone(),
                amount_minor: -e.amount_minor,
                order: false,
            });
        }
        DomainEvent::FeedbackGiven(e) => {
            let s = profile.feedback.entry(e.metric).or_default();
            s.count += 1;
            s.sum += u64::from(e.score);
            if s.latest.is_none_or(|(_, t, p)| (at, env.position) > (t, p)) {
                s.latest = Some((e.score, at, env.position));
            }
        }
        DomainEvent::CustomerErased(e) => {
            profile.status = ProfileStatus::Erased;
            profile.erased_at_position = Some(env.position);
            profile.drop_personal();
            also_erased = &e.erased_ids;
        }
        DomainEvent::Custom(_)
        | DomainEvent::CustomersMerged(_)
        | DomainEvent::IdentifierClaimed(_)
        | DomainEvent::IdentifierReleased(_)
        | DomainEvent::SegmentDefined(_)
        | DomainEvent::SegmentChanged(_)
        | DomainEvent::SegmentArchived(_)
        | DomainEvent::CustomerEnteredSegment(_)
        | DomainEvent::CustomerLeftSegment(_) => {}
        // Loyalty (issue 5): ledger events live in loyalty streams, not in profiles.
        DomainEvent::ProgrammeDefined(_)
        | DomainEvent::ProgrammeChanged(_)
        | DomainEvent::RewardDefined(_)
        | DomainEvent::RewardRetired(_)
        | DomainEvent::RewardClaimed(_)
        | DomainEvent::MemberEnrolled(_)
        | DomainEvent::MemberLeft(_)
        | DomainEvent::TierChanged(_)
        | DomainEvent::PointsEarned(_)
        | DomainEvent::PointsCancelled(_)
        | DomainEvent::PointsSpent(_)
        | DomainEvent::PointsExpired(_)
        | DomainEvent::PointsAdjusted(_)
        | DomainEvent::PointsTransferred(_)
        | DomainEvent::LedgerMerged(_) => {}
        // Sales events (issue 4) live in their own streams; the profile ignores them.
        DomainEvent::AccountCreated(_)
        | DomainEvent::AccountUpdated(_)
        | DomainEvent::AccountContactLinked(_)
        | DomainEvent::AccountContactUnlinked(_)
        | DomainEvent::AccountOwnerAssigned(_)
        | DomainEvent::PipelineDefined(_)
        | DomainEvent::PipelineChanged(_)
        | DomainEvent::LeadCaptured(_)
        | DomainEvent::LeadAssigned(_)
        | DomainEvent::LeadQualified(_)
        | DomainEvent::LeadDisqualified(_)
        | DomainEvent::DealOpened(_)
        | DomainEvent::DealStageMoved(_)
        | DomainEvent::DealChanged(_)
        | DomainEvent::DealWon(_)
        | DomainEvent::DealLost(_)
        | DomainEvent::DealReopened(_)
        | DomainEvent::TaskCreated(_)
        | DomainEvent::TaskCompleted(_)
        | DomainEvent::TaskCancelled(_) => {}
    }
    // Duplicates merged into an erased customer lose their sealed parts too.
    for id in also_erased {
        if *id != target && store.status(*id)?.is_some() {
            store.entry(*id)?.drop_personal();
        }
    }
    Ok(())
}

fn push_consent(
    profile: &mut Profile,
    purpose: ConsentPurpose,
    granted: bool,
    source: &str,
    env: &Envelope<'_>,
) {
    let history = profile.consents.entry(purpose).or_default();
    history.push(ConsentChange {
        granted,
        source: source.to_owned(),
        at_us: env.occurred_at_us,
        position: env.position,
    });
    history.sort_by_key(|c| (c.at_us, c.position));
    trim_history(history);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::{
        ConsentGiven, ConsentWithdrawn, CustomerErased, CustomerIdentity, CustomerRegistered,
        CustomersMerged, PurchaseCompleted, PurchaseLine, PurchaseRefunded, TagAdded,
    };
    use crate::domain::personal::Personal;

    const ADA: Uuid = Uuid::from_u128(1);
    const BOB: Uuid = Uuid::from_u128(2);

    struct Log {
        position: u64,
        store: BTreeMap<Uuid, Profile>,
    }

    impl Log {
        fn new() -> Self {
            Self {
                position: 0,
                store: BTreeMap::new(),
            }
        }

        fn on(&mut self, customer: Uuid, at_us: i64, event: DomainEvent) {
            self.position += 1;
            let stream = customer_stream(customer);
            let env = Envelope {
                position: self.position,
                stream: &stream,
                event_id: Uuid::from_u128(u128::from(self.position)),
                occurred_at_us: at_us,
            };
            apply(&mut self.store, &env, &event).unwrap();
        }

        fn profile(&self, id: Uuid) -> &Profile {
            &self.store[&id]
        }
    }

    fn registered(id: Uuid) -> DomainEvent {
        let _ = CustomerIdentity::default();
        DomainEvent::CustomerRegistered(CustomerRegistered {
            customer_id: id,
            identity: Personal::Sealed(vec![1, 2, 3]),
            locale: "en".into(),
            acquisition_channel: Channel::Web,
        })
    }

    fn purchase(id: Uuid, order: &str, total: i64, currency: &str) -> DomainEvent {
        DomainEvent::PurchaseCompleted(PurchaseCompleted {
            customer_id: id,
            order_id: order.into(),
            lines: vec![PurchaseLine {
                sku: "s".into(),
                name: "n".into(),
                category: "mugs".into(),
                quantity: 2,
                unit_price_minor: total / 2,
            }],
            total_minor: total,
            currency: currency.into(),
            channel: Channel::Store,
            store_id: String::new(),
        })
    }

    #[test]
    fn purchases_are_summed_per_currency_and_refunds_subtract() {
        let mut log = Log::new();
        log.on(ADA, 10, registered(ADA));
        log.on(ADA, 20, purchase(ADA, "o1", 1000, "EUR"));
        log.on(ADA, 30, purchase(ADA, "o2", 500, "USD"));
        log.on(
            ADA,
            40,
            DomainEvent::PurchaseRefunded(PurchaseRefunded {
                customer_id: ADA,
                order_id: "o1".into(),
                refund_id: "r".into(),
                lines: vec![],
                amount_minor: 300,
                currency: "EUR".into(),
                reason: String::new(),
            }),
        );
        let p = log.profile(ADA);
        assert_eq!(p.status, ProfileStatus::Active);
        assert_eq!(p.purchases.orders, 2);
        assert_eq!(p.net_spent("EUR"), 700);
        assert_eq!(p.net_spent("USD"), 500);
        assert_eq!(p.purchases.first_at_us, Some(20));
        assert_eq!(p.purchases.last_at_us, Some(30));
        assert_eq!(p.purchases.category_units["mugs"], 4);
        assert_eq!(p.channels, BTreeSet::from([Channel::Web, Channel::Store]));
    }

    #[test]
    fn the_latest_consent_by_business_time_wins() {
        let mut log = Log::new();
        log.on(ADA, 10, registered(ADA));
        let p = ConsentPurpose::MarketingEmail;
        log.on(
            ADA,
            50,
            DomainEvent::ConsentGiven(ConsentGiven {
                customer_id: ADA,
                purpose: p,
                source: "web".into(),
            }),
        );
        // Recorded later, but it happened earlier: it does not override.
        log.on(
            ADA,
            40,
            DomainEvent::ConsentWithdrawn(ConsentWithdrawn {
                customer_id: ADA,
                purpose: p,
                source: "call".into(),
            }),
        );
        let profile = log.profile(ADA);
        assert!(profile.consent(p).unwrap().granted);
        assert_eq!(profile.consents[&p].len(), 2);
    }

    #[test]
    fn a_merge_moves_history_to_the_survivor_and_redirects_later_events() {
        let mut log = Log::new();
        log.on(ADA, 10, registered(ADA));
        log.on(BOB, 11, registered(BOB));
        log.on(BOB, 12, purchase(BOB, "b1", 100, "EUR"));
        log.on(
            BOB,
            13,
            DomainEvent::TagAdded(TagAdded {
                customer_id: BOB,
                tag: "vip".into(),
            }),
        );
        let merged = DomainEvent::CustomersMerged(CustomersMerged {
            survivor_id: ADA,
            duplicate_id: BOB,
        });
        log.on(BOB, 14, merged.clone());
        log.on(ADA, 14, merged);
        log.on(BOB, 15, purchase(BOB, "b2", 50, "EUR"));
        let ada = log.profile(ADA);
        assert_eq!(ada.purchases.orders, 2);
        assert_eq!(ada.net_spent("EUR"), 150);
        assert!(ada.tags.contains("vip"));
        assert_eq!(ada.merged_ids, BTreeSet::from([BOB]));
        assert_eq!(log.profile(BOB).status, ProfileStatus::Merged { into: ADA });
        assert!(log.profile(ADA).identity.is_some());
    }

    #[test]
    fn erasure_drops_sealed_parts_and_keeps_the_numbers() {
        let mut log = Log::new();
        log.on(ADA, 10, registered(ADA));
        log.on(ADA, 20, purchase(ADA, "o1", 1000, "EUR"));
        log.on(
            ADA,
            30,
            DomainEvent::CustomerErased(CustomerErased {
                customer_id: ADA,
                erased_ids: vec![ADA],
                reason: "gdpr".into(),
                requested_by: "dpo".into(),
            }),
        );
        let p = log.profile(ADA);
        assert_eq!(p.status, ProfileStatus::Erased);
        assert!(p.identity.is_none());
        assert_eq!(p.net_spent("EUR"), 1000);
        assert_eq!(p.erased_at_position, Some(3));
    }
}

//! The customer aggregate: the state its rules need, folded from the customer's own
//! stream, and the pure decision functions of the customers service
//! (`(state, command) -> events | rule error`).
//!
//! Cross-stream rules take what they need from other streams as plain inputs: the
//! uniqueness of emails, phones and external ids is decided over the holders the edge
//! read from the `identity-*` reservation streams ([`check_identifiers`]), and the edge
//! appends the reservations and the customer's events in one atomic multi-stream append,
//! so a race between two registrations is settled by the log's expected revisions.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::events::{
    ContactDetails, CustomerIdentity, CustomersMerged, DomainEvent, IdentifierKind,
    PurchaseCompleted, PurchaseRefunded,
};
use super::personal::Personal;

/// An identifier that must be unique among live customers, normalised.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identifier {
    /// Email, phone or external id.
    pub kind: IdentifierKind,
    /// The normalised value (case-folded email, E.164-style phone, `system:value`).
    pub value: String,
}

/// Why a command was refused. Nothing was appended in every case.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// No such customer (the edge answers `NOT_FOUND`).
    #[error("customer {0} does not exist")]
    NotFound(Uuid),
    /// Registering an id that is taken (`ALREADY_EXISTS`).
    #[error("customer {0} is already registered")]
    AlreadyRegistered(Uuid),
    /// An email, phone or external id is held by another live customer (`ALREADY_EXISTS`).
    #[error("the {kind} is already used by customer {holder}", kind = kind_name(*.kind))]
    IdentifierInUse {
        /// Which kind of identifier.
        kind: IdentifierKind,
        /// Who holds it.
        holder: Uuid,
    },
    /// The customer was erased; nothing more can be recorded (`FAILED_PRECONDITION`).
    #[error("customer {0} was erased")]
    Erased(Uuid),
    /// Merging a customer into itself (`FAILED_PRECONDITION`).
    #[error("a customer cannot be merged into itself")]
    MergeIntoSelf,
    /// Merging into a customer that was itself merged away (`FAILED_PRECONDITION`).
    #[error("customer {survivor} was merged into {into}; merge into {into} instead")]
    MergeIntoMerged {
        /// The requested survivor.
        survivor: Uuid,
        /// Where it went.
        into: Uuid,
    },
    /// An order id recorded twice with a different event (`FAILED_PRECONDITION`).
    #[error("order {0} is already recorded for this customer")]
    DuplicateOrder(String),
    /// A refund for an order the customer does not have (`FAILED_PRECONDITION`).
    #[error("order {0} is not an order of this customer")]
    UnknownOrder(String),
    /// A refund line names a SKU the order does not have (`FAILED_PRECONDITION`).
    #[error("order {order_id} has no line with SKU {sku}")]
    UnknownOrderLine {
        /// The order.
        order_id: String,
        /// The SKU refunded.
        sku: String,
    },
    /// A refund in another currency than the order's (`FAILED_PRECONDITION`).
    #[error("order {order_id} was paid in {order_currency}, not {refund_currency}")]
    CurrencyMismatch {
        /// The order.
        order_id: String,
        /// The order's currency.
        order_currency: String,
        /// The refund's currency.
        refund_currency: String,
    },
    /// Refunds would exceed what the order paid, in amount or units (`FAILED_PRECONDITION`).
    #[error("{what}: refunds would exceed what order {order_id} paid")]
    RefundExceedsOrder {
        /// The order.
        order_id: String,
        /// What is exceeded (`amount`, or `units of SKU x`).
        what: String,
    },
    /// A refund id used twice for one order (`FAILED_PRECONDITION`).
    #[error("refund {refund_id} of order {order_id} is already recorded")]
    DuplicateRefund {
        /// The order.
        order_id: String,
        /// The refund id.
        refund_id: String,
    },
    /// An identifier that does not normalise (`INVALID_ARGUMENT` on its field).
    #[error("{field}: {reason}")]
    InvalidIdentifier {
        /// Field path in the request.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

fn kind_name(kind: IdentifierKind) -> &'static str {
    match kind {
        IdentifierKind::Email => "email address",
        IdentifierKind::Phone => "phone number",
        IdentifierKind::ExternalId => "external id",
        IdentifierKind::Unspecified => "identifier",
    }
}

/// One order as far as refunds are concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Order {
    /// What it paid, minor units.
    pub total_minor: i64,
    /// Its currency.
    pub currency: String,
    /// Units bought per SKU.
    pub units: BTreeMap<String, u64>,
    /// Refunded so far, minor units.
    pub refunded_minor: i64,
    /// Units refunded so far per SKU.
    pub refunded_units: BTreeMap<String, u64>,
    /// Refund ids seen.
    pub refund_ids: BTreeSet<String>,
}

/// What the rules need to know about one customer, folded from its stream (with its
/// personal parts opened: the identifiers it holds are needed to release them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Customer {
    /// The customer's id (nil until registered).
    pub id: Uuid,
    /// Registered.
    pub registered: bool,
    /// Erased.
    pub erased: bool,
    /// Merged into this survivor.
    pub merged_into: Option<Uuid>,
    /// Duplicates merged into this customer (directly).
    pub merged_from: BTreeSet<Uuid>,
    /// Identifiers held now.
    pub identifiers: BTreeSet<Identifier>,
    /// Orders by id.
    pub orders: BTreeMap<String, Order>,
}

impl Customer {
    /// Folds one event of the customer's stream.
    pub fn apply(&mut self, stream_customer: Uuid, event: &DomainEvent) {
        match event {
            DomainEvent::CustomerRegistered(e) => {
                self.id = e.customer_id;
                self.registered = true;
                if let Some(identity) = e.identity.clear() {
                    self.identifiers = identity_identifiers(identity).into_iter().collect();
                }
            }
            DomainEvent::ContactDetailsChanged(e) => {
                if let Some(details) = e.details.clear() {
                    let external: Vec<Identifier> = self
                        .identifiers
                        .iter()
                        .filter(|i| i.kind == IdentifierKind::ExternalId)
                        .cloned()
                        .collect();
                    self.identifiers = contact_identifiers(details).into_iter().collect();
                    self.identifiers.extend(external);
                }
            }
            DomainEvent::PurchaseCompleted(e) => {
                let order = self.orders.entry(e.order_id.clone()).or_default();
                order.total_minor = e.total_minor;
                order.currency = e.currency.clone();
                for line in &e.lines {
                    *order.units.entry(line.sku.clone()).or_default() += u64::from(line.quantity);
                }
            }
            DomainEvent::PurchaseRefunded(e) => {
                if let Some(order) = self.orders.get_mut(&e.order_id) {
                    order.refunded_minor += e.amount_minor;
                    for line in &e.lines {
                        *order.refunded_units.entry(line.sku.clone()).or_default() +=
                            u64::from(line.quantity);
                    }
                    if !e.refund_id.is_empty() {
                        order.refund_ids.insert(e.refund_id.clone());
                    }
                }
            }
            DomainEvent::CustomersMerged(CustomersMerged {
                survivor_id,
                duplicate_id,
            }) => {
                if *duplicate_id == stream_customer {
                    // The duplicate keeps its reservations: they resolve to the survivor,
                    // and an erasure of the survivor releases them.
                    self.merged_into = Some(*survivor_id);
                } else {
                    self.merged_from.insert(*duplicate_id);
                }
            }
            DomainEvent::CustomerErased(_) => {
                self.erased = true;
                self.identifiers.clear();
            }
            _ => {}
        }
    }

    /// Checks that the customer can take a new fact: registered, live, not merged away.
    /// (The edge resolves a merged id to its survivor before deciding.)
    pub fn ensure_live(&self, id: Uuid) -> Result<(), RuleError> {
        if !self.registered {
            return Err(RuleError::NotFound(id));
        }
        if self.erased {
            return Err(RuleError::Erased(id));
        }
        Ok(())
    }
}

/// The identifiers a registration claims. Values that do not normalise are skipped here;
/// [`validate_identifiers`] reports them.
pub fn identity_identifiers(identity: &CustomerIdentity) -> Vec<Identifier> {
    let mut out = contact_identifiers(&ContactDetails {
        emails: identity.emails.clone(),
        phones: identity.phones.clone(),
        address: Default::default(),
    });
    for (system, value) in &identity.external_ids {
        if let Some(value) = crate::keys::normalise_external_id(&format!("{system}:{value}")) {
            out.push(Identifier {
                kind: IdentifierKind::ExternalId,
                value,
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The identifiers a set of contact details claims.
pub fn contact_identifiers(details: &ContactDetails) -> Vec<Identifier> {
    let mut out = Vec::new();
    for email in &details.emails {
        if let Some(value) = crate::keys::normalise_email(email) {
            out.push(Identifier {
                kind: IdentifierKind::Email,
                value,
            });
        }
    }
    for phone in &details.phones {
        if let Some(value) = crate::keys::normalise_phone(phone) {
            out.push(Identifier {
                kind: IdentifierKind::Phone,
                value,
            });
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Reports emails and phones that do not normalise, as field violations of `prefix`.
pub fn validate_identifiers(
    prefix: &str,
    emails: &[String],
    phones: &[String],
) -> Result<(), RuleError> {
    for (i, email) in emails.iter().enumerate() {
        if crate::keys::normalise_email(email).is_none() {
            return Err(RuleError::InvalidIdentifier {
                field: format!("{prefix}emails[{i}]"),
                reason: "is not an email address".into(),
            });
        }
    }
    for (i, phone) in phones.iter().enumerate() {
        if crate::keys::normalise_phone(phone).is_none() {
            return Err(RuleError::InvalidIdentifier {
                field: format!("{prefix}phones[{i}]"),
                reason: "is not a phone number (4 to 15 digits, optional leading +)".into(),
            });
        }
    }
    Ok(())
}

/// The uniqueness rule: every identifier `me` wants must be free or already its own.
/// `holders` maps each wanted identifier to its current live holder (from the
/// reservation streams); a holder that was merged into `me` counts as `me`.
pub fn check_identifiers(
    me: Uuid,
    wanted: &[Identifier],
    holders: &BTreeMap<Identifier, Uuid>,
    merged_into_me: &BTreeSet<Uuid>,
) -> Result<(), RuleError> {
    for identifier in wanted {
        if let Some(holder) = holders.get(identifier)
            && *holder != me
            && !merged_into_me.contains(holder)
        {
            return Err(RuleError::IdentifierInUse {
                kind: identifier.kind,
                holder: *holder,
            });
        }
    }
    Ok(())
}

/// Registration: the id must be new. Returns the event to append.
pub fn register(
    state: &Customer,
    event: super::events::CustomerRegistered,
) -> Result<Vec<DomainEvent>, RuleError> {
    if state.registered {
        return Err(RuleError::AlreadyRegistered(event.customer_id));
    }
    if let Personal::Clear(identity) = &event.identity {
        validate_identifiers("", &identity.emails, &identity.phones)?;
    }
    Ok(vec![DomainEvent::CustomerRegistered(event)])
}

/// A fact about a live customer (preference, consent, tag, custom field, interaction,
/// feedback, contact change): recorded as given once the customer is live.
pub fn record(
    state: &Customer,
    id: Uuid,
    event: DomainEvent,
) -> Result<Vec<DomainEvent>, RuleError> {
    state.ensure_live(id)?;
    if let DomainEvent::ContactDetailsChanged(change) = &event
        && let Personal::Clear(details) = &change.details
    {
        validate_identifiers("", &details.emails, &details.phones)?;
    }
    Ok(vec![event])
}

/// A purchase: one event per order id (a re-sent order with the same event id is the
/// log's idempotency, not this rule).
pub fn record_purchase(
    state: &Customer,
    id: Uuid,
    purchase: PurchaseCompleted,
) -> Result<Vec<DomainEvent>, RuleError> {
    state.ensure_live(id)?;
    if state.orders.contains_key(&purchase.order_id) {
        return Err(RuleError::DuplicateOrder(purchase.order_id));
    }
    Ok(vec![DomainEvent::PurchaseCompleted(purchase)])
}

/// A refund: of a known order, in its currency, lines that refer to it, and never more
/// than it paid (in total amount and in units per SKU).
pub fn record_refund(
    state: &Customer,
    id: Uuid,
    refund: PurchaseRefunded,
) -> Result<Vec<DomainEvent>, RuleError> {
    state.ensure_live(id)?;
    let order_id = refund.order_id.clone();
    let Some(order) = state.orders.get(&order_id) else {
        return Err(RuleError::UnknownOrder(order_id));
    };
    if order.currency != refund.currency {
        return Err(RuleError::CurrencyMismatch {
            order_id,
            order_currency: order.currency.clone(),
            refund_currency: refund.currency,
        });
    }
    if !refund.refund_id.is_empty() && order.refund_ids.contains(&refund.refund_id) {
        return Err(RuleError::DuplicateRefund {
            order_id,
            refund_id: refund.refund_id,
        });
    }
    let mut units: BTreeMap<&str, u64> = BTreeMap::new();
    for line in &refund.lines {
        if !order.units.contains_key(&line.sku) {
            return Err(RuleError::UnknownOrderLine {
                order_id,
                sku: line.sku.clone(),
            });
        }
        *units.entry(&line.sku).or_default() += u64::from(line.quantity);
    }
    for (sku, quantity) in units {
        let bought = order.units.get(sku).copied().unwrap_or(0);
        let refunded = order.refunded_units.get(sku).copied().unwrap_or(0);
        if refunded + quantity > bought {
            return Err(RuleError::RefundExceedsOrder {
                order_id,
                what: format!("units of SKU {sku}"),
            });
        }
    }
    if order.refunded_minor.saturating_add(refund.amount_minor) > order.total_minor {
        return Err(RuleError::RefundExceedsOrder {
            order_id,
            what: "amount".into(),
        });
    }
    Ok(vec![DomainEvent::PurchaseRefunded(refund)])
}

/// A merge: both live and registered, distinct, the survivor not merged away. Returns
/// the event, which the edge appends to both streams.
pub fn merge(
    survivor: &Customer,
    survivor_id: Uuid,
    duplicate: &Customer,
    duplicate_id: Uuid,
) -> Result<CustomersMerged, RuleError> {
    if survivor_id == duplicate_id {
        return Err(RuleError::MergeIntoSelf);
    }
    if let Some(into) = survivor.merged_into {
        return Err(RuleError::MergeIntoMerged {
            survivor: survivor_id,
            into,
        });
    }
    survivor.ensure_live(survivor_id)?;
    duplicate.ensure_live(duplicate_id)?;
    if let Some(into) = duplicate.merged_into {
        return Err(RuleError::MergeIntoMerged {
            survivor: duplicate_id,
            into,
        });
    }
    Ok(CustomersMerged {
        survivor_id,
        duplicate_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::common::Channel;
    use crate::domain::events::{CustomerRegistered, PurchaseLine, RefundLine};

    const ADA: Uuid = Uuid::from_u128(1);
    const BOB: Uuid = Uuid::from_u128(2);

    fn registered(id: Uuid, email: &str) -> DomainEvent {
        DomainEvent::CustomerRegistered(CustomerRegistered {
            customer_id: id,
            identity: Personal::Clear(CustomerIdentity {
                given_name: "Ada".into(),
                emails: vec![email.into()],
                ..Default::default()
            }),
            locale: String::new(),
            acquisition_channel: Channel::Web,
        })
    }

    fn purchase(order: &str, total: i64, skus: &[(&str, u32)]) -> PurchaseCompleted {
        PurchaseCompleted {
            customer_id: ADA,
            order_id: order.into(),
            lines: skus
                .iter()
                .map(|(sku, quantity)| PurchaseLine {
                    sku: (*sku).into(),
                    name: String::new(),
                    category: "mugs".into(),
                    quantity: *quantity,
                    unit_price_minor: 100,
                })
                .collect(),
            total_minor: total,
            currency: "EUR".into(),
            channel: Channel::Store,
            store_id: String::new(),
        }
    }

    fn refund(order: &str, id: &str, amount: i64, lines: &[(&str, u32)]) -> PurchaseRefunded {
        PurchaseRefunded {
            customer_id: ADA,
            order_id: order.into(),
            refund_id: id.into(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| RefundLine {
                    sku: (*sku).into(),
                    quantity: *quantity,
                    amount_minor: 0,
                })
                .collect(),
            amount_minor: amount,
            currency: "EUR".into(),
            reason: String::new(),
        }
    }

    /// Given these events of ADA's stream.
    fn given(events: Vec<DomainEvent>) -> Customer {
        let mut state = Customer::default();
        for event in &events {
            state.apply(ADA, event);
        }
        state
    }

    #[test]
    fn registering_twice_is_refused() {
        let state = given(vec![registered(ADA, "ada@example.com")]);
        let DomainEvent::CustomerRegistered(again) = registered(ADA, "x@example.com") else {
            unreachable!()
        };
        assert_eq!(
            register(&state, again),
            Err(RuleError::AlreadyRegistered(ADA))
        );
    }

    #[test]
    fn registration_holds_normalised_identifiers() {
        let state = given(vec![registered(ADA, " Ada@Example.COM")]);
        assert_eq!(
            state.identifiers.iter().next().unwrap().value,
            "ada@example.com"
        );
    }

    #[test]
    fn an_identifier_held_by_another_customer_is_refused_naming_the_holder() {
        let wanted = vec![Identifier {
            kind: IdentifierKind::Email,
            value: "ada@example.com".into(),
        }];
        let holders = BTreeMap::from([(wanted[0].clone(), BOB)]);
        assert_eq!(
            check_identifiers(ADA, &wanted, &holders, &BTreeSet::new()),
            Err(RuleError::IdentifierInUse {
                kind: IdentifierKind::Email,
                holder: BOB
            })
        );
        assert_eq!(
            check_identifiers(ADA, &wanted, &holders, &BTreeSet::from([BOB])),
            Ok(())
        );
        let mine = BTreeMap::from([(wanted[0].clone(), ADA)]);
        assert_eq!(
            check_identifiers(ADA, &wanted, &mine, &BTreeSet::new()),
            Ok(())
        );
    }

    #[test]
    fn facts_need_a_live_customer() {
        let nobody = given(vec![]);
        let tag = DomainEvent::TagAdded(crate::domain::events::TagAdded {
            customer_id: ADA,
            tag: "vip".into(),
        });
        assert_eq!(
            record(&nobody, ADA, tag.clone()),
            Err(RuleError::NotFound(ADA))
        );
        let mut erased = given(vec![registered(ADA, "a@b.c")]);
        erased.erased = true;
        assert_eq!(
            record(&erased, ADA, tag.clone()),
            Err(RuleError::Erased(ADA))
        );
        let live = given(vec![registered(ADA, "a@b.c")]);
        assert_eq!(record(&live, ADA, tag.clone()), Ok(vec![tag]));
    }

    #[test]
    fn refunds_cannot_exceed_the_order() {
        let state = given(vec![
            registered(ADA, "a@b.c"),
            DomainEvent::PurchaseCompleted(purchase("o-1", 1000, &[("mug", 2)])),
            DomainEvent::PurchaseRefunded(refund("o-1", "r-1", 600, &[("mug", 1)])),
        ]);
        assert_eq!(
            record_refund(&state, ADA, refund("o-1", "r-2", 500, &[])),
            Err(RuleError::RefundExceedsOrder {
                order_id: "o-1".into(),
                what: "amount".into()
            })
        );
        assert_eq!(
            record_refund(&state, ADA, refund("o-1", "r-2", 100, &[("mug", 2)])),
            Err(RuleError::RefundExceedsOrder {
                order_id: "o-1".into(),
                what: "units of SKU mug".into()
            })
        );
        assert_eq!(
            record_refund(&state, ADA, refund("o-1", "r-2", 100, &[("plate", 1)])),
            Err(RuleError::UnknownOrderLine {
                order_id: "o-1".into(),
                sku: "plate".into()
            })
        );
        assert_eq!(
            record_refund(&state, ADA, refund("o-9", "r-2", 100, &[])),
            Err(RuleError::UnknownOrder("o-9".into()))
        );
        assert_eq!(
            record_refund(&state, ADA, refund("o-1", "r-1", 100, &[])),
            Err(RuleError::DuplicateRefund {
                order_id: "o-1".into(),
                refund_id: "r-1".into()
            })
        );
        let mut usd = refund("o-1", "r-2", 100, &[]);
        usd.currency = "USD".into();
        assert!(matches!(
            record_refund(&state, ADA, usd),
            Err(RuleError::CurrencyMismatch { .. })
        ));
        let ok = refund("o-1", "r-2", 400, &[("mug", 1)]);
        assert_eq!(
            record_refund(&state, ADA, ok.clone()),
            Ok(vec![DomainEvent::PurchaseRefunded(ok)])
        );
    }

    #[test]
    fn an_order_is_recorded_once() {
        let state = given(vec![
            registered(ADA, "a@b.c"),
            DomainEvent::PurchaseCompleted(purchase("o-1", 1000, &[("mug", 2)])),
        ]);
        assert_eq!(
            record_purchase(&state, ADA, purchase("o-1", 5, &[])),
            Err(RuleError::DuplicateOrder("o-1".into()))
        );
    }

    #[test]
    fn merge_rules() {
        let ada = given(vec![registered(ADA, "a@b.c")]);
        let mut bob = Customer::default();
        bob.apply(BOB, &registered(BOB, "b@b.c"));
        assert_eq!(merge(&ada, ADA, &ada, ADA), Err(RuleError::MergeIntoSelf));
        let merged = merge(&ada, ADA, &bob, BOB).unwrap();
        bob.apply(BOB, &DomainEvent::CustomersMerged(merged.clone()));
        assert_eq!(bob.merged_into, Some(ADA));
        assert_eq!(bob.identifiers.len(), 1);
        assert_eq!(
            merge(&bob, BOB, &ada, ADA),
            Err(RuleError::MergeIntoMerged {
                survivor: BOB,
                into: ADA
            })
        );
        let mut ada_after = ada.clone();
        ada_after.apply(ADA, &DomainEvent::CustomersMerged(merged));
        assert!(ada_after.merged_from.contains(&BOB));
        assert_eq!(
            merge(&ada, ADA, &given(vec![]), BOB),
            Err(RuleError::NotFound(BOB))
        );
    }
}

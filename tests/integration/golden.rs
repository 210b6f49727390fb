//! Golden byte fixtures: the stored bytes of every event type and schema version, of
//! the stored envelope and of a whole chunk, pinned under `tests/fixtures/`.
//!
//! bincode is not self-describing: reordering a field or an enum variant, changing a
//! field's type, or switching an encoding option silently changes the bytes, and every
//! log written before can no longer be read. These tests decode each fixture (old logs
//! stay readable) and encode today's value (the format did not drift).
//!
//! Personal parts are stored sealed only, so the golden values are sealed with a fixed
//! data key (`[7; 32]`) and fixed associated data; sealing is deterministic (synthetic
//! nonce), so the bytes never change, and opening them with the same key must give back
//! the clear sample: the seal format is pinned as well.
//!
//! - `tests/fixtures/<EventType>.v<N>.bin`: the payload of a fully populated event of
//!   that type and schema version (`DomainEvent::encode`). Every built-in type must
//!   have one for its current version; fixtures of older versions stay forever and must
//!   keep decoding (through the type's upcaster). A type whose payload has alternative
//!   shapes may add `<EventType>.v<N>.<shape>.bin` (`CustomFieldSet.v1.plain.bin`).
//! - `tests/fixtures/format1/`: on-disk format version 1 — one stored envelope
//!   (`StoredEvent::encode`), one chunk of three events chained from the zero hash
//!   (`record::ChunkBuilder`), the same chunk as the writer stores it compressed
//!   (`record::compress_chunk`), and the chain hashes they must produce.
//! - `tests/fixtures/shared/enums.v1.bin`: every variant of the enums events share;
//!   `shared/values.v1.bin`: every variant of the enums and value types added with the
//!   profile events (consent, feedback, identifiers, custom fields).
//!
//! A missing fixture fails the test; `RAPPORT_BLESS=1 cargo test --test integration golden::` writes
//! missing fixtures (and only missing ones) for you to review and commit. Never
//! re-bless a fixture that exists: if its bytes must change, the change needs a new
//! schema version (with an upcaster from the old one) or a new on-disk format version.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rapport::domain::DomainEvent;
use rapport::domain::common::{
    CalendarDate, Channel, ConsentPurpose, Decimal, Direction, InteractionKind, PostalAddress,
};
use rapport::domain::events::{
    BUILT_IN_EVENT_TYPES, ConsentGiven, ConsentWithdrawn, ContactDetails, ContactDetailsChanged,
    CustomEvent, CustomFieldSet, CustomFieldValue, CustomerErased, CustomerIdentity,
    CustomerRegistered, CustomersMerged, FeedbackGiven, FeedbackMetric, FieldValue,
    IdentifierClaimed, IdentifierKind, IdentifierReleased, InteractionLogged, InteractionText,
    PreferenceCleared, PreferenceSet, PurchaseCompleted, PurchaseLine, PurchaseRefunded,
    RefundLine, TagAdded, TagRemoved, Value,
};
use rapport::domain::events::{
    CustomerEnteredSegment, CustomerLeftSegment, SegmentArchived, SegmentChanged, SegmentDefined,
};
// Sales pipelines (issue 4).
use rapport::domain::events::{
    AccountContactLinked, AccountContactUnlinked, AccountCreated, AccountOwnerAssigned,
    AccountProfile, AccountUpdated, ContactRole, DealChanged, DealLost, DealOpened, DealReopened,
    DealStageMoved, DealWon, LeadAssigned, LeadCaptured, LeadDisqualified, LeadQualified,
    LeadSource, PipelineChanged, PipelineDefined, SizeBand, Stage, StageKind, TaskCancelled,
    TaskCompleted, TaskCreated, TaskKind,
};
use rapport::domain::personal::Personal;
use rapport::keys::DataKey;
use rapport::log::record::{ChunkBuilder, chain_hash, compress_chunk, decode_chunk, parse_chunk};
use rapport::log::{Hash, StoredEvent, ZERO_HASH};
use rapport::privacy::associated_data;
use uuid::Uuid;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn blessing() -> bool {
    std::env::var("RAPPORT_BLESS").is_ok_and(|v| v == "1")
}

/// The bytes of fixture `relative`; when it is missing, writes `current` if blessing,
/// or fails with how to bless.
fn fixture(relative: &str, current: &[u8]) -> Vec<u8> {
    let path = fixtures_dir().join(relative);
    match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if blessing() {
                std::fs::create_dir_all(path.parent().expect("fixtures have a parent"))
                    .expect("create the fixtures dir");
                std::fs::write(&path, current).expect("write the fixture");
                eprintln!("blessed new fixture {}", path.display());
                current.to_vec()
            } else {
                panic!(
                    "golden fixture {} is missing.\n\
                     A new event type or schema version needs one: run\n    \
                     RAPPORT_BLESS=1 cargo test --test integration golden::\n\
                     review the new file and commit it. (Blessing writes missing fixtures only.)",
                    path.display()
                )
            }
        }
        Err(error) => panic!("cannot read {}: {error}", path.display()),
    }
}

/// Asserts that today's encoding equals the fixture, with a readable diff.
fn assert_same_bytes(what: &str, current: &[u8], golden: &[u8]) {
    if current != golden {
        let first_difference = current
            .iter()
            .zip(golden)
            .position(|(a, b)| a != b)
            .unwrap_or(current.len().min(golden.len()));
        panic!(
            "{what}: the encoding changed, so logs written before this change would no longer \
             read back the same.\nfirst difference at byte {first_difference}\n\
             golden:  {}\ncurrent: {}\n\
             If the change is intended, keep the old bytes readable: add a new schema version \
             with an upcaster (or a new on-disk format version) and a fixture for it; never \
             re-bless an existing fixture.",
            hex::encode(golden),
            hex::encode(current)
        );
    }
}

/// bincode 2 (standard config), as the log stores payloads, of a value without clear
/// personal parts.
fn bincode_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("a value without clear personal parts encodes")
}

/// The stored payload of an event whose personal parts are sealed.
fn payload(event: &DomainEvent) -> Vec<u8> {
    event
        .encode()
        .unwrap_or_else(|error| panic!("{} encodes: {error}", event.event_type()))
}

// ---------------------------------------------------------------------------------
// Sealing: a fixed key and fixed associated data, so sealed bytes are fixed too
// ---------------------------------------------------------------------------------

/// The stream and event id the golden event payloads are sealed for.
const SEAL_STREAM: &str = "customer-00000000-0000-0000-0000-000000000001";
const SEAL_EVENT_ID: Uuid = Uuid::from_u128(1);

fn golden_key() -> DataKey {
    DataKey::from_bytes([7u8; 32])
}

/// `event` with every clear personal part sealed with the golden key for
/// `(stream, event_id)`.
fn sealed(mut event: DomainEvent, stream: &str, event_id: Uuid) -> DomainEvent {
    let key = golden_key();
    event.seal(&mut |field, plain| key.seal(&associated_data(stream, event_id, field), plain));
    event
}

/// `event` with every sealed personal part opened with the golden key for
/// `(stream, event_id)` (parts that do not open become erased).
fn opened(mut event: DomainEvent, stream: &str, event_id: Uuid) -> DomainEvent {
    let key = golden_key();
    event.open(&mut |field, sealed| {
        key.open(&associated_data(stream, event_id, field), sealed)
            .ok()
    });
    event
}

// ---------------------------------------------------------------------------------
// Golden values: fully populated, fixed
// ---------------------------------------------------------------------------------

const CUSTOMER_ID: Uuid = Uuid::from_u128(0x0190_1f2e_3d4c_7b5a_8968_5746_3524_1302);
/// A duplicate profile of the same person, merged into `CUSTOMER_ID`.
const DUPLICATE_ID: Uuid = Uuid::from_u128(0x0190_2a4b_6c8d_7e0f_9a1b_2c3d_4e5f_6071);

/// Personal strings of the golden values: none may appear in a stored payload.
const PERSONAL_TEXTS: &[&str] = &[
    "Lovelace",
    "ada@example.com",
    "+44 20 7946",
    "St James",
    "Analytical Row",
    "Chipped mug",
    "nut allergy",
    "friendly staff",
];

fn address() -> PostalAddress {
    PostalAddress {
        lines: vec!["12 St James's Square".into(), "Flat 3".into()],
        city: "London".into(),
        region: "Greater London".into(),
        postal_code: "SW1Y 4JH".into(),
        country_code: "GB".into(),
    }
}

fn custom_event() -> CustomEvent {
    CustomEvent {
        event_type: "review.written".into(),
        data: BTreeMap::from([
            ("absent".to_owned(), Value::Null),
            ("verified".to_owned(), Value::Bool(true)),
            ("rating".to_owned(), Value::Number(4.5)),
            (
                "text".to_owned(),
                Value::String("Gro\u{df}artig — great mug".into()),
            ),
            (
                "tags".to_owned(),
                Value::List(vec![
                    Value::String("kitchen".into()),
                    Value::Number(-0.25),
                    Value::Bool(false),
                    Value::Null,
                ]),
            ),
            (
                "author".to_owned(),
                Value::Object(BTreeMap::from([
                    ("id".to_owned(), Value::String("c-1".into())),
                    ("visits".to_owned(), Value::Number(12.0)),
                    (
                        "nested".to_owned(),
                        Value::Object(BTreeMap::from([("list".to_owned(), Value::List(vec![]))])),
                    ),
                ])),
            ),
        ]),
    }
}

fn customer_registered() -> CustomerRegistered {
    CustomerRegistered {
        customer_id: CUSTOMER_ID,
        identity: Personal::Clear(CustomerIdentity {
            given_name: "Ada".into(),
            family_name: "Lovelace".into(),
            emails: vec!["ada@example.com".into(), "countess@example.org".into()],
            phones: vec!["+44 20 7946 0000".into()],
            birth_date: Some(CalendarDate {
                year: 1815,
                month: 12,
                day: 10,
            }),
            address: address(),
            external_ids: BTreeMap::from([
                ("eshop".to_owned(), "u-98765".to_owned()),
                ("pos_card".to_owned(), "4711".to_owned()),
            ]),
        }),
        locale: "en-GB".into(),
        acquisition_channel: Channel::Store,
    }
}

fn contact_details_changed() -> ContactDetailsChanged {
    ContactDetailsChanged {
        customer_id: CUSTOMER_ID,
        details: Personal::Clear(ContactDetails {
            emails: vec!["ada.lovelace@example.com".into()],
            phones: vec!["+44 20 7946 0001".into(), "+44 7700 900123".into()],
            address: PostalAddress {
                lines: vec!["1 Analytical Row".into()],
                city: "Marylebone".into(),
                region: "London".into(),
                postal_code: "NW1 6XE".into(),
                country_code: "GB".into(),
            },
        }),
    }
}

fn interaction_logged() -> InteractionLogged {
    InteractionLogged {
        customer_id: CUSTOMER_ID,
        channel: Channel::Phone,
        direction: Direction::Inbound,
        kind: InteractionKind::Complaint,
        text: Personal::Clear(InteractionText {
            subject: "Chipped mug".into(),
            summary: "Customer reports a chipped mug from order o-1001; replacement sent.\n\
                      Follow up in 7 days."
                .into(),
        }),
        agent: "agent-17".into(),
        duration_seconds: 754,
    }
}

fn purchase_completed() -> PurchaseCompleted {
    PurchaseCompleted {
        customer_id: CUSTOMER_ID,
        order_id: "o-1001".into(),
        lines: vec![
            PurchaseLine {
                sku: "MUG-001".into(),
                name: "Mug".into(),
                category: "kitchen".into(),
                quantity: 2,
                unit_price_minor: 1_299,
            },
            PurchaseLine {
                sku: "TEA-042".into(),
                name: "Earl Grey, 250 g".into(),
                category: "grocery".into(),
                quantity: 1,
                unit_price_minor: 650,
            },
        ],
        total_minor: 3_148,
        currency: "GBP".into(),
        channel: Channel::Store,
        store_id: "store-42".into(),
    }
}

fn preference_set() -> PreferenceSet {
    PreferenceSet {
        customer_id: CUSTOMER_ID,
        key: "newsletter.frequency".into(),
        value: "weekly".into(),
    }
}

fn preference_cleared() -> PreferenceCleared {
    PreferenceCleared {
        customer_id: CUSTOMER_ID,
        key: "preferred_store".into(),
    }
}

fn consent_given() -> ConsentGiven {
    ConsentGiven {
        customer_id: CUSTOMER_ID,
        purpose: ConsentPurpose::MarketingEmail,
        source: "web:signup-form".into(),
    }
}

fn consent_withdrawn() -> ConsentWithdrawn {
    ConsentWithdrawn {
        customer_id: CUSTOMER_ID,
        purpose: ConsentPurpose::ThirdPartySharing,
        source: "email:preference-centre".into(),
    }
}

fn tag_added() -> TagAdded {
    TagAdded {
        customer_id: CUSTOMER_ID,
        tag: "vip".into(),
    }
}

fn tag_removed() -> TagRemoved {
    TagRemoved {
        customer_id: CUSTOMER_ID,
        tag: "lapsed".into(),
    }
}

/// A custom field holding personal data (sealed like every personal part).
fn custom_field_set_personal() -> CustomFieldSet {
    CustomFieldSet {
        customer_id: CUSTOMER_ID,
        key: "dietary_notes".into(),
        value: CustomFieldValue::Personal(Personal::Clear(FieldValue::Text(
            "Vegetarian; nut allergy".into(),
        ))),
    }
}

/// A custom field holding plain (non-personal) data.
fn custom_field_set_plain() -> CustomFieldSet {
    CustomFieldSet {
        customer_id: CUSTOMER_ID,
        key: "loyalty.points_multiplier".into(),
        value: CustomFieldValue::Plain(FieldValue::Number(Decimal {
            mantissa: 125,
            scale: 2,
        })),
    }
}

fn purchase_refunded() -> PurchaseRefunded {
    PurchaseRefunded {
        customer_id: CUSTOMER_ID,
        order_id: "o-1001".into(),
        refund_id: "r-2001".into(),
        lines: vec![RefundLine {
            sku: "MUG-001".into(),
            quantity: 1,
            amount_minor: 1_299,
        }],
        amount_minor: 1_299,
        currency: "GBP".into(),
        reason: "damaged in transit".into(),
    }
}

fn feedback_given() -> FeedbackGiven {
    FeedbackGiven {
        customer_id: CUSTOMER_ID,
        metric: FeedbackMetric::Nps,
        score: 9,
        comment: Personal::Clear("Quick replacement, friendly staff — would recommend.".into()),
        channel: Channel::Email,
        subject_ref: "order:o-1001".into(),
    }
}

fn customers_merged() -> CustomersMerged {
    CustomersMerged {
        survivor_id: CUSTOMER_ID,
        duplicate_id: DUPLICATE_ID,
    }
}

fn customer_erased() -> CustomerErased {
    CustomerErased {
        customer_id: CUSTOMER_ID,
        erased_ids: vec![CUSTOMER_ID, DUPLICATE_ID],
        reason: "GDPR art. 17 request #5521".into(),
        requested_by: "dpo@shop.example".into(),
    }
}

fn identifier_claimed() -> IdentifierClaimed {
    IdentifierClaimed {
        customer_id: CUSTOMER_ID,
        kind: IdentifierKind::Email,
    }
}

fn identifier_released() -> IdentifierReleased {
    IdentifierReleased {
        customer_id: CUSTOMER_ID,
        kind: IdentifierKind::ExternalId,
    }
}

const SEGMENT_ID: Uuid = Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_5e61);

fn segment_defined() -> SegmentDefined {
    SegmentDefined {
        segment_id: SEGMENT_ID,
        name: "Big spenders".into(),
        rule: "spent EUR >= 50000 and last_purchase within 90d".into(),
    }
}

fn segment_changed() -> SegmentChanged {
    SegmentChanged {
        segment_id: SEGMENT_ID,
        name: "Big spenders (EU)".into(),
        rule: "spent EUR >= 60000 or spent SEK >= 600000".into(),
    }
}

fn customer_entered_segment() -> CustomerEnteredSegment {
    CustomerEnteredSegment {
        segment_id: SEGMENT_ID,
        customer_id: CUSTOMER_ID,
        as_of_us: 1_709_290_800_000_000,
    }
}

fn customer_left_segment() -> CustomerLeftSegment {
    CustomerLeftSegment {
        segment_id: SEGMENT_ID,
        customer_id: CUSTOMER_ID,
        as_of_us: -1,
    }
}

// --- Sales pipelines (issue 4) ---------------------------------------------------------

const ACCOUNT_ID: Uuid = Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_acc1);
const PIPELINE_ID: Uuid = Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_919e);
const LEAD_ID: Uuid = Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_1ead);
const DEAL_ID: Uuid = Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_dea1);
const TASK_ID: Uuid = Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_7a5c);

fn account_profile() -> AccountProfile {
    AccountProfile {
        name: "ACME GmbH".into(),
        domain: "acme.example".into(),
        industry: "manufacturing".into(),
        size_band: SizeBand::Medium,
        external_ids: BTreeMap::from([("erp".to_owned(), "K-10042".to_owned())]),
    }
}

fn stages() -> Vec<Stage> {
    let stage = |id: &str, name: &str, probability, kind| Stage {
        stage_id: id.into(),
        name: name.into(),
        probability,
        kind,
    };
    vec![
        stage("qualify", "Qualify", 10, StageKind::Open),
        stage("proposal", "Proposal", 50, StageKind::Open),
        stage("won", "Won", 100, StageKind::Won),
        stage("lost", "Lost", 0, StageKind::Lost),
    ]
}

fn sales_events() -> Vec<DomainEvent> {
    vec![
        DomainEvent::AccountCreated(AccountCreated {
            account_id: ACCOUNT_ID,
            profile: account_profile(),
        }),
        DomainEvent::AccountUpdated(AccountUpdated {
            account_id: ACCOUNT_ID,
            profile: AccountProfile {
                size_band: SizeBand::Enterprise,
                ..account_profile()
            },
        }),
        DomainEvent::AccountContactLinked(AccountContactLinked {
            account_id: ACCOUNT_ID,
            customer_id: CUSTOMER_ID,
            role: ContactRole::DecisionMaker,
        }),
        DomainEvent::AccountContactUnlinked(AccountContactUnlinked {
            account_id: ACCOUNT_ID,
            customer_id: CUSTOMER_ID,
        }),
        DomainEvent::AccountOwnerAssigned(AccountOwnerAssigned {
            account_id: ACCOUNT_ID,
            owner: "rep-7".into(),
        }),
        DomainEvent::PipelineDefined(PipelineDefined {
            pipeline_id: PIPELINE_ID,
            name: "New business".into(),
            currencies: vec!["EUR".into(), "SEK".into()],
            stages: stages(),
        }),
        DomainEvent::PipelineChanged(PipelineChanged {
            pipeline_id: PIPELINE_ID,
            name: "New business (EU)".into(),
            currencies: vec!["EUR".into()],
            stages: stages().into_iter().rev().collect(),
        }),
        DomainEvent::LeadCaptured(LeadCaptured {
            lead_id: LEAD_ID,
            source: LeadSource::Campaign,
            campaign_id: "spring-2024".into(),
            customer_id: Some(CUSTOMER_ID),
            account_id: Some(ACCOUNT_ID),
            company_name: "ACME GmbH".into(),
        }),
        DomainEvent::LeadAssigned(LeadAssigned {
            lead_id: LEAD_ID,
            owner: "rep-7".into(),
        }),
        DomainEvent::LeadQualified(LeadQualified {
            lead_id: LEAD_ID,
            customer_id: Some(CUSTOMER_ID),
            deal_id: DEAL_ID,
        }),
        DomainEvent::LeadDisqualified(LeadDisqualified {
            lead_id: LEAD_ID,
            reason: "no_budget".into(),
        }),
        DomainEvent::DealOpened(DealOpened {
            deal_id: DEAL_ID,
            pipeline_id: PIPELINE_ID,
            stage_id: "qualify".into(),
            title: "ACME, 50 seats".into(),
            amount_minor: 1_250_000,
            currency: "EUR".into(),
            expected_close: CalendarDate::parse("2024-06-30").unwrap(),
            owner: "rep-7".into(),
            customer_id: Some(CUSTOMER_ID),
            account_id: Some(ACCOUNT_ID),
            lead_id: Some(LEAD_ID),
        }),
        DomainEvent::DealStageMoved(DealStageMoved {
            deal_id: DEAL_ID,
            from_stage_id: "qualify".into(),
            to_stage_id: "proposal".into(),
        }),
        DomainEvent::DealChanged(DealChanged {
            deal_id: DEAL_ID,
            amount_minor: Some(1_500_000),
            expected_close: CalendarDate::parse("2024-07-15"),
            owner: Some("rep-8".into()),
        }),
        DomainEvent::DealWon(DealWon {
            deal_id: DEAL_ID,
            from_stage_id: "proposal".into(),
            stage_id: "won".into(),
        }),
        DomainEvent::DealLost(DealLost {
            deal_id: DEAL_ID,
            from_stage_id: "proposal".into(),
            stage_id: "lost".into(),
            reason: "competitor".into(),
        }),
        DomainEvent::DealReopened(DealReopened {
            deal_id: DEAL_ID,
            from_stage_id: "lost".into(),
            stage_id: "proposal".into(),
        }),
        DomainEvent::TaskCreated(TaskCreated {
            task_id: TASK_ID,
            deal_id: Some(DEAL_ID),
            account_id: Some(ACCOUNT_ID),
            kind: TaskKind::Meeting,
            title: "Demo for the buying committee".into(),
            due_at_us: 1_717_149_600_000_000,
            assignee: "rep-7".into(),
        }),
        DomainEvent::TaskCompleted(TaskCompleted { task_id: TASK_ID }),
        DomainEvent::TaskCancelled(TaskCancelled { task_id: TASK_ID }),
    ]
}

/// One clear value per event type (and payload shape), at its current schema version.
/// A new built-in type must be added here (the `every_built_in_type_has_a_golden_fixture`
/// test says so).
fn clear_events() -> Vec<DomainEvent> {
    vec![
        DomainEvent::Custom(custom_event()),
        DomainEvent::CustomerRegistered(customer_registered()),
        DomainEvent::ContactDetailsChanged(contact_details_changed()),
        DomainEvent::InteractionLogged(interaction_logged()),
        DomainEvent::PurchaseCompleted(purchase_completed()),
        DomainEvent::PreferenceSet(preference_set()),
        DomainEvent::PreferenceCleared(preference_cleared()),
        DomainEvent::ConsentGiven(consent_given()),
        DomainEvent::ConsentWithdrawn(consent_withdrawn()),
        DomainEvent::TagAdded(tag_added()),
        DomainEvent::TagRemoved(tag_removed()),
        DomainEvent::CustomFieldSet(custom_field_set_personal()),
        DomainEvent::CustomFieldSet(custom_field_set_plain()),
        DomainEvent::PurchaseRefunded(purchase_refunded()),
        DomainEvent::FeedbackGiven(feedback_given()),
        DomainEvent::CustomersMerged(customers_merged()),
        DomainEvent::CustomerErased(customer_erased()),
        DomainEvent::IdentifierClaimed(identifier_claimed()),
        DomainEvent::IdentifierReleased(identifier_released()),
        DomainEvent::SegmentDefined(segment_defined()),
        DomainEvent::SegmentChanged(segment_changed()),
        DomainEvent::SegmentArchived(SegmentArchived {
            segment_id: SEGMENT_ID,
        }),
        DomainEvent::CustomerEnteredSegment(customer_entered_segment()),
        DomainEvent::CustomerLeftSegment(customer_left_segment()),
        // Loyalty (issue 5).
        DomainEvent::ProgrammeDefined(loyalty_samples::programme_defined()),
        DomainEvent::ProgrammeChanged(loyalty_samples::programme_changed()),
        DomainEvent::RewardDefined(loyalty_samples::reward_defined()),
        DomainEvent::RewardRetired(loyalty_samples::reward_retired()),
        DomainEvent::RewardClaimed(loyalty_samples::reward_claimed()),
        DomainEvent::MemberEnrolled(loyalty_samples::member_enrolled()),
        DomainEvent::MemberLeft(loyalty_samples::member_left()),
        DomainEvent::TierChanged(loyalty_samples::tier_changed()),
        DomainEvent::PointsEarned(loyalty_samples::points_earned()),
        DomainEvent::PointsCancelled(loyalty_samples::points_cancelled()),
        DomainEvent::PointsSpent(loyalty_samples::points_spent()),
        DomainEvent::PointsExpired(loyalty_samples::points_expired()),
        DomainEvent::PointsAdjusted(loyalty_samples::points_adjusted()),
        DomainEvent::PointsTransferred(loyalty_samples::points_transferred()),
        DomainEvent::LedgerMerged(loyalty_samples::ledger_merged()),
    ]
    .into_iter()
    .chain(sales_events())
    .collect()
}

/// The golden values as stored: [`clear_events`] sealed for `SEAL_STREAM`/`SEAL_EVENT_ID`.
fn golden_events() -> Vec<DomainEvent> {
    clear_events()
        .into_iter()
        .map(|event| sealed(event, SEAL_STREAM, SEAL_EVENT_ID))
        .collect()
}

/// The fixture name of a golden event: its type name (`CustomEvent` for custom ones),
/// schema version, and the payload shape where a type has more than one.
fn fixture_name(event: &DomainEvent) -> String {
    let name = match event {
        DomainEvent::Custom(_) => "CustomEvent",
        other => other.event_type(),
    };
    let shape = match event {
        DomainEvent::CustomFieldSet(CustomFieldSet {
            value: CustomFieldValue::Plain(_),
            ..
        }) => ".plain",
        _ => "",
    };
    format!("{name}.v{}{shape}.bin", event.schema_version())
}

// ---------------------------------------------------------------------------------
// Event payloads
// ---------------------------------------------------------------------------------

#[test]
fn every_event_payload_matches_its_golden_bytes() {
    for event in golden_events() {
        let name = fixture_name(&event);
        let current = payload(&event);
        let golden = fixture(&name, &current);
        let decoded = DomainEvent::decode(event.event_type(), event.schema_version(), &golden)
            .unwrap_or_else(|error| panic!("{name} no longer decodes: {error}"));
        assert_eq!(decoded, event, "{name} decodes to the golden value");
        assert_same_bytes(&name, &current, &golden);
    }
}

/// The sealed personal parts in the fixtures open with the key and associated data they
/// were sealed with, back to the clear sample; so the seal format (version byte, nonce,
/// cipher, associated data, plaintext encoding) is pinned, not only the outer bytes.
#[test]
fn golden_sealed_parts_open_to_the_clear_sample() {
    let mut personal = 0;
    for clear in clear_events() {
        let name = fixture_name(&clear);
        let sealed_event = sealed(clear.clone(), SEAL_STREAM, SEAL_EVENT_ID);
        let golden = fixture(&name, &payload(&sealed_event));
        let decoded = DomainEvent::decode(clear.event_type(), clear.schema_version(), &golden)
            .unwrap_or_else(|error| panic!("{name} no longer decodes: {error}"));
        assert_eq!(
            opened(decoded.clone(), SEAL_STREAM, SEAL_EVENT_ID),
            clear,
            "{name}: the sealed parts open with the golden key to the clear sample"
        );
        for text in PERSONAL_TEXTS {
            assert!(
                !golden.windows(text.len()).any(|w| w == text.as_bytes()),
                "{name}: the stored payload holds personal data in clear ({text:?})"
            );
        }
        if clear.has_personal_parts() {
            personal += 1;
            assert!(
                clear.encode().is_err(),
                "{name}: an event with a clear personal part must not encode"
            );
            assert_ne!(decoded, clear, "{name}: the stored form is sealed");
            // The associated data binds each part to its event: under another event id
            // it does not open (it reads as erased).
            assert_ne!(
                opened(decoded, SEAL_STREAM, Uuid::from_u128(2)),
                clear,
                "{name}: a sealed part opens only for the event it was sealed for"
            );
        }
    }
    assert_eq!(
        personal, 5,
        "CustomerRegistered, ContactDetailsChanged, InteractionLogged, FeedbackGiven and the \
         personal CustomFieldSet carry personal parts"
    );
}

/// The golden values are realistic: each passes its type's validation.
#[test]
fn golden_values_are_valid_events() {
    for event in clear_events() {
        let name = fixture_name(&event);
        if let Err(violations) = event.validate("event") {
            panic!("{name}: the golden value is not a valid event: {violations:?}");
        }
    }
}

#[test]
fn every_built_in_type_has_a_golden_fixture() {
    let golden: BTreeSet<String> = golden_events()
        .iter()
        .filter(|e| !matches!(e, DomainEvent::Custom(_)))
        .map(|e| e.event_type().to_owned())
        .collect();
    let built_in: BTreeSet<String> = BUILT_IN_EVENT_TYPES
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    assert_eq!(
        golden, built_in,
        "every built-in event type needs a fully populated value in clear_events() \
         (tests/integration/golden.rs) and a fixture tests/fixtures/<EventType>.v<N>.bin"
    );
    for event in golden_events() {
        let path = fixtures_dir().join(fixture_name(&event));
        assert!(
            path.exists() || blessing(),
            "{} is missing; run RAPPORT_BLESS=1 cargo test --test integration golden:: and commit it",
            path.display()
        );
    }
}

/// Every event fixture ever committed, of any version, still decodes: old versions go
/// through their type's upcaster, so removing an upcaster fails here.
#[test]
fn every_committed_event_fixture_still_decodes() {
    // The current versions first, so a missing one fails (or is blessed) before the sweep.
    for event in golden_events() {
        fixture(&fixture_name(&event), &payload(&event));
    }
    let mut checked = 0;
    for entry in std::fs::read_dir(fixtures_dir()).expect("tests/fixtures exists") {
        let path = entry.expect("dir entry").path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some(stem) = file.strip_suffix(".bin") else {
            continue;
        };
        // <EventType>.v<N> or <EventType>.v<N>.<shape>
        let (event_type, version) = stem
            .split_once(".v")
            .and_then(|(t, rest)| {
                let version = rest.split('.').next()?;
                version.parse::<u16>().ok().map(|v| (t, v))
            })
            .unwrap_or_else(|| {
                panic!("{file}: event fixtures are named <EventType>.v<N>[.<shape>].bin")
            });
        let bytes = std::fs::read(&path).expect("read fixture");
        let decoded = DomainEvent::decode(event_type, version, &bytes)
            .unwrap_or_else(|error| panic!("{file} no longer decodes: {error}"));
        if event_type != "CustomEvent" {
            assert_eq!(decoded.event_type(), event_type, "{file}");
        }
        checked += 1;
    }
    assert!(
        checked >= golden_events().len(),
        "found {checked} event fixtures"
    );
}

/// The programme events' version 1 (before base caps) upcasts to today's type: the same
/// programme, uncapped.
#[test]
fn version_1_programmes_read_back_uncapped() {
    let defined = std::fs::read(fixtures_dir().join("ProgrammeDefined.v1.bin")).unwrap();
    let changed = std::fs::read(fixtures_dir().join("ProgrammeChanged.v1.bin")).unwrap();
    let mut want_defined = loyalty_samples::programme_defined();
    want_defined.programme.base_cap = None;
    let mut want_changed = loyalty_samples::programme_changed();
    want_changed.programme.base_cap = None;
    assert_eq!(
        DomainEvent::decode("ProgrammeDefined", 1, &defined).unwrap(),
        DomainEvent::ProgrammeDefined(want_defined)
    );
    assert_eq!(
        DomainEvent::decode("ProgrammeChanged", 1, &changed).unwrap(),
        DomainEvent::ProgrammeChanged(want_changed)
    );
}

/// bincode stores an enum variant as its index: reordering variants of a shared enum
/// would silently turn every stored `Store` into another channel.
#[test]
fn shared_enum_variants_keep_their_indices() {
    let channels = vec![
        Channel::Unspecified,
        Channel::Store,
        Channel::Web,
        Channel::MobileApp,
        Channel::Email,
        Channel::Phone,
        Channel::Chat,
        Channel::Social,
        Channel::Messaging,
    ];
    let directions = vec![
        Direction::Unspecified,
        Direction::Inbound,
        Direction::Outbound,
    ];
    let kinds = vec![
        InteractionKind::Unspecified,
        InteractionKind::Visit,
        InteractionKind::Call,
        InteractionKind::Email,
        InteractionKind::Chat,
        InteractionKind::PageView,
        InteractionKind::CartAbandoned,
        InteractionKind::Complaint,
        InteractionKind::Message,
        InteractionKind::Other,
    ];
    let all = (channels, directions, kinds);
    let current = bincode_bytes(&all);
    let golden = fixture("shared/enums.v1.bin", &current);
    let decoded: (Vec<Channel>, Vec<Direction>, Vec<InteractionKind>) =
        rapport::domain::events::decode_exact("shared enums", 1, &golden)
            .expect("the shared enums fixture decodes");
    assert_eq!(decoded, all);
    assert_same_bytes("shared/enums.v1.bin", &current, &golden);
}

type SharedValues = (
    Vec<ConsentPurpose>,
    Vec<FeedbackMetric>,
    Vec<IdentifierKind>,
    Vec<FieldValue>,
    Vec<CustomFieldValue>,
    Vec<Decimal>,
);

/// The same for the enums and value types the profile events added (kept in their own
/// fixture: `shared/enums.v1.bin` never changes).
#[test]
fn shared_value_variants_keep_their_indices() {
    let purposes = vec![
        ConsentPurpose::Unspecified,
        ConsentPurpose::MarketingEmail,
        ConsentPurpose::MarketingSms,
        ConsentPurpose::MarketingPhone,
        ConsentPurpose::Profiling,
        ConsentPurpose::ThirdPartySharing,
    ];
    let metrics = vec![
        FeedbackMetric::Unspecified,
        FeedbackMetric::Nps,
        FeedbackMetric::Csat,
    ];
    let identifier_kinds = vec![
        IdentifierKind::Unspecified,
        IdentifierKind::Email,
        IdentifierKind::Phone,
        IdentifierKind::ExternalId,
    ];
    let field_values = vec![
        FieldValue::Text("size M".into()),
        FieldValue::Number(Decimal {
            mantissa: -1_250,
            scale: 2,
        }),
        FieldValue::Bool(true),
        FieldValue::Date(CalendarDate {
            year: 2024,
            month: 2,
            day: 29,
        }),
    ];
    let custom_field_values = vec![
        CustomFieldValue::Plain(FieldValue::Bool(false)),
        // The sealed bytes are opaque here; the event fixtures pin real sealed parts.
        CustomFieldValue::Personal(Personal::Sealed(vec![1, 0xde, 0xad, 0xbe, 0xef])),
    ];
    let decimals = vec![
        Decimal {
            mantissa: 0,
            scale: 0,
        },
        Decimal {
            mantissa: 1_999,
            scale: 3,
        },
        Decimal {
            mantissa: -42,
            scale: 0,
        },
        Decimal {
            mantissa: i64::MAX,
            scale: 18,
        },
        Decimal {
            mantissa: i64::MIN,
            scale: 18,
        },
    ];
    let all: SharedValues = (
        purposes,
        metrics,
        identifier_kinds,
        field_values,
        custom_field_values,
        decimals,
    );
    let current = bincode_bytes(&all);
    let golden = fixture("shared/values.v1.bin", &current);
    let decoded: SharedValues = rapport::domain::events::decode_exact("shared values", 1, &golden)
        .expect("the shared values fixture decodes");
    assert_eq!(decoded, all);
    assert_same_bytes("shared/values.v1.bin", &current, &golden);
}

// ---------------------------------------------------------------------------------
// On-disk format 1: the stored envelope and a chunk
// ---------------------------------------------------------------------------------

fn stream() -> String {
    format!("customer-{CUSTOMER_ID}")
}

/// The stored envelope of `clear` with its personal parts sealed for this envelope's
/// stream and event id (as the event store does).
fn envelope(position: u64, revision: u64, clear: &DomainEvent, id: u128) -> StoredEvent {
    let event_id = Uuid::from_u128(id);
    let event = sealed(clear.clone(), &stream(), event_id);
    StoredEvent {
        position,
        stream: stream(),
        revision,
        event_id: *event_id.as_bytes(),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        // 2024-03-01T09:30:00.123456Z, and the business time a day earlier.
        recorded_at_us: 1_709_285_400_123_456,
        occurred_at_us: 1_709_199_000_000_000,
        correlation_id: "corr-7f3a".into(),
        causation_id: "cmd-0042".into(),
        actor: "pos-terminal-3".into(),
        source_channel: "pos".into(),
        metadata: vec![
            ("ip".into(), "192.0.2.7".into()),
            ("schema".into(), "crm/1".into()),
        ],
        payload: payload(&event),
    }
}

/// The clear event held by a stored envelope: its payload decoded and opened for the
/// envelope's stream and event id.
fn open_envelope(stored: &StoredEvent) -> DomainEvent {
    let event = DomainEvent::decode(&stored.event_type, stored.schema_version, &stored.payload)
        .expect("its payload decodes");
    opened(event, &stored.stream, stored.id())
}

#[test]
fn the_stored_envelope_matches_its_golden_bytes() {
    let event = DomainEvent::CustomerRegistered(customer_registered());
    let stored = envelope(42, 3, &event, 0x0190_0000_0000_7000_8000_0000_0000_0042);
    let current = stored.encode();
    let golden = fixture("format1/StoredEvent.bin", &current);
    let decoded = StoredEvent::decode(&golden).expect("the envelope fixture decodes");
    assert_eq!(decoded, stored);
    assert_eq!(open_envelope(&decoded), event);
    assert_same_bytes("format1/StoredEvent.bin", &current, &golden);
}

#[test]
fn a_chunk_and_its_chain_hashes_match_their_golden_bytes() {
    let clear = [
        DomainEvent::CustomerRegistered(customer_registered()),
        DomainEvent::PurchaseCompleted(purchase_completed()),
        DomainEvent::InteractionLogged(interaction_logged()),
    ];
    let events: Vec<StoredEvent> = clear
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let n = i as u64;
            envelope(
                n + 1,
                n,
                event,
                0x0190_0000_0000_7000_8000_0000_0000_0001 + u128::from(n),
            )
        })
        .collect();
    let mut builder = ChunkBuilder::new(ZERO_HASH);
    let mut hashes: Vec<Hash> = Vec::new();
    let mut previous = ZERO_HASH;
    for event in &events {
        let bytes = event.encode();
        previous = chain_hash(&previous, event.position, &bytes);
        builder.push(&bytes, previous);
        hashes.push(previous);
    }
    let current = builder.finish();
    let current_hashes: String = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| format!("{} {}\n", i + 1, hex::encode(h)))
        .collect();

    let golden = fixture("format1/chunk.bin", &current);
    let golden_hashes = String::from_utf8(fixture(
        "format1/chunk.hashes.txt",
        current_hashes.as_bytes(),
    ))
    .expect("hashes fixture is text");
    let expected_hashes: Vec<Hash> = golden_hashes
        .lines()
        .map(|line| {
            let hex_hash = line.split_whitespace().nth(1).expect("<position> <hash>");
            hex::decode(hex_hash)
                .expect("hex")
                .try_into()
                .expect("32 bytes")
        })
        .collect();

    // Old chunks read back: events, per-event chain hashes, and the stored last hash.
    let check = |name: &str, value: &[u8]| {
        let decoded = decode_chunk(1, value)
            .unwrap_or_else(|error| panic!("{name} no longer decodes: {error}"));
        assert_eq!(
            decoded.iter().map(|e| &e.event).collect::<Vec<_>>(),
            events.iter().collect::<Vec<_>>(),
            "{name}"
        );
        assert_eq!(
            decoded
                .iter()
                .map(|e| open_envelope(&e.event))
                .collect::<Vec<_>>(),
            clear,
            "{name}: the sealed parts open for their envelope's stream and event id"
        );
        assert_eq!(
            decoded.iter().map(|e| e.hash).collect::<Vec<_>>(),
            expected_hashes,
            "{name}: the chain hashes of format 1 (BLAKE3 of previous hash ‖ position BE ‖ event bytes)"
        );
        let layout = parse_chunk(1, value).expect("parse");
        assert_eq!(layout.prev_hash, ZERO_HASH, "{name}");
        assert_eq!(layout.last_hash(), expected_hashes[2], "{name}");
    };
    check("format1/chunk.bin", &golden);

    // The writer stores a chunk zstd-compressed when that is smaller (tag 2). Those
    // chunks must stay readable too; their bytes are not compared, because another
    // zstd release may compress the same input differently and that is harmless. (The
    // chunk has three events so that it is large enough for the writer to compress.)
    let compressed = fixture("format1/chunk.zstd.bin", &compress_chunk(current.clone()));
    assert_eq!(
        compressed.first(),
        Some(&2),
        "format1/chunk.zstd.bin holds a compressed chunk"
    );
    check("format1/chunk.zstd.bin", &compressed);
    check("compress_chunk today", &compress_chunk(current.clone()));

    assert_same_bytes(
        "format1/chunk.hashes.txt",
        current_hashes.as_bytes(),
        golden_hashes.as_bytes(),
    );
    assert_same_bytes("format1/chunk.bin", &current, &golden);
}

/// Fully populated samples of the loyalty events (issue 5): every optional field set and
/// every enum variant of the programme configuration used once across the two versions.
mod loyalty_samples {
    use rapport::domain::common::Channel;
    use rapport::domain::events::{
        ExpiredLine, LedgerMerged, MemberEnrolled, MemberLeft, MovedLine, MovedSpend,
        PointsAdjusted, PointsCancelled, PointsEarned, PointsExpired, PointsSpent,
        PointsTransferred, ProgrammeChanged, ProgrammeDefined, RewardClaimed, RewardDefined,
        RewardRetired, TierChanged,
    };
    use rapport::domain::loyalty::config::{
        Bonus, BonusTrigger, Cap, CapPeriod, DowngradePolicy, Multiplier, MultiplierScope,
        PointsCap, PointsLifetime, Programme, Tier, TierBasis,
    };
    use uuid::Uuid;

    const MEMBER: Uuid = Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_0001);
    const OTHER: Uuid = Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_0002);
    const REWARD: Uuid = Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_00aa);
    const SOURCE: Uuid = Uuid::from_u128(0x0190_a3b2_7c4e_7def_8000_0000_0000_00bb);

    fn programme(
        lifetime: PointsLifetime,
        basis: TierBasis,
        downgrade: DowngradePolicy,
    ) -> Programme {
        Programme {
            name: "Club Rapport".into(),
            currency: "EUR".into(),
            points_per_unit: 2,
            minor_per_unit: 100,
            multipliers: vec![
                Multiplier {
                    scope: MultiplierScope::Category("shoes".into()),
                    percent: 300,
                },
                Multiplier {
                    scope: MultiplierScope::Sku("SKU-1".into()),
                    percent: 150,
                },
                Multiplier {
                    scope: MultiplierScope::Channel(Channel::Web),
                    percent: 120,
                },
            ],
            bonuses: vec![
                Bonus {
                    name: "first".into(),
                    trigger: BonusTrigger::FirstPurchase,
                    points: 50,
                    cap: Some(Cap {
                        count: 1,
                        period: CapPeriod::Lifetime,
                    }),
                },
                Bonus {
                    name: "welcome".into(),
                    trigger: BonusTrigger::SignUp,
                    points: 100,
                    cap: Some(Cap {
                        count: 1,
                        period: CapPeriod::Year,
                    }),
                },
                Bonus {
                    name: "review".into(),
                    trigger: BonusTrigger::CustomEvent("review.written".into()),
                    points: 20,
                    cap: Some(Cap {
                        count: 2,
                        period: CapPeriod::Month,
                    }),
                },
                Bonus {
                    name: "referral".into(),
                    trigger: BonusTrigger::CustomEvent("referral.completed".into()),
                    points: 200,
                    cap: Some(Cap {
                        count: 1,
                        period: CapPeriod::Day,
                    }),
                },
            ],
            lifetime,
            holding_days: 14,
            min_redemption_points: 100,
            debt_max_points: 500,
            tiers: vec![
                Tier {
                    name: "Base".into(),
                    threshold: 0,
                    multiplier_percent: 100,
                },
                Tier {
                    name: "Gold".into(),
                    threshold: 1_000,
                    multiplier_percent: 150,
                },
            ],
            tier_basis: basis,
            tier_window_months: 12,
            downgrade,
            base_cap: None,
        }
    }

    pub fn programme_defined() -> ProgrammeDefined {
        let mut programme = programme(
            PointsLifetime::EndOfMonthAfterDays(365),
            TierBasis::PointsEarned,
            DowngradePolicy::PeriodEnd,
        );
        programme.base_cap = Some(PointsCap {
            points: 5_000,
            period: CapPeriod::Month,
        });
        ProgrammeDefined { programme }
    }

    pub fn programme_changed() -> ProgrammeChanged {
        let mut programme = programme(
            PointsLifetime::EndOfYearAfterDays(30),
            TierBasis::Spend,
            DowngradePolicy::WindowDrop,
        );
        programme.base_cap = Some(PointsCap {
            points: 20_000,
            period: CapPeriod::Year,
        });
        ProgrammeChanged { programme }
    }

    pub fn reward_defined() -> RewardDefined {
        RewardDefined {
            reward_id: REWARD,
            name: "Mug".into(),
            cost_points: 500,
            stock: Some(25),
        }
    }

    pub fn reward_retired() -> RewardRetired {
        RewardRetired { reward_id: REWARD }
    }

    pub fn reward_claimed() -> RewardClaimed {
        RewardClaimed {
            reward_id: REWARD,
            customer_id: MEMBER,
            redemption_id: SOURCE,
        }
    }

    pub fn member_enrolled() -> MemberEnrolled {
        MemberEnrolled {
            customer_id: MEMBER,
            channel: Channel::MobileApp,
        }
    }

    pub fn member_left() -> MemberLeft {
        MemberLeft {
            customer_id: MEMBER,
            forfeited_points: 1_234,
            reason: "closed account".into(),
        }
    }

    pub fn tier_changed() -> TierChanged {
        TierChanged {
            customer_id: MEMBER,
            from_tier: "Base".into(),
            to_tier: "Gold".into(),
            qualifying: 1_050,
            as_of_us: 1_709_290_800_000_000,
        }
    }

    pub fn points_earned() -> PointsEarned {
        PointsEarned {
            customer_id: MEMBER,
            rule: "base".into(),
            points: 240,
            order_id: "o-1001".into(),
            spend_minor: 12_000,
            earned_at_us: 1_709_290_800_000_000,
            available_at_us: 1_710_500_400_000_000,
            expires_at_us: Some(1_740_787_200_000_000),
            source_event_id: SOURCE,
        }
    }

    pub fn points_cancelled() -> PointsCancelled {
        PointsCancelled {
            customer_id: MEMBER,
            order_id: "o-1001".into(),
            points: 100,
            debt_points: 40,
            forgiven_points: 7,
            refund_minor: 6_000,
            source_event_id: SOURCE,
        }
    }

    pub fn points_spent() -> PointsSpent {
        PointsSpent {
            customer_id: MEMBER,
            points: 500,
            reason: "Mug".into(),
            reward_id: Some(REWARD),
            redemption_id: SOURCE,
        }
    }

    pub fn points_expired() -> PointsExpired {
        PointsExpired {
            customer_id: MEMBER,
            lines: vec![
                ExpiredLine {
                    line_id: SOURCE,
                    points: 30,
                },
                ExpiredLine {
                    line_id: REWARD,
                    points: 12,
                },
            ],
            as_of_us: 1_740_787_200_000_000,
        }
    }

    pub fn points_adjusted() -> PointsAdjusted {
        PointsAdjusted {
            customer_id: MEMBER,
            points: -75,
            reason: "duplicate award".into(),
            expires_at_us: Some(1_740_787_200_000_000),
        }
    }

    pub fn points_transferred() -> PointsTransferred {
        PointsTransferred {
            from_customer_id: MEMBER,
            to_customer_id: OTHER,
            points: 300,
            transfer_id: SOURCE,
            expires_at_us: Some(1_740_787_200_000_000),
        }
    }

    pub fn ledger_merged() -> LedgerMerged {
        LedgerMerged {
            duplicate_id: MEMBER,
            survivor_id: OTHER,
            merge_event_id: SOURCE,
            part: 0,
            parts: 2,
            lines: vec![
                MovedLine {
                    line_id: REWARD,
                    position: 1_234,
                    rule: "base".into(),
                    order_id: "o-1001".into(),
                    source_event_id: Some(SOURCE),
                    points: 240,
                    spent: 100,
                    expired: 5,
                    cancelled: 10,
                    forfeited: 1,
                    recovered: 4,
                    spend_minor: 12_000,
                    earned_at_us: 1_709_287_200_000_000,
                    available_at_us: 1_710_496_800_000_000,
                    expires_at_us: Some(1_740_787_200_000_000),
                    refunded_minor: 500,
                    refund_points: 10,
                },
                MovedLine {
                    line_id: MEMBER,
                    position: 1_240,
                    rule: "adjustment".into(),
                    order_id: String::new(),
                    source_event_id: None,
                    points: 30,
                    spent: 0,
                    expired: 0,
                    cancelled: 0,
                    forfeited: 0,
                    recovered: 0,
                    spend_minor: 0,
                    earned_at_us: 1_709_287_200_000_000,
                    available_at_us: 1_709_287_200_000_000,
                    expires_at_us: None,
                    refunded_minor: 0,
                    refund_points: 0,
                },
            ],
            spend: vec![
                MovedSpend {
                    at_us: 1_709_287_200_000_000,
                    minor: 12_000,
                },
                MovedSpend {
                    at_us: 1_709_373_600_000_000,
                    minor: -500,
                },
            ],
            debt_points: 25,
            debt_forgiven_points: 5,
            enrolled_at_us: 1_704_067_200_000_000,
            channel: Channel::MobileApp,
            tier: "Gold".into(),
        }
    }
}

type SalesEnums = (
    Vec<StageKind>,
    Vec<SizeBand>,
    Vec<ContactRole>,
    Vec<LeadSource>,
    Vec<TaskKind>,
);

/// The same for the enums of the sales events (issue 4), in their own fixture.
#[test]
fn sales_enum_variants_keep_their_indices() {
    let all: SalesEnums = (
        vec![
            StageKind::Unspecified,
            StageKind::Open,
            StageKind::Won,
            StageKind::Lost,
        ],
        vec![
            SizeBand::Unspecified,
            SizeBand::Micro,
            SizeBand::Small,
            SizeBand::Medium,
            SizeBand::Large,
            SizeBand::Enterprise,
        ],
        vec![
            ContactRole::Unspecified,
            ContactRole::Buyer,
            ContactRole::DecisionMaker,
            ContactRole::Billing,
            ContactRole::Technical,
            ContactRole::Champion,
            ContactRole::Other,
        ],
        vec![
            LeadSource::Unspecified,
            LeadSource::WebForm,
            LeadSource::Event,
            LeadSource::Referral,
            LeadSource::Campaign,
            LeadSource::Outbound,
            LeadSource::Other,
        ],
        vec![
            TaskKind::Unspecified,
            TaskKind::Call,
            TaskKind::Email,
            TaskKind::Meeting,
            TaskKind::Todo,
        ],
    );
    let current = bincode_bytes(&all);
    let golden = fixture("shared/sales_enums.v1.bin", &current);
    let decoded: SalesEnums = rapport::domain::events::decode_exact("sales enums", 1, &golden)
        .expect("the sales enums fixture decodes");
    assert_eq!(decoded, all);
    assert_same_bytes("shared/sales_enums.v1.bin", &current, &golden);
}

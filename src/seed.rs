//! `rapport seed`: a deterministic, realistic retail history for tests, benches and the
//! README walkthrough.
//!
//! The same `(customers, seed)` always gives exactly the same events: the same customer
//! and event ids, the same `occurred_at`, the same content. Nothing here reads the clock
//! or a random source; every choice comes from a small splitmix64 generator seeded by
//! BLAKE3 of `(seed, customer index)`. Customer `i` depends on `(seed, i)` only, so a
//! larger `--customers` extends a smaller seeding of the same seed (and identifiers like
//! `firstname.lastname.<i>@example.com`, which depend on `i` alone, never collide between
//! the two). Seeding twice is idempotent: the events already in the log are recognised
//! by their ids and skipped.
//!
//! Two ways in: offline into a stopped server's data directory (`--data-dir`: each
//! customer's whole history is one atomic multi-stream append, many customers in flight
//! so the log's group commit batches them), or through a running server's `Customers`
//! RPCs (`--server`), which decide, seal and append exactly as for any client.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use uuid::Uuid;

use crate::cli::CliError;
use crate::domain::DomainEvent;
use crate::domain::common::{
    CalendarDate, Channel, ConsentPurpose, Direction, InteractionKind, PostalAddress,
};
use crate::domain::customer::identity_identifiers;
use crate::domain::events::{
    ConsentGiven, ConsentWithdrawn, CustomerIdentity, CustomerRegistered, CustomersMerged,
    FeedbackGiven, FeedbackMetric, IdentifierClaimed, InteractionLogged, InteractionText,
    PreferenceSet, PurchaseCompleted, PurchaseLine, PurchaseRefunded, RefundLine, TagAdded,
};
use crate::domain::personal::Personal;
use crate::domain::profile::customer_stream;
use crate::grpc::convert;
use crate::grpc::pb;
use crate::log::{ExpectedRevision, Log, LogConfig, ProposedEvent, StreamAppend, StreamName};
use crate::privacy::Privacy;

/// 2023-01-01T00:00:00Z in UTC microseconds: the start of the seeded history.
pub const HISTORY_START_US: i64 = 1_672_531_200_000_000;
/// 2026-01-01T00:00:00Z: customer activity ends before it (three years of history).
pub const HISTORY_END_US: i64 = 1_767_225_600_000_000;
/// When the seeded duplicates are merged: a de-duplication run after the history
/// (2026-01-02T02:00:00Z), one merge per millisecond in index order, so each survivor's
/// stream stays in time order whatever the order its merges arrive in.
pub const DEDUP_RUN_US: i64 = 1_767_319_200_000_000;

/// The actor of every seeded event.
pub const SEED_ACTOR: &str = "rapport-seed";

const DAY_US: i64 = 86_400_000_000;
const SECOND_US: i64 = 1_000_000;

/// Customers per key-store call and per preparation step offline. Their ids share the
/// first byte (the key store's shard), so creating their data keys costs one fdatasync
/// instead of one per customer: key creation would otherwise bound the seeding rate.
const CHUNK_CUSTOMERS: u64 = 256;
/// Customers whose appends are in flight at once offline: enough that the log's writer
/// always finds a full group to commit.
const OFFLINE_IN_FLIGHT: usize = 192;
/// Customers seeded concurrently through a server (each one's RPCs are sequential).
const SERVER_IN_FLIGHT: usize = 32;

// ---------------------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------------------

/// splitmix64: tiny, fast and good enough to make data look varied; never used for
/// anything secret.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from BLAKE3 of a domain tag and the given words, so different uses of
    /// the same `(seed, index)` get unrelated streams.
    pub fn derived(tag: &str, words: &[u64]) -> Self {
        let digest = digest(tag, words);
        let mut state = [0u8; 8];
        state.copy_from_slice(&digest[..8]);
        Self(u64::from_le_bytes(state))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` when `n` is 0). The modulo bias is irrelevant for test data.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// Uniform in `lo..hi` microseconds (`lo` when the span is empty).
    pub fn time_in(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            lo
        } else {
            lo + self.below((hi - lo) as u64) as i64
        }
    }

    /// True with probability `permille / 1000`.
    pub fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }

    /// One item of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// An index chosen by weight (`weights` non-empty with a positive sum).
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut roll = self.below(total);
        for (i, &w) in weights.iter().enumerate() {
            if roll < w {
                return i;
            }
            roll -= w;
        }
        weights.len().saturating_sub(1)
    }
}

fn digest(tag: &str, words: &[u64]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"rapport-seed/v1\0");
    hasher.update(tag.as_bytes());
    hasher.update(&[0]);
    for word in words {
        hasher.update(&word.to_be_bytes());
    }
    *hasher.finalize().as_bytes()
}

/// A version-8 UUID from BLAKE3 of `(tag, words)`.
fn derived_uuid(tag: &str, words: &[u64]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest(tag, words)[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The id of seeded customer `index`. Its first byte (the key store's shard) is the same
/// for the [`CHUNK_CUSTOMERS`] customers of one chunk, in a seed-dependent order, so a
/// chunk's data keys are created with one write.
pub fn customer_id(seed: u64, index: u64) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest("customer", &[seed, index])[..16]);
    bytes[0] = digest("shard", &[seed, index / CHUNK_CUSTOMERS])[0];
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// The id of the `k`-th event of customer `index`'s own history.
fn event_id(seed: u64, index: u64, k: u64) -> Uuid {
    derived_uuid("event", &[seed, index, k])
}

/// Ids of a command's further events, exactly as the Customers service derives them from
/// the command's `event_id` (BLAKE3 of the first id and the index): the offline seeding
/// writes the same ids a seeding through the server would.
pub fn command_event_id(base: Uuid, index: usize) -> Uuid {
    if index == 0 {
        return base;
    }
    crate::grpc::customers::derived_id(base, index)
}

// ---------------------------------------------------------------------------------------
// Built-in vocabulary
// ---------------------------------------------------------------------------------------

/// (display name, ASCII form for email addresses)
const GIVEN_NAMES: &[(&str, &str)] = &[
    ("Anna", "anna"),
    ("Lukas", "lukas"),
    ("Sofia", "sofia"),
    ("Jonas", "jonas"),
    ("Emma", "emma"),
    ("Leon", "leon"),
    ("Mia", "mia"),
    ("Felix", "felix"),
    ("Léa", "lea"),
    ("Hugo", "hugo"),
    ("Chloé", "chloe"),
    ("Louis", "louis"),
    ("Saar", "saar"),
    ("Daan", "daan"),
    ("Giulia", "giulia"),
    ("Marco", "marco"),
    ("Lucía", "lucia"),
    ("Pablo", "pablo"),
    ("Elsa", "elsa"),
    ("Oskar", "oskar"),
    ("Olivia", "olivia"),
    ("James", "james"),
    ("Zoë", "zoe"),
    ("Noah", "noah"),
];

const FAMILY_NAMES: &[(&str, &str)] = &[
    ("Müller", "mueller"),
    ("Schmidt", "schmidt"),
    ("Schneider", "schneider"),
    ("Fischer", "fischer"),
    ("Weber", "weber"),
    ("Becker", "becker"),
    ("Martin", "martin"),
    ("Bernard", "bernard"),
    ("Dubois", "dubois"),
    ("de Vries", "devries"),
    ("Jansen", "jansen"),
    ("Rossi", "rossi"),
    ("Bianchi", "bianchi"),
    ("García", "garcia"),
    ("López", "lopez"),
    ("Andersson", "andersson"),
    ("Johansson", "johansson"),
    ("Smith", "smith"),
    ("Johnson", "johnson"),
    ("Nowak", "nowak"),
    ("Kowalski", "kowalski"),
    ("Novák", "novak"),
    ("Hansen", "hansen"),
    ("O'Brien", "obrien"),
];

/// One market: locale, currency, the rate from EUR prices (percent), country, cities
/// with their store.
struct Market {
    locale: &'static str,
    currency: &'static str,
    rate_percent: i64,
    country: &'static str,
    cities: &'static [(&'static str, &'static str, &'static str)],
}

const MARKETS: &[Market] = &[
    Market {
        locale: "de-DE",
        currency: "EUR",
        rate_percent: 100,
        country: "DE",
        cities: &[
            ("Berlin", "10115", "store-ber-01"),
            ("Hamburg", "20095", "store-ham-01"),
            ("München", "80331", "store-muc-01"),
        ],
    },
    Market {
        locale: "fr-FR",
        currency: "EUR",
        rate_percent: 100,
        country: "FR",
        cities: &[
            ("Paris", "75001", "store-par-01"),
            ("Lyon", "69001", "store-lyo-01"),
        ],
    },
    Market {
        locale: "nl-NL",
        currency: "EUR",
        rate_percent: 100,
        country: "NL",
        cities: &[("Amsterdam", "1012", "store-ams-01")],
    },
    Market {
        locale: "it-IT",
        currency: "EUR",
        rate_percent: 100,
        country: "IT",
        cities: &[("Milano", "20121", "store-mil-01")],
    },
    Market {
        locale: "es-ES",
        currency: "EUR",
        rate_percent: 100,
        country: "ES",
        cities: &[("Madrid", "28001", "store-mad-01")],
    },
    Market {
        locale: "sv-SE",
        currency: "SEK",
        rate_percent: 1_150,
        country: "SE",
        cities: &[("Stockholm", "111 20", "store-sto-01")],
    },
    Market {
        locale: "en-US",
        currency: "USD",
        rate_percent: 110,
        country: "US",
        cities: &[("New York", "10001", "store-nyc-01")],
    },
];

/// Market weights: mostly euro markets, some SEK and USD.
const MARKET_WEIGHTS: &[u64] = &[34, 18, 12, 10, 11, 9, 6];

const STREETS: &[&str] = &[
    "Hauptstraße",
    "Rue de la Paix",
    "Kerkstraat",
    "Via Roma",
    "Calle Mayor",
    "Storgatan",
    "Main Street",
    "Lindenallee",
];

/// One catalogue item: SKU, name, category, price in euro cents.
struct Item {
    sku: &'static str,
    name: &'static str,
    category: &'static str,
    price_cents: i64,
}

macro_rules! catalogue {
    ($(($sku:literal, $name:literal, $category:literal, $price:literal)),* $(,)?) => {
        &[$(Item { sku: $sku, name: $name, category: $category, price_cents: $price }),*]
    };
}

const CATALOGUE: &[Item] = catalogue![
    ("APP-TEE-001", "Organic cotton T-shirt", "apparel", 1_999),
    ("APP-JNS-002", "Slim fit jeans", "apparel", 5_995),
    ("APP-HOD-003", "Hooded sweatshirt", "apparel", 4_495),
    ("APP-JKT-004", "Rain jacket", "apparel", 8_990),
    ("APP-SCF-005", "Wool scarf", "apparel", 2_490),
    ("SHO-RUN-006", "Running shoes", "shoes", 10_995),
    ("SHO-SNK-007", "Canvas sneakers", "shoes", 5_495),
    ("SHO-BOO-008", "Leather boots", "shoes", 14_900),
    ("SHO-SOC-009", "Sport socks (3 pairs)", "shoes", 1_299),
    ("SHO-SAN-010", "Sandals", "shoes", 3_995),
    ("HOM-PIL-011", "Linen cushion cover", "home", 1_895),
    ("HOM-LMP-012", "Desk lamp", "home", 3_999),
    ("HOM-BLK-013", "Throw blanket", "home", 4_990),
    ("HOM-CDL-014", "Scented candle", "home", 1_450),
    ("HOM-FRM-015", "Picture frame", "home", 1_290),
    ("KIT-MUG-016", "Stoneware mug", "kitchen", 990),
    ("KIT-PAN-017", "Non-stick pan 28 cm", "kitchen", 3_495),
    ("KIT-KNF-018", "Chef's knife", "kitchen", 6_900),
    ("KIT-BRD-019", "Bamboo cutting board", "kitchen", 1_995),
    ("KIT-COF-020", "Coffee beans 1 kg", "kitchen", 1_690),
    ("BEA-SHA-021", "Shampoo", "beauty", 695),
    ("BEA-CRM-022", "Face cream", "beauty", 2_450),
    ("BEA-PRF-023", "Eau de parfum 50 ml", "beauty", 6_500),
    ("BEA-LIP-024", "Lip balm", "beauty", 395),
    ("BEA-SUN-025", "Sunscreen SPF 50", "beauty", 1_495),
    ("ELE-EAR-026", "Wireless earbuds", "electronics", 7_999),
    ("ELE-CHG-027", "USB-C charger", "electronics", 2_499),
    ("ELE-SPK-028", "Bluetooth speaker", "electronics", 4_999),
    ("ELE-WAT-029", "Fitness watch", "electronics", 12_999),
    ("ELE-CBL-030", "Charging cable 2 m", "electronics", 1_299),
    ("BOO-NOV-031", "Paperback novel", "books", 1_200),
    ("BOO-COK-032", "Cookbook", "books", 2_800),
    ("BOO-KID-033", "Picture book", "books", 1_495),
    ("BOO-TRV-034", "Travel guide", "books", 2_200),
    ("BOO-NOT-035", "Notebook A5", "books", 895),
    ("TOY-BLK-036", "Building blocks set", "toys", 3_999),
    ("TOY-PUZ-037", "Puzzle 1000 pieces", "toys", 1_799),
    ("TOY-PLU-038", "Plush bear", "toys", 2_199),
    ("TOY-GAM-039", "Board game", "toys", 3_495),
    ("TOY-CAR-040", "Remote control car", "toys", 4_999),
];

const PURPOSES: &[ConsentPurpose] = &[
    ConsentPurpose::MarketingEmail,
    ConsentPurpose::MarketingSms,
    ConsentPurpose::Profiling,
    ConsentPurpose::MarketingPhone,
    ConsentPurpose::ThirdPartySharing,
];

const CALL_SUBJECTS: &[(&str, &str)] = &[
    (
        "Where is my order?",
        "Asked about the delivery date of {order}; gave the tracking link.",
    ),
    (
        "Size exchange",
        "Wants to exchange {product} for another size; explained the in-store exchange.",
    ),
    (
        "Invoice copy",
        "Needed a copy of the invoice for {order}; sent it by email.",
    ),
    (
        "Loyalty question",
        "Asked how points are earned; explained the programme.",
    ),
    (
        "Product question",
        "Asked whether {product} is back in stock next week.",
    ),
];

const COMMENTS_GOOD: &[&str] = &[
    "Great service, friendly staff.",
    "Fast delivery, everything as described.",
    "Love the quality, will buy again.",
    "Easy returns, thank you!",
];
const COMMENTS_MIXED: &[&str] = &[
    "Good products but the checkout was slow.",
    "Delivery took longer than promised.",
    "OK overall; the size guide could be better.",
];
const COMMENTS_BAD: &[&str] = &[
    "The item arrived damaged.",
    "Waited 20 minutes at the till.",
    "Customer service never called back.",
];

const REFUND_REASONS: &[&str] = &["damaged", "wrong_size", "not_as_described", "changed_mind"];

// ---------------------------------------------------------------------------------------
// One customer's history
// ---------------------------------------------------------------------------------------

/// One event of a seeded history, with its id and business time.
#[derive(Clone, Debug, PartialEq)]
pub struct SeededEvent {
    /// The event id (deterministic).
    pub id: Uuid,
    /// Business time, UTC microseconds.
    pub occurred_at_us: i64,
    /// The event, personal parts in clear.
    pub event: DomainEvent,
}

/// The whole history of one seeded customer.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomerHistory {
    /// Index of the customer, `0..customers`.
    pub index: u64,
    /// The customer's id.
    pub id: Uuid,
    /// The customer stream's events, in time order; the first is the registration.
    pub events: Vec<SeededEvent>,
    /// The identity reservations the registration claims, in the order the Customers
    /// service plans them: `(identifier, claim event id)`.
    pub claims: Vec<(crate::domain::customer::Identifier, Uuid)>,
    /// For a duplicate: the index of the earlier customer it is merged into.
    pub duplicate_of: Option<u64>,
}

impl CustomerHistory {
    /// Events in the log for this history: its stream and its identity claims.
    pub fn event_count(&self) -> u64 {
        (self.events.len() + self.claims.len()) as u64
    }

    /// Business time of the last event.
    pub fn last_occurred_at_us(&self) -> i64 {
        self.events
            .last()
            .map_or(HISTORY_START_US, |e| e.occurred_at_us)
    }
}

/// Whether customer `index` is a duplicate registration (~1.5%), and of whom: an earlier
/// customer that is not itself a duplicate (so merges never chain).
pub fn duplicate_of(seed: u64, index: u64) -> Option<u64> {
    if !is_duplicate(seed, index) {
        return None;
    }
    let mut rng = SplitMix64::derived("survivor", &[seed, index]);
    (0..8)
        .map(|_| rng.below(index))
        .find(|&candidate| !is_duplicate(seed, candidate))
}

fn is_duplicate(seed: u64, index: u64) -> bool {
    index >= 10 && SplitMix64::derived("duplicate", &[seed, index]).chance(15)
}

/// Who a customer is: names, market, city. A duplicate takes its survivor's person.
struct Person {
    given: (&'static str, &'static str),
    family: (&'static str, &'static str),
    market: &'static Market,
    city: (&'static str, &'static str, &'static str),
}

fn person(seed: u64, index: u64) -> Person {
    let mut rng = SplitMix64::derived("person", &[seed, index]);
    let given = *rng.pick(GIVEN_NAMES);
    let family = *rng.pick(FAMILY_NAMES);
    let market = &MARKETS[rng.weighted(MARKET_WEIGHTS)];
    let city = *rng.pick(market.cities);
    Person {
        given,
        family,
        market,
        city,
    }
}

/// What a customer does between two events.
#[derive(Clone, Copy)]
enum Activity {
    Purchase,
    Browse,
    CartAbandoned,
    Call,
    Feedback,
    Refund,
    Withdraw,
    Tag,
}

const ACTIVITIES: &[(Activity, u64)] = &[
    (Activity::Purchase, 300),
    (Activity::Browse, 430),
    (Activity::CartAbandoned, 80),
    (Activity::Call, 45),
    (Activity::Feedback, 55),
    (Activity::Refund, 18),
    (Activity::Withdraw, 22),
    (Activity::Tag, 20),
];

/// A bought order, kept for refunds.
struct OrderSeen {
    id: String,
    lines: Vec<PurchaseLine>,
    refunded: bool,
}

/// Builds customer `index`'s history for `seed`. Pure: the same inputs give the same
/// history, byte for byte.
pub fn customer_history(seed: u64, index: u64) -> CustomerHistory {
    let id = customer_id(seed, index);
    let duplicate = duplicate_of(seed, index);
    let who = person(seed, duplicate.unwrap_or(index));
    let mut rng = SplitMix64::derived("history", &[seed, index]);
    let mut events: Vec<SeededEvent> = Vec::new();
    let mut k = 0u64;
    let mut push = |events: &mut Vec<SeededEvent>, at: i64, event: DomainEvent| {
        let at = events
            .last()
            .map_or(at, |last| at.max(last.occurred_at_us + SECOND_US));
        events.push(SeededEvent {
            id: event_id(seed, index, k),
            occurred_at_us: at,
            event,
        });
        k += 1;
    };

    // Registration: duplicates sign up again online, without phone or store card.
    let channel = if duplicate.is_some() {
        Channel::Web
    } else {
        [Channel::Store, Channel::Web, Channel::MobileApp][rng.weighted(&[45, 38, 17])]
    };
    let registered_at = rng.time_in(HISTORY_START_US, HISTORY_END_US - 120 * DAY_US);
    let mut phones = Vec::new();
    if duplicate.is_none() && rng.chance(550) {
        phones.push(format!(
            "+49 30 {:04} {:04}",
            index / 10_000 % 10_000,
            index % 10_000
        ));
    }
    let mut external_ids = BTreeMap::new();
    if channel == Channel::Store {
        external_ids.insert("pos_card".to_owned(), index.to_string());
    }
    let birth_date = rng.chance(600).then(|| CalendarDate {
        year: 1950 + rng.below(55) as u16,
        month: 1 + rng.below(12) as u8,
        day: 1 + rng.below(28) as u8,
    });
    let address = if rng.chance(700) {
        PostalAddress {
            lines: vec![format!("{} {}", rng.pick(STREETS), 1 + rng.below(180))],
            city: who.city.0.to_owned(),
            region: String::new(),
            postal_code: who.city.1.to_owned(),
            country_code: who.market.country.to_owned(),
        }
    } else {
        PostalAddress {
            country_code: who.market.country.to_owned(),
            ..PostalAddress::default()
        }
    };
    let identity = CustomerIdentity {
        given_name: who.given.0.to_owned(),
        family_name: who.family.0.to_owned(),
        emails: vec![format!(
            "{}.{}.{index}@example.com",
            who.given.1, who.family.1
        )],
        phones,
        birth_date,
        address,
        external_ids,
    };
    let identifiers = identity_identifiers(&identity);
    push(
        &mut events,
        registered_at,
        DomainEvent::CustomerRegistered(CustomerRegistered {
            customer_id: id,
            identity: Personal::Clear(identity),
            locale: who.market.locale.to_owned(),
            acquisition_channel: channel,
        }),
    );
    let claims = identifiers
        .into_iter()
        .enumerate()
        .map(|(i, identifier)| (identifier, command_event_id(events[0].id, i + 1)))
        .collect();

    // Consents at sign-up: 1 to 3 purposes, marketing email most often.
    let source = match channel {
        Channel::Store => "store_tablet",
        Channel::MobileApp => "app_onboarding",
        _ => "web_signup_form",
    };
    let mut consented: Vec<ConsentPurpose> = Vec::new();
    let wanted = rng.range(1, 3) as usize;
    if rng.chance(800) {
        consented.push(ConsentPurpose::MarketingEmail);
    }
    while consented.len() < wanted {
        let purpose = *rng.pick(PURPOSES);
        if !consented.contains(&purpose) {
            consented.push(purpose);
        }
    }
    for purpose in &consented {
        let at = registered_at + rng.range(5, 120) as i64 * SECOND_US;
        push(
            &mut events,
            at,
            DomainEvent::ConsentGiven(ConsentGiven {
                customer_id: id,
                purpose: *purpose,
                source: source.to_owned(),
            }),
        );
    }
    let mut tags: Vec<&'static str> = Vec::new();
    if consented.contains(&ConsentPurpose::MarketingEmail) {
        tags.push("newsletter");
        let at = registered_at + 130 * SECOND_US;
        push(&mut events, at, tag(id, "newsletter"));
    }

    // Preferences in the first weeks.
    let favourite = rng.pick(CATALOGUE).category;
    let mut preferences: Vec<(&str, String)> = Vec::new();
    if rng.chance(550) {
        preferences.push(("favourite_category", favourite.to_owned()));
    }
    if rng.chance(400) {
        let value = *rng.pick(&["email", "sms", "app", "none"]);
        preferences.push(("preferred_channel", value.to_owned()));
    }
    if rng.chance(350) {
        preferences.push(("size", (*rng.pick(&["S", "M", "L", "XL"])).to_owned()));
    }
    if rng.chance(200) {
        preferences.push((
            "newsletter_frequency",
            (*rng.pick(&["weekly", "monthly"])).to_owned(),
        ));
    }
    for (key, value) in preferences {
        let at = registered_at + rng.range(1, 30 * 24) as i64 * 3_600 * SECOND_US;
        push(
            &mut events,
            at,
            DomainEvent::PreferenceSet(PreferenceSet {
                customer_id: id,
                key: key.to_owned(),
                value,
            }),
        );
    }

    // Activity until the end of the history: how much depends on the kind of customer.
    let count = if duplicate.is_some() {
        rng.range(1, 4)
    } else {
        match rng.weighted(&[40, 40, 20]) {
            0 => rng.range(4, 12),
            1 => rng.range(18, 40),
            _ => rng.range(40, 84),
        }
    };
    let first_activity =
        events.last().map_or(registered_at, |e| e.occurred_at_us) + 3_600 * SECOND_US;
    let mut times: Vec<i64> = (0..count)
        .map(|_| rng.time_in(first_activity, HISTORY_END_US))
        .collect();
    times.sort_unstable();
    let weights: Vec<u64> = ACTIVITIES.iter().map(|(_, w)| *w).collect();
    let mut orders: Vec<OrderSeen> = Vec::new();
    let mut withdrawn: Vec<ConsentPurpose> = Vec::new();
    let buys_in_store = channel == Channel::Store;
    for at in times {
        let mut activity = ACTIVITIES[rng.weighted(&weights)].0;
        // Activities that need something first fall back to browsing.
        let refundable = orders.iter().filter(|o| !o.refunded).count();
        let withdrawable = consented.iter().any(|p| !withdrawn.contains(p));
        match activity {
            Activity::Refund if refundable == 0 => activity = Activity::Browse,
            Activity::Withdraw if !withdrawable => activity = Activity::Browse,
            _ => {}
        }
        let in_store = buys_in_store && rng.chance(650);
        match activity {
            Activity::Purchase => {
                let order_number = orders.len() as u64;
                let lines_wanted = rng.weighted(&[40, 28, 17, 10, 5]) + 1;
                let mut lines: Vec<PurchaseLine> = Vec::with_capacity(lines_wanted);
                while lines.len() < lines_wanted {
                    // Half the lines from the favourite category: baskets look like people.
                    let item = if rng.chance(500) {
                        let of_favourite: Vec<&Item> = CATALOGUE
                            .iter()
                            .filter(|i| i.category == favourite)
                            .collect();
                        *rng.pick(&of_favourite)
                    } else {
                        rng.pick(CATALOGUE)
                    };
                    if lines.iter().any(|l| l.sku == item.sku) {
                        continue;
                    }
                    lines.push(PurchaseLine {
                        sku: item.sku.to_owned(),
                        name: item.name.to_owned(),
                        category: item.category.to_owned(),
                        quantity: rng.weighted(&[80, 15, 5]) as u32 + 1,
                        unit_price_minor: local_price(item.price_cents, who.market),
                    });
                }
                let total_minor = lines
                    .iter()
                    .map(|l| l.unit_price_minor * i64::from(l.quantity))
                    .sum();
                let order_id = format!("ord-{index}-{order_number}");
                let (buy_channel, store_id) = if in_store {
                    (Channel::Store, who.city.2.to_owned())
                } else if channel == Channel::MobileApp && rng.chance(600) {
                    (Channel::MobileApp, String::new())
                } else {
                    (Channel::Web, String::new())
                };
                push(
                    &mut events,
                    at,
                    DomainEvent::PurchaseCompleted(PurchaseCompleted {
                        customer_id: id,
                        order_id: order_id.clone(),
                        lines: lines.clone(),
                        total_minor,
                        currency: who.market.currency.to_owned(),
                        channel: buy_channel,
                        store_id,
                    }),
                );
                orders.push(OrderSeen {
                    id: order_id,
                    lines,
                    refunded: false,
                });
                if orders.len() == 8 && !tags.contains(&"vip") {
                    tags.push("vip");
                    push(&mut events, at + SECOND_US, tag(id, "vip"));
                }
            }
            Activity::Browse | Activity::CartAbandoned => {
                let item = if rng.chance(500) {
                    let of_favourite: Vec<&Item> = CATALOGUE
                        .iter()
                        .filter(|i| i.category == favourite)
                        .collect();
                    *rng.pick(&of_favourite)
                } else {
                    rng.pick(CATALOGUE)
                };
                let event = match activity {
                    Activity::CartAbandoned => interaction(
                        id,
                        Channel::Web,
                        Direction::Inbound,
                        InteractionKind::CartAbandoned,
                        "Cart abandoned".to_owned(),
                        format!(
                            "Left {} ({}) and {} more item(s) in the cart",
                            item.name,
                            item.sku,
                            rng.below(3)
                        ),
                        "web-shop",
                        0,
                    ),
                    _ if in_store => interaction(
                        id,
                        Channel::Store,
                        Direction::Inbound,
                        InteractionKind::Visit,
                        format!("Visit to {}", who.city.2),
                        format!("Browsed {} in {}", item.category, who.city.0),
                        who.city.2,
                        rng.range(300, 2_400) as u32,
                    ),
                    _ => {
                        let app = channel == Channel::MobileApp && rng.chance(600);
                        interaction(
                            id,
                            if app {
                                Channel::MobileApp
                            } else {
                                Channel::Web
                            },
                            Direction::Inbound,
                            InteractionKind::PageView,
                            format!("Viewed {}", item.name),
                            format!("Product page {} ({})", item.sku, item.category),
                            if app { "mobile-app" } else { "web-shop" },
                            rng.range(10, 240) as u32,
                        )
                    }
                };
                push(&mut events, at, event);
            }
            Activity::Call => {
                let (subject, summary) = *rng.pick(CALL_SUBJECTS);
                let order = orders.last().map_or("a recent order", |o| o.id.as_str());
                let product = rng.pick(CATALOGUE).name;
                let summary = summary
                    .replace("{order}", order)
                    .replace("{product}", product);
                let direction = if rng.chance(800) {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                };
                let agent = format!("agent-{:02}", 1 + rng.below(24));
                let seconds = rng.range(60, 900) as u32;
                push(
                    &mut events,
                    at,
                    interaction(
                        id,
                        Channel::Phone,
                        direction,
                        InteractionKind::Call,
                        subject.to_owned(),
                        summary,
                        &agent,
                        seconds,
                    ),
                );
            }
            Activity::Feedback => {
                let (metric, score) = if rng.chance(600) {
                    (
                        FeedbackMetric::Nps,
                        [10, 10, 9, 9, 9, 8, 8, 7, 7, 6, 5, 3, 0][rng.below(13) as usize],
                    )
                } else {
                    (
                        FeedbackMetric::Csat,
                        [5, 5, 5, 4, 4, 4, 3, 2, 1][rng.below(9) as usize],
                    )
                };
                let good = match metric {
                    FeedbackMetric::Nps => score >= 9,
                    _ => score >= 4,
                };
                let bad = match metric {
                    FeedbackMetric::Nps => score <= 6,
                    _ => score <= 2,
                };
                let comment = if good {
                    rng.pick(COMMENTS_GOOD)
                } else if bad {
                    rng.pick(COMMENTS_BAD)
                } else {
                    rng.pick(COMMENTS_MIXED)
                };
                let subject_ref = orders.last().map(|o| o.id.clone()).unwrap_or_default();
                push(
                    &mut events,
                    at,
                    DomainEvent::FeedbackGiven(FeedbackGiven {
                        customer_id: id,
                        metric,
                        score,
                        comment: Personal::Clear((*comment).to_owned()),
                        channel: if in_store {
                            Channel::Store
                        } else {
                            Channel::Email
                        },
                        subject_ref,
                    }),
                );
            }
            Activity::Refund => {
                // A recent order more often than an old one.
                let open: Vec<usize> = (0..orders.len()).filter(|&i| !orders[i].refunded).collect();
                let chosen = open[open.len() - 1 - rng.below(open.len().min(3) as u64) as usize];
                let order = &mut orders[chosen];
                order.refunded = true;
                let line = rng.pick(&order.lines).clone();
                let quantity = rng.range(1, u64::from(line.quantity)) as u32;
                let amount_minor = line.unit_price_minor * i64::from(quantity);
                let refund_id = format!("ref-{index}-{chosen}");
                let order_id = order.id.clone();
                let event = if amount_minor > 0 {
                    DomainEvent::PurchaseRefunded(PurchaseRefunded {
                        customer_id: id,
                        order_id,
                        refund_id,
                        lines: vec![RefundLine {
                            sku: line.sku,
                            quantity,
                            amount_minor,
                        }],
                        amount_minor,
                        currency: who.market.currency.to_owned(),
                        reason: (*rng.pick(REFUND_REASONS)).to_owned(),
                    })
                } else {
                    tag(id, "refund_requested")
                };
                push(&mut events, at, event);
            }
            Activity::Withdraw => {
                let open: Vec<ConsentPurpose> = consented
                    .iter()
                    .copied()
                    .filter(|p| !withdrawn.contains(p))
                    .collect();
                let purpose = *rng.pick(&open);
                withdrawn.push(purpose);
                push(
                    &mut events,
                    at,
                    DomainEvent::ConsentWithdrawn(ConsentWithdrawn {
                        customer_id: id,
                        purpose,
                        source: (*rng.pick(&["unsubscribe_link", "preference_centre", "call"]))
                            .to_owned(),
                    }),
                );
            }
            Activity::Tag => {
                let candidates = ["early_adopter", "gift_buyer", "bargain_hunter", "family"];
                let chosen = *rng.pick(&candidates);
                if !tags.contains(&chosen) {
                    tags.push(chosen);
                    push(&mut events, at, tag(id, chosen));
                }
            }
        }
    }
    CustomerHistory {
        index,
        id,
        events,
        claims,
        duplicate_of: duplicate,
    }
}

/// A catalogue price in the market's currency, rounded to end in 9 (or 0 for SEK).
fn local_price(cents: i64, market: &Market) -> i64 {
    if market.rate_percent == 100 {
        return cents;
    }
    let converted = cents * market.rate_percent / 100;
    if market.currency == "SEK" {
        (converted / 100).max(1) * 100
    } else {
        (converted / 100) * 100 + 99
    }
}

fn tag(customer_id: Uuid, tag: &str) -> DomainEvent {
    DomainEvent::TagAdded(TagAdded {
        customer_id,
        tag: tag.to_owned(),
    })
}

#[allow(clippy::too_many_arguments)]
fn interaction(
    customer_id: Uuid,
    channel: Channel,
    direction: Direction,
    kind: InteractionKind,
    subject: String,
    summary: String,
    agent: &str,
    duration_seconds: u32,
) -> DomainEvent {
    DomainEvent::InteractionLogged(InteractionLogged {
        customer_id,
        channel,
        direction,
        kind,
        text: Personal::Clear(InteractionText { subject, summary }),
        agent: agent.to_owned(),
        duration_seconds,
    })
}

/// The merge of a duplicate into its survivor: the event, its id on the duplicate's
/// stream (the command's id) and on the survivor's (derived, as the service does), and
/// its business time.
pub struct SeededMerge {
    /// The survivor.
    pub survivor_id: Uuid,
    /// The duplicate.
    pub duplicate_id: Uuid,
    /// The command's event id (the duplicate stream's copy).
    pub event_id: Uuid,
    /// Business time.
    pub occurred_at_us: i64,
}

/// The merge of duplicate `index` into `survivor`, if `index` is a duplicate.
pub fn merge_of(seed: u64, index: u64) -> Option<SeededMerge> {
    let survivor = duplicate_of(seed, index)?;
    Some(SeededMerge {
        survivor_id: customer_id(seed, survivor),
        duplicate_id: customer_id(seed, index),
        event_id: derived_uuid("merge", &[seed, index]),
        occurred_at_us: DEDUP_RUN_US + index as i64 * 1_000,
    })
}

// ---------------------------------------------------------------------------------------
// Running it
// ---------------------------------------------------------------------------------------

/// Where `rapport seed` writes.
pub enum SeedTarget {
    /// Offline into a stopped server's data directory.
    DataDir {
        /// The data directory.
        dir: PathBuf,
        /// The master key file (default: beside the data directory).
        master_key_file: Option<PathBuf>,
    },
    /// Through a running server's Customers service.
    Server(String),
}

/// What a seeding did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeedReport {
    /// Customers in the requested range.
    pub customers: u64,
    /// Customers written now (the rest were in the log already).
    pub customers_written: u64,
    /// Events the histories hold (customer streams, identity claims and merges).
    pub events: u64,
    /// Events appended now.
    pub events_written: u64,
    /// Duplicates merged.
    pub merges: u64,
    /// The log's head afterwards (0 through a server).
    pub head: u64,
}

/// Checks the flags of `rapport seed`.
pub fn validate(customers: u64) -> Result<(), CliError> {
    if customers == 0 || customers > crate::limits::SEED_CUSTOMERS_MAX {
        return Err(format!(
            "--customers must be 1 to {}, not {customers}",
            crate::limits::SEED_CUSTOMERS_MAX
        )
        .into());
    }
    Ok(())
}

/// `rapport seed`: writes the history of `customers` customers for `seed`, with a
/// progress bar, and prints a summary.
pub async fn run(target: SeedTarget, customers: u64, seed: u64) -> Result<SeedReport, CliError> {
    validate(customers)?;
    let start = Instant::now();
    let bar = progress_bar(customers);
    let report = match target {
        SeedTarget::DataDir {
            dir,
            master_key_file,
        } => seed_offline(dir, master_key_file, customers, seed, &bar).await,
        SeedTarget::Server(url) => seed_server(url, customers, seed, &bar).await,
    };
    bar.finish_and_clear();
    let report = report?;
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    let rate = report.events_written as f64 / seconds;
    let per_customer = report.events as f64 / report.customers.max(1) as f64;
    if report.head == 0 {
        // Through a server every command is sent; re-sent ones are answered from the log.
        println!(
            "seeded {} customers (seed {seed}) through the server: {} events ({per_customer:.1} \
             per customer), {} merges; {seconds:.2} s, {rate:.0} events/s",
            report.customers, report.events, report.merges
        );
    } else {
        println!(
            "seeded {} customers (seed {seed}; {} new), {} events ({} new, {per_customer:.1} \
             per customer), {} merges; head {}; {seconds:.2} s, {rate:.0} events/s",
            report.customers,
            report.customers_written,
            report.events,
            report.events_written,
            report.merges,
            report.head
        );
    }
    Ok(report)
}

fn progress_bar(customers: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(customers);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "seed [{bar:40}] {pos}/{len} customers {msg} ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn show_rate(bar: &indicatif::ProgressBar, events: u64, start: Instant) {
    bar.set_message(format!(
        "{events} events, {:.0} events/s",
        events as f64 / start.elapsed().as_secs_f64().max(1e-9)
    ));
}

/// One prepared customer: its appends and how many events they hold.
struct Prepared {
    appends: Vec<StreamAppend>,
    events: u64,
}

/// Offline: keys and log opened here (the server must be stopped), histories sealed and
/// appended, one atomic multi-stream append per customer, then the merges.
async fn seed_offline(
    dir: PathBuf,
    master_key_file: Option<PathBuf>,
    customers: u64,
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> Result<SeedReport, CliError> {
    let keys = crate::grpc::server::open_keys(dir.clone(), master_key_file)
        .await
        .map_err(|error| match error {
            crate::grpc::server::ServeError::Keys(crate::keys::KeyError::Locked(_)) => {
                locked_hint(error.to_string())
            }
            other => other.into(),
        })?;
    let privacy = Privacy::new(keys);
    let log = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || Log::open(LogConfig::new(dir)))
            .await?
            .map_err(|error| match error {
                crate::log::LogError::Locked(_) => locked_hint(error.to_string()),
                other => other.into(),
            })?
    };
    let result = seed_into(&log, &privacy, customers, seed, bar).await;
    let head = log.head().position;
    let closing = log.clone();
    tokio::task::spawn_blocking(move || closing.shutdown()).await?;
    let mut report = result?;
    report.head = head;
    Ok(report)
}

/// A locked directory is almost always a running server: say what to do instead.
fn locked_hint(error: String) -> CliError {
    format!("{error}; to seed while it runs, use --server").into()
}

/// Seeds into an open log (offline; also usable by benches over an in-process log).
pub async fn seed_into(
    log: &Log,
    privacy: &Privacy,
    customers: u64,
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> Result<SeedReport, CliError> {
    let start = Instant::now();
    let mut report = SeedReport {
        customers,
        ..SeedReport::default()
    };
    let mut in_flight: tokio::task::JoinSet<Result<(), CliError>> = tokio::task::JoinSet::new();
    let mut first = 0u64;
    while first < customers {
        let last = (first + CHUNK_CUSTOMERS).min(customers);
        let (log_ref, privacy_ref) = (log.clone(), privacy.clone());
        let (prepared, total) = tokio::task::spawn_blocking(move || {
            prepare_chunk(&log_ref, &privacy_ref, seed, first..last)
        })
        .await??;
        report.events += total;
        for customer in prepared {
            report.customers_written += 1;
            report.events_written += customer.events;
            while in_flight.len() >= OFFLINE_IN_FLIGHT {
                if let Some(done) = in_flight.join_next().await {
                    done??;
                }
            }
            let log = log.clone();
            in_flight.spawn(async move {
                log.append_multi(customer.appends).await?;
                Ok(())
            });
        }
        bar.set_position(last);
        show_rate(bar, report.events_written, start);
        first = last;
    }
    while let Some(done) = in_flight.join_next().await {
        done??;
    }
    merge_offline(log, customers, seed, &mut report).await?;
    // Sales pipelines (issue 4): accounts, leads, deals and tasks over these customers.
    crate::seed_sales::seed_offline(log, customers, seed, &mut report).await?;
    Ok(report)
}

/// Builds, seals and encodes the customers of `range` that are not in the log yet.
/// Returns them and the events of the whole range.
fn prepare_chunk(
    log: &Log,
    privacy: &Privacy,
    seed: u64,
    range: std::ops::Range<u64>,
) -> Result<(Vec<Prepared>, u64), CliError> {
    let mut total = 0;
    let mut fresh = Vec::new();
    for index in range {
        let history = customer_history(seed, index);
        total += history.event_count();
        // Sealing is randomised (fresh nonces), so a re-sent history would not match the
        // stored bytes: the log's idempotency cannot recognise it. A customer is one
        // atomic append, so its registration being there means all of it is.
        if log.event_by_id(history.events[0].id)?.is_none() {
            fresh.push(history);
        }
    }
    let ids: Vec<Uuid> = fresh.iter().map(|h| h.id).collect();
    if !ids.is_empty() {
        privacy.keys().ensure(&ids)?;
    }
    let prepared = fresh
        .into_iter()
        .map(|history| prepare_customer(privacy, history))
        .collect::<Result<Vec<_>, CliError>>()?;
    Ok((prepared, total))
}

fn proposed(id: Uuid, occurred_at_us: i64, event: &DomainEvent) -> Result<ProposedEvent, CliError> {
    Ok(ProposedEvent {
        event_id: Some(id),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        payload: event.encode()?,
        occurred_at_us: Some(occurred_at_us),
        metadata: Vec::new(),
        correlation_id: String::new(),
        causation_id: String::new(),
        actor: SEED_ACTOR.to_owned(),
        source_channel: String::new(),
    })
}

/// The appends of one customer: its stream (new) and one claim per identifier, as the
/// Customers service plans a registration, all in one atomic multi-stream append.
fn prepare_customer(privacy: &Privacy, history: CustomerHistory) -> Result<Prepared, CliError> {
    let stream = customer_stream(history.id);
    let events = history.event_count();
    let mut body = history.events;
    {
        let mut refs: Vec<(&str, Uuid, &mut DomainEvent)> = body
            .iter_mut()
            .map(|e| (stream.as_str(), e.id, &mut e.event))
            .collect();
        privacy.seal_events(&mut refs)?;
    }
    let registered_at = body[0].occurred_at_us;
    let mut appends = Vec::with_capacity(1 + history.claims.len());
    appends.push(StreamAppend {
        stream: StreamName::parse(&stream)?,
        expected: ExpectedRevision::NoStream,
        events: body
            .iter()
            .map(|e| proposed(e.id, e.occurred_at_us, &e.event))
            .collect::<Result<_, _>>()?,
    });
    for (identifier, id) in history.claims {
        let claim = DomainEvent::IdentifierClaimed(IdentifierClaimed {
            customer_id: history.id,
            kind: identifier.kind,
        });
        appends.push(StreamAppend {
            stream: StreamName::parse(&privacy.identity_stream(&identifier))?,
            expected: ExpectedRevision::NoStream,
            events: vec![proposed(id, registered_at, &claim)?],
        });
    }
    Ok(Prepared { appends, events })
}

/// The merges, after every customer is in the log (a merge's fold needs the duplicate's
/// whole history before it). Merges into one survivor go in separate waves, so each
/// survivor's stream gets them in time order.
async fn merge_offline(
    log: &Log,
    customers: u64,
    seed: u64,
    report: &mut SeedReport,
) -> Result<(), CliError> {
    let merges: Vec<SeededMerge> = (0..customers).filter_map(|i| merge_of(seed, i)).collect();
    report.merges = merges.len() as u64;
    report.events += 2 * report.merges;
    let mut wave: Vec<SeededMerge> = Vec::new();
    let mut survivors = std::collections::HashSet::new();
    for merge in merges.into_iter().chain(std::iter::once(SeededMerge {
        survivor_id: Uuid::nil(),
        duplicate_id: Uuid::nil(),
        event_id: Uuid::nil(),
        occurred_at_us: 0,
    })) {
        let end = merge.survivor_id.is_nil();
        if end || !survivors.insert(merge.survivor_id) || wave.len() >= OFFLINE_IN_FLIGHT {
            report.events_written += write_merges(log, std::mem::take(&mut wave)).await?;
            survivors.clear();
            survivors.insert(merge.survivor_id);
        }
        if !end {
            wave.push(merge);
        }
    }
    Ok(())
}

/// Appends one wave of merges concurrently; returns the events newly written.
async fn write_merges(log: &Log, wave: Vec<SeededMerge>) -> Result<u64, CliError> {
    let mut in_flight: tokio::task::JoinSet<Result<u64, CliError>> = tokio::task::JoinSet::new();
    for merge in wave {
        let log = log.clone();
        in_flight.spawn(async move {
            let event = DomainEvent::CustomersMerged(CustomersMerged {
                survivor_id: merge.survivor_id,
                duplicate_id: merge.duplicate_id,
            });
            let before = log.head().position;
            // The duplicate's stream first, as the service writes it; the same content
            // again is the log's idempotency (the original positions come back).
            let outcomes = log
                .append_multi(vec![
                    StreamAppend {
                        stream: StreamName::parse(&customer_stream(merge.duplicate_id))?,
                        expected: ExpectedRevision::StreamExists,
                        events: vec![proposed(merge.event_id, merge.occurred_at_us, &event)?],
                    },
                    StreamAppend {
                        stream: StreamName::parse(&customer_stream(merge.survivor_id))?,
                        expected: ExpectedRevision::StreamExists,
                        events: vec![proposed(
                            command_event_id(merge.event_id, 1),
                            merge.occurred_at_us,
                            &event,
                        )?],
                    },
                ])
                .await?;
            let fresh = outcomes.iter().all(|o| o.first_position > before);
            Ok(if fresh { 2 } else { 0 })
        });
    }
    let mut written = 0;
    while let Some(done) = in_flight.join_next().await {
        written += done??;
    }
    Ok(written)
}

// ---------------------------------------------------------------------------------------
// Through a server
// ---------------------------------------------------------------------------------------

type CustomersClient = pb::customers_client::CustomersClient<tonic::transport::Channel>;

fn context(id: Uuid, occurred_at_us: i64) -> Option<pb::WriteContext> {
    Some(pb::WriteContext {
        event_id: id.to_string(),
        occurred_at: Some(convert::timestamp_from_us(occurred_at_us)),
        actor: SEED_ACTOR.to_owned(),
        correlation_id: String::new(),
        causation_id: String::new(),
        source_channel: String::new(),
    })
}

/// An `ALREADY_EXISTS` answer to a re-sent command is what a re-seeding expects.
fn accept_existing(
    result: Result<tonic::Response<pb::WriteResponse>, tonic::Status>,
) -> Result<(), CliError> {
    match result {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(status) => Err(format!("{}: {}", status.code(), status.message()).into()),
    }
}

/// Sends one seeded event as the Customers RPC that records it.
async fn send(client: &mut CustomersClient, event: SeededEvent) -> Result<(), CliError> {
    let ctx = context(event.id, event.occurred_at_us);
    let result = match event.event {
        DomainEvent::CustomerRegistered(e) => {
            let identity = match e.identity {
                Personal::Clear(identity) => identity,
                _ => return Err("a seeded identity is always in clear".into()),
            };
            client
                .register_customer(pb::RegisterCustomerRequest {
                    customer_id: e.customer_id.to_string(),
                    given_name: identity.given_name,
                    family_name: identity.family_name,
                    emails: identity.emails,
                    phones: identity.phones,
                    birth_date: identity
                        .birth_date
                        .map(|d| format!("{:04}-{:02}-{:02}", d.year, d.month, d.day))
                        .unwrap_or_default(),
                    address: convert::address_to(identity.address),
                    locale: e.locale,
                    external_ids: identity.external_ids.into_iter().collect(),
                    acquisition_channel: convert::channel_to(e.acquisition_channel),
                    context: ctx,
                })
                .await
        }
        DomainEvent::ConsentGiven(e) => {
            client
                .record_consent(pb::RecordConsentRequest {
                    customer_id: e.customer_id.to_string(),
                    purpose: convert::consent_purpose_to(e.purpose),
                    granted: true,
                    source: e.source,
                    context: ctx,
                })
                .await
        }
        DomainEvent::ConsentWithdrawn(e) => {
            client
                .record_consent(pb::RecordConsentRequest {
                    customer_id: e.customer_id.to_string(),
                    purpose: convert::consent_purpose_to(e.purpose),
                    granted: false,
                    source: e.source,
                    context: ctx,
                })
                .await
        }
        DomainEvent::PreferenceSet(e) => {
            client
                .set_preference(pb::SetPreferenceRequest {
                    customer_id: e.customer_id.to_string(),
                    key: e.key,
                    value: e.value,
                    context: ctx,
                })
                .await
        }
        DomainEvent::TagAdded(e) => {
            client
                .add_tag(pb::AddTagRequest {
                    customer_id: e.customer_id.to_string(),
                    tag: e.tag,
                    context: ctx,
                })
                .await
        }
        DomainEvent::InteractionLogged(e) => {
            let text = e.text.clear().cloned().unwrap_or_default();
            client
                .log_interaction(pb::LogInteractionRequest {
                    customer_id: e.customer_id.to_string(),
                    channel: convert::channel_to(e.channel),
                    direction: convert::direction_to(e.direction),
                    kind: convert::kind_to(e.kind),
                    subject: text.subject,
                    summary: text.summary,
                    agent: e.agent,
                    duration_seconds: e.duration_seconds,
                    context: ctx,
                })
                .await
        }
        DomainEvent::PurchaseCompleted(e) => {
            client
                .record_purchase(pb::RecordPurchaseRequest {
                    customer_id: e.customer_id.to_string(),
                    order_id: e.order_id,
                    lines: e
                        .lines
                        .into_iter()
                        .map(|l| pb::PurchaseLine {
                            sku: l.sku,
                            name: l.name,
                            category: l.category,
                            quantity: l.quantity,
                            unit_price_minor: l.unit_price_minor,
                        })
                        .collect(),
                    total_minor: e.total_minor,
                    currency: e.currency,
                    channel: convert::channel_to(e.channel),
                    store_id: e.store_id,
                    context: ctx,
                })
                .await
        }
        DomainEvent::PurchaseRefunded(e) => {
            client
                .record_refund(pb::RecordRefundRequest {
                    customer_id: e.customer_id.to_string(),
                    order_id: e.order_id,
                    refund_id: e.refund_id,
                    lines: e
                        .lines
                        .into_iter()
                        .map(|l| pb::RefundLine {
                            sku: l.sku,
                            quantity: l.quantity,
                            amount_minor: l.amount_minor,
                        })
                        .collect(),
                    amount_minor: e.amount_minor,
                    currency: e.currency,
                    reason: e.reason,
                    context: ctx,
                })
                .await
        }
        DomainEvent::FeedbackGiven(e) => {
            client
                .record_feedback(pb::RecordFeedbackRequest {
                    customer_id: e.customer_id.to_string(),
                    metric: convert::feedback_metric_to(e.metric),
                    score: u32::from(e.score),
                    comment: e.comment.clear().cloned().unwrap_or_default(),
                    channel: convert::channel_to(e.channel),
                    subject_ref: e.subject_ref,
                    context: ctx,
                })
                .await
        }
        other => {
            return Err(format!("the seed has no RPC for {}", other.event_type()).into());
        }
    };
    accept_existing(result)
}

/// Through a server: each customer's RPCs in order, [`SERVER_IN_FLIGHT`] customers at a
/// time, then the merges.
async fn seed_server(
    url: String,
    customers: u64,
    seed: u64,
    bar: &indicatif::ProgressBar,
) -> Result<SeedReport, CliError> {
    let client = pb::customers_client::CustomersClient::connect(url.clone())
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let start = Instant::now();
    let mut report = SeedReport {
        customers,
        ..SeedReport::default()
    };
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut in_flight: tokio::task::JoinSet<Result<(), CliError>> = tokio::task::JoinSet::new();
    for index in 0..customers {
        while in_flight.len() >= SERVER_IN_FLIGHT {
            if let Some(finished) = in_flight.join_next().await {
                finished??;
                bar.inc(1);
                show_rate(bar, done.load(std::sync::atomic::Ordering::Relaxed), start);
            }
        }
        let history = customer_history(seed, index);
        report.events += history.event_count();
        let mut client = client.clone();
        let done = done.clone();
        in_flight.spawn(async move {
            let count = history.event_count();
            for event in history.events {
                send(&mut client, event).await?;
            }
            done.fetch_add(count, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        });
    }
    while let Some(finished) = in_flight.join_next().await {
        finished??;
        bar.inc(1);
    }
    // Merges after every customer exists, one survivor's merges in index (= time) order.
    let mut client = client;
    for index in 0..customers {
        if let Some(merge) = merge_of(seed, index) {
            report.merges += 1;
            report.events += 2;
            accept_existing(
                client
                    .merge_customers(pb::MergeCustomersRequest {
                        survivor_id: merge.survivor_id.to_string(),
                        duplicate_id: merge.duplicate_id.to_string(),
                        context: context(merge.event_id, merge.occurred_at_us),
                    })
                    .await,
            )?;
        }
    }
    report.customers_written = customers;
    report.events_written = report.events;
    // Sales pipelines (issue 4): through the Pipeline service, after the customers.
    crate::seed_sales::seed_server(&url, customers, seed, &mut report).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histories_are_deterministic_and_depend_on_the_seed() {
        for index in [0, 1, 17, 999] {
            assert_eq!(customer_history(7, index), customer_history(7, index));
            assert_ne!(customer_history(7, index).id, customer_history(8, index).id);
        }
    }

    #[test]
    fn histories_are_valid_and_in_time_order() {
        let mut events = 0;
        let mut duplicates = 0;
        for index in 0..2_000 {
            let history = customer_history(3, index);
            assert!(matches!(
                history.events[0].event,
                DomainEvent::CustomerRegistered(_)
            ));
            for pair in history.events.windows(2) {
                assert!(pair[0].occurred_at_us < pair[1].occurred_at_us);
            }
            let mut state = crate::domain::customer::Customer::default();
            for event in &history.events {
                event.event.validate("").expect("valid event");
                // The service's rules accept every fact in order.
                match &event.event {
                    DomainEvent::CustomerRegistered(e) => {
                        crate::domain::customer::register(&state, e.clone()).unwrap();
                    }
                    DomainEvent::PurchaseCompleted(e) => {
                        crate::domain::customer::record_purchase(&state, history.id, e.clone())
                            .unwrap();
                    }
                    DomainEvent::PurchaseRefunded(e) => {
                        crate::domain::customer::record_refund(&state, history.id, e.clone())
                            .unwrap();
                    }
                    _ => {}
                }
                state.apply(history.id, &event.event);
            }
            assert!(history.last_occurred_at_us() < DEDUP_RUN_US);
            if let Some(survivor) = history.duplicate_of {
                assert!(survivor < index);
                assert!(duplicate_of(3, survivor).is_none());
                duplicates += 1;
            }
            events += history.event_count();
        }
        let average = events as f64 / 2_000.0;
        assert!(
            (33.5..=40.0).contains(&average),
            "{average} events per customer"
        );
        assert!((5..=60).contains(&duplicates), "{duplicates} duplicates");
    }

    #[test]
    fn ids_match_the_service_derivation() {
        let base = Uuid::from_u128(42);
        assert_eq!(command_event_id(base, 0), base);
        assert_ne!(command_event_id(base, 1), command_event_id(base, 2));
    }
}

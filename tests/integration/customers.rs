//! The Customers service over real gRPC: every write and read, the customer rules and
//! their status codes, merges, read-your-writes, as-of, and the personal-data guarantees
//! (nothing personal on disk in clear, erasure by crypto-shredding).

use crate::common;

use std::path::Path;

use common::TestServer;
use rapport::grpc::pb;
use rapport::grpc::pb::customers_client::CustomersClient;
use tonic::Code;
use tonic::transport::Channel;

type Client = CustomersClient<Channel>;

fn ts(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

fn at(seconds: i64) -> Option<pb::WriteContext> {
    Some(pb::WriteContext {
        occurred_at: Some(ts(seconds)),
        ..Default::default()
    })
}

/// A phone number derived from a name, so registrations in one test do not collide.
fn phone_of(name: &str) -> String {
    let digits: u64 = name
        .bytes()
        .fold(7, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    format!("+44 20 {:07}", digits % 10_000_000)
}

async fn register(c: &mut Client, email: &str, name: &str) -> (String, u64) {
    let r = c
        .register_customer(pb::RegisterCustomerRequest {
            given_name: name.into(),
            family_name: "Lovelace".into(),
            emails: vec![email.into()],
            phones: vec![phone_of(name)],
            birth_date: "1815-12-10".into(),
            locale: "en-GB".into(),
            external_ids: [("pos_card".to_owned(), format!("card-{name}"))].into(),
            acquisition_channel: pb::Channel::Store as i32,
            context: at(1_700_000_000),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    (r.customer_id, r.position)
}

async fn get(c: &mut Client, id: &str, min_position: u64) -> pb::Customer {
    c.get_customer(pb::GetCustomerRequest {
        customer_id: id.into(),
        min_position,
    })
    .await
    .expect("get customer")
    .into_inner()
}

async fn purchase(c: &mut Client, id: &str, order: &str, total: i64, at_s: i64) -> u64 {
    c.record_purchase(pb::RecordPurchaseRequest {
        customer_id: id.into(),
        order_id: order.into(),
        lines: vec![
            pb::PurchaseLine {
                sku: "mug-1".into(),
                name: "Mug".into(),
                category: "kitchen".into(),
                quantity: 2,
                unit_price_minor: total / 4,
            },
            pb::PurchaseLine {
                sku: "tee-1".into(),
                name: "T-shirt".into(),
                category: "apparel".into(),
                quantity: 1,
                unit_price_minor: total / 2,
            },
        ],
        total_minor: total,
        currency: "EUR".into(),
        channel: pb::Channel::Web as i32,
        store_id: String::new(),
        context: at(at_s),
    })
    .await
    .expect("purchase")
    .into_inner()
    .position
}

fn totals(c: &pb::Customer, currency: &str) -> pb::CurrencyTotals {
    c.purchases
        .as_ref()
        .unwrap()
        .totals
        .iter()
        .find(|t| t.currency == currency)
        .cloned()
        .unwrap_or_default()
}

/// Every file under `dir` (recursively) whose raw bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                stack.push(entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(&path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test]
async fn registration_then_profile_with_read_your_writes() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    let (id, position) = register(&mut c, "Ada@Example.com", "Ada").await;
    let profile = get(&mut c, &id, position).await;
    assert_eq!(profile.customer_id, id);
    assert_eq!(profile.status, pb::CustomerStatus::Active as i32);
    assert_eq!(profile.personal_data, pb::PersonalData::Clear as i32);
    assert_eq!(profile.given_name, "Ada");
    assert_eq!(profile.emails, ["Ada@Example.com"]);
    assert_eq!(profile.birth_date, "1815-12-10");
    assert_eq!(profile.external_ids["pos_card"], "card-Ada");
    assert_eq!(profile.acquisition_channel, pb::Channel::Store as i32);
    assert_eq!(profile.registered_at, Some(ts(1_700_000_000)));
    assert!(profile.as_of_position >= position);

    // A position far ahead cannot be reached within a short deadline.
    let mut request = tonic::Request::new(pb::GetCustomerRequest {
        customer_id: id.clone(),
        min_position: position + 1_000,
    });
    request.set_timeout(std::time::Duration::from_millis(200));
    let status = c.get_customer(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    let missing = c
        .get_customer(pb::GetCustomerRequest {
            customer_id: uuid::Uuid::now_v7().to_string(),
            min_position: position,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let bad = c
        .get_customer(pb::GetCustomerRequest {
            customer_id: "nope".into(),
            min_position: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

/// Without a `min_position`, a read right after a write still sees it: the projection
/// runner gathers appends for a while before reading them, and the read waits for it to
/// reach the head the server had when the read came.
#[tokio::test]
async fn a_read_without_a_position_sees_the_write_just_acknowledged() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    for n in 0..10 {
        let name = format!("Grace{n}");
        let (id, position) = register(&mut c, &format!("grace{n}@example.com"), &name).await;
        let profile = get(&mut c, &id, 0).await;
        assert_eq!(profile.given_name, name);
        assert!(profile.as_of_position >= position);
    }
}

#[tokio::test]
async fn an_email_belongs_to_one_live_customer() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    let (ada, _) = register(&mut c, "ada@example.com", "Ada").await;
    let taken = c
        .register_customer(pb::RegisterCustomerRequest {
            emails: vec!["  ADA@example.COM ".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert!(taken.message().contains(&ada), "{}", taken.message());

    let bad = c
        .register_customer(pb::RegisterCustomerRequest {
            emails: vec!["not-an-email".into()],
            phones: vec!["12".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("emails[0]"), "{}", bad.message());

    // Changing contact details releases the old address and claims the new one.
    let moved = c
        .update_contact_details(pb::UpdateContactDetailsRequest {
            customer_id: ada.clone(),
            emails: vec!["ada@newmail.example".into()],
            phones: vec![],
            address: None,
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    let found = c
        .find_customer(pb::FindCustomerRequest {
            by: Some(pb::find_customer_request::By::Email(
                "ADA@newmail.example".into(),
            )),
            min_position: moved.position,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.customer_id, ada);
    assert_eq!(found.emails, ["ada@newmail.example"]);
    let gone = c
        .find_customer(pb::FindCustomerRequest {
            by: Some(pb::find_customer_request::By::Email(
                "ada@example.com".into(),
            )),
            min_position: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    let bob = c
        .register_customer(pb::RegisterCustomerRequest {
            given_name: "Bob".into(),
            emails: vec!["ada@example.com".into()],
            phones: vec![phone_of("Ada")],
            ..Default::default()
        })
        .await
        .expect("Ada's old email and phone are free again")
        .into_inner()
        .customer_id;
    assert_ne!(bob, ada);
    let by_phone = c
        .find_customer(pb::FindCustomerRequest {
            by: Some(pb::find_customer_request::By::Phone(
                phone_of("Ada").replace(' ', ""),
            )),
            min_position: 0,
        })
        .await;
    // Ada gave her phone up with the contact change; Bob registered it again.
    assert_eq!(by_phone.unwrap().into_inner().customer_id, bob);
    let by_card = c
        .find_customer(pb::FindCustomerRequest {
            by: Some(pb::find_customer_request::By::ExternalId(
                "pos_card:card-Ada".into(),
            )),
            min_position: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_card.customer_id, ada);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_registrations_with_one_email_exactly_one_wins() {
    let t = TestServer::start().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut c = t.customers().await;
        tasks.push(tokio::spawn(async move {
            c.register_customer(pb::RegisterCustomerRequest {
                given_name: format!("racer {i}"),
                emails: vec!["race@example.com".into()],
                ..Default::default()
            })
            .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => won += 1,
            Err(status) => assert_eq!(status.code(), Code::AlreadyExists, "{status:?}"),
        }
    }
    assert_eq!(won, 1);
}

#[tokio::test]
async fn the_profile_sums_up_every_kind_of_fact() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    let (id, _) = register(&mut c, "eve@example.com", "Eve").await;
    c.set_preference(pb::SetPreferenceRequest {
        customer_id: id.clone(),
        key: "size".into(),
        value: "M".into(),
        context: None,
    })
    .await
    .unwrap();
    c.set_preference(pb::SetPreferenceRequest {
        customer_id: id.clone(),
        key: "colour".into(),
        value: "blue".into(),
        context: None,
    })
    .await
    .unwrap();
    c.clear_preference(pb::ClearPreferenceRequest {
        customer_id: id.clone(),
        key: "colour".into(),
        context: None,
    })
    .await
    .unwrap();
    for (granted, s) in [(true, 100), (false, 200), (true, 150)] {
        c.record_consent(pb::RecordConsentRequest {
            customer_id: id.clone(),
            purpose: pb::ConsentPurpose::MarketingEmail as i32,
            granted,
            source: format!("form-{s}"),
            context: at(1_700_000_000 + s),
        })
        .await
        .unwrap();
    }
    c.add_tag(pb::AddTagRequest {
        customer_id: id.clone(),
        tag: "vip".into(),
        context: None,
    })
    .await
    .unwrap();
    c.add_tag(pb::AddTagRequest {
        customer_id: id.clone(),
        tag: "temp".into(),
        context: None,
    })
    .await
    .unwrap();
    c.remove_tag(pb::RemoveTagRequest {
        customer_id: id.clone(),
        tag: "temp".into(),
        context: None,
    })
    .await
    .unwrap();
    c.set_custom_field(pb::SetCustomFieldRequest {
        customer_id: id.clone(),
        key: "shoe_size".into(),
        value: Some(pb::FieldValue {
            value: Some(pb::field_value::Value::Number("42.5".into())),
        }),
        personal: false,
        context: None,
    })
    .await
    .unwrap();
    c.set_custom_field(pb::SetCustomFieldRequest {
        customer_id: id.clone(),
        key: "allergy".into(),
        value: Some(pb::FieldValue {
            value: Some(pb::field_value::Value::Text("peanuts".into())),
        }),
        personal: true,
        context: None,
    })
    .await
    .unwrap();
    c.log_interaction(pb::LogInteractionRequest {
        customer_id: id.clone(),
        channel: pb::Channel::Phone as i32,
        direction: pb::Direction::Inbound as i32,
        kind: pb::InteractionKind::Call as i32,
        subject: "Delivery".into(),
        summary: "Asked where the parcel is".into(),
        agent: "agent-7".into(),
        duration_seconds: 120,
        context: at(1_700_000_500),
    })
    .await
    .unwrap();
    purchase(&mut c, &id, "o-1", 4000, 1_700_000_600).await;
    purchase(&mut c, &id, "o-2", 2000, 1_700_000_700).await;
    c.record_refund(pb::RecordRefundRequest {
        customer_id: id.clone(),
        order_id: "o-1".into(),
        refund_id: "r-1".into(),
        lines: vec![pb::RefundLine {
            sku: "mug-1".into(),
            quantity: 1,
            amount_minor: 1000,
        }],
        amount_minor: 1000,
        currency: "EUR".into(),
        reason: "damaged".into(),
        context: None,
    })
    .await
    .unwrap();
    for (metric, score) in [(pb::FeedbackMetric::Nps, 9), (pb::FeedbackMetric::Nps, 6)] {
        c.record_feedback(pb::RecordFeedbackRequest {
            customer_id: id.clone(),
            metric: metric as i32,
            score,
            comment: "Lovely mugs".into(),
            channel: pb::Channel::Web as i32,
            subject_ref: "o-1".into(),
            context: None,
        })
        .await
        .unwrap();
    }
    let last = c
        .record_feedback(pb::RecordFeedbackRequest {
            customer_id: id.clone(),
            metric: pb::FeedbackMetric::Csat as i32,
            score: 4,
            comment: String::new(),
            channel: pb::Channel::Web as i32,
            subject_ref: String::new(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();

    let p = get(&mut c, &id, last.position).await;
    assert_eq!(p.preferences.len(), 1);
    assert_eq!(p.preferences["size"], "M");
    let consent = &p.consents[0];
    assert_eq!(consent.purpose, pb::ConsentPurpose::MarketingEmail as i32);
    assert!(
        !consent.granted,
        "the change latest in business time (withdrawn at +200) wins"
    );
    assert_eq!(consent.history.len(), 3);
    assert_eq!(p.tags, ["vip"]);
    assert_eq!(
        p.custom_fields["shoe_size"].value,
        Some(pb::FieldValue {
            value: Some(pb::field_value::Value::Number("42.5".into()))
        })
    );
    assert!(p.custom_fields["allergy"].personal);
    assert_eq!(
        p.custom_fields["allergy"].value,
        Some(pb::FieldValue {
            value: Some(pb::field_value::Value::Text("peanuts".into()))
        })
    );
    let interactions = p.interactions.as_ref().unwrap();
    assert_eq!(interactions.total, 1);
    let last_interaction = interactions.last.as_ref().unwrap();
    assert_eq!(last_interaction.summary, "Asked where the parcel is");
    assert_eq!(last_interaction.channel, pb::Channel::Phone as i32);
    let purchases = p.purchases.as_ref().unwrap();
    assert_eq!(purchases.orders, 2);
    assert_eq!(purchases.units, 6);
    assert_eq!(purchases.refunds, 1);
    let eur = totals(&p, "EUR");
    assert_eq!(
        (
            eur.spent_minor,
            eur.refunded_minor,
            eur.net_minor,
            eur.average_order_minor
        ),
        (6000, 1000, 5000, 3000)
    );
    assert_eq!(purchases.top_categories[0].category, "kitchen");
    assert_eq!(purchases.first_purchase_at, Some(ts(1_700_000_600)));
    assert_eq!(purchases.last_purchase_at, Some(ts(1_700_000_700)));
    let nps = p.nps.as_ref().unwrap();
    assert_eq!((nps.count, nps.average_milli, nps.latest), (2, 7500, 6));
    assert_eq!(p.csat.as_ref().unwrap().latest, 4);
    assert!(p.channels.contains(&(pb::Channel::Phone as i32)));
}

#[tokio::test]
async fn rules_answer_with_the_right_status() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    let (id, _) = register(&mut c, "rules@example.com", "Rui").await;
    purchase(&mut c, &id, "o-1", 1000, 1_700_000_000).await;
    let refund = |amount: i64, order: &str, sku: &str, qty: u32| pb::RecordRefundRequest {
        customer_id: id.clone(),
        order_id: order.into(),
        refund_id: String::new(),
        lines: if sku.is_empty() {
            vec![]
        } else {
            vec![pb::RefundLine {
                sku: sku.into(),
                quantity: qty,
                amount_minor: 0,
            }]
        },
        amount_minor: amount,
        currency: "EUR".into(),
        reason: String::new(),
        context: None,
    };
    for (request, why) in [
        (refund(1001, "o-1", "", 0), "more than paid"),
        (refund(10, "o-9", "", 0), "unknown order"),
        (refund(10, "o-1", "sofa", 1), "unknown line"),
        (refund(10, "o-1", "mug-1", 3), "more units than bought"),
    ] {
        let status = c.record_refund(request).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{why}: {status:?}");
    }
    let duplicate_order = c
        .record_purchase(pb::RecordPurchaseRequest {
            customer_id: id.clone(),
            order_id: "o-1".into(),
            total_minor: 5,
            currency: "EUR".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate_order.code(), Code::FailedPrecondition);
    let unknown = c
        .add_tag(pb::AddTagRequest {
            customer_id: uuid::Uuid::now_v7().to_string(),
            tag: "vip".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let bad_tag = c
        .add_tag(pb::AddTagRequest {
            customer_id: id.clone(),
            tag: "Not A Key".into(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_tag.code(), Code::InvalidArgument);
    assert!(
        bad_tag.message().starts_with("tag:"),
        "{}",
        bad_tag.message()
    );
    let bad_score = c
        .record_feedback(pb::RecordFeedbackRequest {
            customer_id: id.clone(),
            metric: pb::FeedbackMetric::Csat as i32,
            score: 9,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_score.code(), Code::InvalidArgument);

    // Idempotency: the same event id answers with the original position.
    let event_id = uuid::Uuid::now_v7().to_string();
    let context = || {
        Some(pb::WriteContext {
            event_id: event_id.clone(),
            ..Default::default()
        })
    };
    let first = c
        .add_tag(pb::AddTagRequest {
            customer_id: id.clone(),
            tag: "once".into(),
            context: context(),
        })
        .await
        .unwrap()
        .into_inner();
    let again = c
        .add_tag(pb::AddTagRequest {
            customer_id: id.clone(),
            tag: "once".into(),
            context: context(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.position, again.position);
}

#[tokio::test]
async fn a_merged_duplicate_resolves_to_its_survivor() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    let (ada, _) = register(&mut c, "ada@example.com", "Ada").await;
    let (dup, _) = register(&mut c, "ada.l@example.com", "Ada L").await;
    purchase(&mut c, &dup, "d-1", 800, 1_700_000_100).await;
    c.add_tag(pb::AddTagRequest {
        customer_id: dup.clone(),
        tag: "newsletter".into(),
        context: None,
    })
    .await
    .unwrap();
    let merged = c
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: ada.clone(),
            duplicate_id: dup.clone(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(merged.customer_id, ada);
    // Writes to the duplicate land on the survivor.
    let written = purchase(&mut c, &dup, "d-2", 200, 1_700_000_200).await;
    let via_dup = get(&mut c, &dup, written).await;
    assert_eq!(via_dup.customer_id, ada);
    assert_eq!(via_dup.merged_ids, std::slice::from_ref(&dup));
    assert_eq!(via_dup.purchases.as_ref().unwrap().orders, 2);
    assert_eq!(totals(&via_dup, "EUR").spent_minor, 1000);
    assert_eq!(via_dup.tags, ["newsletter"]);
    // The duplicate's email finds the survivor.
    let found = c
        .find_customer(pb::FindCustomerRequest {
            by: Some(pb::find_customer_request::By::Email(
                "ada.l@example.com".into(),
            )),
            min_position: written,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.customer_id, ada);
    // Rules.
    let into_self = c
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: ada.clone(),
            duplicate_id: ada.clone(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(into_self.code(), Code::FailedPrecondition);
    let (other, _) = register(&mut c, "other@example.com", "Other").await;
    let into_merged = c
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: dup.clone(),
            duplicate_id: other.clone(),
            context: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        into_merged.code(),
        Code::FailedPrecondition,
        "{into_merged:?}"
    );
    // The timeline holds both customers' events, newest first.
    let timeline = c
        .get_timeline(pb::GetTimelineRequest {
            customer_id: dup.clone(),
            page_size: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(timeline.events.len(), 3);
    assert!(timeline.events[0].position > timeline.events[1].position);
    assert_eq!(timeline.events[0].event_type, "PurchaseCompleted");
    let mut all = timeline.events.clone();
    let mut token = timeline.next_page_token;
    while !token.is_empty() {
        let page = c
            .get_timeline(pb::GetTimelineRequest {
                customer_id: ada.clone(),
                page_size: 3,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.events);
        token = page.next_page_token;
    }
    // Registrations (2), purchases (2), a tag, and the merge in both streams.
    assert_eq!(
        all.len(),
        7,
        "{:?}",
        all.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    let purchases = c
        .get_timeline(pb::GetTimelineRequest {
            customer_id: ada.clone(),
            event_types: vec!["PurchaseCompleted".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(purchases.events.len(), 2);
}

#[tokio::test]
async fn as_of_a_position_and_a_time_uses_the_projection_fold() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    let (id, _) = register(&mut c, "asof@example.com", "Asa").await;
    let first = purchase(&mut c, &id, "o-1", 1000, 1_700_000_100).await;
    let before_second = t.server.log.head();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = purchase(&mut c, &id, "o-2", 500, 1_700_000_200).await;
    let then = c
        .get_customer_as_of(pb::GetCustomerAsOfRequest {
            customer_id: id.clone(),
            as_of: Some(pb::get_customer_as_of_request::AsOf::Position(first)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(then.purchases.as_ref().unwrap().orders, 1);
    assert_eq!(then.as_of_position, first);
    assert_eq!(then.given_name, "Asa");
    let now = c
        .get_customer_as_of(pb::GetCustomerAsOfRequest {
            customer_id: id.clone(),
            as_of: Some(pb::get_customer_as_of_request::AsOf::Position(second)),
        })
        .await
        .unwrap()
        .into_inner();
    // As-of at the head equals the projection's profile, field for field.
    let mut live = get(&mut c, &id, second).await;
    live.as_of_position = now.as_of_position;
    assert_eq!(now, live);
    let event = t
        .server
        .log
        .event_at(before_second.position)
        .unwrap()
        .unwrap();
    let by_time = c
        .get_customer_as_of(pb::GetCustomerAsOfRequest {
            customer_id: id.clone(),
            as_of: Some(pb::get_customer_as_of_request::AsOf::RecordedAt(
                prost_types::Timestamp {
                    seconds: event.event.recorded_at_us.div_euclid(1_000_000),
                    nanos: (event.event.recorded_at_us.rem_euclid(1_000_000) * 1000) as i32,
                },
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_time.purchases.as_ref().unwrap().orders, 1);
    let before = c
        .get_customer_as_of(pb::GetCustomerAsOfRequest {
            customer_id: id.clone(),
            as_of: Some(pb::get_customer_as_of_request::AsOf::Position(0)),
        })
        .await
        .unwrap_err();
    assert_eq!(before.code(), Code::NotFound);
}

#[tokio::test]
async fn list_customers_filters_and_pages_in_a_stable_order() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    let mut ids = Vec::new();
    let mut last = 0;
    for i in 0..7 {
        let (id, _) = register(&mut c, &format!("list{i}@example.com"), &format!("L{i}")).await;
        if i % 2 == 0 {
            c.add_tag(pb::AddTagRequest {
                customer_id: id.clone(),
                tag: "even".into(),
                context: at(1_700_000_000),
            })
            .await
            .unwrap();
        }
        last = purchase(&mut c, &id, "o", 1000 * (i + 1), 1_700_000_000 + i).await;
        ids.push(id);
    }
    ids.sort();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_customers(pb::ListCustomersRequest {
                page_size: 3,
                page_token: token,
                min_position: last,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.customers.len() <= 3);
        seen.extend(page.customers.into_iter().map(|c| c.customer_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, ids);
    let even = c
        .list_customers(pb::ListCustomersRequest {
            tag: "even".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(even.customers.len(), 4);
    let big = c
        .list_customers(pb::ListCustomersRequest {
            spent_currency: "EUR".into(),
            spent_min_minor: Some(5000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(big.customers.len(), 3);
    let recent = c
        .list_customers(pb::ListCustomersRequest {
            last_activity_after: Some(ts(1_700_000_005)),
            channel: pb::Channel::Web as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(recent.customers.len(), 2);
    let no_currency = c
        .list_customers(pb::ListCustomersRequest {
            spent_min_minor: Some(1),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(no_currency.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn personal_data_never_reaches_the_disk_and_erasure_shreds_it() {
    let t = TestServer::start().await;
    let data_dir = t.data_dir();
    let mut c = t.customers().await;
    let email = "zelda.unique-4711@example.org";
    let name = "Zeldabeth";
    let comment = "my-very-private-comment-about-the-shop";
    let (id, _) = register(&mut c, email, name).await;
    purchase(&mut c, &id, "z-1", 2500, 1_700_000_100).await;
    let written = c
        .record_feedback(pb::RecordFeedbackRequest {
            customer_id: id.clone(),
            metric: pb::FeedbackMetric::Nps as i32,
            score: 10,
            comment: comment.into(),
            channel: pb::Channel::Web as i32,
            subject_ref: String::new(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    // Also through the raw EventStore append path.
    let mut store = t.client().await;
    store
        .append(pb::AppendRequest {
            stream: format!("customer-{id}"),
            expected: None,
            events: vec![pb::ProposedEvent {
                event: Some(pb::Event {
                    kind: Some(pb::event::Kind::InteractionLogged(pb::InteractionLogged {
                        customer_id: id.clone(),
                        channel: pb::Channel::Chat as i32,
                        direction: pb::Direction::Inbound as i32,
                        kind: pb::InteractionKind::Chat as i32,
                        subject: "raw-subject-line-9931".into(),
                        summary: "raw summary".into(),
                        agent: String::new(),
                        duration_seconds: 0,
                    })),
                }),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    // The customer model's own events cannot be forged through the raw API.
    let forged = store
        .append(pb::AppendRequest {
            stream: format!("customer-{id}"),
            expected: None,
            events: vec![pb::ProposedEvent {
                event: Some(pb::Event {
                    kind: Some(pb::event::Kind::CustomerErased(pb::CustomerErased {
                        customer_id: id.clone(),
                        erased_ids: vec![id.clone()],
                        reason: String::new(),
                        requested_by: String::new(),
                    })),
                }),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(forged.code(), Code::InvalidArgument);
    let before = get(&mut c, &id, written.position).await;
    assert_eq!(before.given_name, name);
    let secrets: [&[u8]; 4] = [
        email.as_bytes(),
        name.as_bytes(),
        comment.as_bytes(),
        b"raw-subject-line-9931",
    ];
    let t = t.restart().await;
    // And after a rebuild of the customer projection (a new generation of its trees).
    let mut admin = t.admin().await;
    admin
        .rebuild_projection(pb::RebuildProjectionRequest {
            name: "customers".into(),
        })
        .await
        .unwrap();
    let mut watch = admin
        .watch_projection(pb::WatchProjectionRequest {
            name: "customers".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(status) = watch.message().await.unwrap() {
        last = Some(status);
    }
    assert!(matches!(
        last.and_then(|s| s.state),
        Some(pb::projection_status::State::Live(_))
    ));
    for secret in secrets {
        assert_eq!(
            files_containing(&data_dir, secret),
            Vec::<String>::new(),
            "{} found in clear",
            String::from_utf8_lossy(secret)
        );
    }
    let mut c = t.customers().await;
    let mut store = t.client().await;
    // The events read back decrypted through EventStore.
    let read = store
        .read_stream(pb::ReadStreamRequest {
            stream: format!("customer-{id}"),
            from_revision: 0,
            backwards: false,
            max_count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.events[0].personal_data, pb::PersonalData::Clear as i32);

    // The wrapped data key as it sits in the key store before erasure.
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let shard = data_dir.join(format!("keys/shard-{:02x}", uuid.as_bytes()[0]));
    let shard_bytes = std::fs::read(&shard).expect("shard file");
    let at_id = shard_bytes
        .windows(16)
        .position(|w| w == uuid.as_bytes())
        .expect("the customer's key record");
    let wrapped = shard_bytes[at_id + 16..at_id + 16 + 72].to_vec();
    assert_eq!(files_containing(t.dir.path(), &wrapped).len(), 1);

    let stats_before = t
        .admin()
        .await
        .get_log_stats(pb::GetLogStatsRequest::default())
        .await;
    let erased = c
        .erase_customer(pb::EraseCustomerRequest {
            customer_id: id.clone(),
            reason: "GDPR art. 17 request #12".into(),
            requested_by: "dpo@shop".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(erased.erased_ids, std::slice::from_ref(&id));
    assert!(!erased.already_erased);
    let again = c
        .erase_customer(pb::EraseCustomerRequest {
            customer_id: id.clone(),
            reason: String::new(),
            requested_by: String::new(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(again.already_erased, "erasing twice is harmless");
    assert_eq!(
        files_containing(t.dir.path(), &wrapped),
        Vec::<String>::new(),
        "the wrapped key must be gone from every file"
    );

    let after = get(&mut c, &id, erased.position).await;
    assert_eq!(after.status, pb::CustomerStatus::Erased as i32);
    assert_eq!(after.personal_data, pb::PersonalData::Erased as i32);
    assert!(after.given_name.is_empty() && after.emails.is_empty());
    assert_eq!(
        totals(&after, "EUR"),
        totals(&before, "EUR"),
        "amounts unchanged"
    );
    assert_eq!(after.nps, before.nps, "scores unchanged");
    let lookup = c
        .find_customer(pb::FindCustomerRequest {
            by: Some(pb::find_customer_request::By::Email(email.into())),
            min_position: erased.position,
        })
        .await
        .unwrap_err();
    assert_eq!(lookup.code(), Code::NotFound);
    let timeline = c
        .get_timeline(pb::GetTimelineRequest {
            customer_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        timeline
            .events
            .iter()
            .filter(|e| e.event_type == "CustomerRegistered")
            .all(|e| e.personal_data == pb::PersonalData::Erased as i32)
    );
    let as_of = c
        .get_customer_as_of(pb::GetCustomerAsOfRequest {
            customer_id: id.clone(),
            as_of: Some(pb::get_customer_as_of_request::AsOf::Position(
                written.position,
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(as_of.personal_data, pb::PersonalData::Erased as i32);
    assert!(as_of.given_name.is_empty());
    let export = c
        .export_customer_data(pb::ExportCustomerDataRequest {
            customer_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!export.json.contains(name) && !export.json.contains(comment));
    assert!(
        export.json.contains("\"personal_data\": \"erased\""),
        "{}",
        export.json
    );
    // No new personal data is accepted for an erased customer.
    let refused = c
        .log_interaction(pb::LogInteractionRequest {
            customer_id: id.clone(),
            channel: pb::Channel::Web as i32,
            kind: pb::InteractionKind::Visit as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let stats_after = t
        .admin()
        .await
        .get_log_stats(pb::GetLogStatsRequest::default())
        .await;
    assert!(stats_before.is_ok() && stats_after.is_ok());

    // Stop, then scan again and verify the chain offline.
    let dir = t.dir;
    t.server.stop().await.unwrap();
    for secret in secrets {
        assert!(files_containing(&data_dir, secret).is_empty());
    }
    assert!(files_containing(dir.path(), &wrapped).is_empty());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(["verify", "--data-dir"])
        .arg(&data_dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

#[tokio::test]
async fn export_returns_everything_about_one_person() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    let (id, _) = register(&mut c, "export@example.com", "Xavier").await;
    c.record_consent(pb::RecordConsentRequest {
        customer_id: id.clone(),
        purpose: pb::ConsentPurpose::Profiling as i32,
        granted: true,
        source: "app".into(),
        context: None,
    })
    .await
    .unwrap();
    purchase(&mut c, &id, "x-1", 1200, 1_700_000_100).await;
    let export = c
        .export_customer_data(pb::ExportCustomerDataRequest {
            customer_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let json: serde_json::Value = serde_json::from_str(&export.json).unwrap();
    assert_eq!(json["customer_id"], id);
    assert_eq!(json["profile"]["given_name"], "Xavier");
    assert_eq!(json["profile"]["emails"][0], "export@example.com");
    assert_eq!(json["profile"]["consents"][0]["purpose"], "profiling");
    assert_eq!(json["events"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_wrong_master_key_refuses_to_start_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = rapport::grpc::start(data.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    server.stop().await.unwrap();
    let snapshot = |root: &Path| {
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            if p.is_dir() {
                for e in std::fs::read_dir(&p).unwrap().flatten() {
                    stack.push(e.path());
                }
            } else {
                files.push((p.display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
        files.sort();
        files
    };
    let before = snapshot(&data);
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "11".repeat(32)).unwrap();
    let config = rapport::grpc::ServerConfig {
        log: rapport::log::LogConfig::new(&data),
        master_key_file: Some(wrong),
    };
    let refused = rapport::grpc::start_with(config, "127.0.0.1:0".parse().unwrap()).await;
    let error = refused
        .err()
        .expect("a wrong master key must refuse the start");
    assert!(
        error.to_string().to_lowercase().contains("master key"),
        "{error}"
    );
    assert!(before == snapshot(&data), "the data directory changed");
}

#[tokio::test]
async fn erasing_a_survivor_erases_its_merged_duplicates_too() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    let (survivor, _) = register(&mut c, "keep@example.com", "Keeper").await;
    let (duplicate, _) = register(&mut c, "dup@example.com", "Duplicado").await;
    purchase(&mut c, &duplicate, "d-1", 700, 1_700_000_100).await;
    c.merge_customers(pb::MergeCustomersRequest {
        survivor_id: survivor.clone(),
        duplicate_id: duplicate.clone(),
        context: None,
    })
    .await
    .unwrap();
    // Erasing through the duplicate's id resolves to the survivor and takes both.
    let erased = c
        .erase_customer(pb::EraseCustomerRequest {
            customer_id: duplicate.clone(),
            reason: "GDPR".into(),
            requested_by: "dpo".into(),
            context: None,
        })
        .await
        .unwrap()
        .into_inner();
    let mut ids = erased.erased_ids.clone();
    ids.sort();
    let mut both = vec![survivor.clone(), duplicate.clone()];
    both.sort();
    assert_eq!(ids, both);
    let profile = get(&mut c, &survivor, erased.position).await;
    assert_eq!(profile.status, pb::CustomerStatus::Erased as i32);
    assert_eq!(
        totals(&profile, "EUR").spent_minor,
        700,
        "the duplicate's order still counts"
    );
    // The duplicate's own registration cannot be read any more.
    let mut store = t.client().await;
    let events = store
        .read_stream(pb::ReadStreamRequest {
            stream: format!("customer-{duplicate}"),
            from_revision: 0,
            backwards: false,
            max_count: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let registration = events
        .iter()
        .find(|e| e.event_type == "CustomerRegistered")
        .unwrap();
    assert_eq!(registration.personal_data, pb::PersonalData::Erased as i32);
    // Neither email finds anyone.
    for email in ["keep@example.com", "dup@example.com"] {
        let status = c
            .find_customer(pb::FindCustomerRequest {
                by: Some(pb::find_customer_request::By::Email(email.into())),
                min_position: erased.position,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "{email}");
    }
}

//! The Analytics service over real gRPC: RFM rows of customers recorded through the
//! Customers service, hand-computed, as of two business dates, paged, per currency.

use crate::common;

use common::TestServer;
use rapport::grpc::pb;
use rapport::grpc::pb::analytics_client::AnalyticsClient;
use tonic::Code;

const DAY: i64 = 86_400;

/// (day, amount) pairs: a customer's orders or refunds.
type Days = &'static [(i64, i64)];

/// An RFM row as compared: id, recency, frequency, monetary, r, f, m, segment.
type Row<'a> = (String, i64, u64, i64, u32, u32, u32, &'a str);
const T0: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

fn at(seconds: i64) -> Option<pb::WriteContext> {
    Some(pb::WriteContext {
        occurred_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        ..Default::default()
    })
}

#[tokio::test]
async fn rfm_rows_as_of_a_date_hand_computed() {
    let t = TestServer::start().await;
    let mut c = t.customers().await;
    let mut analytics = AnalyticsClient::connect(t.server.url()).await.unwrap();
    // (orders as (day, total)), refunds (day, amount) — the domain unit test's five customers.
    let plan: [(Days, Days); 5] = [
        (&[(99, 500)], &[]),
        (&[(10, 1000), (30, 1000), (50, 1000)], &[(60, 1000)]),
        (&[(80, 5000), (90, 5000)], &[]),
        (&[(0, 20), (0, 20), (1, 20), (1, 20), (1, 20)], &[]),
        (&[(70, 700), (120, 9999)], &[]),
    ];
    let mut ids = Vec::new();
    let mut last = 0;
    for (n, (orders, refunds)) in plan.iter().enumerate() {
        let id = c
            .register_customer(pb::RegisterCustomerRequest {
                given_name: format!("C{n}"),
                external_ids: [("pos_card".to_owned(), format!("card-{n}"))].into(),
                context: at(T0 - DAY),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .customer_id;
        for (k, (day, total)) in orders.iter().enumerate() {
            last = c
                .record_purchase(pb::RecordPurchaseRequest {
                    customer_id: id.clone(),
                    order_id: format!("o-{k}"),
                    total_minor: *total,
                    currency: "EUR".into(),
                    context: at(T0 + day * DAY),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .position;
        }
        for (day, amount) in refunds.iter() {
            last = c
                .record_refund(pb::RecordRefundRequest {
                    customer_id: id.clone(),
                    order_id: "o-0".into(),
                    amount_minor: *amount,
                    currency: "EUR".into(),
                    context: at(T0 + day * DAY),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .position;
        }
        ids.push(id);
    }
    // One USD customer: not in the EUR rows; EUR is the busiest currency.
    let usd = c
        .register_customer(pb::RegisterCustomerRequest::default())
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    c.record_purchase(pb::RecordPurchaseRequest {
        customer_id: usd,
        order_id: "u-1".into(),
        total_minor: 100,
        currency: "USD".into(),
        context: at(T0),
        ..Default::default()
    })
    .await
    .unwrap();

    let as_of = Some(prost_types::Timestamp {
        seconds: T0 + 100 * DAY,
        nanos: 0,
    });
    let all = analytics
        .list_customer_rfm(pb::ListCustomerRfmRequest {
            as_of,
            min_position: last,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.currency, "EUR");
    assert_eq!(all.total_rows, 5);
    // Customers 0 and 4 both have one order: the tie is broken by customer id, the
    // smaller ranking lower. Server-made ids are UUIDv7, so customer 0's is smaller.
    assert!(ids[0] < ids[4]);
    let mut expected: Vec<Row> = vec![
        (ids[0].clone(), 1, 1, 500, 5, 1, 2, "New"),
        (ids[1].clone(), 50, 3, 2000, 2, 4, 4, "At risk"),
        (
            ids[2].clone(),
            10,
            2,
            10_000,
            4,
            3,
            5,
            "Potential loyalists",
        ),
        (ids[3].clone(), 99, 5, 100, 1, 5, 1, "Can't lose"),
        (ids[4].clone(), 30, 1, 700, 3, 2, 3, "About to sleep"),
    ];
    expected.sort();
    let got: Vec<Row> = all
        .rows
        .iter()
        .map(|r| {
            (
                r.customer_id.clone(),
                r.recency_days,
                r.frequency,
                r.monetary_minor,
                r.r,
                r.f,
                r.m,
                r.segment.as_str(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(
        all.rows
            .iter()
            .all(|r| r.external_ids.contains_key("pos_card"))
    );

    // Paging gives the same rows.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let page = analytics
            .list_customer_rfm(pb::ListCustomerRfmRequest {
                as_of,
                page_size: 2,
                page_token: token,
                currency: "EUR".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        paged.extend(page.rows);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, all.rows);

    // As of day 40: only the orders by then count (customer 1 had two; 3 and 4 none).
    let early = analytics
        .list_customer_rfm(pb::ListCustomerRfmRequest {
            as_of: Some(prost_types::Timestamp {
                seconds: T0 + 40 * DAY,
                nanos: 0,
            }),
            currency: "EUR".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(early.total_rows, 2);
    let second = early.rows.iter().find(|r| r.customer_id == ids[1]).unwrap();
    assert_eq!(
        (second.recency_days, second.frequency, second.monetary_minor),
        (10, 2, 2000)
    );

    // KPIs of days 40..100: active = customers 0, 1 (refund only: no), 2, 4 → orders by
    // 0 (day 99), 1 (day 50), 2 (days 80, 90), 4 (day 70) → 4 active; the previous period
    // (days −20..40): customers 1 (days 10, 30), 3 (days 0, 1) and the USD customer (day
    // 0) → 3; first orders in the period: 0, 2, 4 → retention (4 − 3) / 3 = 33.33 %.
    let kpis = analytics
        .get_kpis(pb::GetKpisRequest {
            as_of,
            period_start: Some(prost_types::Timestamp {
                seconds: T0 + 40 * DAY,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The USD customer registered "now" (no occurred_at): after the period.
    assert_eq!(kpis.customers_total, 5);
    assert_eq!(kpis.active_customers, 4);
    assert_eq!(kpis.active_previous_period, 3);
    assert_eq!(kpis.first_time_customers, 3);
    assert_eq!(kpis.retention_bp, Some(3_333));
    let eur = kpis
        .by_currency
        .iter()
        .find(|c| c.currency == "EUR")
        .unwrap();
    // Orders: 500 + 1000 (day 50) + 5000 + 5000 + 700 = 12 200 over 5; the refund of
    // day 60 (1000) nets the revenue.
    assert_eq!(
        (eur.orders, eur.revenue_minor, eur.average_order_minor),
        (5, 11_200, 2_440)
    );
    assert!(!kpis.cohorts.is_empty());

    // A grid of one's own: two segments by recency alone.
    let custom = analytics
        .list_customer_rfm(pb::ListCustomerRfmRequest {
            as_of,
            currency: "EUR".into(),
            grid: vec![
                pb::RfmGridRule {
                    name: "Recent".into(),
                    r_min: 4,
                    r_max: 5,
                    f_min: 1,
                    f_max: 5,
                },
                pb::RfmGridRule {
                    name: "Old".into(),
                    r_min: 1,
                    r_max: 3,
                    f_min: 1,
                    f_max: 5,
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let recent: Vec<&str> = custom
        .rows
        .iter()
        .filter(|r| r.segment == "Recent")
        .map(|r| r.customer_id.as_str())
        .collect();
    assert_eq!(recent.len(), 2, "r 5 (customer 0) and r 4 (customer 2)");
    let bad_grid = analytics
        .list_customer_rfm(pb::ListCustomerRfmRequest {
            grid: vec![pb::RfmGridRule {
                name: "x".into(),
                r_min: 0,
                r_max: 9,
                f_min: 1,
                f_max: 5,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_grid.code(), Code::InvalidArgument);

    // Customer value: historical from the orders, predictive from the fitted models.
    let value = analytics
        .list_customer_value(pb::ListCustomerValueRequest {
            as_of,
            currency: "EUR".into(),
            horizon_days: 90,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let model = value.model.unwrap();
    assert_eq!(model.customers, 5);
    assert!(
        model.error.is_empty() && model.r > 0.0 && model.q > 0.0 || !model.error.is_empty(),
        "{model:?}"
    );
    assert_eq!(value.customers.len(), 5);
    let second = value
        .customers
        .iter()
        .find(|c| c.customer_id == ids[1])
        .unwrap();
    assert_eq!((second.orders, second.historical_minor), (3, 2000));
    for c in &value.customers {
        assert!((0.0..=1.0).contains(&c.probability_alive), "{c:?}");
        assert!(
            c.expected_purchases >= 0.0 && c.predicted_clv_minor >= 0.0,
            "{c:?}"
        );
    }

    // Segment previews as of day 100.
    let preview = |rule: &str| pb::PreviewSegmentRequest {
        rule: rule.into(),
        as_of,
        ..Default::default()
    };
    let big = analytics
        .preview_segment(preview("spent EUR >= 2000 and orders EUR >= 2"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        big.count, 2,
        "customers 1 (2000 net, 3 orders) and 2 (10 000, 2)"
    );
    assert_eq!(big.customers, 6);
    let mut both = vec![ids[1].clone(), ids[2].clone()];
    both.sort();
    assert_eq!(big.sample, both);
    let recent = analytics
        .preview_segment(preview("last_purchase within 30d and not rfm \"New\""))
        .await
        .unwrap()
        .into_inner();
    // Orders within 30 days of day 100: customers 0 (day 99; RFM "New"), 2 (day 90), 4
    // (day 70; its day-120 order is after as_of).
    assert_eq!(recent.count, 2);
    let bad_rule = analytics
        .preview_segment(preview("spent EUR >= lots"))
        .await
        .unwrap_err();
    assert_eq!(bad_rule.code(), Code::InvalidArgument);
    assert!(
        bad_rule.message().contains("column 14"),
        "{}",
        bad_rule.message()
    );

    let bad = analytics
        .list_customer_rfm(pb::ListCustomerRfmRequest {
            currency: "euro".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_read_waits_for_min_position_within_the_clients_deadline() {
    let t = TestServer::start().await;
    let mut analytics = AnalyticsClient::connect(t.server.url()).await.unwrap();
    // Far ahead of the head: never reached. The answer is ours (naming the applied
    // position), sent before the client's 500 ms run out, not the transport's cut-off.
    let started = std::time::Instant::now();
    let mut request = tonic::Request::new(pb::GetKpisRequest {
        min_position: 1_000_000,
        ..Default::default()
    });
    request.set_timeout(std::time::Duration::from_millis(500));
    let status = analytics.get_kpis(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("not yet 1000000"),
        "{}",
        status.message()
    );
    assert!(started.elapsed() < std::time::Duration::from_millis(500));
}

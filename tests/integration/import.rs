//! `rapport import`: purchases, customers and typed events from files, offline and
//! through a server; idempotent re-imports; bad rows by line; `--strict`.

use std::path::{Path, PathBuf};
use std::process::Command;

use rapport::domain::DomainEvent;
use rapport::domain::common::{Channel, PostalAddress};
use rapport::domain::events::{CustomerIdentity, CustomerRegistered, CustomersMerged, TagAdded};
use rapport::domain::personal::Personal;
use rapport::grpc::pb;
use rapport::grpc::pb::customers_client::CustomersClient;
use rapport::grpc::pb::event_store_client::EventStoreClient;
use rapport::import::{ImportKind, ImportOptions, ImportReport, ImportTarget};
use tonic::transport::Channel as GrpcChannel;
use uuid::Uuid;

const SMALL_PURCHASES: &str = "\
customer_external_id,order_id,occurred_at,total_minor,currency,sku,name,category,quantity,unit_price_minor,channel,store_id
pos_card:1,o-1,2024-03-01,2500,EUR,SKU-A,Mug,kitchen,2,1000,store,s-1
pos_card:1,o-1,2024-03-01,2500,EUR,SKU-B,Pen,office,1,500,Store,s-1
pos_card:2,o-2,2024-03-02T10:15:00Z,1999,usd,SKU-C,Book,books,1,1999,WEB,
pos_card:1,o-3,2024-04-01T08:00:00+02:00,700,SEK,SKU-D,Tea,food,1,700,mobile_app,
4711,o-4,2024-05-05,300,EUR,,,,,,,
";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write the file");
    path
}

async fn import(kind: ImportKind, file: &Path, target: ImportTarget) -> ImportReport {
    rapport::import::run(kind, file.to_owned(), target, ImportOptions::default())
        .await
        .expect("import runs")
}

fn offline(data: &Path) -> ImportTarget {
    ImportTarget::DataDir {
        dir: data.to_owned(),
        master_key_file: None,
    }
}

fn rapport(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rapport"))
        .args(args)
        .env_remove("RAPPORT_MASTER_KEY_FILE")
        .output()
        .expect("run rapport")
}

async fn customers(server: &rapport::grpc::RunningServer) -> CustomersClient<GrpcChannel> {
    CustomersClient::connect(server.url())
        .await
        .expect("connect")
}

async fn head(server: &rapport::grpc::RunningServer) -> u64 {
    EventStoreClient::connect(server.url())
        .await
        .expect("connect")
        .get_head(())
        .await
        .expect("head")
        .into_inner()
        .position
}

async fn find(client: &mut CustomersClient<GrpcChannel>, external: &str) -> pb::Customer {
    client
        .find_customer(pb::FindCustomerRequest {
            by: Some(pb::find_customer_request::By::ExternalId(external.into())),
            min_position: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("find {external}: {e}"))
        .into_inner()
}

async fn find_email(client: &mut CustomersClient<GrpcChannel>, email: &str) -> pb::Customer {
    client
        .find_customer(pb::FindCustomerRequest {
            by: Some(pb::find_customer_request::By::Email(email.into())),
            min_position: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("find {email}: {e}"))
        .into_inner()
}

/// (orders, units, [(currency, orders, spent)]) of a profile.
fn purchases(customer: &pb::Customer) -> (u64, u64, Vec<(String, u64, i64)>) {
    let p = customer.purchases.clone().expect("a purchase summary");
    let mut totals: Vec<(String, u64, i64)> = p
        .totals
        .iter()
        .map(|t| (t.currency.clone(), t.orders, t.spent_minor))
        .collect();
    totals.sort();
    (p.orders, p.units, totals)
}

/// The profiles the small purchases file must give, wherever it was imported.
async fn check_small_profiles(client: &mut CustomersClient<GrpcChannel>) {
    let one = find(client, "pos_card:1").await;
    assert_eq!(
        purchases(&one),
        (2, 4, vec![("EUR".into(), 1, 2500), ("SEK".into(), 1, 700)])
    );
    assert_eq!(
        one.external_ids.get("pos_card").map(String::as_str),
        Some("1")
    );
    let p = one.purchases.clone().unwrap();
    // A date without a time is midnight UTC; +02:00 is converted to UTC.
    assert_eq!(p.first_purchase_at.unwrap().seconds, 1_709_251_200);
    assert_eq!(p.last_purchase_at.unwrap().seconds, 1_711_951_200);
    let two = find(client, "pos_card:2").await;
    assert_eq!(purchases(&two), (1, 1, vec![("USD".into(), 1, 1999)]));
    let plain = find(client, "external:4711").await;
    assert_eq!(purchases(&plain), (1, 0, vec![("EUR".into(), 1, 300)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_offline_then_served_and_reimport_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(dir.path(), "purchases.csv", SMALL_PURCHASES);
    let first = import(ImportKind::Purchases, &file, offline(&data)).await;
    assert_eq!(first.rows, 5);
    assert_eq!(first.orders, 4);
    assert_eq!(first.new_customers, 3);
    assert_eq!(first.rows_skipped, 0, "{:?}", first.bad_rows);
    // 3 registrations, 3 external-id reservations, 4 orders.
    assert_eq!(first.events_appended, 10);

    let again = import(ImportKind::Purchases, &file, offline(&data)).await;
    assert_eq!(again.events_appended, 0);
    assert_eq!(again.new_customers, 0);
    assert_eq!(again.known_customers, 3);
    assert_eq!(again.orders, 4);

    let server = rapport::grpc::start(data.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("server starts");
    assert_eq!(head(&server).await, 10);
    let mut client = customers(&server).await;
    check_small_profiles(&mut client).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_through_a_server_give_the_same_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "purchases.csv", SMALL_PURCHASES);
    let server = rapport::grpc::start(dir.path().join("data"), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("server starts");
    let target = ImportTarget::Server(server.url());
    let first = import(ImportKind::Purchases, &file, target.clone()).await;
    assert_eq!(first.orders, 4);
    assert_eq!(first.new_customers, 3);
    assert_eq!(first.rows_skipped, 0, "{:?}", first.bad_rows);
    let mut client = customers(&server).await;
    check_small_profiles(&mut client).await;
    let before = head(&server).await;
    assert_eq!(before, 10);
    let again = import(ImportKind::Purchases, &file, target).await;
    assert_eq!(again.known_customers, 3);
    assert_eq!(head(&server).await, before, "a re-import appends nothing");
    check_small_profiles(&mut client).await;
    server.stop().await.unwrap();
}

const BAD_PURCHASES: &str = "\
customer_external_id,order_id,occurred_at,total_minor,currency,sku,quantity,unit_price_minor
pos_card:1,o-1,2024-03-01,100,EUR,A,1,100
pos_card:1,,2024-03-01,100,EUR,A,1,100
pos_card:1,o-2,2024-13-01,100,EUR,A,1,100
pos_card:1,o-3,2024-03-01,abc,EUR,A,1,100
pos_card:1,o-4,2024-03-01,100,EUR,A,1,100
pos_card:1,o-4,2024-03-01,200,EUR,B,1,100
pos_card:1,o-5,2024-03-02,100,EUR,A,1,100
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_reported_by_line_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(dir.path(), "bad.csv", BAD_PURCHASES);
    let report = import(ImportKind::Purchases, &file, offline(&data)).await;
    assert_eq!(report.rows, 7);
    assert_eq!(report.orders, 3, "o-1, o-4 (its first row) and o-5");
    assert_eq!(report.rows_skipped, 4);
    let reasons: Vec<String> = report.bad_rows.iter().map(ToString::to_string).collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert_eq!(reasons[0], "line 3: order_id: missing value");
    assert!(
        reasons[1].starts_with("line 4: occurred_at: "),
        "{reasons:?}"
    );
    assert_eq!(reasons[2], "line 5: total_minor: not an integer");
    assert!(
        reasons[3].starts_with("line 7: total_minor: differs from line 6"),
        "{reasons:?}"
    );
    let server = rapport::grpc::start(data, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut client = customers(&server).await;
    let one = find(&mut client, "pos_card:1").await;
    assert_eq!(purchases(&one).0, 3);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_stops_at_the_first_bad_row_with_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(
        dir.path(),
        "bad.csv",
        "customer_external_id,order_id,occurred_at,total_minor,currency\n\
         pos_card:1,o-1,2024-03-01,100,EUR\n\
         pos_card:1,o-2,2024-03-02,100,EUR\n\
         pos_card:1,o-3,2024-03-03,1x0,EUR\n\
         pos_card:1,o-4,2024-03-04,100,EUR\n",
    );
    let out = rapport(&[
        "import",
        "purchases",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--strict",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 4: total_minor: not an integer"),
        "{stderr}"
    );
    let server = rapport::grpc::start(data, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // Only the order completed before the bad row (o-1, with its customer's registration
    // and reservation): o-2 was still open (its rows could have continued after the bad
    // one), nothing after the bad row is written.
    assert_eq!(head(&server).await, 3);
    let mut client = customers(&server).await;
    assert_eq!(purchases(&find(&mut client, "pos_card:1").await).0, 1);
    server.stop().await.unwrap();
}

#[test]
fn an_unknown_column_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(
        dir.path(),
        "odd.csv",
        "customer_external_id,order_id,occurred_at,total_minor,currency,colour\n\
         pos_card:1,o-1,2024-03-01,100,EUR,red\n",
    );
    let out = rapport(&[
        "import",
        "purchases",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown column(s) in the header: colour"),
        "{stderr}"
    );
}

#[test]
fn the_binary_prints_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(dir.path(), "purchases.csv", SMALL_PURCHASES);
    let out = rapport(&[
        "import",
        "purchases",
        file.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("5 rows"), "{stdout}");
    assert!(stdout.contains("4 orders"), "{stdout}");
    assert!(stdout.contains("3 new customers"), "{stdout}");
    assert!(stdout.contains("10 events appended"), "{stdout}");
}

const CUSTOMERS: &str = "\
external_id,given_name,family_name,emails,phones,birth_date,locale,consents
crm:1,Ada,Lovelace,ada@example.com;ada.l@example.com,+44 20 7946 0000,1815-12-10,en-GB,marketing_email;profiling
crm:2,Bob,Builder,BOB@example.com,,,,
crm:3,Eve,Copy,Ada@Example.com,,,,
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_are_registered_and_findable_and_duplicate_emails_are_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(dir.path(), "customers.csv", CUSTOMERS);
    let report = import(ImportKind::Customers, &file, offline(&data)).await;
    assert_eq!(report.rows, 3);
    assert_eq!(report.new_customers, 2);
    assert_eq!(report.rows_skipped, 1);
    let bad = report.bad_rows[0].to_string();
    assert!(bad.starts_with("line 4: emails: ada@example.com"), "{bad}");
    assert!(bad.contains("line 2"), "{bad}");

    let again = import(ImportKind::Customers, &file, offline(&data)).await;
    assert_eq!(again.known_customers, 2);
    assert_eq!(again.events_appended, 0);

    let server = rapport::grpc::start(data, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut client = customers(&server).await;
    let ada = find_email(&mut client, "ADA.L@example.com").await;
    assert_eq!(
        (ada.given_name.as_str(), ada.family_name.as_str()),
        ("Ada", "Lovelace")
    );
    assert_eq!(ada.birth_date, "1815-12-10");
    assert_eq!(ada.locale, "en-GB");
    assert_eq!(ada.phones, vec!["+44 20 7946 0000".to_owned()]);
    let granted: Vec<i32> = ada
        .consents
        .iter()
        .filter(|c| c.granted)
        .map(|c| c.purpose)
        .collect();
    assert_eq!(granted.len(), 2, "{:?}", ada.consents);
    assert_eq!(
        find(&mut client, "crm:1").await.customer_id,
        ada.customer_id
    );
    let bob = find_email(&mut client, "bob@example.com").await;
    assert_eq!(bob.given_name, "Bob");
    server.stop().await.unwrap();
}

fn event_line(stream: &str, id: Uuid, at: &str, event: &DomainEvent) -> String {
    serde_json::json!({
        "stream": stream,
        "event_id": id.to_string(),
        "occurred_at": at,
        "event": serde_json::to_value(event).unwrap(),
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_events_round_trip_and_system_events_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    let stream = format!("customer-{id}");
    let registered = DomainEvent::CustomerRegistered(CustomerRegistered {
        customer_id: id,
        identity: Personal::Clear(CustomerIdentity {
            given_name: "Grace".into(),
            family_name: "Hopper".into(),
            emails: vec!["grace@example.com".into()],
            phones: vec![],
            birth_date: None,
            address: PostalAddress::default(),
            external_ids: Default::default(),
        }),
        locale: "en-US".into(),
        acquisition_channel: Channel::Web,
    });
    let tag = DomainEvent::TagAdded(TagAdded {
        customer_id: id,
        tag: "vip".into(),
    });
    let merge = DomainEvent::CustomersMerged(CustomersMerged {
        survivor_id: id,
        duplicate_id: Uuid::from_u128(9),
    });
    let text = [
        event_line(
            &stream,
            Uuid::from_u128(101),
            "2024-01-01T09:00:00Z",
            &registered,
        ),
        event_line(&stream, Uuid::from_u128(102), "2024-01-02", &tag),
        event_line(&stream, Uuid::from_u128(103), "2024-01-03", &merge),
    ]
    .join("\n");
    let file = write(dir.path(), "events.jsonl", &text);
    let report = import(ImportKind::Events, &file, offline(&data)).await;
    assert_eq!(report.rows, 3);
    assert_eq!(report.rows_skipped, 1);
    let bad = report.bad_rows[0].to_string();
    assert!(
        bad.starts_with("line 3: event: CustomersMerged is written by the Customers service only"),
        "{bad}"
    );
    // The registration, its email reservation and the tag.
    assert_eq!(report.events_appended, 3);
    let again = import(ImportKind::Events, &file, offline(&data)).await;
    assert_eq!(again.events_appended, 0);

    let server = rapport::grpc::start(data, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut client = customers(&server).await;
    let grace = find_email(&mut client, "grace@example.com").await;
    assert_eq!(grace.customer_id, id.to_string());
    assert_eq!(grace.given_name, "Grace");
    assert_eq!(grace.tags, vec!["vip".to_owned()]);
    assert_eq!(
        grace.registered_at.unwrap().seconds,
        1_704_099_600,
        "occurred_at is kept"
    );
    server.stop().await.unwrap();
}

#[test]
fn the_sample_generator_writes_an_importable_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sample.csv");
    let orders = rapport::import::write_sample_purchases(&file, 2_000, 100, 1).unwrap();
    assert!(orders > 500 && orders < 2_000, "{orders}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(import(
        ImportKind::Purchases,
        &file,
        offline(&dir.path().join("data")),
    ));
    assert_eq!(report.rows, 2_000);
    assert_eq!(report.orders, orders);
    assert_eq!(report.rows_skipped, 0, "{:?}", report.bad_rows);
    assert!(report.new_customers <= 100);
}

/// Writes the bench file: `RAPPORT_IMPORT_SAMPLE=/tmp/p.csv RAPPORT_IMPORT_ROWS=1000000
/// cargo test --release --test integration import::write_bench_sample -- --ignored`, then
/// `/usr/bin/time -v target/release/rapport import purchases /tmp/p.csv --data-dir …`.
#[test]
#[ignore = "writes a large file for the import bench"]
fn write_bench_sample() {
    let path = std::env::var("RAPPORT_IMPORT_SAMPLE").expect("RAPPORT_IMPORT_SAMPLE");
    let rows: u64 = std::env::var("RAPPORT_IMPORT_ROWS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1_000_000);
    let customers: u64 = std::env::var("RAPPORT_IMPORT_CUSTOMERS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(50_000);
    let orders =
        rapport::import::write_sample_purchases(Path::new(&path), rows, customers, 1).unwrap();
    println!("{rows} rows, {orders} orders, {customers} customers → {path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_split_across_the_file_is_a_bad_row_and_the_rest_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(
        dir.path(),
        "split.csv",
        "customer_external_id,order_id,occurred_at,total_minor,currency,sku\n\
         pos_card:1,o-1,2024-03-01,100,EUR,A\n\
         pos_card:1,o-2,2024-03-02,100,EUR,A\n\
         pos_card:1,o-1,2024-03-01,100,EUR,B\n\
         pos_card:1,o-3,2024-03-03,100,EUR,A\n",
    );
    let report = import(ImportKind::Purchases, &file, offline(&data)).await;
    assert_eq!(report.orders, 3, "{:?}", report.bad_rows);
    assert_eq!(report.rows_skipped, 1);
    let bad = report.bad_rows[0].to_string();
    assert!(
        bad.starts_with("line 4: order \"o-1\" is already in the log with other content"),
        "{bad}"
    );
    // Registration, reservation, o-1, o-2, o-3.
    assert_eq!(report.events_appended, 5);
}

/// Ada keeps ada.l@ and her phone, drops ada@ for a new address; Bob asks for Ada's
/// ada.l@, which she still holds.
const CHANGED_CUSTOMERS: &str = "\
external_id,given_name,family_name,emails,phones
crm:1,Ada,Lovelace,ada@new.example.com;ada.l@example.com,+44 20 7946 0000
crm:2,Bob,Builder,ada.l@example.com,
";

async fn find_email_code(client: &mut CustomersClient<GrpcChannel>, email: &str) -> tonic::Code {
    match client
        .find_customer(pb::FindCustomerRequest {
            by: Some(pb::find_customer_request::By::Email(email.into())),
            min_position: 0,
        })
        .await
    {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    }
}

/// After [`CHANGED_CUSTOMERS`]: the old email finds nobody, the new and kept ones Ada,
/// Bob keeps his.
async fn check_changed_contacts(client: &mut CustomersClient<GrpcChannel>) {
    let ada = find(client, "crm:1").await;
    assert_eq!(
        find_email_code(client, "ada@example.com").await,
        tonic::Code::NotFound
    );
    assert_eq!(
        find_email(client, "ada@new.example.com").await.customer_id,
        ada.customer_id
    );
    assert_eq!(
        find_email(client, "ada.l@example.com").await.customer_id,
        ada.customer_id
    );
    assert_eq!(ada.phones, vec!["+44 20 7946 0000".to_owned()]);
    let bob = find_email(client, "bob@example.com").await;
    assert_eq!(bob.customer_id, find(client, "crm:2").await.customer_id);
}

fn check_changed_report(report: &ImportReport) {
    assert_eq!(report.rows, 2, "{report:?}");
    assert_eq!(report.known_customers, 2, "{report:?}");
    assert_eq!(report.new_customers, 0);
    assert_eq!(report.rows_skipped, 1, "{:?}", report.bad_rows);
    let bad = report.bad_rows[0].to_string();
    assert!(
        bad.starts_with("line 3: ") && bad.contains("already used by customer"),
        "{bad}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_customers_get_their_contact_changes_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = write(dir.path(), "customers.csv", CUSTOMERS);
    import(ImportKind::Customers, &file, offline(&data)).await;
    let changed = write(dir.path(), "changed.csv", CHANGED_CUSTOMERS);
    let report = import(ImportKind::Customers, &changed, offline(&data)).await;
    check_changed_report(&report);
    // The change, the new email's claim, the old one's release.
    assert_eq!(report.events_appended, 3);
    let again = import(ImportKind::Customers, &changed, offline(&data)).await;
    check_changed_report(&again);
    assert_eq!(again.events_appended, 0, "a re-import appends nothing");

    let server = rapport::grpc::start(data, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut client = customers(&server).await;
    check_changed_contacts(&mut client).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_customers_get_their_contact_changes_through_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = rapport::grpc::start(dir.path().join("data"), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let target = ImportTarget::Server(server.url());
    // Without Eve: through a server, rows run concurrently, so which of Ada and Eve
    // gets ada@ would be a race.
    let first: String = CUSTOMERS
        .lines()
        .take(3)
        .map(|l| format!("{l}\n"))
        .collect();
    let file = write(dir.path(), "customers.csv", &first);
    let report = import(ImportKind::Customers, &file, target.clone()).await;
    assert_eq!(report.new_customers, 2, "{report:?}");
    let changed = write(dir.path(), "changed.csv", CHANGED_CUSTOMERS);
    let report = import(ImportKind::Customers, &changed, target.clone()).await;
    check_changed_report(&report);
    let mut client = customers(&server).await;
    check_changed_contacts(&mut client).await;
    let before = head(&server).await;
    let again = import(ImportKind::Customers, &changed, target).await;
    check_changed_report(&again);
    assert_eq!(head(&server).await, before, "a re-import appends nothing");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_id_recorded_through_the_service_is_a_bad_row_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = rapport::grpc::start(data.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut client = customers(&server).await;
    let id = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0042);
    client
        .register_customer(pb::RegisterCustomerRequest {
            customer_id: id.to_string(),
            external_ids: [("pos_card".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect("registered");
    client
        .record_purchase(pb::RecordPurchaseRequest {
            customer_id: id.to_string(),
            order_id: "o-1".into(),
            total_minor: 100,
            currency: "EUR".into(),
            ..Default::default()
        })
        .await
        .expect("purchase recorded");
    server.stop().await.unwrap();

    let file = write(
        dir.path(),
        "purchases.csv",
        "customer_external_id,order_id,occurred_at,total_minor,currency\n\
         pos_card:1,o-1,2024-03-01,250,EUR\n\
         pos_card:1,o-2,2024-03-02,100,EUR\n",
    );
    let report = import(ImportKind::Purchases, &file, offline(&data)).await;
    assert_eq!(report.known_customers, 1);
    assert_eq!(report.orders, 1, "{:?}", report.bad_rows);
    assert_eq!(report.rows_skipped, 1);
    assert_eq!(
        report.bad_rows[0].to_string(),
        "line 2: order o-1 is already recorded for this customer"
    );
    assert_eq!(report.events_appended, 1);
    let again = import(ImportKind::Purchases, &file, offline(&data)).await;
    assert_eq!(again.events_appended, 0);
    assert_eq!(again.rows_skipped, 1);

    let server = rapport::grpc::start(data, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut client = customers(&server).await;
    let one = find(&mut client, "pos_card:1").await;
    assert_eq!(one.customer_id, id.to_string());
    assert_eq!(purchases(&one), (2, 0, vec![("EUR".into(), 2, 200)]));
    server.stop().await.unwrap();
}

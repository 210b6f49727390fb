//! The operator tools of the `rapport` binary, run as a real process: `seed`, `replay`
//! and `keys rotate`, over temp data directories (`<tmp>/data`, key beside it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rapport::domain::DomainEvent;
use rapport::grpc::pb;
use rapport::grpc::pb::customers_client::CustomersClient;
use rapport::grpc::{ServerConfig, start, start_with};
use rapport::log::LogConfig;
use rapport::seed::{customer_history, duplicate_of};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rapport");

fn rapport(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("RAPPORT_MASTER_KEY_FILE")
        .output()
        .expect("the rapport binary runs")
}

/// Runs the binary and insists it succeeded; returns stdout.
fn ok(args: &[&str]) -> String {
    let out = rapport(args);
    assert!(
        out.status.success(),
        "rapport {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Seeds `customers` with `seed` into `data`; returns the head the summary reports.
fn seed(data: &Path, customers: u64, seed: u64) -> u64 {
    let out = ok(&[
        "seed",
        "--data-dir",
        path(data),
        "--customers",
        &customers.to_string(),
        "--seed",
        &seed.to_string(),
    ]);
    out.split("head ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no head in the seed summary: {out}"))
}

fn replay(args: &[&str]) -> Vec<Value> {
    ok(&[&["replay"], args].concat())
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect()
}

fn live_customers(customers: u64, seed: u64) -> usize {
    (0..customers)
        .filter(|&i| duplicate_of(seed, i).is_none())
        .count()
}

fn purchases(customers: u64, seed: u64) -> usize {
    (0..customers)
        .flat_map(|i| customer_history(seed, i).events)
        .filter(|e| matches!(e.event, DomainEvent::PurchaseCompleted(_)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_is_deterministic_idempotent_and_served() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let head = seed(&data, 30, 7);
    assert!(head >= 30 * 20, "head {head}");
    let ids = |data: &Path| -> BTreeSet<String> {
        replay(&["--data-dir", path(data)])
            .iter()
            .map(|line| line["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = ids(&data);
    assert_eq!(first.len() as u64, head);

    // The same (N, S) again appends nothing.
    assert_eq!(seed(&data, 30, 7), head);
    assert_eq!(ids(&data), first);

    // The same (N, S) elsewhere gives the same ids; another seed gives other events.
    let same = tmp.path().join("same").join("data");
    assert_eq!(seed(&same, 30, 7), head);
    assert_eq!(ids(&same), first);
    let other = tmp.path().join("other").join("data");
    seed(&other, 30, 8);
    assert!(ids(&other).is_disjoint(&first));

    // The projections catch up over the seeded log.
    let server = start(data.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("server starts over the seeded directory");
    let mut customers = CustomersClient::connect(server.url()).await.unwrap();
    let listed = customers
        .list_customers(pb::ListCustomersRequest {
            page_size: 500,
            min_position: head,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .customers;
    assert_eq!(listed.len(), live_customers(30, 7));
    let buyer = (0..30)
        .map(|i| customer_history(7, i))
        .find(|h| {
            h.duplicate_of.is_none()
                && h.events
                    .iter()
                    .any(|e| matches!(e.event, DomainEvent::PurchaseCompleted(_)))
        })
        .expect("some customer bought something");
    let bought = buyer
        .events
        .iter()
        .filter(|e| matches!(e.event, DomainEvent::PurchaseCompleted(_)))
        .count() as u64;
    let profile = customers
        .get_customer(pb::GetCustomerRequest {
            customer_id: buyer.id.to_string(),
            min_position: head,
        })
        .await
        .expect("get")
        .into_inner();
    let summary = profile.purchases.expect("a purchase summary");
    assert!(summary.orders >= bought, "{} < {bought}", summary.orders);
    assert!(!profile.given_name.is_empty());
    server.stop().await.unwrap();

    let verified = ok(&["verify", "--data-dir", path(&data)]);
    assert!(verified.contains("OK"), "{verified}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_prints_filtered_bounded_decrypted_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let head = seed(&data, 30, 7);

    let all = replay(&["--data-dir", path(&data)]);
    assert_eq!(all.len() as u64, head);
    for (i, line) in all.iter().enumerate() {
        assert_eq!(line["position"].as_u64(), Some(i as u64 + 1));
        let hash = line["hash"].as_str().expect("a hash");
        assert_eq!(hash.len(), 64);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        for field in [
            "stream",
            "event_id",
            "event_type",
            "recorded_at",
            "occurred_at",
        ] {
            assert!(line[field].is_string(), "{field} in {line}");
        }
    }

    // A seeded name, decrypted.
    let first = customer_history(7, 0);
    let DomainEvent::CustomerRegistered(registered) = &first.events[0].event else {
        panic!("the first event registers");
    };
    let given = registered.identity.clear().unwrap().given_name.clone();
    let registration = all
        .iter()
        .find(|l| l["event_id"] == first.events[0].id.to_string())
        .expect("the registration is replayed");
    assert_eq!(registration["personal_data"], "clear");
    assert_eq!(
        registration["data"]["identity"]["given_name"],
        given.as_str()
    );

    let bought = replay(&["--data-dir", path(&data), "--type", "PurchaseCompleted"]);
    assert_eq!(bought.len(), purchases(30, 7));
    assert!(
        bought
            .iter()
            .all(|l| l["event_type"] == "PurchaseCompleted")
    );

    let window = replay(&[
        "--data-dir",
        path(&data),
        "--from-position",
        "10",
        "--to-position",
        "20",
    ]);
    let positions: Vec<u64> = window
        .iter()
        .map(|l| l["position"].as_u64().unwrap())
        .collect();
    assert_eq!(positions, (10..=20).collect::<Vec<_>>());

    let prefix = format!("customer-{}", first.id);
    let one = replay(&["--data-dir", path(&data), "--stream-prefix", &prefix]);
    assert_eq!(one.len(), first.events.len());

    // Time bounds are on recorded_at (the seeding ran just now).
    assert!(
        replay(&[
            "--data-dir",
            path(&data),
            "--to-time",
            "2000-01-01T00:00:00Z"
        ])
        .is_empty()
    );
    assert!(
        replay(&[
            "--data-dir",
            path(&data),
            "--from-time",
            "9999-01-01T00:00:00Z"
        ])
        .is_empty()
    );
    assert_eq!(
        replay(&["--data-dir", path(&data), "--from-time", "2000-01-01"]).len() as u64,
        head
    );
    let bad = rapport(&[
        "replay",
        "--data-dir",
        path(&data),
        "--from-time",
        "yesterday",
    ]);
    assert!(!bad.status.success());

    // A closed stdout ends the replay quietly.
    let mut child = Command::new(BIN)
        .args(["replay", "--data-dir", path(&data)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        assert!(lines.next().unwrap().unwrap().starts_with('{'));
    }
    let status = child.wait_with_output().unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );

    // Through a server: the same lines; offline is refused while it holds the directory.
    let server = start(data.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = server.url();
    let (online, refused) = tokio::task::spawn_blocking({
        let data = data.clone();
        move || {
            (
                replay(&["--server", &url, "--type", "PurchaseCompleted"]),
                rapport(&["replay", "--data-dir", path(&data)]),
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(online, bought);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("--server"), "{message}");

    // Erasure: the events stay, the person is gone from the replay.
    let mut customers = CustomersClient::connect(server.url()).await.unwrap();
    customers
        .erase_customer(pb::EraseCustomerRequest {
            customer_id: first.id.to_string(),
            reason: "request".into(),
            requested_by: "test".into(),
            context: None,
        })
        .await
        .expect("erase");
    server.stop().await.unwrap();
    let after = replay(&["--data-dir", path(&data), "--stream-prefix", &prefix]);
    assert!(after.len() > one.len());
    let registration = &after[0];
    assert_eq!(registration["personal_data"], "erased");
    assert!(!registration.to_string().contains(&given), "{registration}");
}

#[test]
fn seed_flags_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    for args in [
        vec!["seed", "--data-dir", path(&data), "--customers", "0"],
        vec!["seed", "--data-dir", path(&data), "--customers", "10000001"],
        vec!["seed", "--customers", "5"],
        vec![
            "seed",
            "--data-dir",
            path(&data),
            "--server",
            "http://127.0.0.1:1",
            "--customers",
            "5",
        ],
    ] {
        assert!(!rapport(&args).status.success(), "{args:?} is refused");
    }
    assert!(!data.exists(), "a refused seed touches nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_moves_the_store_to_the_new_key() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    seed(&data, 5, 3);
    let old: PathBuf = tmp.path().join("data.master-key");
    let new = tmp.path().join("new.master-key");
    assert!(old.exists());

    let missing = rapport(&[
        "keys",
        "rotate",
        "--data-dir",
        path(&data),
        "--master-key-file",
        path(&old),
        "--new-master-key-file",
        path(&new),
    ]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--create-new"));

    let rotated = ok(&[
        "keys",
        "rotate",
        "--data-dir",
        path(&data),
        "--master-key-file",
        path(&old),
        "--new-master-key-file",
        path(&new),
        "--create-new",
    ]);
    assert!(rotated.contains("re-wrapped 5 data keys"), "{rotated}");

    let with_key = |key: &Path| ServerConfig {
        log: LogConfig::new(&data),
        master_key_file: Some(key.to_path_buf()),
    };
    assert!(
        start_with(with_key(&old), "127.0.0.1:0".parse().unwrap())
            .await
            .is_err(),
        "the old key no longer opens the store"
    );
    let server = start_with(with_key(&new), "127.0.0.1:0".parse().unwrap())
        .await
        .expect("the new key opens the store");
    server.stop().await.unwrap();

    let DomainEvent::CustomerRegistered(registered) = &customer_history(3, 0).events[0].event
    else {
        panic!("the first event registers");
    };
    let family = registered.identity.clear().unwrap().family_name.clone();
    let lines = replay(&[
        "--data-dir",
        path(&data),
        "--master-key-file",
        path(&new),
        "--type",
        "CustomerRegistered",
    ]);
    assert_eq!(lines.len(), 5);
    assert!(lines.iter().all(|l| l["personal_data"] == "clear"));
    assert!(
        lines
            .iter()
            .any(|l| l["data"]["identity"]["family_name"] == family.as_str())
    );
    // The default key file beside the data directory is the old one now: refused.
    assert!(
        !rapport(&["replay", "--data-dir", path(&data)])
            .status
            .success()
    );
}

/// An auditor pins a head (a position and its chain hash) and later checks offline that
/// the log still leads to it: `verify --pin POSITION:HASH` passes for the pinned head and
/// any earlier one, and fails (exit 1, naming the pin) for another hash or a position
/// past the head; a malformed pin is refused before anything is opened.
#[test]
fn verify_checks_that_the_log_still_leads_to_a_pinned_head() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let head = seed(&data, 3, 11);
    let at = |position: u64| -> String {
        let p = position.to_string();
        let lines = replay(&[
            "--data-dir",
            path(&data),
            "--from-position",
            &p,
            "--to-position",
            &p,
        ]);
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines[0]["hash"].as_str().expect("a hash").to_owned()
    };
    let pin = |position: u64, hash: &str| format!("{position}:{hash}");
    let (mid, last) = (at(head / 2), at(head));
    let verified = ok(&[
        "verify",
        "--data-dir",
        path(&data),
        "--pin",
        &pin(head / 2, &mid),
        "--pin",
        &pin(head, &last),
    ]);
    assert!(verified.contains("OK"), "{verified}");
    for (bad, says) in [
        (pin(head / 2, &last), "is not in the log"),
        (pin(head + 1, &last), "past the log's head"),
    ] {
        let out = rapport(&["verify", "--data-dir", path(&data), "--pin", &bad]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stdout}");
        assert!(stdout.contains(says), "{bad}: {stdout}");
    }
    let out = rapport(&["verify", "--data-dir", path(&data), "--pin", "12:beef"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("POSITION:HASH"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

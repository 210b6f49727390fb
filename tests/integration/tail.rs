//! `rapport tail`, run as a real process against a real server: every event as one JSON
//! line, `--after`, the stream-prefix and type filters, `--follow` (history then live),
//! and a reader that goes away early (`rapport tail | head`) ends it quietly.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{TestServer, append, proposed};
use rapport::grpc::pb;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rapport");

fn tail(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["tail", "--server", url])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

fn lines(url: &str, args: &[&str]) -> Vec<Value> {
    let out = tail(url, args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn positions(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["position"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_filters_follows_and_stops_quietly_on_a_closed_pipe() {
    let server = TestServer::start().await;
    let url = server.server.url();
    let mut client = server.client().await;
    for (stream, n) in [("order-1", 1.0), ("order-2", 2.0), ("ticket-1", 3.0)] {
        client
            .append(append(stream, None, vec![proposed("", n)]))
            .await
            .unwrap();
    }

    let all = lines(&url, &[]);
    assert_eq!(positions(&all), [1, 2, 3]);
    assert_eq!(all[1]["stream"], "order-2");
    assert_eq!(all[1]["event_type"], "test.happened");
    assert_eq!(all[1]["data"]["n"], 2.0);
    assert_eq!(positions(&lines(&url, &["--after", "1"])), [2, 3]);
    // After the last position there can be: nothing (not a wrap to the start).
    assert!(lines(&url, &["--after", &u64::MAX.to_string()]).is_empty());
    assert_eq!(
        positions(&lines(&url, &["--stream-prefix", "order-"])),
        [1, 2]
    );
    assert!(lines(&url, &["--type", "other.type"]).is_empty());

    // Follow: history first, then an event appended while it runs.
    let mut follow = tail(&url, &["--follow", "--after", "2"]).spawn().unwrap();
    let mut out = BufReader::new(follow.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["position"], 3);
    client
        .append(append("order-3", None, vec![proposed("", 4.0)]))
        .await
        .unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["position"], 4);
    follow.kill().unwrap();
    follow.wait().unwrap();

    // Far more output than a pipe holds; the reader takes one line and goes away.
    let events: Vec<pb::ProposedEvent> = (0..500).map(|i| proposed("", f64::from(i))).collect();
    for _ in 0..8 {
        client
            .append(append("bulk-1", None, events.clone()))
            .await
            .unwrap();
    }
    let mut child = tail(&url, &[]).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    line.clear();
    out.read_line(&mut line).unwrap();
    drop(out);
    let done = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    server.server.stop().await.unwrap();
}

//! Opening a data directory: an unknown on-disk format and a directory in use are
//! refused with clear errors and change nothing.

use crate::common::{retry_while_locked, sled_open_closed};
use rapport::log::{
    ExpectedRevision, Log, LogConfig, LogError, ProposedEvent, StreamAppend, StreamName,
};

fn one_event() -> StreamAppend {
    StreamAppend {
        stream: StreamName::parse("customer-1").unwrap(),
        expected: ExpectedRevision::NoStream,
        events: vec![ProposedEvent {
            event_type: "test.happened".into(),
            schema_version: 1,
            payload: vec![0],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn an_unknown_format_version_refuses_to_open_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(LogConfig::new(dir.path())).unwrap();
    log.append(one_event()).await.unwrap();
    let head = log.head();
    log.shutdown();
    drop(log);

    // A future build wrote format 99.
    {
        let db = sled_open_closed(&dir.path().join("sled"));
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format_version", &99u32.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    match retry_while_locked(|| Log::open(LogConfig::new(dir.path()))) {
        Err(
            error @ LogError::UnsupportedFormat {
                found: 99,
                supported,
            },
        ) => {
            assert_eq!(supported, rapport::log::store::FORMAT_VERSION);
            let message = error.to_string();
            assert!(
                message.contains("99") && message.contains(&format!("version {supported}")),
                "{message}"
            );
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a format-99 directory must not open"),
    }

    // Nothing was touched: restoring the version gives back the same log.
    {
        let db = sled_open_closed(&dir.path().join("sled"));
        let meta = db.open_tree("meta").unwrap();
        meta.insert(
            "format_version",
            &rapport::log::store::FORMAT_VERSION.to_be_bytes(),
        )
        .unwrap();
        db.flush().unwrap();
    }
    let log = retry_while_locked(|| Log::open(LogConfig::new(dir.path()))).unwrap();
    assert_eq!(log.head(), head);
    log.shutdown();
}

#[tokio::test]
async fn a_directory_in_use_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(LogConfig::new(dir.path())).unwrap();
    match Log::open(LogConfig::new(dir.path())) {
        Err(error @ LogError::Locked(_)) => {
            assert!(error.to_string().contains("in use"), "{error}");
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a second open of a directory in use must fail"),
    }
    // The first handle still works.
    log.append(one_event()).await.unwrap();
    log.shutdown();
}

/// A full writer queue turns appends away with `Overloaded` (RESOURCE_EXHAUSTED at the
/// edge) after the configured wait, changes nothing for them, and loses nothing that was
/// accepted. A queue of one with no wait makes the overload reachable in a test.
#[tokio::test]
async fn a_full_queue_refuses_with_overloaded_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LogConfig::new(dir.path());
    config.queue_depth = 1;
    config.queue_wait = std::time::Duration::ZERO;
    let log = Log::open(config).unwrap();
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                log.append(StreamAppend {
                    stream: StreamName::parse(&format!("customer-{i}")).unwrap(),
                    expected: ExpectedRevision::NoStream,
                    events: vec![ProposedEvent {
                        event_type: "test.happened".into(),
                        schema_version: 1,
                        payload: vec![1],
                        ..Default::default()
                    }],
                })
                .await
            })
        })
        .collect();
    let (mut accepted, mut overloaded) = (Vec::new(), 0);
    for (i, call) in calls.into_iter().enumerate() {
        match call.await.unwrap() {
            Ok(outcome) => accepted.push((i, outcome.first_position)),
            Err(rapport::log::AppendError::Overloaded) => overloaded += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert!(
        overloaded > 0,
        "200 concurrent appends into a queue of one must overflow"
    );
    assert!(!accepted.is_empty());
    // Exactly the accepted appends are in the log, densely.
    assert_eq!(log.head().position, accepted.len() as u64);
    for (i, position) in accepted {
        let stream = StreamName::parse(&format!("customer-{i}")).unwrap();
        let page = log.read_stream(&stream, 0, false, 10).unwrap();
        assert_eq!(page.events.len(), 1);
        assert_eq!(page.events[0].event.position, position);
    }
    log.shutdown();
}

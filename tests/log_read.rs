//! Forward reads bounded by bytes (what a subscription buffers): pages stop before the
//! stored bytes pass the bound, hold one event at least, and chain without gaps.

use rapport::log::{
    ExpectedRevision, Log, LogConfig, ProposedEvent, ReadFilter, StreamAppend, StreamName,
};

fn append(stream: &str, payload_bytes: &[usize]) -> StreamAppend {
    StreamAppend {
        stream: StreamName::parse(stream).unwrap(),
        expected: ExpectedRevision::Any,
        events: payload_bytes
            .iter()
            .map(|&n| ProposedEvent {
                event_type: "test.happened".into(),
                schema_version: 1,
                payload: vec![7; n],
                ..Default::default()
            })
            .collect(),
    }
}

#[tokio::test]
async fn byte_bounded_pages_chain_to_the_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(LogConfig::new(dir.path())).unwrap();
    // Small and large events, over several chunks and appends.
    let sizes: Vec<usize> = (0..60).map(|i| [10, 300, 5_000, 20_000][i % 4]).collect();
    for (i, group) in sizes.chunks(7).enumerate() {
        log.append(append(&format!("order-{}", i % 3), group))
            .await
            .unwrap();
    }
    let whole = log
        .read_all(0, false, 1_000, &ReadFilter::default())
        .unwrap();
    assert_eq!(whole.events.len(), sizes.len());

    let bound = 16 * 1024;
    let mut cursor = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = log
            .read_forward_within(cursor, 1_000, bound, &ReadFilter::default())
            .unwrap();
        assert!(!page.events.is_empty() || page.end_reached);
        let payload: usize = page.events.iter().map(|e| e.event.payload.len()).sum();
        // The payload is most of each event's stored bytes: a page of several events
        // stays within the bound; one larger event comes alone.
        assert!(
            payload <= bound || page.events.len() == 1,
            "{} events, {payload} bytes",
            page.events.len()
        );
        seen.extend(page.events);
        pages += 1;
        cursor = page.next_cursor;
        if page.end_reached {
            break;
        }
    }
    assert!(pages > 10, "{pages} pages");
    assert_eq!(seen, whole.events);
    log.shutdown();
}

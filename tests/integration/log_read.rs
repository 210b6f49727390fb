//! Reads bounded by bytes (what a subscription buffers, what a read page sends): pages
//! of the whole log and of a stream, forward and backward, filtered or not, stop before
//! the stored bytes pass the bound, hold one event at least, and chain without gaps.

use rapport::log::{
    ChunkPage, ExpectedRevision, Log, LogConfig, LoggedEvent, Page, ProposedEvent, ReadFilter,
    StreamAppend, StreamName,
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
    let all = ReadFilter::default();
    let orders = ReadFilter {
        stream_prefixes: vec!["order-1".into()],
        ..Default::default()
    };
    let forward = |filter: &ReadFilter| {
        let filter = filter.clone();
        let log = log.clone();
        move |cursor| {
            log.read_all_within(cursor, false, 1_000, bound, &filter)
                .unwrap()
        }
    };
    let backward = |filter: &ReadFilter| {
        let filter = filter.clone();
        let log = log.clone();
        move |cursor| {
            log.read_all_within(cursor, true, 1_000, bound, &filter)
                .unwrap()
        }
    };
    let stream = StreamName::parse("order-1").unwrap();
    let stream_forward = |cursor| {
        log.read_stream_within(&stream, cursor, false, 1_000, bound)
            .unwrap()
    };
    let stream_backward = |cursor| {
        log.read_stream_within(&stream, cursor, true, 1_000, bound)
            .unwrap()
    };

    let of_order_1: Vec<_> = whole
        .events
        .iter()
        .filter(|e| e.event.stream == "order-1")
        .cloned()
        .collect();
    let reversed =
        |events: &[LoggedEvent]| -> Vec<LoggedEvent> { events.iter().rev().cloned().collect() };
    assert_eq!(chain(forward(&all), bound), whole.events);
    // The same pages left in their chunks hold the same events.
    let in_chunks = |filter: &ReadFilter| {
        let filter = filter.clone();
        let log = log.clone();
        move |cursor| {
            let page = log
                .read_all_in_chunks(cursor, false, 1_000, bound, &filter)
                .unwrap();
            Page {
                events: viewed(&page),
                end_reached: page.end_reached,
                next_cursor: page.next_cursor,
            }
        }
    };
    assert_eq!(chain(in_chunks(&all), bound), whole.events);
    assert_eq!(chain(backward(&all), bound), reversed(&whole.events));
    assert_eq!(chain(forward(&orders), bound), of_order_1);
    assert_eq!(chain(in_chunks(&orders), bound), of_order_1);
    assert_eq!(chain(backward(&orders), bound), reversed(&of_order_1));
    assert_eq!(chain(stream_forward, bound), of_order_1);
    assert_eq!(chain(stream_backward, bound), reversed(&of_order_1));
    // Without a byte bound, the count bounds the page as before.
    let page = log.read_stream(&stream, 0, false, 1_000).unwrap();
    assert_eq!(page.events, of_order_1);
    assert!(page.end_reached);
    log.shutdown();
}

/// Reads page after page from cursor 0 until `end_reached`, checking that each page
/// stays within `bound` bytes of payload or holds one event; returns every event read.
fn chain(mut read: impl FnMut(u64) -> Page, bound: usize) -> Vec<LoggedEvent> {
    let mut cursor = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = read(cursor);
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
        assert!(pages < 1_000, "the pages do not end");
        cursor = page.next_cursor;
        if page.end_reached {
            break;
        }
    }
    assert!(pages > 3, "{pages} pages: the bound did not cut");
    seen
}

#[tokio::test]
async fn windows_read_their_positions_and_a_cut_window_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(LogConfig::new(dir.path())).unwrap();
    let sizes: Vec<usize> = (0..50)
        .map(|i| [10, 300, 5_000, 20_000, 9][i % 5])
        .collect();
    for (i, group) in sizes.chunks(6).enumerate() {
        log.append(append(&format!("order-{}", i % 3), group))
            .await
            .unwrap();
    }
    let head = log.head().position;
    let whole = log
        .read_all(0, false, 1_000, &ReadFilter::default())
        .unwrap()
        .events;
    let orders = ReadFilter {
        stream_prefixes: vec!["order-2".into()],
        ..Default::default()
    };
    for (filter, window, bound) in [
        (ReadFilter::default(), 7, 16 * 1024),
        (ReadFilter::default(), 1, 1),
        (orders.clone(), 4, 8 * 1024),
        (orders.clone(), 50, usize::MAX),
    ] {
        // Windows planned ahead of the reads, the way a subscription plans them; a
        // window cut by its byte bound is finished before the next one.
        let mut seen: Vec<LoggedEvent> = Vec::new();
        let mut from = 1;
        while from <= head {
            let through = head.min(from + window - 1);
            let mut cursor = from;
            while cursor <= through {
                let in_chunks = log
                    .read_window_in_chunks(cursor, through, bound, &filter)
                    .unwrap();
                let page = Page {
                    events: in_chunks.decode().unwrap(),
                    end_reached: in_chunks.end_reached,
                    next_cursor: in_chunks.next_cursor,
                };
                // Borrowed from the chunks, the same events as decoded.
                assert_eq!(viewed(&in_chunks), page.events);
                assert!(page.next_cursor > cursor, "a window read makes progress");
                assert!(page.next_cursor <= through + 1);
                assert!(
                    page.events
                        .iter()
                        .all(|e| (cursor..=through).contains(&e.event.position))
                );
                let payload: usize = page.events.iter().map(|e| e.event.payload.len()).sum();
                assert!(payload <= bound || page.events.len() == 1);
                seen.extend(page.events);
                cursor = page.next_cursor;
            }
            from = through + 1;
        }
        let expected: Vec<LoggedEvent> = whole
            .iter()
            .filter(|e| filter.matches(&e.event.stream, &e.event.event_type))
            .cloned()
            .collect();
        assert_eq!(seen, expected, "window {window}, bound {bound}");
    }
    // A window past the head reads nothing and ends at the head.
    let page = log
        .read_window_in_chunks(head + 1, head + 10, usize::MAX, &ReadFilter::default())
        .unwrap();
    assert!(page.events.is_empty());
    log.shutdown();
}

/// The events of a page left in its chunks, each borrowed from its chunk, then owned.
fn viewed(page: &ChunkPage) -> Vec<LoggedEvent> {
    page.events
        .iter()
        .map(|(chunk, index)| LoggedEvent {
            event: chunk
                .layout
                .view(&chunk.value, *index)
                .unwrap()
                .to_owned_event(),
            hash: chunk.layout.hashes[*index],
        })
        .collect()
}

#[tokio::test]
async fn stream_pages_over_interleaved_runs_are_slices_of_the_whole_stream() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(LogConfig::new(dir.path())).unwrap();
    // Three streams appended in turn with 1..4 events each: every stream is many runs,
    // spread over many chunks (payloads large enough to fill chunks quickly).
    for i in 0..60usize {
        let sizes = vec![700; 1 + i % 4];
        log.append(append(&format!("order-{}", i % 3), &sizes))
            .await
            .unwrap();
    }
    let stream = StreamName::parse("order-2").unwrap();
    let whole = log
        .read_all(0, false, 1_000, &ReadFilter::default())
        .unwrap()
        .events
        .into_iter()
        .filter(|e| e.event.stream == "order-2")
        .collect::<Vec<_>>();
    let last = whole.len() as u64 - 1;
    for max_count in [1usize, 2, 3, 7, 100] {
        for from in 0..=last + 2 {
            // Forward: revisions from..from+max_count, inclusive start.
            let page = log.read_stream(&stream, from, false, max_count).unwrap();
            let start = (from as usize).min(whole.len());
            let end = (start + max_count).min(whole.len());
            assert_eq!(
                page.events,
                whole[start..end],
                "forward from {from} x{max_count}"
            );
            assert_eq!(page.next_cursor, (from.max(end as u64)), "forward cursor");
            assert_eq!(page.end_reached, end == whole.len());
            // Backward: strictly below `from`, 0 = from the end.
            let page = log.read_stream(&stream, from, true, max_count).unwrap();
            let upper = if from == 0 || from > last {
                whole.len()
            } else {
                from as usize
            };
            let lower = upper.saturating_sub(max_count);
            let expected: Vec<_> = whole[lower..upper].iter().rev().cloned().collect();
            assert_eq!(page.events, expected, "backward from {from} x{max_count}");
            assert_eq!(page.end_reached, lower == 0);
            assert_eq!(page.next_cursor, lower as u64, "backward cursor");
        }
    }
    log.shutdown();
}

/// Chunks that hold none of a filter's stream categories are passed over whole: the pages
/// are the ones an event-by-event scan gives — the first `max_count` matches after the
/// cursor, the cursor just past the last of them (or past the head at the end); backward,
/// the matches below the cursor and the cursor at the last of them — for
/// prefixes that name categories, longer prefixes, prefixes without a `-` (no skipping),
/// and event types with them.
#[tokio::test]
async fn chunks_without_the_filtered_categories_are_passed_over_page_for_page() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(LogConfig::new(dir.path())).unwrap();
    // Runs of one category long enough to fill chunks of their own, and mixed appends.
    let categories = ["order", "customer", "deal", "customerx"];
    for round in 0..40usize {
        let category = categories[(round / 3) % categories.len()];
        let count = if round % 5 == 0 { 40 } else { 3 };
        let mut events = append(&format!("{category}-{}", round % 4), &vec![200; count]);
        for (i, event) in events.events.iter_mut().enumerate() {
            event.event_type = if (round + i) % 3 == 0 {
                "a.happened"
            } else {
                "b.happened"
            }
            .into();
        }
        log.append(events).await.unwrap();
    }
    let head = log.head().position;
    let whole = log
        .read_all(0, false, 100_000, &ReadFilter::default())
        .unwrap()
        .events;
    assert_eq!(whole.len() as u64, head);
    let filters = [
        (vec!["customer-"], vec![]),
        (vec!["customer-", "deal-"], vec![]),
        (vec!["customer-1"], vec![]),
        (vec!["cust"], vec![]),
        (vec!["deal-"], vec!["a.happened"]),
        (vec!["nothing-"], vec![]),
    ];
    for (prefixes, types) in filters {
        let filter = ReadFilter {
            stream_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
        };
        let matching: Vec<&LoggedEvent> = whole
            .iter()
            .filter(|e| filter.matches(&e.event.stream, &e.event.event_type))
            .collect();
        for max_count in [1, 7, 1_000] {
            let mut cursor = 0;
            loop {
                let page = log
                    .read_all_in_chunks(cursor, false, max_count, usize::MAX, &filter)
                    .unwrap();
                let expected: Vec<&LoggedEvent> = matching
                    .iter()
                    .filter(|e| e.event.position >= cursor)
                    .take(max_count)
                    .copied()
                    .collect();
                let got = viewed(&page);
                assert_eq!(
                    got.iter().map(|e| e.event.position).collect::<Vec<_>>(),
                    expected
                        .iter()
                        .map(|e| e.event.position)
                        .collect::<Vec<_>>(),
                    "{filter:?}, max_count {max_count}, cursor {cursor}"
                );
                let next = match expected.last() {
                    Some(last) if expected.len() == max_count => last.event.position + 1,
                    _ => head + 1,
                };
                assert_eq!(page.next_cursor, next, "{filter:?}, cursor {cursor}");
                assert_eq!(page.end_reached, next > head);
                if page.end_reached {
                    break;
                }
                cursor = page.next_cursor;
            }
            // Backward from the head: the first `max_count` matches below the cursor, the
            // cursor at the last of them (or at position 1 past the last match).
            let mut cursor = 0;
            loop {
                let page = log
                    .read_all_in_chunks(cursor, true, max_count, usize::MAX, &filter)
                    .unwrap();
                let upper = if cursor == 0 { head + 1 } else { cursor };
                let expected: Vec<u64> = matching
                    .iter()
                    .rev()
                    .map(|e| e.event.position)
                    .filter(|&p| p < upper)
                    .take(max_count)
                    .collect();
                let got: Vec<u64> = viewed(&page).iter().map(|e| e.event.position).collect();
                assert_eq!(
                    got, expected,
                    "{filter:?} backward, max_count {max_count}, cursor {cursor}"
                );
                let next = match expected.last() {
                    Some(&last) if expected.len() == max_count => last,
                    _ => 1,
                };
                assert_eq!(
                    page.next_cursor, next,
                    "{filter:?} backward, cursor {cursor}"
                );
                assert_eq!(page.end_reached, next <= 1);
                if page.end_reached {
                    break;
                }
                cursor = page.next_cursor;
            }
        }
    }
    log.shutdown();
}

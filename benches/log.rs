//! Criterion benches of the log, in process (no gRPC): durable appends of 1, 10 and 100
//! events per call from one caller, and from 16 concurrent callers (group commit); a
//! forward scan; and the offline verify. Run: `cargo bench --bench log`.
//! Whole-system figures over gRPC come from `rapport bench` (see BENCHMARKS.md).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rapport::log::{ExpectedRevision, Log, LogConfig, ReadFilter, StreamAppend, StreamName};

fn batch(stream: &str, size: usize, serial: &mut u64) -> StreamAppend {
    StreamAppend {
        stream: StreamName::parse(stream).expect("valid"),
        expected: ExpectedRevision::Any,
        events: (0..size)
            .map(|_| {
                *serial += 1;
                rapport::loadgen::sample_proposed(*serial)
            })
            .collect(),
    }
}

fn append(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(LogConfig::new(dir.path())).expect("open");
    let mut group = c.benchmark_group("append");
    group
        .measurement_time(Duration::from_secs(5))
        .sample_size(20);
    let mut serial = 0u64;
    for size in [1usize, 10, 100] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("one_caller", size), &size, |b, &size| {
            b.iter(|| {
                runtime
                    .block_on(log.append(batch("bench-one", size, &mut serial)))
                    .expect("append")
            })
        });
        group.throughput(Throughput::Elements(16 * size as u64));
        group.bench_with_input(BenchmarkId::new("16_callers", size), &size, |b, &size| {
            b.iter(|| {
                let calls: Vec<_> = (0..16)
                    .map(|caller| {
                        let log = log.clone();
                        let request = batch(&format!("bench-c{caller}"), size, &mut serial);
                        runtime.spawn(async move { log.append(request).await })
                    })
                    .collect();
                runtime.block_on(async {
                    for call in calls {
                        call.await.expect("task").expect("append");
                    }
                })
            })
        });
    }
    group.finish();
    log.shutdown();
}

fn scan_and_verify(c: &mut Criterion) {
    const EVENTS: u64 = 100_000;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Log::open(LogConfig::new(dir.path())).expect("open");
    let mut serial = 0u64;
    runtime.block_on(async {
        for i in 0..EVENTS / 100 {
            log.append(batch(&format!("customer-{}", i % 1000), 100, &mut serial))
                .await
                .expect("append");
        }
    });
    let mut group = c.benchmark_group("read");
    group
        .throughput(Throughput::Elements(EVENTS))
        .sample_size(10);
    group.bench_function("scan_100k", |b| {
        b.iter(|| {
            let mut cursor = 1;
            let mut seen = 0;
            loop {
                let page = log
                    .read_all(cursor, false, 1_000, &ReadFilter::default())
                    .expect("read");
                seen += page.events.len();
                cursor = page.next_cursor;
                if page.end_reached {
                    break;
                }
            }
            assert_eq!(seen as u64, EVENTS);
        })
    });
    log.shutdown();
    drop(log);
    group.bench_function("verify_100k", |b| {
        b.iter(|| {
            let report = rapport::log::verify::verify_dir(dir.path()).expect("verify");
            assert!(report.is_ok());
        })
    });
    group.finish();
}

criterion_group!(benches, append, scan_and_verify);
criterion_main!(benches);

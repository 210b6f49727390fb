//! Criterion benches of the personal-data layer, in process: sealing a ~200-byte
//! personal event (an `InteractionLogged` as the load generator sends it), encoding it
//! with and without sealing, and opening it again. The ratio to the per-append cost of
//! the whole server (BENCHMARKS.md) is the encryption overhead on durable appends.
//! Run: `cargo bench --bench privacy`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rapport::domain::Violations;
use rapport::keys::{KeyStore, MasterKey};
use rapport::privacy::Privacy;
use uuid::Uuid;

fn personal_event(customer: Uuid) -> rapport::domain::DomainEvent {
    let mut v = Violations::new("");
    rapport::grpc::convert::event_from_proto(
        rapport::loadgen::sample_personal_event(customer, 42),
        &mut v,
    )
    .expect("valid sample")
}

fn privacy(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = Arc::new(KeyStore::open(dir.path(), &MasterKey::generate()).expect("key store"));
    let privacy = Privacy::new(keys);
    let customer = Uuid::now_v7();
    let stream = format!("customer-{customer}");
    privacy
        .keys()
        .ensure(&[customer])
        .expect("the customer's key");
    let clear = personal_event(customer);
    let mut group = c.benchmark_group("personal_event");
    group
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    group.bench_function("seal_and_encode", |b| {
        b.iter(|| {
            let mut event = clear.clone();
            let id = Uuid::now_v7();
            privacy
                .seal_events(&mut [(stream.as_str(), id, &mut event)])
                .expect("seal");
            event.encode().expect("sealed")
        })
    });
    // The same work without sealing: a custom event of the same size.
    let custom = {
        let mut v = Violations::new("");
        rapport::grpc::convert::event_from_proto(rapport::loadgen::sample_event(42), &mut v)
            .expect("valid sample")
    };
    group.bench_function("encode_unsealed_same_size", |b| {
        b.iter(|| custom.clone().encode().expect("no personal parts"))
    });
    let id = Uuid::now_v7();
    let mut sealed = clear.clone();
    privacy
        .seal_events(&mut [(stream.as_str(), id, &mut sealed)])
        .expect("seal");
    let payload = sealed.encode().expect("sealed");
    group.bench_function("decode_and_open", |b| {
        b.iter(|| {
            let mut event = rapport::domain::DomainEvent::decode("InteractionLogged", 1, &payload)
                .expect("decode");
            privacy.open_event(&stream, id, &mut event)
        })
    });
    group.finish();
}

criterion_group!(benches, privacy);
criterion_main!(benches);

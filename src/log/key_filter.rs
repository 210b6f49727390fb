//! Bloom filters over the keys of two index trees, so that the writer skips a sled
//! lookup whose answer is "not there" — the usual case for both:
//!
//! - **event ids** (the id index): the idempotency check of each event looks its id up;
//!   for an id never seen (nearly all of them) that `get` of a random 16-byte key was a
//!   third of the writer's time per event with batches of 100;
//! - **stream names** (`streams`): the expectation check of an append to a stream the
//!   writer has not cached reads the stream's last run, a reverse `scan_prefix` in sled;
//!   for a stream that does not exist yet (a new customer, a new deal) that was a quarter
//!   of the writer's time with 64 single-event clients.
//!
//! A filter only ever answers "certainly absent" or "maybe present"; "maybe" goes to
//! sled as before, so a false positive costs one lookup and never a wrong answer. It has
//! no false negatives because every key in the tree is in it before the writer asks:
//!
//! - the keys already in the tree when the log opens (after the journal replay and the
//!   index repair) are added by a scan on a background thread; until the scan is done
//!   the writer has no filter and asks sled every time;
//! - every key the writer inserts afterwards it adds itself, to the filter in use and to
//!   the one being built, before it checks the next group.
//!
//! A filter has 16 bits per key and six probes, all six in one 64-byte line of the filter
//! chosen by the key (a blocked Bloom filter: about 0.2 % false positives when full, a
//! little above the 0.1 % of probes spread over the whole filter, for one cache miss per
//! lookup or insert instead of six; the spread probes were a tenth of the writer's time
//! with batches of 100).
//! Once it holds more keys than it was sized for, a filter twice as large is built the
//! same way while the full one keeps answering, and replaces it when its scan ends.
//! Memory stays bounded by [`limits::KEY_FILTER_BYTES_MAX`] per filter: past it a filter
//! stops growing and only answers "maybe" more often.

use std::hash::{DefaultHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use super::error::LogError;
use super::store::Store;
use super::stream_index::stream_key_name;
use crate::limits;

/// Bits per key a filter is sized with.
const BITS_PER_KEY: u64 = 16;
/// Probes per key.
const PROBES: u64 = 6;
/// The smallest filter, in bits (1 MiB, for 512 Ki keys): a young log does not rebuild
/// it every few thousand events.
#[cfg(not(test))]
const BITS_MIN: u64 = 1 << 23;
/// Unit tests fill a filter past capacity: a small one keeps them quick.
#[cfg(test)]
const BITS_MIN: u64 = 1 << 16;
/// How many tree entries a scan reads between looks at its stop flag.
const SCAN_STOP_CHECK_EVERY: usize = 4_096;

/// Bits of one line of a filter: a key's probes all fall in one line.
const LINE_BITS: u64 = 512;

/// One cache line of filter bits.
#[derive(Debug)]
#[repr(align(64))]
struct Line([AtomicU64; 8]);

/// A fixed-size Bloom filter of byte keys, shared between the writer and one scan.
#[derive(Debug)]
pub(super) struct Bloom {
    lines: Box<[Line]>,
    /// Bit count minus one (the bit count is a power of two).
    mask: u64,
    /// Keys it was sized for.
    capacity: u64,
    /// Keys added (repeats included), from both the scan and the writer.
    added: AtomicU64,
}

impl Bloom {
    /// A filter sized for `keys` keys, within the memory limit.
    pub(super) fn with_capacity(keys: u64) -> Self {
        let bits = keys
            .saturating_mul(BITS_PER_KEY)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .clamp(BITS_MIN, bits_max());
        let lines = (0..bits / LINE_BITS)
            .map(|_| Line(std::array::from_fn(|_| AtomicU64::new(0))))
            .collect();
        Self {
            lines,
            mask: bits - 1,
            capacity: bits / BITS_PER_KEY,
            added: AtomicU64::new(0),
        }
    }

    /// The two base hashes of a key (double hashing gives the probes). Keys are chosen
    /// by clients, so they are mixed rather than trusted to be random; keys aimed at
    /// collisions only cost lookups. A 16-byte key (every event id, and a stream name
    /// that happens to be 16 bytes long) is mixed directly; any other goes through
    /// SipHash with fixed keys, twice. The choice depends on the key alone, so inserts
    /// and lookups of one key always take the same path.
    fn hashes(key: &[u8]) -> (u64, u64) {
        if let Ok(id) = <&[u8; 16]>::try_from(key) {
            let low = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
            let high = u64::from_le_bytes(id[8..].try_into().expect("8 bytes"));
            let first = mix(low ^ high.rotate_left(32));
            let second = mix(high ^ 0x9e37_79b9_7f4a_7c15 ^ first) | 1;
            return (first, second);
        }
        let sip = |seed: u8| {
            let mut hasher = DefaultHasher::new();
            hasher.write_u8(seed);
            hasher.write(key);
            hasher.finish()
        };
        (sip(0), sip(1) | 1)
    }

    /// The key's line and its probes' bits in that line: the line from the first hash,
    /// six 9-bit bit numbers from the second (above its bit 0, which `hashes` sets).
    fn probes(&self, key: &[u8]) -> (&Line, impl Iterator<Item = (usize, u64)>) {
        let (first, second) = Self::hashes(key);
        let line = &self.lines[((first & self.mask) / LINE_BITS) as usize];
        let bits = (0..PROBES).map(move |i| {
            let bit = (second >> (1 + i * 9)) & (LINE_BITS - 1);
            ((bit / 64) as usize, 1 << (bit % 64))
        });
        (line, bits)
    }

    /// Adds a key.
    pub(super) fn insert(&self, key: &[u8]) {
        let (line, bits) = self.probes(key);
        for (word, bit) in bits {
            line.0[word].fetch_or(bit, Ordering::Relaxed);
        }
        self.added.fetch_add(1, Ordering::Relaxed);
    }

    /// False only if the key was certainly never added.
    pub(super) fn may_contain(&self, key: &[u8]) -> bool {
        let (line, mut bits) = self.probes(key);
        bits.all(|(word, bit)| line.0[word].load(Ordering::Relaxed) & bit != 0)
    }

    /// Whether it holds more keys than it was sized for.
    fn is_full(&self) -> bool {
        self.added.load(Ordering::Relaxed) > self.capacity
    }

    /// Whether a larger filter is allowed.
    fn can_grow(&self) -> bool {
        self.mask + 1 < bits_max()
    }

    /// Memory it holds, in bytes.
    pub(super) fn bytes(&self) -> usize {
        self.lines.len() * 64
    }
}

/// The largest filter in bits: the largest power of two within the memory limit.
fn bits_max() -> u64 {
    let limit = (limits::KEY_FILTER_BYTES_MAX as u64)
        .saturating_mul(8)
        .max(BITS_MIN);
    1 << (63 - limit.leading_zeros())
}

/// splitmix64's finaliser: every input bit reaches every output bit.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A filter being filled by a scan of the tree.
struct Build {
    bloom: Arc<Bloom>,
    stop: Arc<AtomicBool>,
    scan: JoinHandle<Result<u64, LogError>>,
}

/// The index tree a filter covers, and so what its keys are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Indexed {
    /// The id index: keys are event ids.
    EventIds,
    /// `streams`: keys are stream names (the tree's keys less their revision suffix).
    Streams,
}

/// The writer's view of one filter: the one in use (none until the first scan ends) and
/// the one being built.
pub(super) struct KeyFilter {
    store: Arc<Store>,
    indexed: Indexed,
    active: Option<Arc<Bloom>>,
    building: Option<Build>,
}

impl KeyFilter {
    /// Starts the first scan of `indexed`, sized for `capacity` keys.
    pub(super) fn start(store: Arc<Store>, indexed: Indexed, capacity: u64) -> Self {
        let mut filter = Self {
            store,
            indexed,
            active: None,
            building: None,
        };
        filter.build(capacity);
        filter
    }

    fn build(&mut self, capacity: u64) {
        let bloom = Arc::new(Bloom::with_capacity(capacity));
        let stop = Arc::new(AtomicBool::new(false));
        let (scan_bloom, scan_stop, store) = (bloom.clone(), stop.clone(), self.store.clone());
        let indexed = self.indexed;
        let spawned = std::thread::Builder::new()
            .name("rapport-key-filter".into())
            .spawn(move || scan(&store, indexed, &scan_bloom, &scan_stop));
        match spawned {
            Ok(scan) => self.building = Some(Build { bloom, stop, scan }),
            // Without a thread there is no filter: every key goes to sled, as it always could.
            Err(error) => {
                tracing::warn!(%error, indexed = ?self.indexed, "could not start a key filter's scan");
            }
        }
    }

    /// Takes the built filter into use once its scan has ended.
    fn poll(&mut self) {
        if !self
            .building
            .as_ref()
            .is_some_and(|build| build.scan.is_finished())
        {
            return;
        }
        let build = self.building.take().expect("checked above");
        match build.scan.join() {
            Ok(Ok(scanned)) => {
                tracing::debug!(scanned, bytes = build.bloom.bytes(), indexed = ?self.indexed, "key filter in use");
                self.active = Some(build.bloom);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, indexed = ?self.indexed, "a key filter's scan failed; its keys are looked up in sled");
            }
            Err(_) => {
                tracing::warn!(indexed = ?self.indexed, "a key filter's scan panicked; its keys are looked up in sled");
            }
        }
    }

    /// False only if the key (an event id, or a stream name) is certainly not in the tree.
    pub(super) fn may_contain(&mut self, key: &[u8]) -> bool {
        self.poll();
        self.active
            .as_ref()
            .is_none_or(|bloom| bloom.may_contain(key))
    }

    /// Records a key the writer is putting into the tree.
    pub(super) fn insert(&mut self, key: &[u8]) {
        if let Some(bloom) = &self.active {
            bloom.insert(key);
        }
        if let Some(build) = &self.building {
            build.bloom.insert(key);
        }
    }

    /// Starts a larger filter when the one in use is full (call after a group's inserts).
    pub(super) fn grow_if_full(&mut self) {
        let Some(active) = &self.active else {
            return;
        };
        if self.building.is_none() && active.is_full() && active.can_grow() {
            let capacity = active.added.load(Ordering::Relaxed).saturating_mul(2);
            self.build(capacity);
        }
    }

    /// Stops a scan in progress and waits for it: it holds the store open.
    pub(super) fn stop(&mut self) {
        if let Some(build) = self.building.take() {
            build.stop.store(true, Ordering::Relaxed);
            let _ = build.scan.join();
        }
    }
}

impl Drop for KeyFilter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Adds every key of the `indexed` tree to `bloom`; returns how many it added.
fn scan(
    store: &Store,
    indexed: Indexed,
    bloom: &Bloom,
    stop: &AtomicBool,
) -> Result<u64, LogError> {
    match indexed {
        // The id index is packed; it passes its ids itself (tail and runs as of now).
        Indexed::EventIds => store.ids.for_each_id(stop, |id| bloom.insert(id)),
        Indexed::Streams => scan_streams(store, bloom, stop),
    }
}

/// Adds every stream name of the stream index to `bloom`: its in-memory tail's, then
/// the `streams` tree's (a checkpoint moving a stream from the tail into the tree during
/// the scan leaves it in the tree behind the tail's snapshot, or ahead of the tree's
/// cursor). Returns how many it added (a stream in both counts twice; the filter then
/// looks full a little sooner).
fn scan_streams(store: &Store, bloom: &Bloom, stop: &AtomicBool) -> Result<u64, LogError> {
    let mut added = 0u64;
    store.streams.for_each_tail_stream(|name| {
        bloom.insert(name.as_bytes());
        added += 1;
    });
    let mut previous: Option<sled::IVec> = None;
    for (index, entry) in store.streams.tree.iter().keys().enumerate() {
        if index % SCAN_STOP_CHECK_EVERY == 0 && stop.load(Ordering::Relaxed) {
            return Err(LogError::Unavailable("the log is closing".into()));
        }
        let key = entry?;
        // A malformed key is verify's to report; the filter must still not miss it, so
        // no filter at all rather than one that could.
        let Some(name) = stream_key_name(&key) else {
            return Err(LogError::Corrupt(format!(
                "stream index key of {} bytes",
                key.len()
            )));
        };
        // A stream's runs are adjacent in the tree: each name is added once.
        if previous.as_ref().is_some_and(|p| p.as_ref() == name) {
            continue;
        }
        bloom.insert(name);
        previous = Some(sled::IVec::from(name));
        added += 1;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> [u8; 16] {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&n.to_le_bytes());
        id[8..].copy_from_slice(&(n.wrapping_mul(31)).to_be_bytes());
        id
    }

    #[test]
    fn never_misses_an_added_id_and_rarely_claims_an_absent_one() {
        let bloom = Bloom::with_capacity(100_000);
        for n in 0..100_000 {
            bloom.insert(&id(n));
        }
        assert!((0..100_000).all(|n| bloom.may_contain(&id(n))));
        let false_positives = (1_000_000..1_100_000)
            .filter(|n| bloom.may_contain(&id(*n)))
            .count();
        // Sized for 100k ids at 16 bits each (rounded up to a power of two): well under 1 %.
        assert!(false_positives < 1_000, "{false_positives} false positives");
        assert!(!bloom.is_full());
    }

    /// A store in a temp dir whose id index holds `id(0..count)` at positions from 1,
    /// half of them sealed into a run and the rest in the tail.
    fn store_with_ids(count: u64) -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        store.ids.insert((0..count / 2).map(|n| (id(n), n + 1)));
        store.ids.seal().expect("seal");
        store.ids.insert((count / 2..count).map(|n| (id(n), n + 1)));
        (dir, store)
    }

    /// Waits (bounded) until the first scan's filter is in use.
    fn settled(filter: &mut KeyFilter) {
        for _ in 0..2_000 {
            filter.poll();
            if filter.building.is_none() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("the scan did not end");
    }

    #[test]
    fn the_writers_filter_never_misses_an_id_of_the_tree_before_during_or_after_a_rebuild() {
        let (_dir, store) = store_with_ids(1_000);
        let mut filter = KeyFilter::start(store.clone(), Indexed::EventIds, 2_000);
        // While the scan runs there is no filter: everything is "maybe".
        assert!(filter.active.is_none() || (0..1_000).all(|n| filter.may_contain(&id(n))));
        settled(&mut filter);
        assert!(filter.active.is_some());
        assert!((0..1_000).all(|n| filter.may_contain(&id(n))));
        // Fill past capacity the way the writer does: filter first, then the tree; a
        // rebuild starts and runs while ids keep arriving.
        let capacity = filter.active.as_ref().expect("in use").capacity;
        let mut rebuilt = false;
        for n in 1_000..capacity + 50_000 {
            filter.insert(&id(n));
            store.ids.insert([(id(n), n + 1)]);
            if n % 1_000 == 0 {
                filter.grow_if_full();
                rebuilt |= filter.building.is_some();
                assert!(filter.may_contain(&id(n)) && filter.may_contain(&id(n / 2)));
            }
        }
        assert!(rebuilt, "a full filter starts a larger one");
        settled(&mut filter);
        let active = filter.active.clone().expect("in use");
        assert!(active.capacity > capacity, "the larger filter is in use");
        assert!((0..capacity + 50_000).all(|n| active.may_contain(&id(n))));
        filter.stop();
        drop(filter);
        // The scans hold no reference to the store once stopped.
        assert_eq!(Arc::strong_count(&store), 1);
    }

    #[test]
    fn the_stream_filter_holds_each_stream_of_the_tree_once() {
        use crate::log::stream_index::{stream_key, stream_value};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        // Three runs per stream, and names that are prefixes of one another.
        let names: Vec<String> = (0..500).map(|n| format!("customer-{n}")).collect();
        for (n, name) in names.iter().enumerate() {
            for run in 0..3u64 {
                let value = stream_value(n as u64 * 10 + run, 1);
                store
                    .streams
                    .tree
                    .insert(stream_key(name, run), &value)
                    .expect("insert");
            }
        }
        let mut filter = KeyFilter::start(store.clone(), Indexed::Streams, 500);
        settled(&mut filter);
        let active = filter.active.clone().expect("in use");
        assert_eq!(
            active.added.load(Ordering::Relaxed),
            500,
            "each stream counted once"
        );
        assert!(names.iter().all(|name| filter.may_contain(name.as_bytes())));
        let absent = (500..10_500)
            .filter(|n| filter.may_contain(format!("customer-{n}").as_bytes()))
            .count();
        assert!(absent < 100, "{absent} false positives");
        // What the writer adds is found at once.
        filter.insert(b"deal-1");
        assert!(filter.may_contain(b"deal-1"));
    }

    #[test]
    fn a_malformed_key_leaves_no_filter_rather_than_one_that_misses() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        store
            .streams
            .tree
            .insert(b"no-separator", &[0u8; 12])
            .expect("insert");
        // A run whose only block has a length no entry fits.
        store.ids.insert([(id(1), 1)]);
        let run = store.ids.seal().expect("seal").expect("a run");
        let tree = store.db.open_tree("id_runs").expect("tree");
        tree.insert(crate::log::id_index::block_key(run.id, &id(1)), &[0u8; 5])
            .expect("damage");
        for indexed in [Indexed::Streams, Indexed::EventIds] {
            let mut filter = KeyFilter::start(store.clone(), indexed, 10);
            settled(&mut filter);
            assert!(filter.active.is_none(), "{indexed:?}");
            assert!(
                filter.may_contain(b"anything"),
                "without a filter everything is maybe"
            );
        }
    }

    #[test]
    fn stop_ends_a_scan_in_progress() {
        let (_dir, store) = store_with_ids(20_000);
        let mut filter = KeyFilter::start(store.clone(), Indexed::EventIds, 40_000);
        filter.stop();
        assert!(filter.building.is_none());
        drop(filter);
        assert_eq!(Arc::strong_count(&store), 1);
    }

    #[test]
    fn sizes_are_powers_of_two_within_the_limit() {
        for ids in [0, 1, 65_536, 1_000_000, u64::MAX / 2, u64::MAX] {
            let bloom = Bloom::with_capacity(ids);
            let bits = bloom.mask + 1;
            assert!(bits.is_power_of_two(), "{ids}: {bits}");
            assert!(bits >= BITS_MIN);
            assert!(bloom.bytes() <= limits::KEY_FILTER_BYTES_MAX.max(BITS_MIN as usize / 8));
        }
    }

    #[test]
    fn a_full_filter_still_claims_few_absent_ids() {
        // Exactly at capacity (16 bits per key): the blocked layout's rate, ~0.2 %.
        let bloom = Bloom::with_capacity(BITS_MIN / BITS_PER_KEY);
        for n in 0..bloom.capacity {
            bloom.insert(&id(n));
        }
        let tries = 200_000u64;
        let false_positives = (0..tries)
            .filter(|n| bloom.may_contain(&id((1 << 40) + n)))
            .count();
        assert!(
            false_positives < (tries / 200) as usize,
            "{false_positives} false positives"
        );
    }

    #[test]
    fn sequential_and_structured_ids_spread() {
        // UUIDv7-like ids share their leading bytes; the filter must not pile them up.
        let bloom = Bloom::with_capacity(50_000);
        for n in 0..50_000u64 {
            let mut v7 = [0u8; 16];
            v7[..6].copy_from_slice(&1_700_000_000_000u64.to_be_bytes()[2..]);
            v7[8..].copy_from_slice(&n.to_be_bytes());
            bloom.insert(&v7);
        }
        let false_positives = (50_000..150_000u64)
            .filter(|n| {
                let mut v7 = [0u8; 16];
                v7[..6].copy_from_slice(&1_700_000_000_000u64.to_be_bytes()[2..]);
                v7[8..].copy_from_slice(&n.to_be_bytes());
                bloom.may_contain(&v7)
            })
            .count();
        assert!(false_positives < 1_000, "{false_positives} false positives");
    }
}

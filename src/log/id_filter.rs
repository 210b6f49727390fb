//! A Bloom filter over the keys of the `event_ids` tree, so that the writer's
//! idempotency check skips the sled lookup for an id the log has never seen — the usual
//! case, and otherwise a third of the writer's time per event (measured with batches of
//! 100: a sled `get` of a random 16-byte key costs about what its insert does).
//!
//! The filter only ever answers "certainly absent" or "maybe present"; "maybe" goes to
//! sled as before, so a false positive costs one lookup and never a wrong answer. It has
//! no false negatives because every id in the tree is in it before the writer asks:
//!
//! - the ids already in the tree when the log opens (after the journal replay and the
//!   index repair) are added by a scan on a background thread; until the scan is done
//!   the writer has no filter and asks sled every time;
//! - every id the writer inserts afterwards it adds itself, to the filter in use and to
//!   the one being built, before it checks the next group.
//!
//! The filter is sized for twice the ids at open (16 bits per id, six probes: about
//! 0.1 % false positives when full). Once it holds more ids than it was sized for, a
//! filter twice as large is built the same way while the full one keeps answering, and
//! replaces it when its scan ends. Memory stays bounded by
//! [`limits::ID_FILTER_BYTES_MAX`]: past it the filter stops growing and only answers
//! "maybe" more often.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use super::error::LogError;
use super::store::Store;
use crate::limits;

/// Bits per id a filter is sized with.
const BITS_PER_ID: u64 = 16;
/// Probes per id.
const PROBES: u64 = 6;
/// The smallest filter, in bits (1 MiB, for 512 Ki ids): a young log does not rebuild
/// it every few thousand events.
#[cfg(not(test))]
const BITS_MIN: u64 = 1 << 23;
/// Unit tests fill a filter past capacity: a small one keeps them quick.
#[cfg(test)]
const BITS_MIN: u64 = 1 << 16;
/// How many tree entries a scan reads between looks at its stop flag.
const SCAN_STOP_CHECK_EVERY: usize = 4_096;

/// A fixed-size Bloom filter of 16-byte ids, shared between the writer and one scan.
#[derive(Debug)]
pub(super) struct Bloom {
    words: Box<[AtomicU64]>,
    /// Bit count minus one (the bit count is a power of two).
    mask: u64,
    /// Ids it was sized for.
    capacity: u64,
    /// Ids added (repeats included), from both the scan and the writer.
    added: AtomicU64,
}

impl Bloom {
    /// A filter sized for `ids` ids, within the memory limit.
    pub(super) fn with_capacity(ids: u64) -> Self {
        let bits = ids
            .saturating_mul(BITS_PER_ID)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
            .clamp(BITS_MIN, bits_max());
        let words = (0..bits / 64).map(|_| AtomicU64::new(0)).collect();
        Self {
            words,
            mask: bits - 1,
            capacity: bits / BITS_PER_ID,
            added: AtomicU64::new(0),
        }
    }

    /// The two base hashes of an id (double hashing gives the probes). Ids are chosen by
    /// clients, so they are mixed rather than trusted to be random; ids aimed at
    /// collisions only cost lookups.
    fn hashes(id: &[u8; 16]) -> (u64, u64) {
        let low = u64::from_le_bytes(id[..8].try_into().expect("8 bytes"));
        let high = u64::from_le_bytes(id[8..].try_into().expect("8 bytes"));
        let first = mix(low ^ high.rotate_left(32));
        let second = mix(high ^ 0x9e37_79b9_7f4a_7c15 ^ first) | 1;
        (first, second)
    }

    fn probes(&self, id: &[u8; 16]) -> impl Iterator<Item = u64> + '_ {
        let (first, second) = Self::hashes(id);
        (0..PROBES).map(move |i| first.wrapping_add(i.wrapping_mul(second)) & self.mask)
    }

    /// Adds an id.
    pub(super) fn insert(&self, id: &[u8; 16]) {
        for bit in self.probes(id) {
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Relaxed);
        }
        self.added.fetch_add(1, Ordering::Relaxed);
    }

    /// False only if the id was certainly never added.
    pub(super) fn may_contain(&self, id: &[u8; 16]) -> bool {
        self.probes(id).all(|bit| {
            self.words[(bit / 64) as usize].load(Ordering::Relaxed) & (1 << (bit % 64)) != 0
        })
    }

    /// Whether it holds more ids than it was sized for.
    fn is_full(&self) -> bool {
        self.added.load(Ordering::Relaxed) > self.capacity
    }

    /// Whether a larger filter is allowed.
    fn can_grow(&self) -> bool {
        self.mask + 1 < bits_max()
    }

    /// Memory it holds, in bytes.
    pub(super) fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// The largest filter in bits: the largest power of two within the memory limit.
fn bits_max() -> u64 {
    let limit = (limits::ID_FILTER_BYTES_MAX as u64)
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

/// The writer's view: the filter in use (none until the first scan ends) and the one
/// being built.
pub(super) struct IdFilter {
    store: Arc<Store>,
    active: Option<Arc<Bloom>>,
    building: Option<Build>,
}

impl IdFilter {
    /// Starts the first scan, sized for twice the `ids` the log holds.
    pub(super) fn start(store: Arc<Store>, ids: u64) -> Self {
        let mut filter = Self {
            store,
            active: None,
            building: None,
        };
        filter.build(ids.saturating_mul(2));
        filter
    }

    fn build(&mut self, capacity: u64) {
        let bloom = Arc::new(Bloom::with_capacity(capacity));
        let stop = Arc::new(AtomicBool::new(false));
        let (scan_bloom, scan_stop, store) = (bloom.clone(), stop.clone(), self.store.clone());
        let spawned = std::thread::Builder::new()
            .name("rapport-id-filter".into())
            .spawn(move || scan(&store, &scan_bloom, &scan_stop));
        match spawned {
            Ok(scan) => self.building = Some(Build { bloom, stop, scan }),
            // Without a thread there is no filter: every id goes to sled, as it always could.
            Err(error) => tracing::warn!(%error, "could not start the id filter's scan"),
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
                tracing::debug!(scanned, bytes = build.bloom.bytes(), "id filter in use");
                self.active = Some(build.bloom);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "the id filter's scan failed; ids are looked up in sled");
            }
            Err(_) => tracing::warn!("the id filter's scan panicked; ids are looked up in sled"),
        }
    }

    /// False only if no event with this id is in the `event_ids` tree.
    pub(super) fn may_contain(&mut self, id: &[u8; 16]) -> bool {
        self.poll();
        self.active
            .as_ref()
            .is_none_or(|bloom| bloom.may_contain(id))
    }

    /// Records an id the writer is putting into the tree.
    pub(super) fn insert(&mut self, id: &[u8; 16]) {
        if let Some(bloom) = &self.active {
            bloom.insert(id);
        }
        if let Some(build) = &self.building {
            build.bloom.insert(id);
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

impl Drop for IdFilter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Adds every key of the `event_ids` tree to `bloom`; returns how many.
fn scan(store: &Store, bloom: &Bloom, stop: &AtomicBool) -> Result<u64, LogError> {
    let mut scanned = 0u64;
    for (index, entry) in store.event_ids.iter().keys().enumerate() {
        if index % SCAN_STOP_CHECK_EVERY == 0 && stop.load(Ordering::Relaxed) {
            return Err(LogError::Unavailable("the log is closing".into()));
        }
        let key = entry?;
        match <&[u8; 16]>::try_from(key.as_ref()) {
            Ok(id) => bloom.insert(id),
            // A malformed key is verify's to report; the filter must still not miss it, so
            // no filter at all rather than one that could.
            Err(_) => {
                return Err(LogError::Corrupt(format!(
                    "event id index key of {} bytes",
                    key.len()
                )));
            }
        }
        scanned += 1;
    }
    Ok(scanned)
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

    /// Waits (bounded) until the first scan's filter is in use.
    fn settled(filter: &mut IdFilter) {
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
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        for n in 0..1_000 {
            store
                .event_ids
                .insert(id(n), &n.to_be_bytes())
                .expect("insert");
        }
        let mut filter = IdFilter::start(store.clone(), 1_000);
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
            store
                .event_ids
                .insert(id(n), &n.to_be_bytes())
                .expect("insert");
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
    fn stop_ends_a_scan_in_progress() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(dir.path()).expect("store"));
        for n in 0..20_000 {
            store
                .event_ids
                .insert(id(n), &n.to_be_bytes())
                .expect("insert");
        }
        let mut filter = IdFilter::start(store.clone(), 20_000);
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
            assert!(bloom.bytes() <= limits::ID_FILTER_BYTES_MAX.max(BITS_MIN as usize / 8));
        }
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

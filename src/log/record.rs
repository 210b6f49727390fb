//! What is stored for each event, how events are packed into chunks, and the hash chain.
//!
//! ## Stored bytes
//! An event is stored as the bincode 2 (standard config, varint integers) encoding of
//! [`StoredEvent`]. Events written by one group commit are packed into chunks of
//! contiguous positions (one sled insert per chunk instead of per event):
//!
//! ```text
//! chunk value = tag:u8 (=1) | prev_hash:[u8;32] | count:u32 LE
//!               | count × ( len:u32 LE | event bytes ) | last_hash:[u8;32]
//! chunk key   = position of its first event, u64 big-endian
//! ```
//!
//! The writer stores a chunk compressed when that makes it smaller
//! (`2 ‖ raw_len:u32 LE ‖ zstd(raw chunk without its tag)`, see [`compress_chunk`]).
//!
//! ## Hash chain
//! `hash_n = BLAKE3(hash_{n-1} ‖ position_n as u64 big-endian ‖ event bytes_n)`, with
//! `hash_0` = 32 zero bytes. The per-event hashes are recomputed when a chunk is read
//! ([`parse_chunk`]) and must end in the chunk's stored `last_hash`, so a read checks its
//! bytes; a store that already computed a chunk's hashes passes them back
//! ([`parse_chunk_known`]) and only the stored last hash is compared.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::LogError;

/// A chain hash: BLAKE3, 32 bytes.
pub type Hash = [u8; 32];

/// The hash of the empty log.
pub const ZERO_HASH: Hash = [0; 32];

const CHUNK_TAG: u8 = 1;
const COMPRESSED_CHUNK_TAG: u8 = 2;

/// zstd level for stored chunks: level 1 is the fastest and already takes most of what
/// there is to take from envelopes that repeat stream names, types and field names.
const ZSTD_LEVEL: i32 = 1;

/// Chunks smaller than this are stored raw: a lone small event gains a few bytes from
/// compression and costs a zstd call on the latency-critical single-append path.
const COMPRESS_BYTES_MIN: usize = 1024;

/// Compresses a finished chunk: `2 ‖ raw_len:u32 LE ‖ zstd(raw[1..])`. Returns the raw
/// chunk when compression does not make it smaller. The hash chain covers the raw event
/// bytes, never the compressed form, so compression is invisible to auditors.
pub fn compress_chunk(raw: Vec<u8>) -> Vec<u8> {
    compressed_value(&raw).unwrap_or(raw)
}

/// The compressed stored value of the raw chunk `raw`, or `None` when the raw chunk is
/// stored as it is (small, or compression would not save bytes).
fn compressed_value(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < COMPRESS_BYTES_MIN {
        return None;
    }
    // Compressed straight behind the header, into one buffer of the worst-case size.
    let mut value = vec![0u8; 5 + zstd::zstd_safe::compress_bound(raw.len() - 1)];
    value[0] = COMPRESSED_CHUNK_TAG;
    value[1..5].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    let compressed = COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        slot.as_mut()
            .and_then(|c| c.compress_to_buffer(&raw[1..], &mut value[5..]).ok())
    })?;
    if compressed + 5 >= raw.len() {
        return None;
    }
    value.truncate(5 + compressed);
    Some(value)
}

thread_local! {
    // zstd contexts are costly to create (a zeroed ~100 KiB+ workspace each); every thread
    // that packs or reads chunks keeps one of each.
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Largest raw chunk accepted when decompressing: a chunk closes at
/// `CHUNK_BYTES_TARGET` plus one event, and an event is far below this.
const RAW_CHUNK_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The envelope and body of one event, as stored. Field order is part of the on-disk
/// format: never reorder, only append fields with a new format version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Global position, dense from 1.
    pub position: u64,
    /// Stream name `<category>-<id>`.
    pub stream: String,
    /// Revision within the stream, dense from 0.
    pub revision: u64,
    /// Event id (UUID bytes), unique in the log.
    pub event_id: [u8; 16],
    /// Event type name (`CustomerRegistered`, or a custom type).
    pub event_type: String,
    /// Schema version of the payload encoding for this type.
    pub schema_version: u16,
    /// When the log accepted it, UTC microseconds since the Unix epoch (server clock).
    pub recorded_at_us: i64,
    /// When it happened in the business, UTC microseconds (client-given; defaults to `recorded_at_us`).
    pub occurred_at_us: i64,
    /// Correlation id, empty when none.
    pub correlation_id: String,
    /// Causation id, empty when none.
    pub causation_id: String,
    /// Who caused it, empty when unknown.
    pub actor: String,
    /// Where it came from, empty when unknown.
    pub source_channel: String,
    /// Metadata, sorted by key (deterministic bytes).
    pub metadata: Vec<(String, String)>,
    /// The encoded body (bincode of the domain event). Encoded as raw bytes (length +
    /// bytes, the same wire form bincode gives a sequence of `u8`, but copied in one go).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl StoredEvent {
    /// The event id as a UUID.
    pub fn id(&self) -> Uuid {
        Uuid::from_bytes(self.event_id)
    }

    /// Encodes to the stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("encoding into a Vec cannot fail")
    }

    /// Decodes stored bytes, refusing trailing garbage.
    pub fn decode(bytes: &[u8]) -> Result<Self, LogError> {
        whole(
            bytes,
            bincode::serde::decode_from_slice(bytes, bincode::config::standard()),
        )
    }
}

/// An event decoded from `bytes`, refused when undecodable or followed by trailing bytes.
fn whole<T>(
    bytes: &[u8],
    decoded: Result<(T, usize), bincode::error::DecodeError>,
) -> Result<T, LogError> {
    let (event, read) =
        decoded.map_err(|e| LogError::Corrupt(format!("undecodable event: {e}")))?;
    if read != bytes.len() {
        return Err(LogError::Corrupt(format!(
            "event has {} trailing bytes",
            bytes.len() - read
        )));
    }
    Ok(event)
}

/// A [`StoredEvent`] borrowed from the bytes it was decoded from: the same fields in
/// the same order, its strings and payload pointing into the chunk. A reader that only
/// re-encodes events (a subscription writing protobuf) decodes this instead and
/// allocates nothing but the metadata list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct StoredEventView<'a> {
    /// Global position, dense from 1.
    pub position: u64,
    /// Stream name.
    pub stream: &'a str,
    /// Revision within the stream.
    pub revision: u64,
    /// Event id (UUID bytes).
    pub event_id: [u8; 16],
    /// Event type name.
    pub event_type: &'a str,
    /// Schema version of the payload encoding.
    pub schema_version: u16,
    /// When the log accepted it, UTC microseconds.
    pub recorded_at_us: i64,
    /// When it happened in the business, UTC microseconds.
    pub occurred_at_us: i64,
    /// Correlation id, empty when none.
    pub correlation_id: &'a str,
    /// Causation id, empty when none.
    pub causation_id: &'a str,
    /// Who caused it, empty when unknown.
    pub actor: &'a str,
    /// Where it came from, empty when unknown.
    pub source_channel: &'a str,
    /// Metadata, sorted by key.
    #[serde(borrow)]
    pub metadata: Vec<(&'a str, &'a str)>,
    /// The encoded body.
    pub payload: &'a [u8],
}

impl<'a> StoredEventView<'a> {
    /// Decodes stored bytes without copying them, refusing trailing garbage.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, LogError> {
        whole(
            bytes,
            bincode::serde::borrow_decode_from_slice(bytes, bincode::config::standard()),
        )
    }

    /// The owned event.
    pub fn to_owned_event(&self) -> StoredEvent {
        StoredEvent {
            metadata: self
                .metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            payload: self.payload.to_vec(),
            ..self.to_owned_envelope()
        }
    }

    /// The owned envelope: every field but `metadata` and `payload`, which are left
    /// empty (for readers of envelopes only, see `Projection::envelopes_only`).
    pub fn to_owned_envelope(&self) -> StoredEvent {
        StoredEvent {
            position: self.position,
            stream: self.stream.to_owned(),
            revision: self.revision,
            event_id: self.event_id,
            event_type: self.event_type.to_owned(),
            schema_version: self.schema_version,
            recorded_at_us: self.recorded_at_us,
            occurred_at_us: self.occurred_at_us,
            correlation_id: self.correlation_id.to_owned(),
            causation_id: self.causation_id.to_owned(),
            actor: self.actor.to_owned(),
            source_channel: self.source_channel.to_owned(),
            metadata: Vec::new(),
            payload: Vec::new(),
        }
    }
}

impl StoredEvent {
    /// This event, borrowed.
    pub fn view(&self) -> StoredEventView<'_> {
        StoredEventView {
            position: self.position,
            stream: &self.stream,
            revision: self.revision,
            event_id: self.event_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            recorded_at_us: self.recorded_at_us,
            occurred_at_us: self.occurred_at_us,
            correlation_id: &self.correlation_id,
            causation_id: &self.causation_id,
            actor: &self.actor,
            source_channel: &self.source_channel,
            metadata: self
                .metadata
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            payload: &self.payload,
        }
    }
}

/// An event read back from the log, with its chain hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEvent {
    /// The stored envelope and body.
    pub event: StoredEvent,
    /// Chain hash up to and including this event.
    pub hash: Hash,
}

/// `hash_n = BLAKE3(hash_{n-1} ‖ position BE ‖ bytes)`.
pub fn chain_hash(previous: &Hash, position: u64, event_bytes: &[u8]) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(previous);
    hasher.update(&position.to_be_bytes());
    hasher.update(event_bytes);
    *hasher.finalize().as_bytes()
}

/// Builds one chunk value from already-encoded events.
pub struct ChunkBuilder {
    bytes: Vec<u8>,
    prev_hash: Hash,
    /// Where each event's bytes lie in `bytes`, and its chain hash.
    spans: Vec<(usize, usize)>,
    hashes: Vec<Hash>,
}

impl ChunkBuilder {
    /// Starts a chunk whose first event follows `prev_hash`.
    pub fn new(prev_hash: Hash) -> Self {
        let mut bytes = Vec::with_capacity(crate::limits::CHUNK_BYTES_TARGET + 1024);
        bytes.push(CHUNK_TAG);
        bytes.extend_from_slice(&prev_hash);
        bytes.extend_from_slice(&0u32.to_le_bytes());
        Self {
            bytes,
            prev_hash,
            spans: Vec::new(),
            hashes: Vec::new(),
        }
    }

    /// Adds the next event (its encoded bytes and chain hash).
    pub fn push(&mut self, event_bytes: &[u8], hash: Hash) {
        let len = u32::try_from(event_bytes.len()).expect("events are bounded far below 4 GiB");
        self.bytes.extend_from_slice(&len.to_le_bytes());
        self.spans.push((self.bytes.len(), event_bytes.len()));
        self.bytes.extend_from_slice(event_bytes);
        self.hashes.push(hash);
    }

    /// Encodes `event` straight into the chunk (the bytes [`StoredEvent::encode`] gives,
    /// without a buffer of their own) and chains it after `prev`; returns its chain hash.
    pub fn push_event(&mut self, event: &StoredEvent, prev: &Hash) -> Hash {
        let len_at = self.bytes.len();
        self.bytes.extend_from_slice(&[0; 4]);
        let start = self.bytes.len();
        bincode::serde::encode_into_std_write(event, &mut self.bytes, bincode::config::standard())
            .expect("encoding into a Vec cannot fail");
        let len = self.bytes.len() - start;
        let len32 = u32::try_from(len).expect("events are bounded far below 4 GiB");
        self.bytes[len_at..start].copy_from_slice(&len32.to_le_bytes());
        let hash = chain_hash(prev, event.position, &self.bytes[start..]);
        self.spans.push((start, len));
        self.hashes.push(hash);
        hash
    }

    /// Encoded size so far, in bytes.
    pub fn len_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Events in the chunk so far.
    pub fn count(&self) -> u32 {
        u32::try_from(self.spans.len()).expect("a chunk holds a bounded number of events")
    }

    /// Writes the event count into the header and the last hash at the end.
    fn seal(&mut self) {
        let count = self.count();
        let last_hash = self.hashes.last().copied().unwrap_or(self.prev_hash);
        self.bytes[33..37].copy_from_slice(&count.to_le_bytes());
        self.bytes.extend_from_slice(&last_hash);
    }

    /// The finished chunk value.
    pub fn finish(mut self) -> Vec<u8> {
        self.seal();
        self.bytes
    }

    /// The finished chunk as it is stored (compressed when that pays, as
    /// [`compress_chunk`] does), with the layout a reader's [`parse_chunk`] of that stored
    /// value would compute: the writer knows every span and chain hash already, so fresh
    /// chunks reach readers parsed without being decompressed and re-hashed.
    pub fn finish_parsed(mut self, first_position: u64) -> (Vec<u8>, ChunkLayout) {
        self.seal();
        let Self {
            bytes: raw,
            prev_hash,
            spans,
            hashes,
        } = self;
        let mut layout = ChunkLayout {
            first_position,
            prev_hash,
            spans,
            hashes,
            raw: None,
            categories: CategoryCache::default(),
        };
        match compressed_value(&raw) {
            Some(stored) => {
                layout.raw = Some(raw);
                (stored, layout)
            }
            None => (raw, layout),
        }
    }
}

/// Where each event of a chunk lies, with its recomputed chain hash. Parsing checks the
/// whole chunk against its stored last hash; events are decoded on demand.
#[derive(Debug, PartialEq, Eq)]
pub struct ChunkLayout {
    /// Position of the first event.
    pub first_position: u64,
    /// Chain hash before the first event.
    pub prev_hash: Hash,
    /// Byte range of each event's encoding inside the chunk value.
    pub spans: Vec<(usize, usize)>,
    /// Chain hash after each event.
    pub hashes: Vec<Hash>,
    /// The raw chunk when the stored value was compressed (spans point into it).
    raw: Option<Vec<u8>>,
    /// Which stream categories the chunk holds, worked out on the first filtered read.
    categories: CategoryCache,
}

/// The bit a stream category sets in a [`CategoryMask`]: the top 6 bits of FNV-1a over
/// its bytes (the low bits put `bench` and `customer` on one bit; the top ones give the
/// fifteen categories of this project and its benches fifteen bits). Deterministic, and
/// the same in the chunk's mask and in a filter's.
pub fn category_bit(category: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in category.bytes() {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    1 << (hash >> 58)
}

/// A set of stream categories as 64 hashed bits ([`category_bit`]): two masks with no bit
/// in common share no category; a common bit may be a collision.
pub type CategoryMask = u64;

/// A chunk's [`CategoryMask`], left by the first filtered read that examined every event
/// of the chunk (it peeks at each stream name anyway). The chunks that the writer just
/// packed are shared by every reader that follows the head, so the later followers find
/// it and may pass the chunk over; a chunk parsed for one read only is never looked at
/// twice for it. A cache, not part of the layout's identity: it compares equal whether
/// set or not.
#[derive(Debug, Default)]
struct CategoryCache(std::sync::OnceLock<CategoryMask>);

impl PartialEq for CategoryCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for CategoryCache {}

impl ChunkLayout {
    /// The stream categories of the chunk's events, when a read that examined all of them
    /// left them ([`ChunkLayout::keep_categories`]).
    pub fn known_categories(&self) -> Option<CategoryMask> {
        self.categories.0.get().copied()
    }

    /// Keeps `mask`, the categories of every event of the chunk, for later readers.
    pub fn keep_categories(&self, mask: CategoryMask) {
        let _ = self.categories.0.set(mask);
    }

    /// Number of events in the chunk.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when the chunk holds no event (never written that way).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Position of the last event.
    pub fn last_position(&self) -> u64 {
        self.first_position + self.spans.len() as u64 - 1
    }

    /// Chain hash after the last event.
    pub fn last_hash(&self) -> Hash {
        self.hashes.last().copied().unwrap_or(self.prev_hash)
    }

    /// The raw chunk bytes the spans point into: the decompressed copy when the stored
    /// `value` was compressed, else `value` itself.
    pub fn bytes<'a>(&'a self, value: &'a [u8]) -> &'a [u8] {
        self.raw.as_deref().unwrap_or(value)
    }

    /// The stream and event type of the event at `index`, borrowed from the chunk
    /// without decoding the rest (no allocation): a filtered read decides with these
    /// whether the event is worth decoding at all.
    pub fn peek<'a>(
        &'a self,
        value: &'a [u8],
        index: usize,
    ) -> Result<(&'a str, &'a str), LogError> {
        /// A prefix of [`StoredEvent`]'s fields, in the same order.
        #[derive(Deserialize)]
        struct Peek<'a> {
            position: u64,
            stream: &'a str,
            _revision: u64,
            _event_id: [u8; 16],
            event_type: &'a str,
        }
        let (start, len) = self.spans[index];
        let (peek, _): (Peek<'a>, usize) = bincode::serde::borrow_decode_from_slice(
            &self.bytes(value)[start..start + len],
            bincode::config::standard(),
        )
        .map_err(|e| {
            LogError::Corrupt(format!(
                "event at {}: undecodable envelope: {e}",
                self.first_position + index as u64
            ))
        })?;
        self.stored_at(index, peek.position)?;
        Ok((peek.stream, peek.event_type))
    }

    /// Checks that the event at `index` claims the position it is stored at.
    fn stored_at(&self, index: usize, claimed: u64) -> Result<(), LogError> {
        let position = self.first_position + index as u64;
        if claimed != position {
            return Err(LogError::Corrupt(format!(
                "event claims position {claimed} but is stored at {position}"
            )));
        }
        Ok(())
    }

    /// The event at `index` of the chunk `value` this layout was parsed from, borrowed
    /// from it, checked like [`ChunkLayout::decode`].
    pub fn view<'a>(
        &'a self,
        value: &'a [u8],
        index: usize,
    ) -> Result<StoredEventView<'a>, LogError> {
        let (start, len) = self.spans[index];
        let event = StoredEventView::decode(&self.bytes(value)[start..start + len])?;
        self.stored_at(index, event.position)?;
        Ok(event)
    }

    /// Decodes the event at `index` of the chunk `value` this layout was parsed from,
    /// checking that it claims the position it is stored at.
    pub fn decode(&self, value: &[u8], index: usize) -> Result<LoggedEvent, LogError> {
        Ok(LoggedEvent {
            event: self.view(value, index)?.to_owned_event(),
            hash: self.hashes[index],
        })
    }
}

/// Parses a chunk stored under `first_position` (raw or compressed), recomputing every
/// event's hash and checking the stored last hash: what is read is what was written.
/// Pass the same stored `value` to [`ChunkLayout::decode`].
pub fn parse_chunk(first_position: u64, value: &[u8]) -> Result<ChunkLayout, LogError> {
    parse_chunk_known(first_position, value, None)
}

/// As [`parse_chunk`], but with the chain hashes an earlier parse of this chunk computed
/// (`known`, one per event): they are taken instead of recomputed when there are as many
/// as the chunk has events and the last equals the chunk's stored last hash; otherwise
/// the hashes are recomputed and checked as [`parse_chunk`] does. Everything else (the
/// decompression, the header, every event's length, the trailing bytes) is checked
/// either way. Verify never passes `known`.
pub fn parse_chunk_known(
    first_position: u64,
    value: &[u8],
    known: Option<Vec<Hash>>,
) -> Result<ChunkLayout, LogError> {
    if value.first() == Some(&COMPRESSED_CHUNK_TAG) {
        let corrupt = |what: &str| LogError::Corrupt(format!("chunk at {first_position}: {what}"));
        let raw_len = value
            .get(1..5)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or_else(|| corrupt("bad compressed header"))?;
        if raw_len > RAW_CHUNK_BYTES_MAX || raw_len == 0 {
            return Err(corrupt("implausible raw length"));
        }
        // Straight into the chunk buffer after its tag (no second copy of the body), and
        // into its spare capacity: zeroing the buffer first was ~2 % of a replay.
        let mut raw = Vec::with_capacity(raw_len);
        raw.push(CHUNK_TAG);
        let mut out = std::io::Cursor::new(raw);
        out.set_position(1);
        let written = DECOMPRESSOR
            .with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot = zstd::bulk::Decompressor::new().ok();
                }
                match slot.as_mut() {
                    Some(d) => d.decompress_to_buffer(&value[5..], &mut out),
                    None => zstd::bulk::Decompressor::new()
                        .and_then(|mut d| d.decompress_to_buffer(&value[5..], &mut out)),
                }
            })
            .map_err(|e| corrupt(&format!("undecompressable: {e}")))?;
        let raw = out.into_inner();
        if written != raw_len - 1 || raw.len() != raw_len {
            return Err(corrupt("raw length mismatch"));
        }
        let mut layout = parse_raw_chunk(first_position, &raw, known)?;
        layout.raw = Some(raw);
        return Ok(layout);
    }
    parse_raw_chunk(first_position, value, known)
}

fn parse_raw_chunk(
    first_position: u64,
    value: &[u8],
    known: Option<Vec<Hash>>,
) -> Result<ChunkLayout, LogError> {
    let corrupt = |what: &str| LogError::Corrupt(format!("chunk at {first_position}: {what}"));
    if value.len() < 1 + 32 + 4 + 32 || value[0] != CHUNK_TAG {
        return Err(corrupt("bad header"));
    }
    let prev_hash: Hash = value[1..33].try_into().expect("32 bytes");
    let count = u32::from_le_bytes(value[33..37].try_into().expect("4 bytes"));
    if count == 0 {
        return Err(corrupt("empty chunk"));
    }
    let body_end = value.len() - 32;
    let stored_last: Hash = value[body_end..].try_into().expect("32 bytes");
    let known = known.filter(|k| k.len() == count as usize && k.last() == Some(&stored_last));
    let computing = known.is_none();
    let mut offset = 37;
    let mut hash = prev_hash;
    let mut spans = Vec::with_capacity(count as usize);
    let mut hashes = known.unwrap_or_else(|| Vec::with_capacity(count as usize));
    for index in 0..u64::from(count) {
        if offset + 4 > body_end {
            return Err(corrupt("truncated length"));
        }
        let len =
            u32::from_le_bytes(value[offset..offset + 4].try_into().expect("4 bytes")) as usize;
        offset += 4;
        if offset + len > body_end {
            return Err(corrupt("truncated event"));
        }
        if computing {
            hash = chain_hash(&hash, first_position + index, &value[offset..offset + len]);
            hashes.push(hash);
        }
        spans.push((offset, len));
        offset += len;
    }
    if offset != body_end {
        return Err(corrupt("trailing bytes"));
    }
    if computing && hash != stored_last {
        return Err(corrupt("hash chain mismatch (event bytes altered)"));
    }
    Ok(ChunkLayout {
        first_position,
        prev_hash,
        spans,
        hashes,
        raw: None,
        categories: CategoryCache::default(),
    })
}

/// Parses and decodes every event of a chunk.
pub fn decode_chunk(first_position: u64, value: &[u8]) -> Result<Vec<LoggedEvent>, LogError> {
    let layout = parse_chunk(first_position, value)?;
    (0..layout.len()).map(|i| layout.decode(value, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64) -> StoredEvent {
        StoredEvent {
            position,
            stream: "customer-1".into(),
            revision: position - 1,
            event_id: [position as u8; 16],
            event_type: "CustomerRegistered".into(),
            schema_version: 1,
            recorded_at_us: 1_700_000_000_000_000,
            occurred_at_us: 1_700_000_000_000_000,
            correlation_id: String::new(),
            causation_id: String::new(),
            actor: String::new(),
            source_channel: String::new(),
            metadata: vec![("k".into(), "v".into())],
            payload: vec![1, 2, 3],
        }
    }

    #[test]
    fn chunk_round_trip_recomputes_the_chain() {
        let mut builder = ChunkBuilder::new(ZERO_HASH);
        let mut hash = ZERO_HASH;
        for position in 1..=3 {
            let bytes = event(position).encode();
            hash = chain_hash(&hash, position, &bytes);
            builder.push(&bytes, hash);
        }
        let value = builder.finish();
        let layout = parse_chunk(1, &value).unwrap();
        assert_eq!(layout.len(), 3);
        assert_eq!(layout.last_hash(), hash);
        let events = decode_chunk(1, &value).unwrap();
        assert_eq!(events[2].event, event(3));
        assert_eq!(events[2].hash, hash);
    }

    #[test]
    fn an_event_encoded_into_the_chunk_is_the_event_pushed_encoded() {
        let (mut pushed, mut encoded) =
            (ChunkBuilder::new(ZERO_HASH), ChunkBuilder::new(ZERO_HASH));
        let (mut a, mut b) = (ZERO_HASH, ZERO_HASH);
        for position in 1..=40 {
            let mut e = event(position);
            // Long enough for bincode's multi-byte lengths, compressible enough to pack.
            e.payload = vec![position as u8; 300 * position as usize];
            let bytes = e.encode();
            a = chain_hash(&a, position, &bytes);
            pushed.push(&bytes, a);
            b = encoded.push_event(&e, &b);
            assert_eq!(a, b);
        }
        assert_eq!(pushed.finish_parsed(1), encoded.finish_parsed(1));
    }

    #[test]
    fn the_writers_layout_is_what_a_reader_parses() {
        // 20 events compress; 1 event is stored raw (below the compression threshold).
        for count in [20u64, 1] {
            let mut builder = ChunkBuilder::new(ZERO_HASH);
            let mut hash = ZERO_HASH;
            for position in 5..5 + count {
                let bytes = event(position).encode();
                hash = chain_hash(&hash, position, &bytes);
                builder.push(&bytes, hash);
            }
            let (stored, layout) = builder.finish_parsed(5);
            assert_eq!(stored[0] == COMPRESSED_CHUNK_TAG, count == 20);
            let parsed = parse_chunk(5, &stored).unwrap();
            assert_eq!(layout, parsed);
            assert_eq!(
                layout.decode(&stored, 0).unwrap(),
                parsed.decode(&stored, 0).unwrap()
            );
        }
    }

    #[test]
    fn known_hashes_are_taken_only_when_they_fit_the_chunk() {
        for count in [3u64, 20] {
            let stored = compress_chunk(builder_raw(count));
            assert_eq!(stored[0] == COMPRESSED_CHUNK_TAG, count == 20);
            let computed = parse_chunk(1, &stored).unwrap();
            // The right hashes: the same layout, hashes taken as they are.
            let known = computed.hashes.clone();
            assert_eq!(
                parse_chunk_known(1, &stored, Some(known.clone())).unwrap(),
                computed
            );
            // Too few, too many, or a last hash the chunk does not store: recomputed.
            let mut wrong = known.clone();
            wrong.pop();
            assert_eq!(
                parse_chunk_known(1, &stored, Some(wrong.clone())).unwrap(),
                computed
            );
            wrong = known.clone();
            wrong.push([9; 32]);
            assert_eq!(
                parse_chunk_known(1, &stored, Some(wrong.clone())).unwrap(),
                computed
            );
            wrong = known.clone();
            *wrong.last_mut().unwrap() = [9; 32];
            assert_eq!(
                parse_chunk_known(1, &stored, Some(wrong.clone())).unwrap(),
                computed
            );
            // Known hashes never excuse a damaged chunk's structure.
            let mut raw = builder_raw(count);
            raw.push(0);
            let body_end = raw.len() - 33;
            raw.copy_within(body_end..body_end + 32, body_end + 1);
            raw[body_end] = 0;
            assert!(parse_chunk_known(1, &raw, Some(known.clone())).is_err());
        }
    }

    /// The raw chunk of events 1..=count.
    fn builder_raw(count: u64) -> Vec<u8> {
        let mut builder = ChunkBuilder::new(ZERO_HASH);
        let mut hash = ZERO_HASH;
        for position in 1..=count {
            let bytes = event(position).encode();
            hash = chain_hash(&hash, position, &bytes);
            builder.push(&bytes, hash);
        }
        builder.finish()
    }

    #[test]
    fn an_event_stored_at_the_wrong_key_is_detected() {
        let mut builder = ChunkBuilder::new(ZERO_HASH);
        let bytes = event(1).encode();
        builder.push(&bytes, chain_hash(&ZERO_HASH, 1, &bytes));
        let value = builder.finish();
        // Under key 2 the recomputed hash differs (position is hashed).
        assert!(parse_chunk(2, &value).is_err());
    }

    #[test]
    fn compressed_chunks_read_like_raw_ones() {
        let mut builder = ChunkBuilder::new(ZERO_HASH);
        let mut hash = ZERO_HASH;
        for position in 1..=20 {
            let bytes = event(position).encode();
            hash = chain_hash(&hash, position, &bytes);
            builder.push(&bytes, hash);
        }
        let raw = builder.finish();
        let stored = compress_chunk(raw.clone());
        assert_eq!(stored[0], COMPRESSED_CHUNK_TAG);
        assert!(stored.len() < raw.len());
        assert_eq!(
            decode_chunk(1, &stored).unwrap(),
            decode_chunk(1, &raw).unwrap()
        );
        assert_eq!(parse_chunk(1, &stored).unwrap().last_hash(), hash);
        let mut damaged = stored.clone();
        let last = damaged.len() - 3;
        damaged[last] ^= 0x55;
        assert!(parse_chunk(1, &damaged).is_err());
        // A header that lies about the raw length is corrupt (the body is decompressed
        // into a buffer of the claimed size), never a panic.
        for claimed in [raw.len() - 1, raw.len() + 1, 1] {
            let mut lying = stored.clone();
            lying[1..5].copy_from_slice(&(claimed as u32).to_le_bytes());
            assert!(matches!(parse_chunk(1, &lying), Err(LogError::Corrupt(_))));
        }
    }

    #[test]
    fn a_borrowed_view_decodes_to_the_owned_event() {
        let mut rich = event(3);
        rich.correlation_id = "corr".into();
        rich.causation_id = "cause".into();
        rich.actor = "pos-7".into();
        rich.source_channel = "web".into();
        rich.metadata = vec![("a".into(), "1".into()), ("b".into(), String::new())];
        rich.payload = (0..=255).collect();
        let events = [event(1), event(2), rich];
        let mut builder = ChunkBuilder::new(ZERO_HASH);
        let mut hash = ZERO_HASH;
        for e in &events {
            let bytes = e.encode();
            assert_eq!(StoredEventView::decode(&bytes).unwrap(), e.view());
            assert_eq!(
                StoredEventView::decode(&bytes).unwrap().to_owned_event(),
                *e
            );
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(StoredEventView::decode(&longer).is_err());
            for cut in 0..bytes.len() {
                assert!(StoredEventView::decode(&bytes[..cut]).is_err());
            }
            hash = chain_hash(&hash, e.position, &bytes);
            builder.push(&bytes, hash);
        }
        for value in [builder.finish(), {
            let mut b = ChunkBuilder::new(ZERO_HASH);
            let mut h = ZERO_HASH;
            for e in &events {
                let bytes = e.encode();
                h = chain_hash(&h, e.position, &bytes);
                b.push(&bytes, h);
            }
            compress_chunk(b.finish())
        }] {
            let layout = parse_chunk(1, &value).unwrap();
            for (index, e) in events.iter().enumerate() {
                assert_eq!(layout.view(&value, index).unwrap(), e.view());
                assert_eq!(layout.decode(&value, index).unwrap().event, *e);
            }
            // A chunk parsed as starting elsewhere: its events claim other positions.
            let shifted = parse_chunk(1, &value).map(|mut l| {
                l.first_position = 2;
                l
            });
            assert!(shifted.unwrap().view(&value, 0).is_err());
        }
    }

    #[test]
    fn a_flipped_byte_is_detected() {
        let mut builder = ChunkBuilder::new(ZERO_HASH);
        let bytes = event(1).encode();
        builder.push(&bytes, chain_hash(&ZERO_HASH, 1, &bytes));
        let mut value = builder.finish();
        let payload_byte = value.len() - 32 - 2;
        value[payload_byte] ^= 0xff;
        assert!(matches!(parse_chunk(1, &value), Err(LogError::Corrupt(_))));
    }

    #[test]
    fn the_categories_of_this_project_have_bits_of_their_own() {
        let categories = [
            "bench",
            "customer",
            "deal",
            "lead",
            "account",
            "segment",
            "member",
            "reward",
            "loyalty_programme",
            "task",
            "loyalty",
            "order",
            "contact",
            "case",
            "campaign",
        ];
        let mask = categories.iter().fold(0, |mask, c| mask | category_bit(c));
        assert_eq!(mask.count_ones() as usize, categories.len());
    }
}

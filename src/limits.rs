//! Every bound of the system, with its unit and the reason for it.
//!
//! Inputs beyond a limit are refused with a clear status before anything changes;
//! page sizes above the cap are capped, not refused (DESIGN §5 fine print).

/// Largest gRPC message the server decodes or encodes, in bytes. A bigger request is
/// refused by the transport with `RESOURCE_EXHAUSTED` before it reaches a handler.
/// 4 MiB holds a full append of [`EVENTS_PER_APPEND_MAX`] typical (~300 B) events with room
/// to spare and keeps one request's memory small next to the writer queue.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// Events in one append. Large imports split into several appends; one append is one
/// all-or-nothing unit, and the writer must hold it in memory while it checks it.
pub const EVENTS_PER_APPEND_MAX: usize = 1_000;

/// Encoded size of one event body (the bincode payload of the domain event), in bytes.
/// CRM facts are small; a body this large is almost certainly a blob that belongs in
/// object storage with a reference in the event.
pub const PAYLOAD_BYTES_MAX: usize = 64 * 1024;

/// Length of a stream name `<category>-<id>`, in bytes.
pub const STREAM_NAME_BYTES_MAX: usize = 128;

/// Length of an event type name (custom types included), in bytes.
pub const EVENT_TYPE_BYTES_MAX: usize = 128;

/// Entries in one event's metadata map.
pub const METADATA_ENTRIES_MAX: usize = 64;

/// Length of one metadata key, in bytes.
pub const METADATA_KEY_BYTES_MAX: usize = 128;

/// Length of one metadata value, in bytes.
pub const METADATA_VALUE_BYTES_MAX: usize = 4 * 1024;

/// Length of correlation id, causation id, actor and source channel, in bytes.
pub const ENVELOPE_STRING_BYTES_MAX: usize = 256;

/// Length of an ordinary string field inside a typed event (names, subjects, skus), in bytes.
pub const FIELD_BYTES_MAX: usize = 1_024;

/// Length of a free-text field inside a typed event (an interaction summary), in bytes.
pub const TEXT_BYTES_MAX: usize = 16 * 1024;

/// Length of a key in a typed event (a preference key, a custom field key, a tag), in
/// bytes: keys are identifiers, not text, and index entries are built from them.
pub const KEY_BYTES_MAX: usize = 64;

/// Consent changes kept per purpose in a profile; older ones drop out of the profile
/// (they stay in the log, where the timeline and as-of queries still see them).
pub const CONSENT_HISTORY_MAX: usize = 64;

/// Merge hops followed when resolving a merged customer id to its survivor. Merging into
/// a merged customer is refused, so real chains are short; this bounds a corrupt one.
pub const MERGE_DEPTH_MAX: usize = 32;

/// Largest money amount in one event (a price, an order total, a refund), in minor
/// units: 10^15 (ten trillion in a two-decimal currency). Far above any real order, and
/// small enough that sums over millions of events stay far from `i64::MAX` (9.2 × 10^18).
pub const AMOUNT_MINOR_MAX: i64 = 1_000_000_000_000_000;

/// Items in a repeated field inside a typed event (emails, phones, order lines, external ids).
pub const REPEATED_ITEMS_MAX: usize = 256;

/// Nesting depth of a custom event's JSON-like data. Bounds recursion while converting it.
pub const CUSTOM_DATA_DEPTH_MAX: usize = 32;

/// Events returned by one read when the client asks for 0 (the default page).
pub const READ_PAGE_DEFAULT: u32 = 100;

/// Events returned by one read at most; a larger `max_count` is capped to this.
pub const READ_PAGE_MAX: u32 = 1_000;

/// Bytes of one `ReadStream` / `ReadAll` page: it stops before the events' stored bytes,
/// and again before their encoded message, pass this (always one event, whatever its
/// size). 1 000 events near the payload limit would be 64 MiB; half the message limit
/// leaves room for a page's protobuf framing and keeps a client's default 4 MiB decode
/// limit safe. `next_cursor` continues after the cut.
pub const READ_PAGE_BYTES_MAX: usize = MESSAGE_BYTES_MAX / 2;

/// Events a filtered `ReadAll` page examines before it returns what it has found, so a
/// filter that matches nothing cannot turn one request into a full scan of the log.
pub const READ_SCAN_EVENTS_MAX: usize = 20_000;

/// Stream prefixes or event types in one filter.
pub const FILTER_ITEMS_MAX: usize = 64;

/// Bytes of `EventStore` request bodies the server holds at once, from the first byte
/// received until the call is answered (a queued append holds its events that long):
/// 256 MiB, 64 full-size appends. Past it a call is refused at once with
/// `RESOURCE_EXHAUSTED`, so many clients (or one with many streams) cannot grow memory
/// without bound before the bounded writer queue is even reached.
pub const REQUEST_BYTES_IN_FLIGHT_MAX: usize = 256 * 1024 * 1024;

/// Bytes of `ReadStream` / `ReadAll` answers the server holds at once, from the page
/// read until the client has taken it (HTTP/2 flow control holds a page a slow client
/// does not read): 512 MiB, 256 full pages. Past it a read is refused with
/// `RESOURCE_EXHAUSTED`.
pub const RESPONSE_BYTES_IN_FLIGHT_MAX: usize = 512 * 1024 * 1024;

/// Concurrent HTTP/2 streams (calls) one connection may open: each holds state and up to
/// a stream window of buffered request bytes. hyper's own default is 200; tonic lifts it
/// unless it is set.
pub const HTTP2_STREAMS_PER_CONNECTION_MAX: u32 = 1_024;

/// Appends waiting for the writer. When full, an append waits up to
/// [`APPEND_QUEUE_WAIT_MS_MAX`] for room and then fails with `RESOURCE_EXHAUSTED`, so a
/// burst of clients can never grow memory without bound.
pub const APPEND_QUEUE_DEPTH_MAX: usize = 4_096;

/// How long an append waits for room in a full writer queue, in milliseconds.
pub const APPEND_QUEUE_WAIT_MS_MAX: u64 = 2_000;

/// Appends one group commit takes from the queue at most.
pub const GROUP_COMMIT_APPENDS_MAX: usize = 1_024;

/// Events one group commit writes at most (it stops draining once past this).
pub const GROUP_COMMIT_EVENTS_MAX: usize = 8_192;

/// Encoded events packed into one stored chunk, in bytes. A chunk closes once it reaches
/// this size. The first read of one event re-hashes its whole chunk (the chain check; a
/// read again finds the hashes kept, [`CHUNK_HASH_CACHE_BYTES`]) and every read
/// decompresses it, so a chunk must stay small; 8 KiB (~25 events of ~300 B) still turns
/// ~25 sled inserts into one, and keeps chunks far below sled's large-value threshold
/// (values past it become a blob file each).
pub const CHUNK_BYTES_TARGET: usize = 8 * 1024;

/// Encoded batches buffered between the disk readers and the network for one
/// subscription. With one batch being sent and [`SUBSCRIPTION_READS_AHEAD`] being read
/// and encoded, a subscription holds at most 5 batches (~5 × [`SUBSCRIPTION_READ_BYTES`]
/// plus protobuf overhead); a slow subscriber blocks its own readers at this depth, and
/// nothing else waits for it.
pub const SUBSCRIPTION_BUFFER_BATCHES: usize = 2;

/// Positions in the window one subscription step reads from disk and encodes (so at most
/// this many events per step). Larger steps keep the readers busy between hand-offs: 1024
/// replayed 1.1–1.3× faster than 256 (BENCHMARKS.md).
pub const SUBSCRIPTION_READ_BATCH: u32 = 1_024;

/// Steps one subscription reads and encodes at once (each on a blocking thread): two
/// keep both cores busy during a replay; three measured 1.02–1.05× on a receive-only
/// replay but 0.95× with a decoding client, which needs the cores too.
pub const SUBSCRIPTION_READS_AHEAD: usize = 2;

/// Stored bytes one subscription reads per step, at most (a step holds one event at
/// least): with large events a step ends before [`SUBSCRIPTION_READ_BATCH`], so what a
/// subscription buffers stays bounded by bytes (~1024 events of ~300 B fit).
pub const SUBSCRIPTION_READ_BYTES: usize = 512 * 1024;

/// Concurrent subscriptions; one more is refused with `RESOURCE_EXHAUSTED`.
pub const SUBSCRIPTIONS_MAX: usize = 1_024;

/// Journal bytes after which the writer checkpoints (flushes sled durably and empties
/// the journal). Bounds the journal on disk and the replay work when the log opens after
/// a crash; a checkpoint costs one sled flush, so it should be rare.
pub const JOURNAL_CHECKPOINT_BYTES: u64 = 64 * 1024 * 1024;

/// Stream index runs held in memory (the tail, ~100 bytes each with its stream's name)
/// after which the writer checkpoints even if the journal is not full: bounds the tail's
/// memory (~25 MiB, twice that while the runs the last checkpoint froze move into sled)
/// and what opening after a crash re-derives. About the journal's own cadence for
/// single-event appends to distinct streams.
pub const STREAM_TAIL_RUNS_MAX: usize = 262_144;

/// Runs packed into one stream index entry (12 bytes each): a checkpoint rewrites a
/// stream's last entry to extend it, so the entry stays small (384 bytes), while a
/// stream of many appends still takes one sled entry per 32 of them, not one each.
pub const STREAM_ENTRY_RUNS_MAX: usize = 32;

/// Events of a `ReadStream` page read and encoded on the async worker that took the
/// call, before the rest of a longer page goes to a blocking thread: at most this many
/// chunk reads (tens of µs when sled has them cached), and only when the stream's newest
/// entry is durable (otherwise finding the page can take as long as the stream is).
/// Without it, every call handed its read to the blocking pool and back: streams of 10
/// took 1.2–1.4× the server CPU per event they take now (BENCHMARKS.md), and most
/// customer streams are this short.
pub const READ_INLINE_EVENTS: usize = 16;

/// Memory for the chain hashes the log keeps for chunks it has read or written: 32 bytes
/// an event plus ~100 bytes a chunk (its key, map and queue entries, the allocation), so
/// ~1.9M events in chunks of many events (a batched log, 25 events a chunk) and ~500k in
/// chunks of one (single-event appends). A chunk read again (a replay, a customer's
/// stream read again, a projection catching up) takes its events' hashes from here
/// instead of re-hashing the whole chunk: BLAKE3 was 15–20 % of a replay's server CPU,
/// and stream reads of a spread log took 1.15–1.4× longer. The first read of a chunk in
/// a process still recomputes and checks its chain; sled checks the CRC of every page it
/// reads from disk. Oldest chunks go first past the limit.
pub const CHUNK_HASH_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Streams whose head (last revision and position) the writer keeps in memory, so the
/// expectation check of a busy stream costs no sled lookup. Past this the cache is
/// cleared and refills from sled; memory stays bounded whatever the number of streams.
pub const STREAM_HEAD_CACHE_ENTRIES: usize = 100_000;

/// Memory for each of the writer's filters of known keys (event ids, stream names; 16
/// bits per key: this is 256 Mi keys). Past it a filter stops growing; it then sends more
/// new keys to a sled lookup, never a wrong answer.
pub const KEY_FILTER_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Event ids the id index holds in memory (its tail) before the writer seals them into
/// a sorted run on disk. Bounds that memory (~2 MiB) and the events opening the log reads
/// back to refill it; larger tails mean fewer, larger runs.
pub const ID_TAIL_ENTRIES: usize = 32_768;

/// Runs of one level of the id index merged into one run of the next level: an id is
/// rewritten once per level (about log8 of the log's size over the tail), and a lookup
/// that passes the writer's filter reads at most this many runs per level.
pub const ID_RUN_FANOUT: usize = 8;

/// Entries (24 bytes each) per block of an id run: one sled value of 3 KiB, the size of
/// a compressed chunk of events.
pub const ID_BLOCK_ENTRIES: usize = 128;

/// The largest block an id index shape may ask for (24 KiB values).
pub const ID_BLOCK_ENTRIES_MAX: usize = 1_024;

/// Groups written to the journal and waiting for the syncer's fdatasync. When the disk
/// is this far behind, the writer waits instead of writing further ahead.
pub const UNSYNCED_GROUPS_MAX: usize = 64;

/// How long a shutdown waits for open requests and streams to finish, in milliseconds,
/// before it drops the remaining connections. Appends finish in milliseconds; only a
/// client that stopped reading a subscription needs this bound.
pub const SHUTDOWN_DRAIN_MS_MAX: u64 = 3_000;

/// How long an in-process (re)start waits for a data directory that reads as locked,
/// in milliseconds: sled's background threads let go of a just-closed directory's lock
/// a few milliseconds late.
pub const REOPEN_WAIT_MS_MAX: u64 = 2_000;

/// Size of a master key file read at most, in bytes. A key file is 64 hex characters and
/// a newline; a bigger file is a wrong path, and is not read into memory whole.
pub const MASTER_KEY_FILE_BYTES_MAX: usize = 1_024;
/// Wanted events one projection batch applies at most. A batch is one sled `apply_batch`
/// (state and checkpoint together): large enough that the commit cost is spread over
/// thousands of events, small enough that its pending writes stay a few MiB.
pub const PROJECTION_BATCH_EVENTS_MAX: usize = 4_096;

/// Encoded bytes of events (payload, names, metadata) one projection batch holds, about:
/// bounds a batch's memory when events are large.
pub const PROJECTION_BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// Positions one projection batch examines at most. A projection whose filter matches
/// few events still commits its checkpoint every this many positions, so a restart never
/// rescans far and a batch never turns into a full scan of the log.
pub const PROJECTION_BATCH_SCAN_MAX: u64 = 65_536;

/// Events per log read inside a projection batch (several reads make one batch).
pub const PROJECTION_READ_PAGE_EVENTS: usize = 1_024;

/// How long a read-your-writes query waits for a projection to apply its `min_position`,
/// in milliseconds, whatever the caller asks: a request must not hold a server task for
/// longer than a client would reasonably wait.
pub const PROJECTION_WAIT_MS_MAX: u64 = 10_000;

/// How long a shutdown waits for the projection runners to finish their batch, in
/// milliseconds. A batch is bounded, so this is only reached by a stuck fold.
pub const PROJECTION_SHUTDOWN_MS_MAX: u64 = 5_000;

/// Interval between two progress messages of `WatchProjection`, in milliseconds: often
/// enough for a progress bar, rare enough to cost nothing.
pub const PROJECTION_WATCH_INTERVAL_MS: u64 = 200;

/// Progress messages buffered for one `WatchProjection` stream; a client that stops
/// reading blocks only its own stream.
pub const PROJECTION_WATCH_BUFFER: usize = 4;

/// Rows of each table `GetLogStats` returns at most (event types, stream categories),
/// so one reply stays far below the message limit.
pub const LOG_STATS_ROWS_MAX: usize = 1_000;

/// Events of one customer stream a command or a timeline reads to fold the customer's
/// state. A customer with more is refused (`RESOURCE_EXHAUSTED`) rather than folded
/// without bound; real customers have thousands at most.
pub const CUSTOMER_STREAM_EVENTS_MAX: usize = 1_000_000;

/// Times a customer command is decided again after a concurrent write to one of its
/// streams, before `ABORTED` asks the client to retry.
pub const WRITE_RETRIES_MAX: usize = 8;

/// Longest a read waits for its `min_position` when the request carries no deadline,
/// in milliseconds (a deadline shorter than this bounds the wait instead).
pub const READ_WAIT_MS_MAX: u64 = 5_000;

/// Categories listed in a profile's purchase summary (most units first).
pub const TOP_CATEGORIES_MAX: usize = 10;

/// Streams (a survivor and its merged duplicates) folded together for one customer.
pub const MERGED_STREAMS_MAX: usize = 256;

/// Default page size of customer lists and timelines.
pub const LIST_PAGE_DEFAULT: usize = 50;

/// Largest page size of customer lists and timelines; larger requests are capped.
pub const LIST_PAGE_MAX: usize = 500;

/// Profiles one `ListCustomers` call examines before it returns what it has with a page
/// token: a selective filter pages through the customers instead of scanning them all in
/// one request.
pub const LIST_SCAN_MAX: usize = 20_000;

/// Customers one `rapport seed` writes at most: 10 million customers is ~300 million
/// events, far past any test or bench; a bigger number is a typo, not a wish.
pub const SEED_CUSTOMERS_MAX: u64 = 10_000_000;

/// Default page size of `ListCustomerRfm`.
pub const RFM_PAGE_DEFAULT: usize = 100;

/// Largest page size of `ListCustomerRfm`; larger requests are capped.
pub const RFM_PAGE_MAX: usize = 1_000;

/// Orders per batch of `rapport import purchases` offline: a batch's new customers get
/// their data keys in one key-store call (one write per key shard), and a customer's
/// orders of one batch go to the log as one stream append, so larger batches mean less
/// work per order (65 536: 1M rows in ~10 s instead of ~17 s with 16 384); the reader
/// stays at most two batches ahead, so memory stays bounded (~30 MB per batch).
pub const IMPORT_BATCH_ORDERS: usize = 65_536;

/// Rows per batch of the other import kinds (customers, events).
pub const IMPORT_BATCH_ROWS: usize = 4_096;

/// Stream appends per multi-stream append of an offline import: large enough that the
/// log's writer commits big groups, small enough that a refused pack is cheap to redo
/// unit by unit.
pub const IMPORT_APPENDS_PER_WRITE: usize = 512;

/// Multi-stream appends of an offline import in flight at once (below the log's queue
/// depth, so the queue never refuses them).
pub const IMPORT_WRITES_IN_FLIGHT: usize = 16;

/// How often an import waits out a full append queue before giving up.
pub const IMPORT_OVERLOAD_RETRIES: u32 = 200;

/// Reservations an import remembers (external ids, emails, phones → holder); past it
/// the cache is cleared, once the log has every write so far.
pub const IMPORT_CACHE_MAX: usize = 500_000;

/// Bad rows whose reasons an import reports (the rest are counted).
pub const IMPORT_REASONS_MAX: usize = 20;

/// Longest line of an events file (JSON of one event and its envelope).
pub const IMPORT_LINE_BYTES_MAX: usize = 1 << 20;

/// Orders (purchases) or customers imported concurrently through a server.
pub const IMPORT_SERVER_IN_FLIGHT: usize = 32;

/// Default number of first-purchase cohorts `GetKpis` returns (the latest ones).
pub const KPI_COHORTS_DEFAULT: usize = 24;

/// Most cohorts `GetKpis` returns: ten years of months.
pub const KPI_COHORTS_MAX: usize = 120;

/// Length of a segment rule, in bytes.
pub const SEGMENT_RULE_BYTES_MAX: usize = 4_096;

/// Nesting of a segment rule (parentheses and `not`): bounds the parser's recursion.
pub const SEGMENT_RULE_DEPTH_MAX: usize = 32;

/// Customer ids a `PreviewSegment` returns as a sample.
pub const SEGMENT_SAMPLE_MAX: usize = 100;

/// Shortest pause between two evaluations of the segment job, in milliseconds: a busy
/// log moves its head constantly, and one evaluation reads every profile.
pub const SEGMENT_EVALUATION_MIN_MS: u64 = 200;

/// Longest pause between two evaluations of the segment job, in milliseconds: recency
/// rules change their answer as time passes, with no event to wake the job.
pub const SEGMENT_TICK_MS: u64 = 1_000;

/// Longest prediction horizon of `ListCustomerValue`, in days: the conditional
/// expectation's series is only evaluated within its validated range.
pub const CLV_HORIZON_DAYS_MAX: u32 = 3_650;

/// Rules of a custom RFM segment grid in one request.
pub const RFM_GRID_RULES_MAX: usize = 64;

/// Clock time between two full sweeps of time-dependent segment rules (recency, and
/// amounts that only count orders up to the evaluation time), in microseconds: between
/// sweeps the segment job re-evaluates only the customers that received events.
pub const SEGMENT_TIME_SWEEP_US: i64 = 60_000_000;

/// Changed customers beyond which a segment round evaluates everyone instead of reading
/// the changes one by one.
pub const SEGMENT_INCREMENTAL_CUSTOMERS_MAX: usize = 50_000;

/// How long a projection runner woken by a new head waits before reading, in
/// milliseconds, so that several appends are read (and committed) in one step: each
/// runner reads everything it follows, and reading per event took a seventh of the
/// server's CPU under load. Any read of the projection cuts the gather short: one with a
/// `min_position`, and one without, which sees every event durable when it asked
/// ([`crate::projections::Projections::wait_for`]), so the gather delays no reader's view.
/// 20 ms against 2 ms: single-event appends 1.05–1.25× (2026-12-04), medians 1.13× at one
/// client and 1.14× at 64 (2026-12-07, BENCHMARKS.md).
pub const PROJECTION_FOLLOW_GATHER_MS: u64 = 20;

/// How far behind the head (positions) a projection may be for a read without a
/// `min_position` to wait until it has caught up: one step's scan
/// ([`PROJECTION_BATCH_SCAN_MAX`]). Further behind, it is catching up or rebuilding, and
/// the read answers at once with what it has.
pub const PROJECTION_IMPLICIT_LAG_MAX: u64 = PROJECTION_BATCH_SCAN_MAX;

/// The longest a read without a `min_position` waits for its projection to catch up with
/// the head (ms) before answering with what it has: a following runner takes one step,
/// milliseconds; this bounds the wait when it is slow.
pub const PROJECTION_IMPLICIT_WAIT_MS: u64 = 500;

// --- Loyalty (issue 5) -------------------------------------------------------------------

/// Earning multipliers plus bonuses in one programme version. Every purchase is checked
/// against each of them; a programme is a handful of rules, not a price list.
pub const LOYALTY_RULES_MAX: usize = 100;

/// Tiers in a programme (bronze, silver, gold, ... fits comfortably).
pub const LOYALTY_TIERS_MAX: usize = 16;

/// Programme versions kept (defined + changes): each decision looks up the version in
/// force at the source event's business time, so the history is read whole.
pub const LOYALTY_PROGRAMME_VERSIONS_MAX: usize = 1_000;

/// Points in one command or credit: far above any real balance, far below `i64::MAX`,
/// so sums over a member's whole ledger never overflow.
pub const LOYALTY_POINTS_MAX: u64 = 1_000_000_000_000;

/// Days in a holding period, a points lifetime or a tier window (in months × 31).
pub const LOYALTY_DAYS_MAX: u32 = 36_600;

/// Default page of `GetLedger` / `ListMembers`.
pub const LOYALTY_PAGE_DEFAULT: usize = 50;

/// Largest page of `GetLedger` / `ListMembers` (larger requests are capped).
pub const LOYALTY_PAGE_MAX: usize = 500;

/// Members one `ListMembers` call examines (its filters are on values that depend on the
/// query time, so they are not indexed): past this the page ends early with a token.
pub const LOYALTY_LIST_SCAN_MAX: usize = 20_000;

/// Months of per-period figures in `GetProgrammeStats`.
pub const LOYALTY_STATS_MONTHS_MAX: u32 = 60;

/// Ledger events of one member stream the services fold: a member earns on every
/// purchase, so this is a generous bound on one person's history.
pub const LOYALTY_MEMBER_EVENTS_MAX: usize = 200_000;

/// Log events the loyalty policy reads per round before it saves its checkpoint.
pub const LOYALTY_POLICY_PAGE: usize = 1_000;

/// Points events the loyalty policy stages before appending them in one atomic
/// multi-stream append: one group commit (one fsync) for a batch of sources instead of
/// one per source, and a bound on the append's memory.
pub const LOYALTY_POLICY_BATCH_EVENTS: usize = 500;

/// How often the loyalty job inside `serve` runs the time tick (expiry, tiers), in
/// milliseconds of wall time; the policy runs whenever the head moves. Expiry and tiers
/// move on day boundaries in practice, and each tick scans every member of the read
/// model, so once a minute is plenty (`Loyalty.RunTick` runs one on demand).
pub const LOYALTY_TICK_MS: u64 = 60_000;

/// Members one tick batch decides before appending their expiries and tier changes in
/// one atomic multi-stream append (one group commit per batch, not per member).
pub const LOYALTY_TICK_BATCH_MEMBERS: usize = 256;

/// Ledger lines (and, separately, tier spend entries) in one `LedgerMerged` event. A
/// part is also cut at [`LOYALTY_MERGE_PART_BYTES`] of estimated payload, so its payload
/// stays under [`PAYLOAD_BYTES_MAX`] whatever the lines' strings.
pub const LOYALTY_MERGE_LINES_PER_EVENT: usize = 512;

/// Bytes of lines in one `LedgerMerged` part, each counted at an upper bound of 192 bytes
/// plus its strings. With at most [`LOYALTY_MERGE_LINES_PER_EVENT`] spend entries
/// (≤ 19 bytes each, ~10 KiB) the part stays under [`PAYLOAD_BYTES_MAX`].
pub const LOYALTY_MERGE_PART_BYTES: usize = 48 * 1024;

/// `LedgerMerged` parts of one merge: they go to both streams in one atomic append, so
/// twice this stays below [`EVENTS_PER_APPEND_MAX`]. Real lines (short rule and order
/// strings) are counted at ~210 bytes, ~230 to a part, so that moves ~90 000 lines; a
/// bigger ledger is not moved (the policy logs it, and the duplicate's ledger stays
/// reachable under its own id).
pub const LOYALTY_MERGE_PARTS_MAX: usize = 400;
// --- Sales pipelines (issue 4) ---------------------------------------------------------

/// Length of a stable code (a stage id, a lost or disqualification reason), in bytes:
/// codes are identifiers that reports group by, not text.
pub const PIPELINE_CODE_BYTES_MAX: usize = 64;

/// Stages of one pipeline: a board with more columns than this is not readable, and the
/// board and metrics answers grow with it.
pub const PIPELINE_STAGES_MAX: usize = 32;

/// Currencies one pipeline allows.
pub const PIPELINE_CURRENCIES_MAX: usize = 16;

/// Length of an owner or assignee (a user id), in bytes.
pub const OWNER_BYTES_MAX: usize = 256;

/// Entities (accounts, pipelines, leads, deals, tasks) one pipeline read folds into
/// memory, live or as of a past position: board, forecast and metrics read every deal,
/// so past this many the read is refused with `RESOURCE_EXHAUSTED` rather than taking
/// the server's memory (a sharded, pre-aggregated read model is the next step).
pub const PIPELINE_MODEL_ENTITIES_MAX: usize = 1_000_000;

/// Log events one as-of pipeline read folds at most (it replays the `account-`,
/// `pipeline-`, `lead-`, `deal-` and `task-` streams up to its bound).
pub const PIPELINE_AS_OF_EVENTS_MAX: usize = 5_000_000;

/// Stage spans kept in a deal's history (entered / left); older spans drop out of the
/// read model (the log keeps them). Bounds a deal bounced between stages forever.
pub const DEAL_STAGE_HISTORY_MAX: usize = 256;

/// Default page size of `ListDeals`, `ListLeads` and `ListTasks`.
pub const PIPELINE_PAGE_DEFAULT: usize = 50;

/// Largest page size of the pipeline lists; larger requests are capped.
pub const PIPELINE_PAGE_MAX: usize = 500;

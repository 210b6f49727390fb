#!/usr/bin/env bash
# rapport's side of the peer comparison (BENCHMARKS.md): the same workloads as
# ../shared/peers/bench.sh, on the same machine, in the same sitting.
#   benches/compare.sh            # ~6 min with DUR=15
# Env: DUR (15 s per append and read-stream run), CLIENTS ("1 16 64"), BATCH (100),
#      BATCH_CLIENTS (16), READ_CLIENTS (16),
#      FILL (1000000 events for the read/size/verify figures), PORT (50071),
#      WORK (/tmp/rapport-compare), FSYNC_SECS (5).
# The load generator runs on the same 2 cores as the server, as pgbench does for PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-15}; CLIENTS=${CLIENTS:-1 16 64}; BATCH=${BATCH:-100}; BATCH_CLIENTS=${BATCH_CLIENTS:-16}
READ_CLIENTS=${READ_CLIENTS:-16}; FILL=${FILL:-1000000}; PORT=${PORT:-50071}; WORK=${WORK:-/tmp/rapport-compare}; FSYNC_SECS=${FSYNC_SECS:-5}
BIN=target/release/rapport
cargo build --release -q
rm -rf "$WORK"; mkdir -p "$WORK"
. benches/common.sh

log "fsync probe"
if [ -f ../shared/peers/fsync_probe.c ]; then
  cc -O2 -o "$WORK/fsync_probe" ../shared/peers/fsync_probe.c
  for mode in append overwrite; do
    # The probe prints `mode ops ops_per_s p50_us p99_us max_us`: the rate is the third
    # field (two sittings once read the operation count as the rate).
    read -r _ ops rate p50 p99 max < <("$WORK/fsync_probe" "$WORK/probe.$mode" "$mode" "$FSYNC_SECS" 256)
    echo "fsync probe $mode: $rate fdatasync/s ($ops in ${FSYNC_SECS} s), p50 $p50 us, p99 $p99 us, max $max us"
    rm -f "$WORK/probe.$mode"
  done
fi

log "raw sled ceiling"
"$BIN" bench sled --data-dir "$WORK/sled1" --events 20000 --batch 1
"$BIN" bench sled --data-dir "$WORK/sled100" --events 500000 --batch 100
rm -rf "$WORK/sled1" "$WORK/sled100"

log "appends over gRPC"
"$BIN" serve --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" 2>"$WORK/serve.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q "rapport serving" "$WORK/serve.log" && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT"
for c in $CLIENTS; do
  "$BIN" bench append --server "$URL" --clients "$c" --events-per-request 1 --duration "${DUR}s"
done
# The same 64 clients through tonic's client instead of bare HTTP/2 streams (the default
# --transport h2): what a Rust service's client costs the shared cores.
"$BIN" bench append --server "$URL" --clients 64 --events-per-request 1 --duration "${DUR}s" --transport tonic
"$BIN" bench append --server "$URL" --clients "$BATCH_CLIENTS" --events-per-request "$BATCH" --duration "${DUR}s"
kill -INT $SERVER; wait $SERVER || true
trap - EXIT
head=$("$BIN" verify --data-dir "$WORK/data" | sed -n 's/.* head \([0-9]*\) .*/\1/p')
bytes=$(du -sb "$WORK/data" | cut -f1)
echo "on-disk after the append runs: $bytes bytes / $head events = $((bytes / head)) B/event (the whole directory; a clean shutdown empties the journal)"

log "fill $FILL events (100k streams x 10) for read, size and verify"
"$BIN" bench fill --data-dir "$WORK/fill" --events "$FILL" --batch 10 --streams 100000
echo "on-disk after fill: sled $(du -sb "$WORK/fill/sled" | cut -f1) bytes, journal $(du -sb "$WORK/fill/wal" | cut -f1) bytes"
"$BIN" verify --data-dir "$WORK/fill"
# The fill goes around the server, so its projections have not seen it: build them offline
# first, or the replays below would share the server's cores with a 1M-event catch-up (the
# peer's table has nothing to fold). A server serving its log is in this state.
"$BIN" rebuild --data-dir "$WORK/fill"
# The loyalty policy is not a projection: `rebuild` leaves its checkpoint at 0, and the
# fill's events are in `customer-` streams, which it follows. A first serve would scan the
# whole log (~1.5 s of CPU) while the cold replay runs, and warm the chunks' hashes as it
# goes. Serve once until the server is idle (the jobs caught up), stop, and measure on the
# second start: a restarted server, as a real one is.
"$BIN" serve --data-dir "$WORK/fill" --listen "127.0.0.1:$PORT" 2>"$WORK/settle.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "rapport serving" "$WORK/settle.log" && break; sleep 0.1; done
wait_idle $SERVER
kill -INT $SERVER; wait $SERVER || true
"$BIN" serve --data-dir "$WORK/fill" --listen "127.0.0.1:$PORT" 2>"$WORK/serve2.log" &
SERVER=$!
for _ in $(seq 100); do grep -q "rapport serving" "$WORK/serve2.log" && break; sleep 0.1; done
# First a receive-only replay on the freshly opened server: every chunk is read and its
# chain recomputed for the first time in this process (cold). The runs after it find the
# chunks' hashes kept in memory (limits::CHUNK_HASH_CACHE_BYTES; the 1M fill fits).
echo "cold (first read of every chunk since the server opened):"
"$BIN" bench read --server "$URL" --only raw
"$BIN" bench read --server "$URL"
"$BIN" bench read --server "$URL"
# The peer's read_stream.sql: 16 clients, whole random streams of 10 events. In this fill
# each stream's 10 events are one append, so they sit together in one chunk.
# A smaller FILL writes fewer streams (10 events each): read only those. Twice, as the
# replays: the first run warms sled's cache of the freshly opened fill.
for _ in 1 2; do
  "$BIN" bench read-stream --server "$URL" --clients "$READ_CLIENTS" --streams "$(( FILL / 10 < 100000 ? FILL / 10 : 100000 ))" --duration "${DUR}s"
done
kill -INT $SERVER; wait $SERVER || true

log "spread fill ($FILL events, one per append over 100k streams) for read-stream"
# The peer's load is revision-major: a stream's events are spread over the table. The
# same here: one event per append, streams in turn, so each event of a stream sits in
# another chunk (the layout of a real log, where customers' events interleave).
"$BIN" bench fill --data-dir "$WORK/spread" --events "$FILL" --batch 1 --streams 100000
"$BIN" rebuild --data-dir "$WORK/spread"
"$BIN" serve --data-dir "$WORK/spread" --listen "127.0.0.1:$PORT" 2>"$WORK/serve3.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "rapport serving" "$WORK/serve3.log" && break; sleep 0.1; done
# As above: the loyalty policy first catches up on the fill; measure once it has.
wait_idle $SERVER
for _ in 1 2; do
  "$BIN" bench read-stream --server "$URL" --clients "$READ_CLIENTS" --streams "$(( FILL < 100000 ? FILL : 100000 ))" --duration "${DUR}s"
done
kill -INT $SERVER; wait $SERVER || true

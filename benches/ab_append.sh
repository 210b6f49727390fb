#!/usr/bin/env bash
# One A/B sample of the append path with the binary BIN (BENCHMARKS.md, "The packed stream
# index against 305dc20"): a fresh data directory, 64 single-event clients for DUR seconds,
# then 16 clients in batches of 100 on the same server; the server's CPU over each run
# (/proc/PID/stat, ticks of 10 ms) and sled's bytes per event after a clean stop; then an
# offline fill of FILL events, one per append over 100k streams, and its sled bytes.
# Alternate two binaries in the same minutes and compare the ratios:
#   for i in 1 2 3; do benches/ab_append.sh /tmp/old old; benches/ab_append.sh /tmp/new new; done
# Env: DUR (10), FILL (300000), PORT (50093), WORK (/tmp/rapport-ab).
set -euo pipefail
BIN=$1; TAG=$2
DUR=${DUR:-10}; FILL=${FILL:-300000}; PORT=${PORT:-50093}; W=${WORK:-/tmp/rapport-ab}/$TAG
rm -rf "$W"; mkdir -p "$W"
"$BIN" serve --data-dir "$W/data" --listen "127.0.0.1:$PORT" 2>"$W/serve.log" &
S=$!
trap 'kill $S 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "rapport serving" "$W/serve.log" && break; sleep 0.1; done
URL="http://127.0.0.1:$PORT"
cpu() { awk '{print $14+$15}' "/proc/$S/stat"; }
rate() { grep -o "events/s [0-9]*" | head -1; }
c0=$(cpu)
r64=$("$BIN" bench append --server "$URL" --clients 64 --events-per-request 1 --duration "${DUR}s" 2>&1 | rate)
c1=$(cpu)
rb=$("$BIN" bench append --server "$URL" --clients 16 --events-per-request 100 --duration "${DUR}s" 2>&1 | rate)
c2=$(cpu)
kill -INT $S; wait $S || true
trap - EXIT
head=$("$BIN" verify --data-dir "$W/data" 2>/dev/null | sed -n 's/.* head \([0-9]*\) .*/\1/p')
sled=$(du -sb "$W/data/sled" | cut -f1)
"$BIN" bench fill --data-dir "$W/fill" --events "$FILL" --batch 1 --streams 100000 >/dev/null 2>&1
fill=$(du -sb "$W/fill/sled" | cut -f1)
echo "$TAG 64 clients [$r64] cpu $((c1 - c0)) ticks | batches [$rb] cpu $((c2 - c1)) ticks | sled $((sled / head)) B/event after both | spread fill $((fill / FILL)) B/event"
rm -rf "$W"

#!/usr/bin/env bash
# One fixed-duration A/B sample of appends with the binary BIN (BENCHMARKS.md, the CPU cuts
# and the gather of 2026-12-07): a fresh `rapport serve`, one `bench append` of C clients x E
# events per request for DUR seconds, then its events/s and the server's CPU per event
# (fields 14+15 of /proc/PID/stat over the run, ticks of 10 ms, over the events appended).
# Alternate two binaries in the same minutes and compare the ratios:
#   for i in 1 2 3; do benches/ab_cpu.sh /tmp/old 16 100 6; benches/ab_cpu.sh /tmp/new 16 100 6; done
# Env: PORT (50114), WORK (/tmp/rapport-ab-cpu).
set -euo pipefail
BIN=$1; C=$2; E=$3; DUR=$4
PORT=${PORT:-50114}; W=${WORK:-/tmp/rapport-ab-cpu}
rm -rf "$W"; mkdir -p "$W"
"$BIN" serve --data-dir "$W/data" --listen "127.0.0.1:$PORT" 2>"$W/serve.log" &
S=$!
trap 'kill $S 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "rapport serving" "$W/serve.log" && break; sleep 0.1; done
cpu() { awk '{print $14+$15}' "/proc/$S/stat"; }
c0=$(cpu)
out=$("$BIN" bench append --server "http://127.0.0.1:$PORT" --clients "$C" --events-per-request "$E" --duration "${DUR}s" 2>&1 | grep "events/s")
c1=$(cpu)
events=$(echo "$out" | grep -o "events [0-9]*" | tail -1 | cut -d' ' -f2)
rate=$(echo "$out" | grep -o "events/s [0-9]*" | cut -d' ' -f2)
echo "$BIN clients=$C events/request=$E: events/s $rate  server CPU per event $(awk -v t=$((c1 - c0)) -v n="$events" 'BEGIN {printf "%.2f", t * 10000 / n}') us"
kill -INT $S; wait $S || true
trap - EXIT
rm -rf "$W"

#!/usr/bin/env bash
# Paired comparison against the PostgreSQL peer (BENCHMARKS.md): each workload runs rapport
# (A) and the peer (B) in turn, A B A B ..., on the same 2 cores in the same minutes, and
# reports the ratio A / B pair by pair with its median and range. The disk's sync latency
# and the machine's speed drift by tens of percent within minutes (the peer's own
# 64-client rate ranged 13.6k-18.9k over one evening), so a ratio taken from two runs
# seconds apart holds where one sandwich of whole sittings (compare.sh, bench.sh,
# compare.sh) does not.
#   benches/paired.sh                     # ~12 min with the defaults
# Workloads (WORKLOADS, in this order):
#   replay   the whole 1M-event log read over the network: rapport `bench read --only raw`
#            on a restarted server (cold) and again on the same server (warm), against
#            `psql \copy (SELECT * FROM events ORDER BY position)` of the peer's 1M rows
#   c1       one client, single-event appends: rapport against the peer (known revision)
#   sync     the same rapport run against the disk's fdatasync rate (fsync_probe, a
#            preallocated file overwritten): the issue's "one client >= 50 %" target
#   c64      64 clients, single-event appends, against the peer (known revision)
#   b100     16 clients, batches of 100 events, against the peer (one INSERT of 100 rows)
# Env: PAIRS (5), DUR (8 s per append run), WORKLOADS, PEERS (../shared/peers), PORT
#      (50072), WORK (/tmp/rapport-paired), FILL (1000000), and the peer's PGVER (15),
#      PGPORT (5499), PGROOT (/tmp/pgpeer), DB (events).
# Needs the peer's cluster: this script runs `$PEERS/setup.sh` (which installs PostgreSQL
# when missing and (re)creates the events table) and leaves the cluster running
# (`$PEERS/stop.sh` stops it).
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${PAIRS:-5}; DUR=${DUR:-8}; WORKLOADS=${WORKLOADS:-replay c1 sync c64 b100}
PEERS=${PEERS:-../shared/peers}; PORT=${PORT:-50072}; WORK=${WORK:-/tmp/rapport-paired}
FILL=${FILL:-1000000}
PGVER=${PGVER:-15}; PGBIN=${PGBIN:-/usr/lib/postgresql/$PGVER/bin}; PGPORT=${PGPORT:-5499}
DB=${DB:-events}
BIN=target/release/rapport
URL="http://127.0.0.1:$PORT"
. benches/common.sh

cargo build --release -q
rm -rf "$WORK"; mkdir -p "$WORK"
"$PEERS/setup.sh" >"$WORK/peer-setup.log"
PSQL=("$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d "$DB" -X -q -v ON_ERROR_STOP=1)
PGB=("$PGBIN/pgbench" -h 127.0.0.1 -p "$PGPORT" -U postgres -n -M prepared -j 2 -T "$DUR")
sql() { "${PSQL[@]}" -Atc "$1"; }
# The peer's 200-byte payload, built as its bench.sh builds it.
pre='{"customerId":"c-0042","field":"email","old":"a@example.com","new":"'; suf='"}'
pad=$(head -c 4096 /dev/urandom | tr -dc 'a-z0-9' | head -c $((200 - ${#pre} - ${#suf})) || true)
PAYLOAD="$pre$pad$suf"

SERVER=
stop_server() {
  if [ -n "$SERVER" ]; then kill -INT "$SERVER" 2>/dev/null || true; wait "$SERVER" || true; fi
  SERVER=
}
trap stop_server EXIT
# start_server DIR: `rapport serve` on DIR, waiting until it serves.
start_server() {
  "$BIN" serve --data-dir "$1" --listen "127.0.0.1:$PORT" 2>"$WORK/serve.log" &
  SERVER=$!
  for _ in $(seq 600); do
    grep -q "rapport serving" "$WORK/serve.log" && return 0
    sleep 0.1
  done
  echo "rapport serve on $1 did not start" >&2; exit 1
}

# The A and B of a pair print one rate each (events/s) on stdout.
rapport_append() { # CLIENTS EVENTS_PER_REQUEST
  "$BIN" bench append --server "$URL" --clients "$1" --events-per-request "$2" --duration "${DUR}s" \
    | sed -n 's/.*events\/s \([0-9]*\).*/\1/p'
}
echo 10 >"$WORK/peer-runs"
peer_append() { # CLIENTS EVENTS_PER_TXN SCRIPT: fresh streams each run (base), known revision
  local run; run=$(($(cat "$WORK/peer-runs") + 1)); echo "$run" >"$WORK/peer-runs"
  "${PGB[@]}" -c "$1" -f "$3" -D payload="$PAYLOAD" -D base=$((run * 1000000)) -D n=0 "$DB" 2>&1 \
    | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | awk -v e="$2" '{printf "%.0f\n", $1 * e}'
}
fsync_rate() {
  read -r _ _ rate _ < <("$WORK/fsync_probe" "$WORK/probe" overwrite "$DUR" 256)
  rm -f "$WORK/probe"
  echo "$rate"
}
rapport_replay() {
  "$BIN" bench read --server "$URL" --only raw | sed -n 's/.*= \([0-9]*\) events\/s.*/\1/p' | tail -1
}
peer_replay() {
  local t0 t1
  t0=$(date +%s.%N)
  "${PSQL[@]}" -c "\\copy (SELECT * FROM events ORDER BY position) TO '/dev/null'"
  t1=$(date +%s.%N)
  awk -v n="$PEER_ROWS" -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f\n", n / (b - a)}'
}

# pairs NAME A_LABEL B_LABEL 'A COMMAND' 'B COMMAND' [BEFORE_A]: PAIRS alternated pairs,
# A first in odd pairs and B first in even ones, then the median ratio and its range.
pairs() {
  local name=$1 alabel=$2 blabel=$3 acmd=$4 bcmd=$5 before=${6:-true} i a b ratios=()
  log "$name: $PAIRS pairs"
  for i in $(seq "$PAIRS"); do
    if [ $((i % 2)) -eq 1 ]; then
      eval "$before"; a=$(eval "$acmd"); b=$(eval "$bcmd")
    else
      b=$(eval "$bcmd"); eval "$before"; a=$(eval "$acmd")
    fi
    ratios+=("$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", a / b}')")
    echo "$name pair $i: $alabel $a/s, $blabel $b/s, ratio ${ratios[-1]}"
  done
  printf '%s\n' "${ratios[@]}" | sort -g | awk -v name="$name" '{r[NR] = $1}
    END {m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2;
         printf "%s: median ratio %.2f (min %.2f, max %.2f, %d pairs)\n", name, m, r[1], r[NR], NR}'
}

for w in $WORKLOADS; do
  case $w in
    replay)
      log "fill: $FILL events on both sides"
      "$BIN" bench fill --data-dir "$WORK/fill" --events "$FILL" --batch 10 --streams 100000 >/dev/null
      "$BIN" rebuild --data-dir "$WORK/fill" >/dev/null
      # Serve once until idle (the loyalty policy's catch-up, which `rebuild` leaves), as
      # compare.sh does: the cold runs below restart a settled server.
      start_server "$WORK/fill"; wait_idle "$SERVER"; stop_server
      "${PSQL[@]}" -v payload="$PAYLOAD" -v streams=$((FILL / 10)) -v revs=10 -f "$PEERS/sql/load.sql"
      PEER_ROWS=$(sql "SELECT count(*) FROM events")
      peer_replay >/dev/null # the peer warm, as in its bench.sh (its 2nd run is reported)
      restart_fill() { stop_server; start_server "$WORK/fill"; wait_idle "$SERVER"; }
      pairs "replay cold" rapport peer rapport_replay peer_replay restart_fill
      rapport_replay >/dev/null
      pairs "replay warm" rapport peer rapport_replay peer_replay
      stop_server
      rm -rf "$WORK/fill"
      ;;
    c1 | c64 | b100 | sync)
      if [ -z "$SERVER" ]; then start_server "$WORK/data"; fi
      case $w in
        c1) pairs "1 client" rapport peer "rapport_append 1 1" "peer_append 1 1 $PEERS/sql/append_known.sql" ;;
        sync)
          cc -O2 -o "$WORK/fsync_probe" "$PEERS/fsync_probe.c"
          pairs "1 client / fdatasync" rapport fdatasync "rapport_append 1 1" fsync_rate
          ;;
        c64) pairs "64 clients" rapport peer "rapport_append 64 1" "peer_append 64 1 $PEERS/sql/append_known.sql" ;;
        b100)
          bs="$WORK/append_batch.sql"
          {
            echo '\set k :n % 1000'
            echo '\set rev0 (:n / 1000) * 100'
            echo '\set sid :base + :client_id * 1000 + :k'
            echo '\set n :n + 1'
            echo "INSERT INTO events (stream, revision, event_id, event_type, payload)"
            echo "SELECT 'customer-' || CAST(:sid AS text), CAST(:rev0 AS bigint) + v.i, gen_random_uuid(), 'CustomerEmailChanged', v.p"
            echo "FROM (VALUES"
            for ((i = 0; i < 100; i++)); do
              sep=","; [ $i -eq 99 ] && sep=""
              echo "  ($i, CAST(:payload AS bytea))$sep"
            done
            echo ") AS v(i, p);"
          } >"$bs"
          pairs "batches of 100, 16 clients" rapport peer "rapport_append 16 100" "peer_append 16 100 $bs"
          ;;
      esac
      ;;
    *) echo "unknown workload $w" >&2; exit 2 ;;
  esac
done
stop_server

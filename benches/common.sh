# Shell helpers shared by the bench scripts (sourced, not run).

log() { echo "[$(date +%T)] $*" >&2; }

# Waits (at most 60 s) until process $1 used under 30 ms of CPU in half a second.
wait_idle() {
  local before after
  for _ in $(seq 120); do
    before=$(awk '{print $14+$15}' "/proc/$1/stat")
    sleep 0.5
    after=$(awk '{print $14+$15}' "/proc/$1/stat")
    [ $((after - before)) -lt 3 ] && return 0
  done
  echo "warning: server $1 still busy after 60 s" >&2
}

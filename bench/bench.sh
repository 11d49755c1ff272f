#!/usr/bin/env bash
# Measures one collection by the exporter against bare ss in the same run:
# wall time (medians of RUNS alternating runs, and the median of the ratios
# of each pair of runs, which drift on a busy machine cancels out) and the
# exporter's peak RSS,
# with N connections held open on loopback for each N given (default:
# 200 10000 100000), spread over 50 client addresses. Run from the
# repository root on Linux, as any user (needs /usr/bin/time: apt-get
# install time):
#
#   bash bench/bench.sh [N ...]
#
# One process can hold only about 20,000 file descriptors here, and each
# connection takes two (both ends are in the port-opener), so the
# connections are spread over port-opener processes of at most 8,000 each,
# each listening on its own 127.0.1.x address, all on port 8500.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-21}
PER_PROCESS=8000
CLIENTS=50
[ -x /usr/bin/time ] || { echo "bench: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
openers=()
cleanup() {
  for pid in "${openers[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/consul_conn_exporter" .
go build -o "$work/port-opener" ./cmd/port-opener
mkdir "$work/textfile"

us() { echo $(( ($2 - $1) / 1000 )); }
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

hold() { # hold N connections open; returns once all are open
  local n=$1 left=$1 i=0
  openers=()
  while [ "$left" -gt 0 ]; do
    local share=$(( left < PER_PROCESS ? left : PER_PROCESS ))
    i=$((i + 1))
    "$work/port-opener" --address "127.0.1.$i" --port 8500 -n "$share" --clients $(( share < CLIENTS ? share : CLIENTS )) \
      > "$work/opener.$i" 2>&1 &
    openers+=("$!")
    left=$((left - share))
  done
  for j in $(seq 1 "$i"); do
    # The opener prints this line once every connection is open.
    timeout 600 grep -q -m1 "client connections" <(tail -n +1 -f "$work/opener.$j") \
      || { cat "$work/opener.$j" >&2; exit 1; }
  done
}

release() {
  for pid in "${openers[@]}"; do kill "$pid"; done
  wait 2>/dev/null || true
  openers=()
}

printf '%-8s %-10s %-12s %-14s %-7s %-14s\n' connections counted "bare ss ms" "exporter ms" ratio "peak RSS MiB"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(200 10000 100000)
for n in "${sizes[@]}"; do
  hold "$n"
  "$work/consul_conn_exporter" --once --textfile.directory "$work/textfile" 2>/dev/null
  counted=$(awk '/^consul_open_http_connections\{port="8500"\}/ { print $2 }' "$work/textfile/consul_open_http_connections.prom")

  : > "$work/ss.us"; : > "$work/exporter.us"; : > "$work/rss.kb"; : > "$work/ratio"
  for _ in $(seq "$RUNS"); do
    t0=$(date +%s%N)
    ss -Htan state established state close-wait '( sport = :8500 )' | wc -l > /dev/null
    t1=$(date +%s%N)
    /usr/bin/time -f %M -o "$work/rss" "$work/consul_conn_exporter" --once --textfile.directory "$work/textfile" 2>/dev/null
    t2=$(date +%s%N)
    ss_run=$(us "$t0" "$t1")
    exporter_run=$(us "$t1" "$t2")
    echo "$ss_run" >> "$work/ss.us"
    echo "$exporter_run" >> "$work/exporter.us"
    awk -v a="$exporter_run" -v b="$ss_run" 'BEGIN { printf "%.4f\n", a / b }' >> "$work/ratio"
    cat "$work/rss" >> "$work/rss.kb"
  done
  ss_us=$(median < "$work/ss.us")
  exporter_us=$(median < "$work/exporter.us")
  rss_kb=$(sort -n "$work/rss.kb" | tail -1)
  printf '%-8s %-10s %-12s %-14s %-7s %-14s\n' "$n" "$counted" \
    "$(awk -v u="$ss_us" 'BEGIN { printf "%.1f", u / 1000 }')" \
    "$(awk -v u="$exporter_us" 'BEGIN { printf "%.1f", u / 1000 }')" \
    "$(median < "$work/ratio" | awk '{ printf "%.2f", $1 }')" \
    "$(awk -v k="$rss_kb" 'BEGIN { printf "%.1f", k / 1024 }')"
  release
done

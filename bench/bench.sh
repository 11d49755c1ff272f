#!/usr/bin/env bash
# Measures one collection by the exporter, through ss and through its
# built-in netlink reader (--source netlink), against bare ss in the same
# run: wall time (medians of RUNS alternating runs, and the median of the
# ratios within each run, which drift on a busy machine cancels out), CPU
# time (user + system) likewise, and peak RSS; and at the first size, the
# median time of a scrape of /metrics from a running exporter reading
# netlink,
# with N connections held open on loopback for each N given (default:
# 200 10000 100000), spread over 50 client addresses. Then one collection
# with the programs named (--clients.processes) against one without, with
# 0 and 2,000 idle processes on the host, from the kernel's list of open
# files (as root) and by walking /proc; then the CPU of sampling between
# collections (--sample.interval) at SAMPLE_SIZES (1000 10000) connections. Run from the
# repository root on Linux, as any user (needs curl: apt-get install curl;
# bench/measure takes the times and RSS from the kernel's rusage):
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
command -v curl >/dev/null || { echo "bench: needs curl (apt-get install curl)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
# The port-openers stand in for the agent: its address is the first one's,
# and their connections count as the agent's (docs/sources.md).
export CONSUL_HTTP_ADDR=127.0.1.1:8500

work=$(mktemp -d)
openers=()
idle=()
cleanup() {
  for pid in "${openers[@]}" "${idle[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Without cgo, as released: only such a build keeps a kernel program.
CGO_ENABLED=0 go build -o "$work/consul_conn_exporter" .
go build -o "$work/port-opener" ./cmd/port-opener
go build -o "$work/measure" ./bench/measure
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

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f\n", a / b }'; }
ms() { awk -v u="$1" 'BEGIN { printf "%.1f", u / 1000 }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
median2() { median | awk '{ printf "%.2f", $1 }'; }
# storm NAME RUNS COMMAND...: runs a storm benchmark (internal/testkit/storm) RUNS
# times and says, from the medians over the runs, a connection's time with
# no program attached and with the programs, the ratio, the ratio with the
# floor instead (an empty program where each attaches: what the kernel
# takes to run any program there), and the programs' own time.
storm() {
  name=$1 runs=$2
  shift 2
  for _ in $(seq "$runs"); do
    "$@" | awk '/^Benchmark/ { for (i = 3; i < NF; i++) v[$(i + 1)] = $i
      print v["ratio"], v["detached-ns/op"], v["attached-ns/op"], v["program-ns/op"], v["floor-ratio"] }'
  done > "$work/storm"
  col() { cut -d' ' -f"$1" "$work/storm" | median; }
  printf '%s: %.0f ns each detached, %.0f attached: ratio %.3f, the floor %.3f (medians of %s); the programs ran %.0f ns per connection\n' \
    "$name" "$(col 2)" "$(col 3)" "$(col 1)" "$(col 5)" "$runs" "$(col 4)"
}
count() { awk '/^consul_open_http_connections\{port="8500"\}/ { print $2 }' "$work/textfile/consul_open_http_connections.prom"; }

printf '%-11s %-15s %-16s %-17s %-6s %-12s %-22s %-6s %-10s %-s\n' connections "counted ss/nl" "bare ss ms/CPU" "exporter (ss) ms" ratio "to ss sans i" "exporter (netlink) ms" ratio "CPU ratio" "peak RSS MiB ss/nl"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(200 10000 100000)
# Bare ss as the exporter runs it: with each socket's user (-e) where a
# cgroup2 file system is mounted, and its tcp_info (-i), which tells each
# connection's use (internal/table/source/tools.go); and the same without
# -i, which prints several times less.
ss_plain=-Htan
if grep -q ' cgroup2 ' /proc/self/mounts 2>/dev/null; then ss_plain=-Htane; fi
ss_options=${ss_plain}i
for n in "${sizes[@]}"; do
  hold "$n"
  "$work/consul_conn_exporter" --once --textfile.directory "$work/textfile" 2>"$work/once.log" || { cat "$work/once.log" >&2; exit 1; }
  counted_ss=$(count)
  "$work/consul_conn_exporter" --once --source netlink --textfile.directory "$work/textfile" 2>"$work/once.log" || { cat "$work/once.log" >&2; exit 1; }
  counted_nl=$(count)

  for f in ss.wall ss.cpu ex.wall nl.wall ex.ratio ex.plain.ratio nl.ratio nl.cpu nl.cpu.ratio ex.rss nl.rss; do : > "$work/$f"; done
  for _ in $(seq "$RUNS"); do
    # Each: "wall user sys rss" (microseconds, KiB) from bench/measure.
    "$work/measure" ss "$ss_options" state established state close-wait '( sport = :8500 )' 2>"$work/ss.m" | wc -l > /dev/null
    "$work/measure" ss "$ss_plain" state established state close-wait '( sport = :8500 )' 2>"$work/plain.m" | wc -l > /dev/null
    "$work/measure" "$work/consul_conn_exporter" --once --log.level error --textfile.directory "$work/textfile" 2>"$work/ex.m" >/dev/null
    "$work/measure" "$work/consul_conn_exporter" --once --log.level error --source netlink --textfile.directory "$work/textfile" 2>"$work/nl.m" >/dev/null
    read -r ss_wall ss_user ss_sys _ < "$work/ss.m"
    read -r plain_wall _ _ _ < "$work/plain.m"
    read -r ex_wall _ _ ex_rss < "$work/ex.m"
    read -r nl_wall nl_user nl_sys nl_rss < "$work/nl.m"
    echo "$ss_wall" >> "$work/ss.wall"; echo $((ss_user + ss_sys)) >> "$work/ss.cpu"
    echo "$ex_wall" >> "$work/ex.wall"; echo "$nl_wall" >> "$work/nl.wall"; echo $((nl_user + nl_sys)) >> "$work/nl.cpu"
    ratio "$ex_wall" "$ss_wall" >> "$work/ex.ratio"
    ratio "$ex_wall" "$plain_wall" >> "$work/ex.plain.ratio"
    ratio "$nl_wall" "$ss_wall" >> "$work/nl.ratio"
    ratio $((nl_user + nl_sys)) $((ss_user + ss_sys + 1)) >> "$work/nl.cpu.ratio"
    echo "$ex_rss" >> "$work/ex.rss"; echo "$nl_rss" >> "$work/nl.rss"
  done
  printf '%-11s %-15s %-16s %-17s %-6s %-12s %-22s %-6s %-10s %-s\n' "$n" "$counted_ss/$counted_nl" \
    "$(ms "$(median < "$work/ss.wall")")/$(ms "$(median < "$work/ss.cpu")")" \
    "$(ms "$(median < "$work/ex.wall")")" "$(median2 < "$work/ex.ratio")" "$(median2 < "$work/ex.plain.ratio")" \
    "$(ms "$(median < "$work/nl.wall")")" "$(median2 < "$work/nl.ratio")" \
    "$(median2 < "$work/nl.cpu.ratio")" \
    "$(mib "$(sort -n "$work/ex.rss" | tail -1)")/$(mib "$(sort -n "$work/nl.rss" | tail -1)")"

  if [ "$n" = "${sizes[0]}" ]; then
    # A collection per scrape, in a running exporter with the built-in reader.
    "$work/consul_conn_exporter" --source netlink --web.listen-address 127.0.0.1:19855 2>"$work/web.log" &
    web=$!
    for _ in $(seq 100); do curl -sf -o /dev/null http://127.0.0.1:19855/metrics && break; sleep 0.05; done
    for _ in $(seq "$RUNS"); do
      curl -s -o /dev/null -w '%{time_total}\n' http://127.0.0.1:19855/metrics
    done | median | awk -v n="$n" '{ printf "scrape of /metrics with --source netlink at %s connections: %.2f ms (median)\n", n, $1 * 1000 }' > "$work/scrape"
    kill "$web"; wait "$web" 2>/dev/null || true
  fi
  # The built-in reader's read with each socket's tcp_info (the uses)
  # against one without, alternately, in one process.
  go test -run '^$' -bench Uses -benchtime "${RUNS}x" ./internal/table/sockdiag | awk -v n="$n" '/^BenchmarkUses/ {
      for (i = 3; i < NF; i++) v[$(i + 1)] = $i
      printf "uses (tcp_info) at %s connections: %.1f ms with, %.1f ms without, ratio %.2f (median of the per-read ratios), %d read\n",
        n, v["with-ns/op"] / 1e6, v["without-ns/op"] / 1e6, v["ratio"], v["sockets"] }' >> "$work/uses"
  release
done
cat "$work/scrape" "$work/uses"

# Naming the programs (--clients.processes): one collection with and
# without, in the same run, with 0 and 2,000 idle processes on the host
# (each a /proc/PID/fd the walk reads), through ss and the built-in reader;
# the programs named from the kernel's list of open files (as root) and by
# walking /proc (--no-clients.processes.bpf).
PRUNS=${PRUNS:-7}
lookups=(proc)
[ "$(id -u)" = 0 ] && lookups=(kernel proc)
idle=()
echo
printf '%-11s %-6s %-8s %-7s %-14s %-13s %-6s %-14s %-s\n' connections idle source lookup "without ms" "with ms" ratio "named/success" "peak RSS MiB"
for n in "${sizes[@]}"; do
  hold "$n"
  for idle_n in 0 2000; do
    while [ "${#idle[@]}" -lt "$idle_n" ]; do sleep 3600 & idle+=("$!"); done
    for src in ss netlink; do
      for lookup in "${lookups[@]}"; do
        flag=--clients.processes.bpf
        [ "$lookup" = proc ] && flag=--no-clients.processes.bpf
        : > "$work/off"; : > "$work/on"; : > "$work/pratio"; : > "$work/prss"
        for _ in $(seq "$PRUNS"); do
          "$work/measure" "$work/consul_conn_exporter" --once --log.level error --source "$src" --textfile.directory "$work/textfile" 2>"$work/off.m" >/dev/null
          "$work/measure" "$work/consul_conn_exporter" --once --log.level error --source "$src" --clients.processes "$flag" --textfile.directory "$work/textfile" 2>"$work/on.m" >/dev/null
          read -r off_wall _ _ _ < "$work/off.m"
          read -r on_wall _ _ on_rss < "$work/on.m"
          echo "$off_wall" >> "$work/off"; echo "$on_wall" >> "$work/on"; echo "$on_rss" >> "$work/prss"
          ratio "$on_wall" "$off_wall" >> "$work/pratio"
        done
        named=$(awk '/^consul_open_http_connections_per_process/ { s += $2 } END { print s + 0 }' "$work/textfile/consul_open_http_connections.prom")
        success=$(awk '/^consul_conn_exporter_processes_success/ { print $2 }' "$work/textfile/consul_open_http_connections.prom")
        printf '%-11s %-6s %-8s %-7s %-14s %-13s %-6s %-14s %-s\n' "$n" "$idle_n" "$src" "$lookup" \
          "$(ms "$(median < "$work/off")")" "$(ms "$(median < "$work/on")")" "$(median2 < "$work/pratio")" \
          "$named/$success" "$(mib "$(sort -n "$work/prss" | tail -1)")"
      done
    done
  done
  kill "${idle[@]}" 2>/dev/null || true
  wait "${idle[@]}" 2>/dev/null || true
  idle=()
  release
done

# Sampling between collections (--sample.interval 1s): the CPU of a running
# exporter with it against one without, side by side for SAMPLE_FOR (60 s)
# with the built-in reader, from /proc/PID/stat.
SAMPLE_FOR=${SAMPLE_FOR:-60}
echo
printf '%-11s %-22s %-22s %-s\n' connections "CPU sampling off (ms)" "CPU sampling 1s (ms)" "extra, % of one core"
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) * 1000 / hz }' "/proc/$1/stat"; }
for n in ${SAMPLE_SIZES:-1000 10000}; do
  hold "$n"
  "$work/consul_conn_exporter" --source netlink --sample.interval 0 --web.listen-address 127.0.0.1:19856 2>/dev/null &
  off=$!
  "$work/consul_conn_exporter" --source netlink --sample.interval 1s --web.listen-address 127.0.0.1:19857 2>/dev/null &
  on=$!
  sleep 1
  off0=$(cpu_ms "$off"); on0=$(cpu_ms "$on")
  sleep "$SAMPLE_FOR"
  off1=$(cpu_ms "$off"); on1=$(cpu_ms "$on")
  kill "$off" "$on"; wait "$off" "$on" 2>/dev/null || true
  awk -v n="$n" -v a="$((off1 - off0))" -v b="$((on1 - on0))" -v s="$SAMPLE_FOR" \
    'BEGIN { printf "%-11s %-22s %-22s %.2f\n", n, a, b, (b - a) / (s * 10) }'
  release
done

# On a host without a cgroup2 mount (cgroup v1: older RHEL, Amazon Linux 2)
# ss -e reads the mount table again for every socket; the exporter names the
# programs without it (the client ends come from the built-in reader). One
# collection through ss with and without --clients.processes at the largest
# size, in a private mount namespace without /sys/fs/cgroup. Root only.
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
  nocgroup() { unshare --mount sh -c 'umount -l /sys/fs/cgroup 2>/dev/null; exec "$@"' sh "$@"; }
  n=${sizes[${#sizes[@]}-1]}
  hold "$n"
  : > "$work/off"; : > "$work/on"; : > "$work/pratio"
  for _ in $(seq "$PRUNS"); do
    nocgroup "$work/measure" "$work/consul_conn_exporter" --once --log.level error --source ss --textfile.directory "$work/textfile" 2>"$work/off.m" >/dev/null
    nocgroup "$work/measure" "$work/consul_conn_exporter" --once --log.level error --source ss --clients.processes --textfile.directory "$work/textfile" 2>"$work/on.m" >/dev/null
    read -r off_wall _ _ _ < "$work/off.m"
    read -r on_wall _ _ _ < "$work/on.m"
    echo "$off_wall" >> "$work/off"; echo "$on_wall" >> "$work/on"
    ratio "$on_wall" "$off_wall" >> "$work/pratio"
  done
  named=$(awk '/^consul_open_http_connections_per_process/ { s += $2 } END { print s + 0 }' "$work/textfile/consul_open_http_connections.prom")
  echo
  echo "no cgroup2 mount, $n connections through ss: $(ms "$(median < "$work/off")") ms without names, $(ms "$(median < "$work/on")") ms with (ratio $(median2 < "$work/pratio"), median of $PRUNS), $named named"
  release
fi

# The refusals' kernel programs (--refusals): 100,000 refusals (connections
# accepted and closed with their request unread, as Consul refuses one), and
# 100,000 short connections served (a request read and answered, then
# closed), in batches with no program, an empty one where each attaches (the
# floor) and the programs attached in turn; five runs, the medians, and the
# kernel's count of the time the programs ran per connection. Root only.
if [ "$(id -u)" = 0 ]; then
  echo
  for s in RefusalStorm ServedChurn; do
    storm "refusals, $s of 100,000" 5 go test -run '^$' -bench "$s" -benchtime 100000x ./internal/refusals
  done
fi

# The counts the kernel's events keep (--source events): a collection in a
# running exporter reads maps whose size is the clients', not the
# connections'. Side by side with a running exporter reading the table
# (--source netlink), each collection's own time as the exporters report
# it (consul_conn_exporter_collect_duration_seconds), from alternating
# scrapes, at EVENT_SIZES connections (50 clients); the ratio of the
# medians; each exporter's peak RSS, and the kernel memory of the events'
# maps (their memlock). Then the storms, as for the refusals, with the
# events' program, each of seven runs in a network namespace of its own (no
# earlier run's TIME-WAIT sockets). Root only.
if [ "$(id -u)" = 0 ]; then
  echo
  printf '%-11s %-20s %-22s %-8s %-24s %-s\n' connections "events collect ms" "netlink collect ms" ratio "peak RSS MiB ev/nl" "events' maps MiB"
  duration() { curl -s "$1" | awk '/^consul_conn_exporter_collect_duration_seconds / { printf "%.0f\n", $2 * 1e6 }'; }
  hwm() { awk '/^VmHWM/ { print $2 }' "/proc/$1/status"; }
  for n in ${EVENT_SIZES:-1000 10000 100000}; do
    hold "$n"
    "$work/consul_conn_exporter" --source events --sample.interval 0 --web.listen-address 127.0.0.1:19858 2>/dev/null &
    ev=$!
    "$work/consul_conn_exporter" --source netlink --sample.interval 0 --web.listen-address 127.0.0.1:19859 2>/dev/null &
    nl=$!
    for port in 19858 19859; do
      for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$port/metrics" && break; sleep 0.05; done
    done
    : > "$work/ev.d"; : > "$work/nl.d"
    for _ in $(seq "$RUNS"); do
      duration http://127.0.0.1:19858/metrics >> "$work/ev.d"
      duration http://127.0.0.1:19859/metrics >> "$work/nl.d"
    done
    maps=$(for fd in /proc/$ev/fdinfo/*; do awk '/^map_type/ { m = 1 } /^memlock/ && m { print $2 }' "$fd"; done | awk '{ s += $1 } END { print s + 0 }')
    printf '%-11s %-20s %-22s %-8s %-24s %-s\n' "$n" "$(ms "$(median < "$work/ev.d")")" "$(ms "$(median < "$work/nl.d")")" \
      "$(ratio "$(median < "$work/ev.d")" "$(median < "$work/nl.d")")" "$(mib "$(hwm "$ev")")/$(mib "$(hwm "$nl")")" \
      "$(awk -v b="$maps" 'BEGIN { printf "%.1f", b / 1048576 }')"
    kill "$ev" "$nl"; wait "$ev" "$nl" 2>/dev/null || true
    release
  done
  go test -c -o "$work/events.test" ./internal/events
  for s in ChurnStorm RefusalStorm OtherPortsChurn; do
    storm "events, $s of 72,000" 7 unshare --net sh -c 'ip link set lo up && exec "$@"' sh "$work/events.test" -test.run '^$' -test.bench "^Benchmark$s\$" -test.benchtime 72000x
  done
  # Kept-alive connections of 20 requests each: the reads and sends.
  for s in EchoStorm OtherPortsEcho; do
    storm "events, $s of 12,000 connections" 7 unshare --net sh -c 'ip link set lo up && exec "$@"' sh "$work/events.test" -test.run '^$' -test.bench "^Benchmark$s\$" -test.benchtime 12000x
  done

  # What the programs on every read and send cost a real agent's clients:
  # requests over kept-alive connections from 50 addresses (bench/requests),
  # without the exporter and with it (--source events), in turn, AGENT_ROUNDS
  # rounds; the medians of each round's mean. Needs a consul (as the e2e
  # tests build it, or in PATH).
  consul=$(command -v consul || true)
  [ -n "$consul" ] || consul="$HOME/.cache/consul-conn-exporter/consul-$(awk '$1 == "github.com/hashicorp/consul" { print $2 }' tools/consul/go.mod)/consul"
  if [ -x "$consul" ]; then
    go build -o "$work/requests" ./bench/requests
    cat > "$work/agent.hcl" <<HCL
ports { http = 18650, https = -1, dns = -1, grpc = -1, grpc_tls = -1, serf_lan = 18651, serf_wan = 18652, server = 18653 }
limits { http_max_conns_per_client = 1000 }
HCL
    "$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -config-file "$work/agent.hcl" > "$work/agent.log" 2>&1 &
    agent=$!
    idle+=("$agent")
    for _ in $(seq 300); do
      curl -sf http://127.0.0.1:18650/v1/status/leader | grep -q 127 && break
      sleep 0.1
    done
    : > "$work/without"; : > "$work/with"
    for _ in $(seq "${AGENT_ROUNDS:-7}"); do
      "$work/requests" -addr 127.0.0.1:18650 -n 3000 >> "$work/without"
      "$work/consul_conn_exporter" --source events --port 18650 --limit 0 --web.listen-address 127.0.0.1:19860 2>/dev/null &
      ev=$!
      for _ in $(seq 100); do curl -sf http://127.0.0.1:19860/metrics | grep -q '^consul_conn_exporter_collector_success{collector="events"} 1' && break; sleep 0.1; done
      "$work/requests" -addr 127.0.0.1:18650 -n 3000 >> "$work/with"
      kill "$ev"; wait "$ev" 2>/dev/null || true
    done
    kill "$agent"; wait "$agent" 2>/dev/null || true
    printf 'a real agent'"'"'s requests (kept alive, 50 clients, 3,000 a round): %s us without the exporter, %s us with --source events (medians of %s rounds): ratio %s\n' \
      "$(median < "$work/without")" "$(median < "$work/with")" "${AGENT_ROUNDS:-7}" "$(ratio "$(median < "$work/with")" "$(median < "$work/without")")"
  else
    echo "a real agent's requests: skipped, no consul (build it as the e2e tests say, or put one in PATH)"
  fi
fi

bash deploy/build.sh "$work/release" >/dev/null
awk -v b="$(stat -c %s "$work/release")" 'BEGIN { printf "release binary (static, stripped): %.1f MiB\n", b / 1048576 }'

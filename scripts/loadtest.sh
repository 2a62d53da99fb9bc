#!/usr/bin/env bash
# Load test without a container engine: the docker-compose.yml topology as
# local processes — a throwaway PostgreSQL 15 (wal_level=logical), `raa run`
# serving /metrics, the live load generator, and a scrape loop in place of
# Prometheus. Bounded in time; prints throughput and lag read from raa's
# metrics, checks the scrape with promtool, verifies the aggregates and stops
# raa with SIGTERM (it must exit 0).
#
#   scripts/loadtest.sh [--rate CHANGES_PER_S] [--duration 60s]
#
# RAA_BIN=path/to/raa skips the release build; RAA_PG_BIN points at the
# PostgreSQL server binaries (default /usr/lib/postgresql/15/bin).
set -euo pipefail
cd "$(dirname "$0")/.."

rate=1000
duration=60s
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) rate=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        *) echo "usage: $0 [--rate CHANGES_PER_S] [--duration 60s]" >&2; exit 2 ;;
    esac
done
case "$duration" in
    *h) secs=$(( ${duration%h} * 3600 )) ;;
    *m) secs=$(( ${duration%m} * 60 )) ;;
    *s) secs=${duration%s} ;;
    *) secs=$duration ;;
esac

if [ -z "${RAA_BIN:-}" ]; then
    cargo build --release --bin raa
    RAA_BIN=target/release/raa
fi
raa=$(realpath "$RAA_BIN")
pg_bin=${RAA_PG_BIN:-/usr/lib/postgresql/15/bin}
[ -x "$pg_bin/initdb" ] || { echo "no initdb in $pg_bin: apt-get install -y postgresql-15" >&2; exit 1; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work=$(mktemp -d /tmp/raa-loadtest.XXXXXX)
as_pg=()
if [ "$(id -u)" = 0 ]; then
    # initdb refuses to run as root.
    id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql postgres
    chown postgres: "$work"
    as_pg=(runuser -u postgres --)
fi
raa_pid=
sampler=
cleanup() {
    status=$?
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null || true
    if [ "$status" != 0 ] && [ -f "$work/raa.log" ]; then
        echo "--- the end of raa's log" >&2
        tail -20 "$work/raa.log" >&2
    fi
    [ -n "$raa_pid" ] && kill "$raa_pid" 2>/dev/null || true
    "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

pg_port=$(free_port)
"${as_pg[@]}" "$pg_bin/initdb" -D "$work/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$work/data" -l "$work/pg.log" -w -o \
    "-c wal_level=logical -c port=$pg_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work" \
    start >/dev/null
"${as_pg[@]}" "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres infomart

export RAA_SOURCE_URL="host=127.0.0.1 port=$pg_port user=postgres dbname=infomart"
export RAA_STATE_DIR="$work/state"
export RAA_METRICS_ADDR="127.0.0.1:$(free_port)"
export RAA_POLL_INTERVAL_SECONDS=2
metrics="http://$RAA_METRICS_ADDR/metrics"

# The Info Mart tables, then raa's objects; raa backfills what exists when it
# starts, then streams what the load generator writes.
"$pg_bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d infomart -f sql/infomart.sql
RUST_LOG=warn "$raa" init
"$raa" run >"$work/raa.log" 2>&1 &
raa_pid=$!
for _ in $(seq 100); do
    curl -sf "http://$RAA_METRICS_ADDR/readyz" >/dev/null && break
    sleep 0.2
done
curl -sf "http://$RAA_METRICS_ADDR/readyz" >/dev/null || { cat "$work/raa.log"; echo "raa is not ready" >&2; exit 1; }

# metric NAME [SCRAPE]: the sum of NAME's samples (labels ignored).
metric() { awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.3f\n", s }'; }
whole() { awk '{ printf "%.0f\n", $1 }'; }

echo "load: $rate changes/s for $duration"
started=$(date +%s.%N)
(
    while sleep 5; do
        s=$(curl -sf "$metrics") || continue
        printf '  t=%4.0fs decoded=%s lag=%ss %s bytes resident=%s MiB\n' "$(awk -v a="$(date +%s.%N)" -v b="$started" 'BEGIN { print a - b }')" \
            "$(echo "$s" | metric raa_changes_decoded_total | whole)" \
            "$(echo "$s" | metric raa_replication_lag_seconds)" \
            "$(echo "$s" | metric raa_replication_lag_bytes | whole)" \
            "$(echo "$s" | metric process_resident_memory_bytes | awk '{ printf "%.0f", $1 / 1048576 }')"
    done
) &
sampler=$!
timeout $((secs + 120)) "$raa" loadgen --rate "$rate" --duration "$duration" 2>&1 | tail -1
written=$(date +%s.%N)

# Wait (bounded: 10 minutes) until raa has caught up: nothing decoded is
# pending and no new transaction arrives for a second. (The durable position
# itself moves past the generator's last writes to tables raa does not read
# only at the next idle commit.) A scrape that fails (raa busy) is retried.
last=-1
caught=no
for _ in $(seq 1200); do
    kill -0 "$raa_pid" 2>/dev/null || { echo "raa exited while catching up" >&2; exit 1; }
    if s=$(curl -sf --max-time 10 "$metrics"); then
        txns=$(echo "$s" | metric raa_transactions_decoded_total)
        lag=$(echo "$s" | metric raa_replication_lag_seconds)
        if [ "$txns" = "$last" ] && [ "$lag" = "0.000" ]; then
            caught=yes
            break
        fi
        last=$txns
    fi
    sleep 0.5
done
[ "$caught" = yes ] || { echo "raa had not caught up 10 minutes after the load ended" >&2; exit 1; }
caught_up=$(date +%s.%N)
kill "$sampler" 2>/dev/null || true
s=$(curl -sf --max-time 10 "$metrics")
echo "$s" >"$work/final.prom"
if command -v promtool >/dev/null; then
    promtool check metrics <"$work/final.prom" && echo "promtool: the scrape is valid"
fi

changes=$(echo "$s" | metric raa_changes_decoded_total)
txns=$(echo "$s" | metric raa_transactions_decoded_total)
lag_sum=$(echo "$s" | metric raa_commit_lag_seconds_sum)
lag_count=$(echo "$s" | metric raa_commit_lag_seconds_count)
resident=$(echo "$s" | metric process_resident_memory_bytes)
keys=$(echo "$s" | metric raa_state_keys)
# The commit-lag bucket that holds the 99th percentile.
p99=$(echo "$s" | awk -v c="$lag_count" '/^raa_commit_lag_seconds_bucket/ {
        match($0, /le="[^"]+"/); le = substr($0, RSTART + 4, RLENGTH - 5)
        if ($NF >= 0.99 * c) { print le; exit } }')
awk -v ch="$changes" -v tx="$txns" -v w="$written" -v st="$started" -v cu="$caught_up" \
    -v ls="$lag_sum" -v lc="$lag_count" -v p99="$p99" -v rss="$resident" -v keys="$keys" 'BEGIN {
    printf "raa decoded %d row changes (of the tables it reads) in %d transactions: %.0f changes/s while loading\n", ch, tx, ch / (w - st)
    printf "caught up %.1fs after the load ended\n", cu - w - 0.5
    printf "commit lag (source commit -> aggregates durable): mean %.3fs, p99 <= %ss\n", (lc > 0 ? ls / lc : 0), p99
    printf "raa resident memory at the end: %.0f MiB, %d state keys\n", rss / 1048576, keys
}'

"$raa" verify
kill -TERM "$raa_pid"
status=0
wait "$raa_pid" || status=$?
raa_pid=
echo "raa stopped on SIGTERM with exit status $status"
exit "$status"

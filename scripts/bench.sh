#!/usr/bin/env bash
# The issue-6 benchmarks in one go, each against references measured in the
# same run, on the same data (release build, throwaway PostgreSQL 15):
#
#   1. catchup   — pg_recvlogical drain vs raa catch-up (TCP and Unix socket),
#                  PostgreSQL's INSERT … SELECT … GROUP BY recomputation vs
#                  raa's backfill of the same facts; verifies the results.
#   2. late_fact — per-fact cost of late vs fresh facts at growing state
#                  sizes, vs a SQL re-aggregation of the late day.
#   3. big_txn   — peak resident memory while streaming one large source
#                  transaction, against the 512 MiB bound.
#   4. state_memory — resident memory as the state grows (sled alone), its
#                  growth per million entries, extrapolated to 10M facts.
#
#   scripts/bench.sh [--rows N] [--late-sizes N1,N2,...] [--late-batch N]
#                    [--transport both|tcp|socket] [--scratch logged|unlogged]
#                    [--txn-rows N] [--cache-mb N] [--entries N]
#                    [--only catchup|late_fact|big_txn|state_memory]
#
# Defaults (100 000 facts of a week of every fact table; late-fact sizes
# 10 000, 100 000, 300 000; one transaction of 200 000 IRF rows; 4 000 000
# state entries) finish in about 20 minutes on a 2-core machine.
# Every size is bounded by these settings; each bench has its own stage limit.
# The ratios are printed at the end; a missed target is printed as MISSED.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=100000
late_sizes=10000,100000,300000
late_batch=1000
transport=both
scratch=logged
txn_rows=200000
cache_mb=32
entries=4000000
only=""
usage="usage: $0 [--rows N] [--late-sizes N1,N2,...] [--late-batch N] [--transport both|tcp|socket] [--scratch logged|unlogged] [--txn-rows N] [--cache-mb N] [--entries N] [--only catchup|late_fact|big_txn|state_memory]"
while [ $# -gt 0 ]; do
    case "$1" in
        --rows) rows=$2; shift 2 ;;
        --late-sizes) late_sizes=$2; shift 2 ;;
        --late-batch) late_batch=$2; shift 2 ;;
        --transport) transport=$2; shift 2 ;;
        --scratch) scratch=$2; shift 2 ;;
        --txn-rows) txn_rows=$2; shift 2 ;;
        --cache-mb) cache_mb=$2; shift 2 ;;
        --entries) entries=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cargo bench --bench catchup --bench late_fact --bench big_txn --bench state_memory --no-run >&2

if [ -z "$only" ] || [ "$only" = catchup ]; then
    echo "== catchup: $rows facts, transport $transport, $scratch scratch tables" >&2
    RAA_BENCH_ROWS=$rows RAA_BENCH_TRANSPORT=$transport RAA_BENCH_SCRATCH=$scratch \
        cargo bench --bench catchup 2>"$out/catchup.log" | tee "$out/catchup.txt" \
        || { tail -40 "$out/catchup.log" >&2; exit 1; }
fi
if [ -z "$only" ] || [ "$only" = late_fact ]; then
    echo "== late_fact: sizes $late_sizes, $late_batch facts per batch" >&2
    RAA_LATE_SIZES=$late_sizes RAA_LATE_BATCH=$late_batch \
        cargo bench --bench late_fact 2>"$out/late_fact.log" | tee "$out/late_fact.txt" \
        || { tail -40 "$out/late_fact.log" >&2; exit 1; }
fi
if [ -z "$only" ] || [ "$only" = big_txn ]; then
    echo "== big_txn: one transaction of $txn_rows IRF rows, sled cache $cache_mb MiB" >&2
    RAA_BENCH_ROWS=$txn_rows RAA_BENCH_CACHE_MB=$cache_mb \
        cargo bench --bench big_txn 2>"$out/big_txn.log" | tee "$out/big_txn.txt" \
        || { tail -40 "$out/big_txn.log" >&2; exit 1; }
fi
if [ -z "$only" ] || [ "$only" = state_memory ]; then
    # Its own sled cache (32 MiB): the growth past a full cache is what it measures.
    echo "== state_memory: $entries state entries" >&2
    RAA_BENCH_ENTRIES=$entries \
        cargo bench --bench state_memory 2>"$out/state_memory.log" | tee "$out/state_memory.txt" \
        || { tail -40 "$out/state_memory.log" >&2; exit 1; }
fi

echo
echo "== ratios (each against its reference in the same run)"
cat "$out"/catchup.txt 2>/dev/null | grep -E '^(---|throughput ratio|  bound by the server alone|pg_recvlogical:|raa catch-up:|SQL / raa backfill|streamed tables|backfilled tables)' || true
cat "$out"/late_fact.txt 2>/dev/null | grep -E '^(growth|SQL day without|late / fresh)' || true
cat "$out"/big_txn.txt 2>/dev/null | grep -E '^(peak resident|bound)' || true
cat "$out"/state_memory.txt 2>/dev/null | grep -E '^(growth past|at 80M)' || true

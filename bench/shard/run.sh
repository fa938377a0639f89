#!/usr/bin/env bash
# run.sh: step time of the shard strategies against DataParallel, on TCP
# loopback and on a netns.sh testbed of hosts behind 1 Gbit/s links.
#
#   bash bench/shard/run.sh                   N = 2 and 4, both testbeds (netns needs root)
#   NS=2 REPS=1 TESTBEDS=loopback bash bench/shard/run.sh
#
# Every rank runs with GOMAXPROCS=1, one process per rank, started by
# ringrun (on the testbed, one rank per namespace through
# --agent 'ip netns exec'). Within a run the modes take turns, a few steps
# each (bench/shard -block), so that they see the same machine; the
# testbeds and repetitions take turns too. It prints one table: median step time per mode and its
# ratio to ddp's (the median of the per-run ratios). The raw rows go to
# $OUT (default bench/shard/results.csv).
#
# With SLEEP (a duration, e.g. 50ms) every layer waits that long in
# forward and again in backward instead of computing (bench/shard -sleep):
# the overlap prefetch buys, apart from the competition for CPUs.
#
# Environment: NS ("2 4"), TESTBEDS ("loopback netns"), REPS (3), SLEEP,
# STEPS (timed steps per mode, 12), MODEL (784-2048-2048-2048-10: 10.0M
# parameters), BATCH (per rank, 8), MODES (bench/shard's default list),
# RATE (1gbit), RINGO_NETNS_PREFIX (rshard-), RINGO_NETNS_SUBNET (10.78.5).
set -euo pipefail

cd "$(dirname "$0")/../.."
NS=${NS:-"2 4"}
TESTBEDS=${TESTBEDS:-"loopback netns"}
REPS=${REPS:-3}
STEPS=${STEPS:-12}
MODEL=${MODEL:-784-2048-2048-2048-10}
BATCH=${BATCH:-8}
MODES=${MODES:-compute,ddp,full,full-noprefetch,grad,optim}
RATE=${RATE:-1gbit}
OUT=${OUT:-bench/shard/results.csv}
export RINGO_NETNS_PREFIX=${RINGO_NETNS_PREFIX:-rshard-}
export RINGO_NETNS_SUBNET=${RINGO_NETNS_SUBNET:-10.78.5}
netns=bench/cluster/netns.sh

bin=$(mktemp -d)
cleanup() {
	if [[ " $TESTBEDS " == *" netns "* ]]; then "$netns" down || true; fi
	rm -rf "$bin"
}
trap cleanup EXIT
go build -o "$bin/shard" ./bench/shard
go build -o "$bin/ringrun" ./cmd/ringrun

common=(-model "$MODEL" -batch "$BATCH" -steps "$STEPS" -modes "$MODES")
suffix=
if [ -n "${SLEEP:-}" ]; then
	common+=(-sleep "$SLEEP")
	suffix=-sleep$SLEEP
fi
echo "testbed,ranks,model,params,batch_per_rank,mode,step_ms,vs_ddp" >"$OUT"
for rep in $(seq "$REPS"); do
	for n in $NS; do
		for tb in $TESTBEDS; do
			echo "run.sh: repetition $rep, $n ranks, $tb" >&2
			case $tb in
			loopback)
				"$bin/ringrun" -q -np "$n" -x GOMAXPROCS=1 -- "$bin/shard" -label "loopback$suffix" "${common[@]}" | sed 's/^\[0\] //' >>"$OUT"
				;;
			netns)
				"$netns" up "$n" --rate "$RATE" >&2
				hosts=$(seq -s, -f "${RINGO_NETNS_PREFIX}h%g:1" 0 $((n - 1)))
				ip netns exec "${RINGO_NETNS_PREFIX}h0" "$bin/ringrun" -q --hosts "$hosts" --agent 'ip netns exec' \
					--addr "${RINGO_NETNS_SUBNET}.1" -x GOMAXPROCS=1 -- "$bin/shard" -label "netns-$RATE$suffix" "${common[@]}" |
					sed 's/^\[0\] //' >>"$OUT"
				;;
			*)
				echo "run.sh: unknown testbed $tb" >&2
				exit 2
				;;
			esac
		done
	done
done

# One row per testbed, N and mode: the median step time and the median of
# the runs' ratios to ddp.
awk -F, 'NR > 1 {
	key = $1 "," $2 "," $6
	if (!(key in seen)) { order[++k] = key; seen[key] = 1 }
	ms[key] = ms[key] " " $7; r[key] = r[key] " " $8
}
function median(s,   a, n, i, j, t) {
	n = split(s, a, " ")
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
END {
	print "| testbed | ranks | mode | step (ms) | vs ddp |"
	print "|---|---:|---|---:|---:|"
	for (i = 1; i <= k; i++) {
		split(order[i], f, ",")
		printf "| %s | %s | %s | %.1f | %.2f |\n", f[1], f[2], f[3], median(ms[order[i]]), median(r[order[i]])
	}
}' "$OUT"

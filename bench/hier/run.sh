#!/usr/bin/env bash
# run.sh: the hierarchical AllReduce against the flat ring on the network-
# namespace testbed (bench/cluster/netns.sh): HOSTS hosts of SLOTS ranks,
# every host's link shaped to RATE in each direction; the ranks of a host
# share memory (the default transport), the hosts talk TCP.
#
#   bench/hier/run.sh                         2 hosts x 2 ranks, 1 Gbit/s
#   HOSTS=4 SLOTS=2 SIZES=16M ROUNDS=1 bench/hier/run.sh
#
# Each round runs ringbench once with every algorithm of ALGOS forced
# (hier: reduce-scatter within each host, ring across hosts, allgather
# within each host; ring: the flat ring over every rank; auto: the cost
# model's choice), in turns, so that the machine's other work falls on all
# of them alike. Needs root and iproute2.
#
# Results: $OUT/hier.csv (round,algo,bytes,time_us,busbw) and, on stdout,
# the median busbw per algorithm and size with hier/ring.
#
# Environment: HOSTS (2), SLOTS (2), RATE (1gbit), SIZES (1M,16M,64M),
# ALGOS ("ring hier auto"), ROUNDS (3), OUT (bench/hier/results),
# RINGO_NETNS_PREFIX (rhier-), RINGO_NETNS_SUBNET (10.81.0).
set -euo pipefail

cd "$(dirname "$0")/../.."
HOSTS=${HOSTS:-2}
SLOTS=${SLOTS:-2}
RATE=${RATE:-1gbit}
SIZES=${SIZES:-1M,16M,64M}
ALGOS=${ALGOS:-ring hier auto}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-bench/hier/results}
export RINGO_NETNS_PREFIX=${RINGO_NETNS_PREFIX:-rhier-}
export RINGO_NETNS_SUBNET=${RINGO_NETNS_SUBNET:-10.81.0}
P=$RINGO_NETNS_PREFIX

mkdir -p bin "$OUT"
go build -o bin/ringrun ./cmd/ringrun
go build -o bin/ringbench ./bench/ringbench
bench/cluster/netns.sh up "$HOSTS" --rate "$RATE"
trap 'bench/cluster/netns.sh down' EXIT

hosts=""
for ((i = 0; i < HOSTS; i++)); do hosts+="${hosts:+,}${P}h$i:$SLOTS"; done

csv=$OUT/hier.csv
echo "round,algo,bytes,time_us,busbw" >"$csv"
for ((round = 1; round <= ROUNDS; round++)); do
	for algo in $ALGOS; do
		echo "round $round: $algo on $hosts" >&2
		# A 64 MiB call takes about a second at 1 Gbit/s: a warm-up call
		# and the fewest samples ringbench takes.
		out=$(ip netns exec "${P}h0" bin/ringrun --hosts "$hosts" --agent 'ip netns exec' \
			--addr "${RINGO_NETNS_SUBNET}.1" -x RINGO_TIMEOUT=600s -x RINGO_HEARTBEAT=30s -- \
			bin/ringbench -s "$SIZES" --algo "$algo" -w 1 -n 3 -q --csv -)
		sed -n 's/^\[0\] //p' <<<"$out" | awk -F, -v r="$round" -v a="$algo" 'NR > 1 { print r "," a "," $3 "," $4 "," $6 }' | tee -a "$csv" >&2
	done
done

{
	echo "$(date -u +%Y-%m-%d), $(nproc) CPUs shared, $HOSTS netns hosts x $SLOTS ranks at $RATE, $ROUNDS rounds"
	echo
	echo "median busbw (GB/s) per size:"
	awk -F, 'NR > 1 { v[$2 "," $3] = v[$2 "," $3] " " $5; sizes[$3] = 1; algos[$2] = 1 }
	function median(s,   a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
		return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	END {
		printf "| bytes |"; for (a in algos) printf " %s |", a; printf " hier/ring |\n"
		printf "|---:|"; for (a in algos) printf "---:|"; printf "---:|\n"
		for (s in sizes) {
			printf "| %s |", s
			for (a in algos) printf " %.3g |", median(v[a "," s])
			if (("hier," s) in v && ("ring," s) in v) printf " %.2f |", median(v["hier," s]) / median(v["ring," s])
			printf "\n"
		}
	}' "$csv" | sort -t'|' -k2 -n
} | tee "$OUT/summary.md"

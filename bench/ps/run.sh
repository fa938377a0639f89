#!/usr/bin/env bash
# run.sh: the measured answers of the parameter-server and embedding work,
# on the network-namespace testbed (bench/cluster/netns.sh), one host per
# rank, every host's link shaped to RATE in each direction.
#
#   bench/ps/run.sh                 the whole sweep (needs root and iproute2)
#   NS="2 4" SIZES=1M bench/ps/run.sh
#
# 1. Ring vs parameter server: for N = 2..8 workers and each gradient size,
#    the time per step of a ring AllReduce on N hosts, of a Sync PushPull
#    with 1 server (N+1 hosts) and with N/2 servers (N+N/2 hosts); servers
#    on hosts of their own, as BytePS recommends.
# 2. Sparse vs dense: SparseAllReducer on SPARSE_N hosts at each density,
#    the sparse path, the dense one and the automatic choice, in turns.
#
# Results: $OUT/ringps.csv and $OUT/sparse.csv (each rewritten only when
# its part runs: PARTS="ringps sparse" by default), $OUT/results.csv (both),
# $OUT/ringps.png, $OUT/sparse.png.
#
# Environment: RATE (1gbit), NS ("2 3 4 5 6 7 8"), SIZES (1M,16M,64M),
# STEPS (3), SPARSE_N (4), ROWS (100000), DIM (64), DENSITIES
# (0.001,0.01,0.1,0.5), ROUNDS (5), OUT (bench/ps/results),
# RINGO_NETNS_PREFIX (rps-), RINGO_NETNS_SUBNET (10.79.0).
set -euo pipefail

cd "$(dirname "$0")/../.."
RATE=${RATE:-1gbit}
NS=${NS:-"2 3 4 5 6 7 8"}
SIZES=${SIZES:-1M,16M,64M}
STEPS=${STEPS:-3}
SPARSE_N=${SPARSE_N:-4}
ROWS=${ROWS:-100000}
DIM=${DIM:-64}
DENSITIES=${DENSITIES:-0.001,0.01,0.1,0.5}
ROUNDS=${ROUNDS:-5}
OUT=${OUT:-bench/ps/results}
PARTS=${PARTS:-ringps sparse}
export RINGO_NETNS_PREFIX=${RINGO_NETNS_PREFIX:-rps-}
export RINGO_NETNS_SUBNET=${RINGO_NETNS_SUBNET:-10.79.0}
P=$RINGO_NETNS_PREFIX

mkdir -p bin "$OUT"
go build -o bin/ringrun ./cmd/ringrun
go build -o bin/psbench ./bench/psbench

# The most hosts any run needs: N + N/2 for the largest N.
most=$SPARSE_N
for n in $NS; do most=$((most > n + n / 2 ? most : n + n / 2)); done
bench/cluster/netns.sh up "$most" --rate "$RATE"
trap 'bench/cluster/netns.sh down' EXIT

# hostlist K: the first K hosts, one slot each (rank i runs on host i).
hostlist() {
	local k=$1 i list=""
	for ((i = 0; i < k; i++)); do list+="${list:+,}${P}h$i:1"; done
	echo "$list"
}

# job K ARGS...: psbench on the first K hosts; rank 0's CSV rows on stdout.
# The job's communicator idles while the PS pairs saturate the links, and a
# 2-core machine shared with other work can starve a rank for seconds: the
# heartbeat allows 30 s of silence (a real lost rank would still be found
# at once by its closed connections). A job that fails anyway is run once
# more (and said so on stderr).
job() {
	local k=$1 try out
	shift
	for try in 1 2; do
		if out=$(ip netns exec "${P}h0" bin/ringrun --hosts "$(hostlist "$k")" --agent 'ip netns exec' \
			--addr "${RINGO_NETNS_SUBNET}.1" -x RINGO_TIMEOUT=600s -x RINGO_HEARTBEAT=30s -- bin/psbench "$@"); then
			sed -n 's/^\[0\] //p' <<<"$out"
			return 0
		fi
		echo "run.sh: psbench $* on $k hosts failed (try $try)" >&2
	done
	return 1
}

header="experiment,method,workers,servers,bytes,density,time_us,dense_share"
if [[ " $PARTS " == *" ringps "* ]]; then
	csv=$OUT/ringps.csv
	echo "$header" >"$csv"
	for n in $NS; do
		echo "N=$n: ring" >&2
		job "$n" -exp ringps -method ring -sizes "$SIZES" -steps "$STEPS" | tee -a "$csv" >&2
		echo "N=$n: PS, 1 server" >&2
		job $((n + 1)) -exp ringps -method ps -servers 1 -sizes "$SIZES" -steps "$STEPS" | tee -a "$csv" >&2
		if [ $((n / 2)) -gt 1 ]; then
			echo "N=$n: PS, $((n / 2)) servers" >&2
			job $((n + n / 2)) -exp ringps -method ps -servers $((n / 2)) -sizes "$SIZES" -steps "$STEPS" | tee -a "$csv" >&2
		fi
	done
fi
if [[ " $PARTS " == *" sparse "* ]]; then
	csv=$OUT/sparse.csv
	echo "$header" >"$csv"
	echo "sparse vs dense on $SPARSE_N hosts" >&2
	job "$SPARSE_N" -exp sparse -rows "$ROWS" -dim "$DIM" -densities "$DENSITIES" -steps "$STEPS" -rounds "$ROUNDS" | tee -a "$csv" >&2
fi
csv=$OUT/results.csv
echo "$header" >"$csv"
for part in ringps sparse; do
	[ -f "$OUT/$part.csv" ] && tail -n +2 "$OUT/$part.csv" >>"$csv"
done

{
	echo "$(date -u +%Y-%m-%d), $(nproc) CPUs shared, netns hosts at $RATE"
} >"$OUT/machine.txt"
bin/psbench -chart "$csv" -o "$OUT" -title "$(cat "$OUT/machine.txt")"
echo "wrote $csv, $OUT/ringps.png, $OUT/sparse.png" >&2

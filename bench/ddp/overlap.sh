#!/usr/bin/env bash
# overlap.sh: does DataParallel hide gradient communication behind backward?
# Two hosts (network namespaces, bench/cluster/netns.sh) joined by shaped
# links, one rank each, so that the link, not the CPU, bounds communication.
# It times a training step four ways (bench/ddp -modes):
#
#   compute  forward, backward, optimizer step; no communication
#   comm     DataParallel.Sync alone: the step's communication time
#   sync     compute with Sync after backward
#   overlap  compute marking each parameter Ready as backward finishes it
#
# and prints overlap / max(compute, comm): 1.0 is perfect overlap, the target
# is <= 1.15; sync / max(compute, comm) is what no overlap costs. Needs root.
#
#   bash bench/ddp/overlap.sh
#   RATE=500mbit MODEL=784-1024-1024-10 BATCHES="16 64" bash bench/ddp/overlap.sh
#
# Environment: RATE (1gbit), MODEL (784-2048-2048-10), BATCHES (per-rank
# batches to try, "32 64 128"), BUCKET_MB (DataParallel.BucketBytes in MiB,
# 4: with PyTorch's 25 MiB this model's 16 and 6 MiB layers share the bucket
# that backward finishes last, and nothing could overlap), STEPS (10),
# THREADS (GOMAXPROCS of each rank, 1), NICE (niceness of the ranks, 0; -20
# shields the measurement from a busy machine),
# RINGO_NETNS_PREFIX (rnnov-) and RINGO_NETNS_SUBNET (10.78.0): a testbed of
# its own, removed at the end.
set -euo pipefail

cd "$(dirname "$0")/../.."
RATE=${RATE:-1gbit}
MODEL=${MODEL:-784-2048-2048-10}
BATCHES=${BATCHES:-32 64 128}
BUCKET_MB=${BUCKET_MB:-4}
STEPS=${STEPS:-10}
THREADS=${THREADS:-1}
NICE=${NICE:-0}
export RINGO_NETNS_PREFIX=${RINGO_NETNS_PREFIX:-rnnov-}
export RINGO_NETNS_SUBNET=${RINGO_NETNS_SUBNET:-10.78.0}
P=$RINGO_NETNS_PREFIX

bin=$(mktemp -d)
cleanup() {
	bench/cluster/netns.sh down || true
	rm -rf "$bin"
}
trap cleanup EXIT
go build -o "$bin/ringrun" ./cmd/ringrun
go build -o "$bin/ddp" ./bench/ddp
bench/cluster/netns.sh up 2 --rate "$RATE" >&2

for batch in $BATCHES; do
	out=$(nice -n "$NICE" ip netns exec "${P}h0" "$bin/ringrun" --hosts "${P}h0:1,${P}h1:1" --agent 'ip netns exec' \
		--addr "$RINGO_NETNS_SUBNET.1" -x GOMAXPROCS="$THREADS" -- \
		"$bin/ddp" -models "$MODEL" -batch "$batch" -steps "$STEPS" -bucket-mb "$BUCKET_MB" \
		-modes compute,comm,sync,overlap -label "ringo-$RATE" -header | sed 's/^\[0\] //')
	echo "$out"
	echo "$out" | awk -F, -v batch="$batch" '
		NR > 1 { t[$6] = $7; f[$6] = $8 }
		function report(what, t) {
			m = t["compute"] > t["comm"] ? t["compute"] : t["comm"]
			printf "batch %d, %s: max(compute %.1f ms, comm %.1f ms) = %.1f ms; sync after backward %.1f ms = %.2fx; Ready per layer %.1f ms = %.2fx (target <= 1.15x)\n",
				batch, what, t["compute"], t["comm"], m, t["sync"], t["sync"] / m, t["overlap"], t["overlap"] / m
		}
		END { report("median steps", t); report("fastest steps", f) }'
done

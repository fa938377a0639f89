#!/usr/bin/env bash
# run.sh: the pipeline figures of the README, in one go.
#
#   bench/pipebench/run.sh [OUTDIR]          (default bench/results/pipeline)
#
# 1. bubble and activation memory: pipebench, in process, stages whose
#    compute is a calibrated wait (-compute sleep: the CPU stays free, so
#    P = 4 stages behave as 4 machines even on a 2-core host), P = 2 and 4,
#    M = 4, 8, 16, every schedule; measured timelines of M = 8 as SVG;
# 2. the same with stages that spin a core (-compute cpu), P = 2 and 4: on a
#    machine with fewer cores than stages this measures the CPU's sharing too;
# 3. throughput: examples/mnist, a 2-stage pipeline on 2 netns hosts (one
#    rank each, a 1 Gbit/s link) against -mode single on one of them, the
#    same model, ROUNDS times interleaved. Needs root (skipped without).
#
# Environment: ROUNDS (3), STEPS (300), HIDDEN (512,512,512), BATCH (128),
# MICRO (4), RATE (1gbit).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-bench/results/pipeline}
mkdir -p "$out"
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-300}
HIDDEN=${HIDDEN:-512,512,512}
BATCH=${BATCH:-128}
MICRO=${MICRO:-4}
RATE=${RATE:-1gbit}
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/pipebench" ./bench/pipebench
go build -o "$bin/mnist" ./examples/mnist
go build -o "$bin/ringrun" ./cmd/ringrun

{
	echo "# $(date -u +%F) $(uname -m), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
	"$bin/pipebench" -compute sleep -forward 4ms -steps 5 -csv "$out/bubble-sleep.csv" -timeline "$out/timeline.svg"
	echo
	"$bin/pipebench" -compute cpu -forward 4ms -steps 5 -csv "$out/bubble-cpu.csv"
} | tee "$out/bubble.txt"
# Keep the M = 8 timelines only.
find "$out" -name 'timeline-*.svg' ! -name '*-M8-*' -delete

if [ "$(id -u)" != 0 ]; then
	echo "run.sh: not root: no netns throughput run" >&2
	exit 0
fi
export RINGO_NETNS_PREFIX=${RINGO_NETNS_PREFIX:-rpipe-} RINGO_NETNS_SUBNET=${RINGO_NETNS_SUBNET:-10.79.0}
net=bench/cluster/netns.sh
"$net" up 2 --rate "$RATE" >/dev/null
trap '"$net" down >/dev/null; rm -rf "$bin"' EXIT
h0=${RINGO_NETNS_PREFIX}h0 h1=${RINGO_NETNS_PREFIX}h1
args=(-batch "$BATCH" -hidden "$HIDDEN" -steps "$STEPS" -epochs 1 -log-every "$STEPS")
# seconds prints the training time a run reports ("mnist: N steps in Xs").
seconds() { sed -n 's/^mnist: [0-9]* steps in \([0-9.]*\)s$/\1/p'; }
{
	echo "# throughput: MLP 784,$HIDDEN,10, batch $BATCH, $STEPS steps, $RATE link; samples/s per round"
	echo "round single pipeline-1f1b-M$MICRO pipeline-gpipe-M$MICRO"
	for round in $(seq "$ROUNDS"); do
		s=$(ip netns exec "$h0" "$bin/mnist" -mode single "${args[@]}" 2>&1 >/dev/null | seconds)
		row="$round $(echo "$BATCH * $STEPS / $s" | bc)"
		for sched in 1f1b gpipe; do
			p=$(ip netns exec "$h0" "$bin/ringrun" --hosts "$h0:1,$h1:1" --agent "ip netns exec" --addr "${RINGO_NETNS_SUBNET}.1" -- \
				"$bin/mnist" -mode pipeline -stages 2 -microbatches "$MICRO" -schedule "$sched" "${args[@]}" 2>&1 >/dev/null | sed 's/^\[[0-9]*\] //' | seconds)
			row="$row $(echo "$BATCH * $STEPS / $p" | bc)"
		done
		echo "$row"
	done
} | tee "$out/throughput.txt"

#!/usr/bin/env bash
# interleave.sh: ringbench sweeps of several configurations, in turns,
# ROUNDS times, and the median time per call (us) of each size per
# configuration: for comparisons on a machine whose other work comes and
# goes (all configurations see it alike).
#
#   bench/peers/interleave.sh N SIZES ROUNDS CONFIG...
#   bench/peers/interleave.sh 8 8,16384,1048576 3 "TR=shm" "TR=tcp"
#
# A CONFIG is words: TR=transport (shm by default), RB=a ringbench binary
# (bin/ringbench, built from this checkout, by default), and environment
# variables for the ranks (RINGO_ALGO=ring, GOMAXPROCS=2, ...).
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
cd "$(dirname "$0")/../.."
n=$1 sizes=$2 rounds=$3
shift 3
mkdir -p bin
go build -o bin/ringbench ./bench/ringbench
out=$(mktemp -d)
trap 'rm -r "$out"' EXIT
for ((i = 0; i < rounds; i++)); do
	c=0
	for cfg in "$@"; do
		rb=bin/ringbench tr=shm
		vars=()
		for kv in $cfg; do
			case $kv in
			RB=*) rb=${kv#RB=} ;;
			TR=*) tr=${kv#TR=} ;;
			*) vars+=("$kv") ;;
			esac
		done
		env "${vars[@]}" "$rb" -np "$n" -transport "$tr" -s "$sizes" -w 5 -min-sample 2ms -budget 0.2s -q |
			awk '/^ +[0-9]/ { print $1, $6 }' >>"$out/$c"
		c=$((c + 1))
	done
done
printf "%-24s" "N=$n"
for s in ${sizes//,/ }; do printf " %10s" "$s B"; done
echo
c=0
for cfg in "$@"; do
	printf "%-24s" "$cfg"
	for s in ${sizes//,/ }; do
		printf " %10s" "$(awk -v s="$s" '$1 == s { print $2 }' "$out/$c" | sort -g |
			awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')"
	done
	echo
	c=$((c + 1))
done

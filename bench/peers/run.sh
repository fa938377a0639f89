#!/usr/bin/env bash
# bench/peers/run.sh: the same float32 Sum AllReduce sweep with ringbench
# (ringo over TCP loopback and over shared memory) and with the libraries
# users would otherwise use, on this machine, in one go; writes one combined
# CSV and its chart.
#
#   bash bench/peers/run.sh                        # N = 2 and 4, every library
#   NS=2 LIBS="ringo-tcp ompi-tcp" BUDGET=0.3 bash bench/peers/run.sh
#
# Libraries (LIBS):
#   ringo-tcp   bench/ringbench -np N (separate processes, TCP loopback)
#   ringo-shm   bench/ringbench -np N -transport shm (separate processes, shared memory)
#   ompi-tcp    OpenMPI MPI_Allreduce, TCP BTL on lo (--mca pml ob1 --mca btl tcp,self, lo only)
#   ompi-shm    OpenMPI MPI_Allreduce, its defaults (vader shared memory: not a socket transport)
#   torch-gloo  PyTorch torch.distributed all_reduce, gloo backend on lo
#
# The OpenMPI and torch drivers are this directory's mpi_allreduce.c and
# gloo_allreduce.py. Their method matches ringbench's: per size a checked
# call, a warm-up, samples of batched calls lasting >= 2 ms, per sample the
# slowest rank, the median over samples. Sizes are per-rank buffer bytes.
#
# Debian packages (installed only when missing, and only as root, unless
# SKIP_INSTALL=1): openmpi-bin libopenmpi-dev (mpirun.openmpi, mpicc.openmpi),
# python3-torch (/usr/bin/python3 with torch), gcc, golang (go >= 1.24).
#
# Environment: NS ("2 4"), LIBS (all five), BUDGET (seconds of timed samples
# per size, 0.5), WARM (warm-up seconds per size, 0.2), SIZES (4 B .. 64 MiB),
# OUT (bench/results), BUILD (a scratch directory for binaries and raw logs),
# SKIP_INSTALL, QUIET_MAX
# (before each launch, wait at most this many seconds, 60, for the machine to
# be <= 10 % busy; the CPU use seen is logged in machine.txt).
#
# Outputs in OUT: allreduce.csv (library,n,bytes,time_us,algbw,busbw),
# allreduce.png (busbw and latency vs size), allreduce.md (the tables),
# machine.txt (what it ran on), ringbench-TRANSPORT-nN.txt (ringbench's own tables),
# sim.txt (a ring-only sweep on the largest N and its --sim extrapolation to
# 4096 ranks). Raw outputs stay in BUILD.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${OUT:-$ROOT/bench/results}
BUILD=${BUILD:-${TMPDIR:-/tmp}/ringbench-peers}
NS=${NS:-"2 4"}
LIBS=${LIBS:-"ringo-tcp ringo-shm ompi-tcp ompi-shm torch-gloo"}
BUDGET=${BUDGET:-0.5}
WARM=${WARM:-0.2}
SIZES=${SIZES:-4,64,1024,16384,262144,1048576,4194304,16777216,67108864}
PY=/usr/bin/python3 # Debian's python, where python3-torch lives
mkdir -p "$OUT" "$BUILD"
log() { echo "run.sh: $*" >&2; }

need_pkgs=()
wants() { [[ " $LIBS " == *" $1 "* ]]; }
if wants ompi-tcp || wants ompi-shm; then
	command -v mpicc.openmpi >/dev/null && command -v mpirun.openmpi >/dev/null || need_pkgs+=(openmpi-bin libopenmpi-dev gcc libc6-dev)
fi
if wants torch-gloo; then
	"$PY" -c 'import torch.distributed' 2>/dev/null || need_pkgs+=(python3-torch)
fi
if ((${#need_pkgs[@]})); then
	if [[ ${SKIP_INSTALL:-0} != 1 && $(id -u) == 0 ]]; then
		log "installing ${need_pkgs[*]}"
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
	else
		log "missing packages (apt-get install --no-install-recommends ${need_pkgs[*]}); their libraries will be skipped"
	fi
fi

# Build.
(cd "$ROOT" && go build -o "$BUILD/ringbench" ./bench/ringbench && go build -o "$BUILD/plot" ./bench/plot)
if (wants ompi-tcp || wants ompi-shm) && command -v mpicc.openmpi >/dev/null; then
	mpicc.openmpi -O2 -o "$BUILD/mpi_allreduce_ompi" "$HERE/mpi_allreduce.c"
fi

OMPI_TCP=(--mca pml ob1 --mca btl tcp,self --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo)
CSV=$OUT/allreduce.csv
echo "library,n,bytes,time_us,algbw,busbw" >"$CSV.tmp"

# result_lines LIB N FILE: the RESULT lines of a peer driver as CSV rows:
# RESULT label N size_bytes count inner samples median_us min_us p90_us algbw busbw
result_lines() {
	awk -v lib="$1" -v n="$2" '$1 == "RESULT" && $8 > 0 {
		algbw = $4 / $8 / 1e3 # bytes/us -> GB/s
		printf "%s,%d,%d,%.6g,%.6g,%.6g\n", lib, n, $4, $8, algbw, algbw * 2 * (n - 1) / n
	}' "$3"
}

# cpu_busy: percent of CPU time not idle over 0.5 s (from /proc/stat).
cpu_busy() {
	local a b
	read -ra a < <(head -1 /proc/stat)
	sleep 0.5
	read -ra b < <(head -1 /proc/stat)
	local total=0 i
	for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
	local idle=$((b[4] - a[4] + b[5] - a[5]))
	echo $(((total - idle) * 100 / (total > 0 ? total : 1)))
}

# wait_quiet: wait (at most QUIET_MAX s) until the machine is <= 10 % busy,
# so that other jobs' work does not land in the numbers; logs what it saw.
wait_quiet() {
	local t0=$SECONDS busy
	while busy=$(cpu_busy) && ((busy > 10 && SECONDS - t0 < ${QUIET_MAX:-60})); do :; done
	echo "$busy% busy after waiting $((SECONDS - t0)) s, loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
}

LAUNCHES=$BUILD/launches.txt
: >"$LAUNCHES"

run_one() { # LIB N
	local lib=$1 n=$2 raw=$BUILD/$1-n$2.txt
	local -a cmd
	case $lib in
	ringo-tcp | ringo-shm)
		cmd=("$BUILD/ringbench" -np "$n" -transport "${lib#ringo-}" -s "$SIZES" -w 5 -min-sample 2ms -budget "${BUDGET}s" -q --label "$lib" --csv "$BUILD/$lib-n$n.csv")
		;;
	ompi-tcp | ompi-shm)
		[[ -x $BUILD/mpi_allreduce_ompi ]] || { log "skipping $lib: no OpenMPI"; return 0; }
		cmd=(mpirun.openmpi --allow-run-as-root --oversubscribe -np "$n")
		[[ $lib == ompi-tcp ]] && cmd+=("${OMPI_TCP[@]}")
		cmd+=("$BUILD/mpi_allreduce_ompi" -l "$lib" -b "$BUDGET" -w "$WARM" -s "$SIZES")
		;;
	torch-gloo)
		"$PY" -c 'import torch.distributed' 2>/dev/null || { log "skipping $lib: no torch"; return 0; }
		cmd=("$PY" "$HERE/gloo_allreduce.py" -n "$n" -l "$lib" -b "$BUDGET" -w "$WARM" -s "$SIZES")
		;;
	*) log "unknown library $lib"; return 1 ;;
	esac
	local quiet
	quiet=$(wait_quiet)
	log "$lib N=$n ($quiet): ${cmd[*]}"
	echo "$lib N=$n: before launch: $quiet" >>"$LAUNCHES"
	local t0=$SECONDS
	if ! timeout 300 "${cmd[@]}" >"$raw" 2>&1; then
		log "$lib N=$n FAILED (output in $raw)"
		tail -5 "$raw" >&2
		return 0
	fi
	log "$lib N=$n done in $((SECONDS - t0)) s"
	if [[ $lib == ringo-* ]]; then
		tail -n +2 "$BUILD/$lib-n$n.csv" | cut -d, -f1-6 >>"$CSV.tmp"
		sed -n '/^# ringbench/,$p' "$raw" >"$OUT/ringbench-${lib#ringo-}-n$n.txt" # its own table
	else
		result_lines "$lib" "$n" "$raw" >>"$CSV.tmp"
	fi
}

for n in $NS; do
	for lib in $LIBS; do
		run_one "$lib" "$n"
	done
done
mv "$CSV.tmp" "$CSV"

# The alpha-beta extrapolation to 4096 ranks, fitted to a ring-only sweep on
# the largest N (the comparison above uses the library's own choice, auto).
if wants ringo-tcp; then
	nmax=$(printf '%s\n' $NS | sort -n | tail -1)
	log "ringo-tcp N=$nmax --algo ring --sim 4096 ($(wait_quiet))"
	timeout 300 "$BUILD/ringbench" -np "$nmax" -s "$SIZES" -w 5 -min-sample 2ms -budget "${BUDGET}s" -q --algo ring --sim 4096 >"$OUT/sim.txt" 2>&1 ||
		log "the --sim run failed (see $OUT/sim.txt)"
fi

{
	echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "host: $(hostname), nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), kernel $(uname -r)"
	echo "go: $(go version)"
	command -v mpirun.openmpi >/dev/null && echo "openmpi: $(mpirun.openmpi --version 2>/dev/null | head -1)"
	"$PY" -c 'import torch; print("torch:", torch.__version__)' 2>/dev/null || true
	echo "settings: NS=\"$NS\" BUDGET=$BUDGET WARM=$WARM SIZES=$SIZES"
	echo "launches (CPU use of the machine just before each; other jobs may have run during it):"
	cat "$LAUNCHES"
} >"$OUT/machine.txt"
TITLE="float32 Sum AllReduce, one host: TCP loopback and shared memory (-shm), $(date -u +%Y-%m-%d), $(nproc) vCPUs"
"$BUILD/plot" -o "$OUT/allreduce.png" -title "$TITLE" -table "$CSV" >"$OUT/allreduce.md"
log "wrote $CSV, $OUT/allreduce.png, $OUT/allreduce.md"

#!/usr/bin/env bash
# run.sh: ringo's DataParallel against PyTorch DDP (gloo), CPU, TCP loopback,
# one thread per rank on both sides, in the same run.
#
#   bash bench/ddp/run.sh                 N = 2 and 4, both MLPs
#   NS=2 MODELS=784-256-256-10 REPS=1 bash bench/ddp/run.sh
#
# For every N and repetition it runs ringo (bench/ddp, GOMAXPROCS=1 per
# rank) and then torch (torch_ddp.py, torch.set_num_threads(1)), and prints
# one table: step time without gradient sync, with it, their difference
# (the sync overhead) and samples/s with sync, medians over repetitions.
# ringo's "with sync" marks each parameter Ready as backward finishes it,
# as DDP's autograd hooks do. The raw rows go to $OUT (default
# bench/ddp/results.csv).
#
# Environment: NS (ranks, "2 4"), MODELS ("784-256-256-10,784-2048-2048-10"),
# BATCH (per rank, 32), STEPS (timed steps per mode, 8), REPS (1),
# PYTHON (/usr/bin/python3, which must have torch), NICE (niceness of both
# sides' ranks, 0; as root, -20 shields the measurement from a busy machine).
set -euo pipefail

cd "$(dirname "$0")/../.."
NS=${NS:-"2 4"}
MODELS=${MODELS:-784-256-256-10,784-2048-2048-10}
BATCH=${BATCH:-32}
STEPS=${STEPS:-8}
REPS=${REPS:-1}
PYTHON=${PYTHON:-/usr/bin/python3}
OUT=${OUT:-bench/ddp/results.csv}
NICE=${NICE:-0}

"$PYTHON" -c 'import torch.distributed as d; assert d.is_gloo_available()' ||
	{ echo "run.sh: $PYTHON has no torch with gloo (Debian: apt-get install python3-torch)" >&2; exit 1; }
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/ddp" ./bench/ddp

common=(-models "$MODELS" -batch "$BATCH" -steps "$STEPS")
echo "impl,ranks,model,params,batch_per_rank,mode,step_ms,min_ms,samples_per_s" >"$OUT"
for rep in $(seq "$REPS"); do
	for n in $NS; do
		echo "run.sh: repetition $rep, $n ranks: ringo" >&2
		GOMAXPROCS=1 nice -n "$NICE" "$bin/ddp" -np "$n" "${common[@]}" -modes compute,sync,overlap >>"$OUT"
		echo "run.sh: repetition $rep, $n ranks: torch" >&2
		OMP_NUM_THREADS=1 nice -n "$NICE" "$PYTHON" bench/ddp/torch_ddp.py -np "$n" "${common[@]}" >>"$OUT"
	done
done

"$PYTHON" - "$OUT" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
med, fast = {}, {}
for r in rows:
    k = (r["model"], int(r["ranks"]), int(r["params"]), r["impl"], r["mode"])
    med.setdefault(k, []).append(float(r["step_ms"]))
    fast.setdefault(k, []).append(float(r["min_ms"]))
med = {k: statistics.median(v) for k, v in med.items()}
fast = {k: min(v) for k, v in fast.items()}
batch = int(rows[0]["batch_per_rank"])
print(f"Per-rank batch {batch}; step times in ms, median / fastest step; samples/s at the median.")
print()
print("| model (params) | ranks | impl | step, no sync | step, with sync | sync overhead | samples/s |")
print("|---|---:|---|---:|---:|---:|---:|")
for model, n, params in sorted({k[:3] for k in med}, key=lambda k: (k[2], k[1])):
    for impl, sync in (("ringo", "overlap"), ("torch", "ddp")):
        c, s = (model, n, params, impl, "compute"), (model, n, params, impl, sync)
        if c not in med or s not in med:
            continue
        print(f"| {model} ({params / 1e6:.2f}M) | {n} | {impl} | {med[c]:.1f} / {fast[c]:.1f} | {med[s]:.1f} / {fast[s]:.1f} "
              f"| {med[s] - med[c]:.1f} / {fast[s] - fast[c]:.1f} | {batch * n / (med[s] / 1e3):.0f} |")
PY

#!/usr/bin/env python3
"""gloo_allreduce.py: the float32 Sum AllReduce sweep of bench/ringbench,
with torch.distributed's gloo backend, for bench/peers/run.sh to compare
ringo with PyTorch's CPU collectives under the same method.

    /usr/bin/python3 gloo_allreduce.py -n 4 -l torch-gloo -b 0.5 -w 0.2 -s 4,1024,1048576

It starts N processes itself (one rank each) that meet over TCP on
127.0.0.1 (the loopback interface: GLOO_SOCKET_IFNAME=lo).

Per size, in place on count = size/4 floats, as mpi_allreduce.c does:
  1. one checked call: buf[i] = rank+1+(i%3), every element compared with the
     exact sum N(N+1)/2 + N(i%3); any wrong element ends the run;
  2. the buffer zeroed, calls for WARM seconds (at least 3) to warm up, then
     as many again timed, for the time of one call;
  3. samples of `inner` calls (a sample lasts 2 ms or more), as many as fit
     in BUDGET (10 to 500), each started after a barrier;
  4. per sample the slowest rank's time, and of those the median, the
     minimum and the 90th percentile.

Output, on rank 0, one line per size:
  RESULT label N size_bytes count inner samples median_us min_us p90_us algbw_GBps busbw_GBps
"""

import argparse
import os
import socket
import sys
import time

MIN_SAMPLES, MAX_SAMPLES, MIN_SAMPLE_SECONDS = 10, 500, 0.002


def sizes_arg(text):
    sizes = []
    for field in text.split(","):
        try:
            v = int(field)
        except ValueError:
            v = -1
        if v <= 0 or v % 4:
            raise argparse.ArgumentTypeError("%r: want byte counts, multiples of 4" % field)
        sizes.append(v)
    return sizes


def max_over_ranks(dist, torch, values):
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def rank_main(rank, args, port):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    n = args.nproc
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % port, rank=rank, world_size=n)
    if rank == 0:
        print("# %s: torch %s dist.all_reduce float32 Sum, gloo, in place, %d ranks, %.2f s per size"
              % (args.label, torch.__version__, n, args.budget))
        print("# RESULT label N size_bytes count inner samples median_us min_us p90_us algbw_GBps busbw_GBps")
        sys.stdout.flush()
    for size in args.sizes:
        count = size // 4
        index = torch.arange(count, dtype=torch.int64)
        buf = (rank + 1 + index % 3).to(torch.float32)
        dist.all_reduce(buf)
        want = (n * (n + 1) // 2 + n * (index % 3)).to(torch.float32)
        wrong = torch.tensor([int((buf != want).sum())], dtype=torch.int64)
        dist.all_reduce(wrong)
        if wrong.item():
            if rank == 0:
                print("gloo_allreduce: %s: %d bytes: %d elements wrong over all ranks"
                      % (args.label, size, wrong.item()), file=sys.stderr)
            sys.exit(1)

        buf.zero_()
        calls, start = 0, time.perf_counter()
        while True:
            dist.all_reduce(buf)
            calls += 1
            # Every rank must make the same calls: go on by the slowest clock.
            elapsed = max_over_ranks(dist, torch, [time.perf_counter() - start])[0]
            if calls >= 3 and elapsed >= args.warm:
                break
        dist.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            dist.all_reduce(buf)
        per_call = max_over_ranks(dist, torch, [time.perf_counter() - start])[0] / calls

        inner = int(MIN_SAMPLE_SECONDS / per_call) + 1
        samples = min(MAX_SAMPLES, max(MIN_SAMPLES, int(args.budget / (per_call * inner))))
        times = []
        for _ in range(samples):
            dist.barrier()
            start = time.perf_counter()
            for _ in range(inner):
                dist.all_reduce(buf)
            times.append((time.perf_counter() - start) / inner)
        times = sorted(max_over_ranks(dist, torch, times))
        if rank == 0:
            median, fastest, p90 = times[samples // 2], times[0], times[samples * 9 // 10]
            algbw = size / median / 1e9
            print("RESULT %s %d %d %d %d %d %.3f %.3f %.3f %.4f %.4f"
                  % (args.label, n, size, count, inner, samples, median * 1e6, fastest * 1e6, p90 * 1e6,
                     algbw, algbw * 2 * (n - 1) / n))
            sys.stdout.flush()
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--nproc", type=int, required=True, help="ranks (processes) to start")
    ap.add_argument("-l", "--label", default="torch-gloo", help="first field of the output")
    ap.add_argument("-b", "--budget", type=float, default=0.5, help="seconds of timed samples per size")
    ap.add_argument("-w", "--warm", type=float, default=0.2, help="seconds of warm-up per size")
    ap.add_argument("-s", "--sizes", type=sizes_arg, default=sizes_arg("4,64,1024,16384,262144,1048576,4194304,16777216,67108864"),
                    help="bytes per rank, comma-separated, multiples of 4")
    ap.add_argument("-p", "--port", type=int, default=0, help="rendezvous port on 127.0.0.1 (default: a free one)")
    args = ap.parse_args()
    if args.nproc < 1 or args.budget <= 0 or args.warm < 0:
        ap.error("-n must be at least 1, -b positive, -w not negative")

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch.multiprocessing as mp

    port = args.port or free_port()
    # join=True raises if a rank fails, naming it.
    mp.start_processes(rank_main, args=(args, port), nprocs=args.nproc, join=True, start_method="spawn")


if __name__ == "__main__":
    main()

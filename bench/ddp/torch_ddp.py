#!/usr/bin/env python3
"""PyTorch DDP counterpart of bench/ddp (ringo): the same MLPs, the same
per-rank batch of synthetic data, SGD with momentum, one thread per rank,
gloo over TCP loopback. It starts -np ranks itself and prints the same CSV
rows as the Go program:

    impl,ranks,model,params,batch_per_rank,mode,step_ms,min_ms,samples_per_s

Modes, taking turns step by step:
    compute  the plain model (no DDP): forward, backward, optimizer step
    ddp      the same model wrapped in DistributedDataParallel (gradients
             averaged over the ranks, overlapped with backward by its hooks)
A step's time is its slowest rank's; rows show the median and the fastest
step time, and samples/s at the median.
"""
import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F


def mlp(sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def step(model, opt, x, y):
    opt.zero_grad(set_to_none=False)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def rank_main(rank, args, port):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=args.np)
    try:
        for spec in args.models.split(","):
            sizes = [int(s) for s in spec.split("-")]
            bench_model(rank, args, sizes, spec)
    finally:
        dist.destroy_process_group()


def bench_model(rank, args, sizes, name):
    torch.manual_seed(1)
    plain = mlp(sizes)
    wrapped = mlp(sizes)
    wrapped.load_state_dict(plain.state_dict())
    ddp = nn.parallel.DistributedDataParallel(wrapped, bucket_cap_mb=args.bucket_mb)
    runs = {
        "compute": (plain, torch.optim.SGD(plain.parameters(), lr=0.01, momentum=0.9)),
        "ddp": (ddp, torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)),
    }
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, sizes[0], generator=g)
    y = torch.randint(0, sizes[-1], (args.batch,), generator=g)
    for model, opt in runs.values():
        for _ in range(args.warmup):
            step(model, opt, x, y)
    # The modes take turns step by step, each step timed on its own after a
    # barrier, as in the Go program.
    modes = list(runs)
    samples = torch.zeros(args.steps * len(modes), dtype=torch.float64)
    for s in range(args.steps):
        for m, mode in enumerate(modes):
            model, opt = runs[mode]
            dist.barrier()
            t0 = time.perf_counter()
            step(model, opt, x, y)
            samples[s * len(modes) + m] = time.perf_counter() - t0
    dist.all_reduce(samples, op=dist.ReduceOp.MAX)  # a step takes as long as its slowest rank
    times = {mode: samples[m::len(modes)].tolist() for m, mode in enumerate(modes)}
    if rank == 0:
        params = sum(p.numel() for p in plain.parameters())
        for mode, ts in times.items():
            t = statistics.median(ts)
            print(f"{args.label},{args.np},{name},{params},{args.batch},{mode},{t * 1e3:.3f},{min(ts) * 1e3:.3f},{args.batch * args.np / t:.1f}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-np", type=int, default=2)
    p.add_argument("-models", default="784-256-256-10,784-2048-2048-10")
    p.add_argument("-batch", type=int, default=64, help="batch per rank")
    p.add_argument("-steps", type=int, default=10, help="timed steps per mode")
    p.add_argument("-warmup", type=int, default=2, help="untimed steps per mode first")
    p.add_argument("-label", default="torch")
    p.add_argument("-bucket-mb", dest="bucket_mb", type=int, default=25)
    p.add_argument("-header", action="store_true")
    args = p.parse_args()
    if args.header:
        print("impl,ranks,model,params,batch_per_rank,mode,step_ms,min_ms,samples_per_s", flush=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(rank_main, args=(args, free_port()), nprocs=args.np, join=True)


if __name__ == "__main__":
    main()

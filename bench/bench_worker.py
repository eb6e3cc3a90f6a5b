#!/usr/bin/python3
"""bench_worker.py: bench_worker (bench/bench_worker.cc) in Python, over the
weightd package, for the scenario that compares the binding with the C++
client (bench/run_bench.py, scenario 11).

Same rounds, timed the same way: join one float32 tensor of --bytes, then
for one warm-up round and --reps measured ones: fill the tensor with
rank + 1, enter a barrier with every worker, and time one push_pull. The
mean must be (W + 1) / 2. Each measured round prints {"rep": i, "secs": s}.
Needs the package on PYTHONPATH (e.g. build/release/python)."""

import argparse
import json
import sys
import time

import numpy as np

import weightd


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="127.0.0.1:7070")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--bytes", type=int, default=1 << 20)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--wire_format", default="float32")
    ap.add_argument("--shared_memory", default="false",
                    help="true: shared memory on the daemon's host")
    ap.add_argument("--in_place", default="false",
                    help="true: keep the tensor in the segment")
    ap.add_argument("--joined_file", default="",
                    help="created once every worker has joined")
    args = ap.parse_args()

    tensor = np.zeros(args.bytes // 4, np.float32)
    tensors = {"t0": tensor}
    expected = (args.workers + 1) / 2
    with weightd.Client(args.server, worker_id=f"bench-{args.rank}",
                        wire_format=args.wire_format,
                        shared_memory=args.shared_memory == "true") as client:
        client.join(tensors)
        if args.in_place == "true":
            shared = client.shared_array("t0")
            shared[:] = tensor
            tensor = shared
            tensors = {"t0": tensor}
        client.barrier("joined", args.workers)
        if args.joined_file:
            open(args.joined_file, "w").write("joined\n")
        for rep in range(-1, args.reps):
            tensor.fill(args.rank + 1)
            client.barrier(f"round-{rep}", args.workers)
            start = time.perf_counter()
            client.push_pull(tensors)
            secs = time.perf_counter() - start
            if (abs(tensor[0] - expected) > 1e-5 or
                    abs(tensor[-1] - expected) > 1e-5):
                sys.exit(f"bench_worker.py {args.rank}: mean {tensor[0]}, "
                         f"expected {expected}")
            if rep >= 0:
                print(json.dumps({"rep": rep, "secs": secs}), flush=True)


if __name__ == "__main__":
    main()
